"""Revocation and rotation against the local cloud, on both transports (IOT_CORE.md section 11a).

A certificate that every region refuses is a clear :class:`IdentityRefused`, not a connect loop; a device
rotates to a new certificate (``LocalCloud.create_certificate``, ``IdentityStore.rotate``,
``DeviceClient.use_identity``) without losing what it had queued, and the old certificate is then
deactivated everywhere without touching the new session.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from iotfleet.cloud.local import LocalCloud
from iotfleet.cloud.registry import CertificateStatus
from iotfleet.config import Identity
from iotfleet.device import BlockingDeviceClient, DeviceClient
from iotfleet.device.events import ConnectFailed
from iotfleet.errors import ConfigError, IdentityRefused
from iotfleet.provisioning.keys import csr_pem, new_private_key, private_key_pem
from iotfleet.provisioning.store import IdentityStore
from tests.conftest import Watcher, lamp_options


def stored(cloud: LocalCloud, lamp: Identity, directory: Path) -> IdentityStore:
    """lamp's identity as a provisioned device keeps it."""
    store = IdentityStore(directory)
    assert lamp.certificate_id is not None
    store.save(
        thing_name=lamp.thing_name,
        certificate_pem=lamp.cert_file.read_bytes(),
        private_key_pem=lamp.key_file.read_bytes(),
        ca_pem=cloud.ca_file.read_bytes(),
        certificate_id=lamp.certificate_id,
        device_configuration={},
        endpoints=cloud.endpoints,
    )
    return store


def test_an_identity_every_region_refuses_is_a_clear_error_at_once(
    local_cloud: LocalCloud, lamp: Identity, transport: str
) -> None:
    assert lamp.certificate_id is not None
    local_cloud.update_certificate(lamp.certificate_id, CertificateStatus.REVOKED)
    events: list[Any] = []

    async def scenario() -> None:
        options = lamp_options(local_cloud, lamp, transport, connect_wait_s=60, listeners=[events.append])
        with pytest.raises(IdentityRefused, match="every endpoint refused this identity") as caught:
            async with DeviceClient(**options):
                pass
        # the regions' TLS handshake refuses a revoked certificate (their CRL), as IoT Core's does
        assert caught.value.reasons == {str(e): "tls" for e in local_cloud.endpoints}

    asyncio.run(asyncio.wait_for(scenario(), 30))  # well before connect_wait_s: no waiting it out
    refused = [event.refused for event in events if isinstance(event, ConnectFailed)]
    assert refused
    assert all(refused)


@pytest.mark.parametrize("with_csr", [False, True], ids=["new-keys", "csr"])
def test_a_device_rotates_its_certificate_without_losing_queued_messages(
    local_cloud: LocalCloud, lamp: Identity, transport: str, tmp_path: Path, with_csr: bool
) -> None:
    store = stored(local_cloud, lamp, tmp_path / "identity")
    watcher = Watcher(local_cloud)

    async def scenario() -> dict[str, Any]:
        await watcher.start()
        try:
            async with DeviceClient(**lamp_options(local_cloud, store.load().identity, transport)) as dev:
                before = [dev.enqueue("power", {"n": n}) for n in range(20)]
                if with_csr:
                    key = new_private_key()
                    cert_id, cert_pem, _ = local_cloud.create_certificate("lamp-1", csr_pem=csr_pem(key, "lamp-1"))
                    key_pem: str | bytes = private_key_pem(key)
                else:
                    cert_id, cert_pem, new_key = local_cloud.create_certificate("lamp-1")
                    assert new_key is not None
                    key_pem = new_key
                rotated = store.rotate(certificate_pem=cert_pem, private_key_pem=key_pem, certificate_id=cert_id)
                assert rotated.previous_certificate_id == lamp.certificate_id
                await dev.use_identity(rotated.identity)
                local_cloud.update_certificate(lamp.certificate_id or "", CertificateStatus.INACTIVE)
                after = [dev.enqueue("power", {"n": n}) for n in range(20, 40)]
                receipts = await asyncio.wait_for(asyncio.gather(*before, *after), 20)
                assert dev.identity.certificate_id == cert_id
                ids = {r.message_id for r in receipts}
                assert await watcher.wait_for(lambda: ids <= set(watcher.ids), timeout=10)
                return {"receipts": len(receipts), "ids": ids, "reconnects": dev.counters.connects}
        finally:
            await watcher.close()

    result = asyncio.run(scenario())
    assert result["receipts"] == 40
    assert result["reconnects"] == 2  # the first session, and the one with the new certificate: no drop between
    assert store.load().identity.certificate_id != lamp.certificate_id  # the store holds the new identity
    current = store.load().identity
    with pytest.raises(ConfigError, match="already this device's identity"):
        store.rotate(
            certificate_pem=current.cert_file.read_bytes(),
            private_key_pem=current.key_file.read_bytes(),
            certificate_id=current.certificate_id or "",
        )


def test_the_blocking_facade_rotates_too(local_cloud: LocalCloud, lamp: Identity, tmp_path: Path) -> None:
    store = stored(local_cloud, lamp, tmp_path / "identity")
    with BlockingDeviceClient(**lamp_options(local_cloud, store.load().identity)) as device:
        device.publish("power", {"n": 1}, timeout=10)
        cert_id, cert_pem, key_pem = local_cloud.create_certificate("lamp-1")
        assert key_pem is not None
        rotated = store.rotate(certificate_pem=cert_pem, private_key_pem=key_pem, certificate_id=cert_id)
        device.use_identity(rotated.identity)
        local_cloud.update_certificate(lamp.certificate_id or "", CertificateStatus.INACTIVE)
        assert device.publish("power", {"n": 2}, timeout=10).endpoint.region == "eu-west-1"
        assert device.device.identity.certificate_id == cert_id
