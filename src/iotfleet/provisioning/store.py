"""IdentityStore: a provisioned device's identity in one directory.

Layout: ``cert.pem``, ``key.pem`` (0600), ``ca.pem`` and ``identity.json`` (thing name, certificate id,
the template's ``deviceConfiguration`` and the endpoints to use). The directory is created 0700. A
device that finds a complete store skips provisioning; ``identity.json`` is written last, so a store
interrupted midway is not mistaken for a complete one.

A rotation (:meth:`IdentityStore.rotate`) writes the new certificate and key under names of their own
(``cert-<id>.pem``, ``key-<id>.pem``) and then replaces ``identity.json``, which names the files in use:
a crash leaves either the old identity or the new one, never a certificate with the other's key. The
previous certificate stays until the next rotation, and its id is kept as ``previous_certificate_id``
(the one to deactivate once the device is connected with the new one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotfleet._files import write_private
from iotfleet.config import Endpoint, Identity
from iotfleet.errors import ConfigError

__all__ = ["IdentityStore", "StoredIdentity"]


@dataclass(frozen=True, slots=True)
class StoredIdentity:
    """What provisioning produced: the identity, the template's device configuration, the endpoints."""

    identity: Identity
    device_configuration: Mapping[str, str] = field(default_factory=dict)
    endpoints: Sequence[Endpoint] = ()
    previous_certificate_id: str | None = None


class IdentityStore:
    """One device identity on disk, under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def _meta(self) -> Path:
        return self.directory / "identity.json"

    def exists(self) -> bool:
        return self._meta.exists()

    def save(
        self,
        *,
        thing_name: str,
        certificate_pem: str | bytes,
        private_key_pem: str | bytes,
        ca_pem: str | bytes,
        certificate_id: str,
        device_configuration: Mapping[str, str],
        endpoints: Sequence[Endpoint],
    ) -> StoredIdentity:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        files = {"cert.pem": certificate_pem, "key.pem": private_key_pem, "ca.pem": ca_pem}
        for name, data in files.items():
            write_private(self.directory / name, data.encode() if isinstance(data, str) else data)
        meta = {
            "thing_name": thing_name,
            "certificate_id": certificate_id,
            "device_configuration": dict(device_configuration),
            "endpoints": [{"region": e.region, "host": e.host, "port": e.port} for e in endpoints],
        }
        write_private(self._meta, json.dumps(meta, indent=2).encode())
        return self.load()

    def rotate(
        self, *, certificate_pem: str | bytes, private_key_pem: str | bytes, certificate_id: str
    ) -> StoredIdentity:
        """Make a new certificate (and its key) this device's identity, keeping the thing, configuration and
        endpoints. The files of the certificate before the previous one are removed. Give the result's
        ``identity`` to :meth:`DeviceClient.use_identity <iotfleet.device.client.DeviceClient.use_identity>`,
        then deactivate ``previous_certificate_id``."""
        meta = self._read_meta()
        current = self.load()
        if certificate_id == current.identity.certificate_id:
            raise ConfigError(f"certificate {certificate_id[:12]}... is already this device's identity")
        cert_name, key_name = f"cert-{certificate_id[:16]}.pem", f"key-{certificate_id[:16]}.pem"
        for name, data in ((cert_name, certificate_pem), (key_name, private_key_pem)):
            write_private(self.directory / name, data.encode() if isinstance(data, str) else data)
        stale = [meta.get("previous_cert_file"), meta.get("previous_key_file")]
        meta.update(
            previous_certificate_id=meta.get("certificate_id"),
            previous_cert_file=meta.get("cert_file", "cert.pem"),
            previous_key_file=meta.get("key_file", "key.pem"),
            certificate_id=certificate_id,
            cert_file=cert_name,
            key_file=key_name,
        )
        write_private(self._meta, json.dumps(meta, indent=2).encode())  # the switch: atomic
        for old in stale:
            if old and old not in (cert_name, key_name):
                (self.directory / old).unlink(missing_ok=True)
        return self.load()

    def _read_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(self._meta.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no identity in {self.directory}: provision the device first") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self._meta} is damaged ({exc}): delete {self.directory} and provision the device again"
            ) from exc
        if not isinstance(meta, dict):
            raise ConfigError(f"{self._meta} is damaged: delete {self.directory} and provision the device again")
        return meta

    def load(self) -> StoredIdentity:
        """The stored identity; :class:`ConfigError` naming the file when it is missing or damaged."""
        meta = self._read_meta()
        try:
            identity = Identity(
                thing_name=meta["thing_name"],
                cert_file=self.directory / meta.get("cert_file", "cert.pem"),
                key_file=self.directory / meta.get("key_file", "key.pem"),
                ca_file=self.directory / "ca.pem",
                certificate_id=meta.get("certificate_id"),
            )
            endpoints = [Endpoint(**e) for e in meta.get("endpoints", [])]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self._meta} is damaged ({exc}): delete {self.directory} and provision the device again"
            ) from exc
        for path in (identity.cert_file, identity.key_file, identity.ca_file):
            if not path.exists():
                raise ConfigError(f"{path} is missing: delete {self.directory} and provision the device again")
        configuration = dict(meta.get("device_configuration", {}))
        return StoredIdentity(identity, configuration, endpoints, meta.get("previous_certificate_id"))
