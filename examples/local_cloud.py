"""Start a two-region local cloud, register a lamp, and publish as it over mTLS from region to region.

Uses plain paho-mqtt, as any firmware prototype can, to show what the local cloud enforces: the
lamp's own topic is accepted (PUBACK 0x00/0x10), another lamp's topic is refused (PUBACK 0x87).

    python examples/local_cloud.py
"""

from __future__ import annotations

import ssl
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from iotfleet import Identity, LocalCloud


def publish_as(identity: Identity, host: str, port: int, topics: list[str]) -> dict[str, int]:
    """Connect as ``identity`` and publish QoS 1 to each topic; return each topic's PUBACK reason code."""
    acks: dict[int, int] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity.thing_name, protocol=mqtt.MQTTv5)
    ctx = ssl.create_default_context(cafile=str(identity.ca_file))
    ctx.load_cert_chain(str(identity.cert_file), str(identity.key_file))
    client.tls_set_context(ctx)
    client.on_publish = lambda _c, _u, mid, rc, _p: acks.__setitem__(mid, rc.value)
    client.connect(host, port)
    mids = {client.publish(topic, b'{"power_w": 12.5}', qos=1).mid: topic for topic in topics}
    deadline = time.monotonic() + 5
    while len(acks) < len(mids) and time.monotonic() < deadline:
        client.loop(timeout=0.05)
    client.disconnect()
    return {topic: acks.get(mid, -1) for mid, topic in mids.items()}


def main() -> None:
    with LocalCloud() as cloud:
        lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
        for endpoint in cloud.endpoints:
            codes = publish_as(
                lamp, endpoint.host, endpoint.port, ["dt/acme/hq/lamp-1/power", "dt/acme/hq/lamp-2/power"]
            )
            for topic, code in codes.items():
                print(f"{endpoint.region}: {topic} -> PUBACK 0x{code:02x}")


if __name__ == "__main__":
    main()
