"""A running ``iotfleet cloud up`` that simulator shards share: read from its ``--json`` line.

``iotfleet cloud up --json > cloud.json`` prints one line with each region's endpoint, the CA and the
claim credentials (inline, so the file is all a shard on another machine needs) and the control API's
address; ``iotfleet simulate --cloud cloud.json`` drives that cloud instead of starting its own. The
devices get their identities by fleet provisioning with the claim certificate, as a real fleet does,
and keep them in the shard's ``--workdir`` (a restarted pod with the same index and workdir reuses
them). Chaos goes through the control API; ingest figures come back through it, for this shard's sites
only, so shard reports merge exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotfleet._files import write_private
from iotfleet.cloud.control import ControlClient
from iotfleet.config import Endpoint, Identity
from iotfleet.errors import ConfigError

__all__ = ["SharedCloud"]


@dataclass(frozen=True)
class SharedCloud:
    """What a shard needs of a running cloud: endpoints, trust, claim, template and control address."""

    endpoints: tuple[Endpoint, ...]
    ca_pem: str
    claim_cert_pem: str
    claim_key_pem: str
    template: str
    control: Path | str  # the Unix socket's path, or "host:port" when the cloud serves TCP
    source: str  # where it was read from, for messages
    https_endpoints: tuple[Endpoint, ...] = ()  # each region's HTTPS publish endpoint, where it has one

    @classmethod
    def from_file(cls, path: Path) -> SharedCloud:
        """Read ``cloud up --json``'s line from ``path``; a :class:`ConfigError` says what is missing."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"--cloud {path}: cannot read it: {exc.strerror or exc}") from exc
        line = next((ln for ln in text.splitlines() if ln.strip().startswith("{")), "")
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise ConfigError(
                f"--cloud {path}: no JSON line in it; write it with 'iotfleet cloud up --json > {path}'"
            ) from exc
        return cls.from_info(data, str(path))

    @classmethod
    def from_info(cls, data: Any, source: str) -> SharedCloud:
        """From the parsed JSON line (:meth:`LocalCloud.info` plus ``control``)."""
        where = f"--cloud {source}"
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected cloud up's JSON object")
        missing = [
            k for k in ("regions", "ca_pem", "claim_cert_pem", "claim_key_pem", "template", "control") if k not in data
        ]
        if missing:
            raise ConfigError(
                f"{where}: lacks {', '.join(missing)}: write it with this version's 'iotfleet cloud up --json'"
            )
        try:
            endpoints = tuple(Endpoint(region=r["name"], host=r["host"], port=int(r["port"])) for r in data["regions"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: regions: each needs name, host and port ({exc!r})") from exc
        if not endpoints:
            raise ConfigError(f"{where}: names no region")
        https = tuple(
            Endpoint(region=e.region, host=e.host, port=int(r["https_port"]))
            for e, r in zip(endpoints, data["regions"], strict=True)
            if isinstance(r.get("https_port"), int)
        )
        control = data["control"] if isinstance(data["control"], dict) else {}
        tcp, unix = control.get("tcp"), control.get("unix")
        if isinstance(tcp, str) and tcp:
            address: Path | str = tcp  # TCP when the cloud serves it: it works from other machines too
        elif isinstance(unix, str) and unix:
            address = Path(unix)
        else:
            raise ConfigError(f"{where}: control: no address; start the cloud with --control HOST:PORT")
        return cls(
            endpoints,
            str(data["ca_pem"]),
            str(data["claim_cert_pem"]),
            str(data["claim_key_pem"]),
            str(data["template"]),
            address,
            source,
            https,
        )

    @property
    def regions(self) -> list[str]:
        return [e.region for e in self.endpoints]

    def client(self) -> ControlClient:
        """The control API: TCP when the cloud serves it, else its Unix socket (the same machine)."""
        return ControlClient(self.control, name=f"the cloud of {self.source}")

    def write_files(self, directory: Path) -> tuple[Path, Identity]:
        """Write the CA and the claim credentials into ``directory``; return the CA file and the claim."""
        ca = directory / "ca.pem"
        ca.parent.mkdir(parents=True, exist_ok=True)
        ca.write_text(self.ca_pem)
        write_private(directory / "claim.pem", self.claim_cert_pem.encode())
        write_private(directory / "claim.key", self.claim_key_pem.encode())
        claim = Identity(
            thing_name="claim", cert_file=directory / "claim.pem", key_file=directory / "claim.key", ca_file=ca
        )
        return ca, claim
