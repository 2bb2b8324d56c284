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
        claim = Identity(
            thing_name="claim",
            cert_file=local_cloud.claim.cert_file,
            key_file=local_cloud.claim.key_file,
            ca_file=local_cloud.ca_file,
        )
        service = Identity(
            thing_name="service",
            cert_file=local_cloud.service.cert_file,
            key_file=local_cloud.service.key_file,
            ca_file=local_cloud.ca_file,
        )
        got: dict[str, list[InboundMessage]] = {"dev-a": [], "dev-b": []}
        requests: list[InboundMessage] = []
        transport = PahoTransport()
        devices = {}
        for client_id, inbox in got.items():
            options = ConnectOptions(client_id=client_id, identity=claim, on_message=inbox.append)
            devices[client_id] = await transport.connect(endpoint, options)
            await devices[client_id].subscribe([(ANSWERS, 1)])
        provisioner = await transport.connect(
            endpoint, ConnectOptions(client_id="provisioner", identity=service, on_message=requests.append)
        )
        await provisioner.subscribe([("$aws/certificates/create/json", 1)])

        await devices["dev-b"].publish("$aws/certificates/create/json", b"{}", 1)
        for _ in range(100):
            if requests:
                break
            await asyncio.sleep(0.02)
        assert [m.property("iotfleet-client-id") for m in requests] == ["dev-b"]

        await provisioner.publish(ANSWERS, b'{"for": "a"}', 1, [("iotfleet-deliver-to", "dev-a")])
        await provisioner.publish(ANSWERS, b'{"for": "b"}', 1, [("iotfleet-deliver-to", "dev-b")])
        for _ in range(100):
            if got["dev-a"] and got["dev-b"]:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # anything misrouted would have arrived too
        # dev-b also gets the cloud's own provisioning service's answer to its request; dev-a gets neither
        assert [(m.payload, m.user_properties) for m in got["dev-a"]] == [(b'{"for": "a"}', ())]
        assert (b'{"for": "b"}', ()) in [(m.payload, m.user_properties) for m in got["dev-b"]]
        assert [
            m for m in got["dev-b"] if b"certificateOwnershipToken" not in m.payload and m.payload != b'{"for": "b"}'
        ] == []
        assert sum(b"certificateOwnershipToken" in m.payload for m in got["dev-b"]) == 1
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
