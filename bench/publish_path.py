"""The Python cost of DeviceClient's publish path alone: QoS 1 publishes per CPU-second with no network.

The transport is a stand-in whose session answers each publish with a PUBACK on the next event-loop
iteration, so what is measured is iotfleet's own per-message work (outbox, envelope-free admission,
in-flight window, PUBACK settlement, receipts), not the CRT's or the broker's. It uses only the public
API (a :class:`~iotfleet.transport.base.Transport` object), so the same script runs on any checkout:
that is how a refactor of the publish path is compared with its base (bench/BENCHMARKS.md).

    python bench/publish_path.py [--messages 200000] [--window 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iotfleet import DeviceClient, Identity, PublishLimits
from iotfleet.config import Endpoint
from iotfleet.transport.base import ConnectOptions, DisconnectInfo, PublishCallback

ENDPOINT = Endpoint(region="eu-west-1", host="127.0.0.1", port=1)
PAYLOAD = b'{"power_w":12.5,"dim":80,"lux":412,"occupied":true,"temp_c":21.4}' * 3


class InstantSession:
    """Acknowledges every publish on the next loop iteration, the way a transport's callback arrives."""

    def __init__(self) -> None:
        self.endpoint = ENDPOINT
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[DisconnectInfo] = self._loop.create_future()

    def send(
        self, topic: str, payload: bytes, qos: int, user_properties: Sequence[tuple[str, str]], done: PublishCallback
    ) -> None:
        self._loop.call_soon(done, 0, None, time.monotonic())

    async def publish(self, topic: str, payload: bytes, qos: int, user_properties: Any = ()) -> int:
        return 0

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        return [qos for _, qos in filters]

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        return None

    async def close(self) -> None:
        if not self.closed.done():
            self.closed.set_result(DisconnectInfo("closed", by_client=True))


class InstantTransport:
    name = "instant"

    async def connect(self, endpoint: Endpoint, options: ConnectOptions) -> InstantSession:
        return InstantSession()


async def one_round(identity: Identity, messages: int, window: int) -> float:
    device = DeviceClient(
        identity=identity,
        endpoints=[ENDPOINT],
        tenant="acme",
        site="hq",
        transport=InstantTransport(),  # type: ignore[arg-type]  # a Transport by shape
        limits=PublishLimits(enabled=False, max_inflight=window),
    )
    async with device:

        async def publisher(count: int) -> None:
            for _ in range(count):
                await device.publish("power", PAYLOAD)

        started = time.process_time()
        await asyncio.gather(*(publisher(messages // window) for _ in range(window)))
        return (messages // window * window) / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--window", type=int, default=10, help="publishes in flight (one task each)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iotfleet-path-") as tmp:
        files = {name: Path(tmp) / f"{name}.pem" for name in ("cert", "key", "ca")}
        for path in files.values():
            path.write_text("not used: the stand-in transport does no TLS\n")
        Identity.check = lambda self: None  # type: ignore[method-assign]  # the files are stand-ins too
        identity = Identity(thing_name="lamp-1", cert_file=files["cert"], key_file=files["key"], ca_file=files["ca"])
        rates = [asyncio.run(one_round(identity, args.messages, args.window)) for _ in range(args.rounds)]
    for i, rate in enumerate(rates, 1):
        print(f"round {i} DeviceClient publish path {rate:>9,.0f} msg/CPU-s")
    print(f"mean  DeviceClient publish path {sum(rates) / len(rates):>9,.0f} msg/CPU-s")


if __name__ == "__main__":
    main()
