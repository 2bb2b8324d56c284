"""A broken or mismatched identity is a CertificateError naming the file and the problem, at once, on both
transports, before any connection is attempted."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from iotfleet.cloud.local import LocalCloud
from iotfleet.config import Identity
from iotfleet.device import DeviceClient
from iotfleet.errors import CertificateError, IotFleetError
from iotfleet.testing import LOCAL_FAST
from iotfleet.transport import resolve_transport
from iotfleet.transport.base import ConnectOptions


def copy_of(identity: Identity, directory: Path) -> Identity:
    """The identity's three files copied to ``directory``, to break one of them."""
    directory.mkdir()
    files = {}
    for name, path in (("cert", identity.cert_file), ("key", identity.key_file), ("ca", identity.ca_file)):
        files[name] = directory / f"{name}.pem"
        shutil.copy(path, files[name])
    return Identity(thing_name=identity.thing_name, cert_file=files["cert"], key_file=files["key"], ca_file=files["ca"])


@pytest.fixture
def pair(local_cloud: LocalCloud, lamp: Identity) -> tuple[Identity, Identity]:
    """lamp-1, and lamp-2 whose key is not lamp-1's."""
    return lamp, local_cloud.register_thing("lamp-2", tenant="acme", site="hq")


def broken(kind: str, pair: tuple[Identity, Identity], tmp_path: Path) -> tuple[Identity, Path, str]:
    """An identity with one problem; the file the error must name and words it must say."""
    lamp, other = pair
    ident = copy_of(lamp, tmp_path / kind)
    if kind == "garbage-cert":
        ident.cert_file.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        return ident, ident.cert_file, "is not a PEM certificate"
    if kind == "other-key":
        shutil.copy(other.key_file, ident.key_file)
        return ident, ident.key_file, f"not the private key of {ident.cert_file}"
    if kind == "missing-key":
        ident.key_file.unlink()
        return ident, ident.key_file, "cannot read the private key of lamp-1: No such file or directory"
    if kind == "ca-not-a-cert":
        ident.ca_file.write_text("hello\n")
        return ident, ident.ca_file, "the CA certificate of lamp-1 is not a PEM certificate"
    if kind == "garbage-key":
        ident.key_file.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        return ident, ident.key_file, "is not a PEM private key"
    if kind == "swapped":
        shutil.copy(lamp.key_file, ident.cert_file)
        return ident, ident.cert_file, "are the certificate and key files swapped?"
    raise AssertionError(kind)


KINDS = ["garbage-cert", "other-key", "missing-key", "ca-not-a-cert", "garbage-key", "swapped"]


@pytest.mark.parametrize("kind", KINDS)
def test_check_names_the_file_and_the_problem(kind: str, pair: tuple[Identity, Identity], tmp_path: Path) -> None:
    ident, path, words = broken(kind, pair, tmp_path)
    with pytest.raises(CertificateError) as info:
        ident.check()
    assert info.value.message.startswith(f"{path}: ")
    assert words in info.value.message
    assert copy_of(pair[0], tmp_path / "good").check().thing_name == "lamp-1"


@pytest.mark.parametrize("kind", ["other-key", "garbage-cert", "ca-not-a-cert"])
def test_each_transport_raises_certificate_error_at_once(
    kind: str, local_cloud: LocalCloud, pair: tuple[Identity, Identity], tmp_path: Path, transport: str
) -> None:
    """Not a raw RuntimeError 1033 (awscrt) or SSLError (paho), and not after a connect timeout."""
    ident, path, words = broken(kind, pair, tmp_path)
    options = ConnectOptions(client_id="lamp-1", identity=ident, connect_timeout_s=5.0)

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(CertificateError) as info:
            await resolve_transport(transport).connect(local_cloud.endpoints[0], options)
        assert time.monotonic() - started < 1.0
        assert str(path) in info.value.message
        assert words in info.value.message

    asyncio.run(scenario())


def test_entering_a_device_with_a_mismatched_key_fails_at_once(
    local_cloud: LocalCloud, pair: tuple[Identity, Identity], tmp_path: Path, transport: str
) -> None:
    ident, path, _ = broken("other-key", pair, tmp_path)

    async def scenario() -> None:
        device = DeviceClient(
            identity=ident,
            endpoints=local_cloud.endpoints,
            transport=transport,
            reconnect=LOCAL_FAST,
            connect_wait_s=10,
        )
        started = time.monotonic()
        with pytest.raises(IotFleetError) as info:
            async with device:
                pass
        assert isinstance(info.value, CertificateError)
        assert info.value.message.startswith(f"{path}: ")
        assert time.monotonic() - started < 1.0

    asyncio.run(scenario())
