"""IdentityStore: a provisioned device's identity in one directory.

Layout: ``cert.pem``, ``key.pem`` (0600), ``ca.pem`` and ``identity.json`` (thing name, certificate id,
the template's ``deviceConfiguration`` and the endpoints to use). The directory is created 0700. A
device that finds a complete store skips provisioning; ``identity.json`` is written last, so a store
interrupted midway is not mistaken for a complete one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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

    def load(self) -> StoredIdentity:
        """The stored identity; :class:`ConfigError` naming the file when it is missing or damaged."""
        try:
            meta = json.loads(self._meta.read_text())
            identity = Identity(
                thing_name=meta["thing_name"],
                cert_file=self.directory / "cert.pem",
                key_file=self.directory / "key.pem",
                ca_file=self.directory / "ca.pem",
                certificate_id=meta.get("certificate_id"),
            )
            endpoints = [Endpoint(**e) for e in meta.get("endpoints", [])]
        except FileNotFoundError:
            raise ConfigError(f"no identity in {self.directory}: provision the device first") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self._meta} is damaged ({exc}): delete {self.directory} and provision the device again"
            ) from exc
        for path in (identity.cert_file, identity.key_file, identity.ca_file):
            if not path.exists():
                raise ConfigError(f"{path} is missing: delete {self.directory} and provision the device again")
        return StoredIdentity(identity, dict(meta.get("device_configuration", {})), endpoints)
