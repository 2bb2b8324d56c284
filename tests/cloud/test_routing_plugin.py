"""The mosquitto plugin gives fleet-provisioning answers IoT Core's per-connection delivery."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from iotfleet.cloud import plugin
from iotfleet.cloud.local import LocalCloud
from iotfleet.config import Identity
from iotfleet.errors import BrokerStartError
from iotfleet.transport.base import ConnectOptions, InboundMessage
from iotfleet.transport.paho import PahoTransport

ANSWERS = "$aws/certificates/create/json/accepted"


def test_answers_reach_only_the_asking_connection(local_cloud: LocalCloud) -> None:
    """Two devices share the claim identity and the answer topic; each answer reaches only its asker."""

    async def scenario() -> None:
        endpoint = local_cloud.endpoints[0]
        claim = local_cloud.claim_identity
        service = Identity(
            thing_name="service",
            cert_file=local_cloud.service.cert_file,
            key_file=local_cloud.service.key_file,
            ca_file=local_cloud.ca_file,
        )
        got: dict[str, asyncio.Queue[InboundMessage]] = {"dev-a": asyncio.Queue(), "dev-b": asyncio.Queue()}
        requests: asyncio.Queue[InboundMessage] = asyncio.Queue()
        transport = PahoTransport()
        devices = {}
        for client_id, inbox in got.items():
            options = ConnectOptions(client_id=client_id, identity=claim, on_message=inbox.put_nowait)
            devices[client_id] = await transport.connect(endpoint, options)
            await devices[client_id].subscribe([(ANSWERS, 1)])
        provisioner = await transport.connect(
            endpoint, ConnectOptions(client_id="provisioner", identity=service, on_message=requests.put_nowait)
        )
        await provisioner.subscribe([("$aws/certificates/create/json", 1)])

        async def next_of(queue: asyncio.Queue[InboundMessage]) -> InboundMessage:
            return await asyncio.wait_for(queue.get(), 10)

        await devices["dev-b"].publish("$aws/certificates/create/json", b"{}", 1)
        assert (await next_of(requests)).property("iotfleet-client-id") == "dev-b"
        # dev-b first gets the cloud's own provisioning service's answer to its request
        assert b"certificateOwnershipToken" in (await next_of(got["dev-b"])).payload

        await provisioner.publish(ANSWERS, b'{"for": "a"}', 1, [("iotfleet-deliver-to", "dev-a")])
        await provisioner.publish(ANSWERS, b'{"for": "b"}', 1, [("iotfleet-deliver-to", "dev-b")])
        for name in ("dev-a", "dev-b"):
            message = await next_of(got[name])
            assert (message.payload, message.user_properties) == (f'{{"for": "{name[-1]}"}}'.encode(), ())
        # a last answer to each proves nothing else was on the way: one connection's messages arrive in order
        for name in ("dev-a", "dev-b"):
            await provisioner.publish(ANSWERS, b"last", 1, [("iotfleet-deliver-to", name)])
            assert (await next_of(got[name])).payload == b"last"
        for session in [*devices.values(), provisioner]:
            await session.close()

    asyncio.run(scenario())


def test_a_missing_compiler_is_named_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built yet in this cache
    monkeypatch.setattr("iotfleet.cloud.plugin.shutil.which", lambda *_a, **_k: None)
    with pytest.raises(BrokerStartError, match="apt-get install -y gcc libc6-dev mosquitto-dev"):
        plugin.plugin_path()


def test_the_plugin_is_built_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = plugin.plugin_path()
    assert first.parent == tmp_path / "iotfleet"
    built_at = first.stat().st_mtime_ns
    assert plugin.plugin_path() == first
    assert first.stat().st_mtime_ns == built_at
