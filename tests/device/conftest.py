"""Fixtures for device tests: both transports, fast policies, and a watcher on every region."""

from __future__ import annotations

import collections

import pytest

from iotfleet.cloud.local import LocalCloud
from iotfleet.config import Endpoint, Identity, PublishLimits, ReconnectPolicy
from iotfleet.device.client import MESSAGE_ID_PROPERTY
from iotfleet.transport.base import ConnectOptions, InboundMessage, Session
from iotfleet.transport.paho import PahoTransport

# Local-cloud timings: seconds instead of IoT Core's minutes.
FAST = ReconnectPolicy(
    keepalive_s=2,
    ping_timeout_s=1.0,
    connect_timeout_s=1.0,
    min_backoff_s=0.05,
    max_backoff_s=0.5,
    failover_after_failures=2,
    failover_after_s=3.0,
    failback_probe_s=0.5,
    stable_after_s=5.0,
)
UNLIMITED = PublishLimits(enabled=False)


@pytest.fixture(params=["crt", "paho"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every device test runs on both transports."""
    return str(request.param)


class Watcher:
    """A service-identity subscriber per region (paho, QoS 0) counting what arrived, by message id."""

    def __init__(self, cloud: LocalCloud, topic_filter: str = "dt/#") -> None:
        self.cloud = cloud
        self.topic_filter = topic_filter
        self.messages: list[tuple[str, InboundMessage]] = []
        self.ids: collections.Counter[str] = collections.Counter()
        self.sessions: dict[str, Session] = {}
        self._identity = Identity(
            thing_name="watcher",
            cert_file=cloud.service.cert_file,
            key_file=cloud.service.key_file,
            ca_file=cloud.ca_file,
        )

    async def watch(self, endpoint: Endpoint) -> None:
        def on_message(message: InboundMessage) -> None:
            self.messages.append((endpoint.region, message))
            message_id = message.property(MESSAGE_ID_PROPERTY)
            if message_id:
                self.ids[message_id] += 1

        options = ConnectOptions(client_id=f"watcher-{endpoint.region}", identity=self._identity, on_message=on_message)
        session = await PahoTransport().connect(endpoint, options)
        await session.subscribe([(self.topic_filter, 0)])
        self.sessions[endpoint.region] = session

    async def start(self) -> Watcher:
        for endpoint in self.cloud.endpoints:
            await self.watch(endpoint)
        return self

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.ids.values() if n > 1)


@pytest.fixture
def lamp(local_cloud: LocalCloud) -> Identity:
    return local_cloud.register_thing("lamp-1", tenant="acme", site="hq")
