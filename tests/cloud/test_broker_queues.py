"""Broker queues: a slow cloud service loses nothing; a queue that does overflow is counted, never silent.

mosquitto's default keeps 1,000 queued messages per client (beyond the 100 in flight) and drops the rest
silently; the local cloud's brokers queue without limit, and count any drop mosquitto logs.
"""

from __future__ import annotations

from pathlib import Path

from iotfleet.cloud.authz import render_authz, write_authz
from iotfleet.cloud.broker import Broker
from iotfleet.cloud.local import LocalCloud
from iotfleet.cloud.services.base import SERVICE_CLIENT_PREFIX
from iotfleet.config import Endpoint
from tests.conftest import Probe, Probes, identity_context, wait_until

SLOW = f"{SERVICE_CLIENT_PREFIX}-slow-test"


def fill_a_slow_subscriber(endpoint: Endpoint, cloud: LocalCloud, probes: Probes, count: int) -> Probe:
    """Subscribe as a cloud service that then reads nothing while ``count`` messages are acknowledged."""
    slow = probes(endpoint, SLOW, identity_context(cloud.service))
    assert slow.connect()
    assert slow.subscribe("slow/#") == [1]
    sender = probes(endpoint, f"{SERVICE_CLIENT_PREFIX}-sender-test", identity_context(cloud.service))
    assert sender.connect()
    for i in range(count):
        assert sender.publish(f"slow/{i}", b"m") == 0  # acknowledged by the broker
    return slow


def test_a_slow_cloud_service_gets_every_acknowledged_message(local_cloud: LocalCloud, probes: Probes) -> None:
    region = local_cloud.region("eu-west-1")
    slow = fill_a_slow_subscriber(region.endpoint, local_cloud, probes, 2500)  # 100 in flight + 2,400 queued
    assert slow.pump(lambda: len(slow.messages) >= 2500, timeout=30)
    assert len({topic for topic, _ in slow.messages}) == 2500
    assert region.broker.drops == {}
    assert region.broker_dropped() == 0


def test_a_queue_that_overflows_is_counted_for_its_client(
    local_cloud: LocalCloud, probes: Probes, tmp_path: Path
) -> None:
    """With a limit (mosquitto's default is 1,000), the drop mosquitto logs is counted per client id."""
    identities = local_cloud.workdir / "identities"
    authz = tmp_path / "authz"
    write_authz(authz, render_authz("queue-test", "000000000000", [], []))  # only the (trusted) service connects
    broker = Broker(
        name="queue-test",
        directory=tmp_path / "broker",
        ca_file=local_cloud.ca_file,
        cert_file=identities / "server.pem",
        key_file=identities / "server.key",
        authz_file=authz,
        service=local_cloud.service,
        max_queued_messages=10,
    )
    broker.start()
    try:
        endpoint = Endpoint(region="eu-west-1", host="localhost", port=broker.port)
        fill_a_slow_subscriber(endpoint, local_cloud, probes, 200)  # 100 in flight + 10 queued; 90 dropped
        assert wait_until(lambda: broker.drops[SLOW] >= 1)  # the log line is read on the broker's log thread
        assert set(broker.drops) == {SLOW}
    finally:
        broker.stop()
