"""Typed, frozen configuration objects (keyword-only, unknown fields refused)."""

from __future__ import annotations

import datetime
import functools
import os
import re
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Final, Self

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from pydantic import Field, field_validator, model_validator

from iotfleet._files import write_private
from iotfleet._model import FrozenModel as _Frozen
from iotfleet._model import validation_problems
from iotfleet.errors import CertificateError, ConfigError
from iotfleet.topics import validate_thing_name

__all__ = [
    "LOCAL_FAST",
    "Durability",
    "Endpoint",
    "Identity",
    "OutboxPolicy",
    "OverflowPolicy",
    "PublishLimits",
    "ReconnectPolicy",
    "validate_region",
    "validation_problems",
]

_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


def validate_region(name: str) -> str:
    """Return ``name`` if it is a usable region name, else raise :class:`ConfigError`."""
    if not isinstance(name, str) or not _REGION.fullmatch(name):
        raise ConfigError(f"region name {name!r}: use 1-32 characters from a-z 0-9 -, e.g. eu-west-1")
    return name


class Endpoint(_Frozen):
    """One regional MQTT endpoint: AWS IoT's ``iot:Data-ATS`` host, or a local cloud region."""

    region: str
    host: str
    port: int = Field(default=8883, ge=1, le=65535)

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        return validate_region(value)  # a ConfigError is a ValueError: pydantic reports it as this field's

    @classmethod
    def parse(cls, text: str, region: str | None = None) -> Endpoint:
        """Parse ``host:port`` (or ``region=host:port``) as given on a command line."""
        name, sep, address = text.partition("=")
        if not sep:
            name, address = region or "", text
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"endpoint {text!r} is not host:port (e.g. localhost:8883 or eu-west-1=localhost:8883)")
        try:
            return cls(region=name or host.split(".")[0].lower() or "default", host=host, port=int(port))
        except ConfigError as exc:
            raise ConfigError(f"endpoint {text!r}: {exc}") from exc

    def __str__(self) -> str:
        return f"{self.region}={self.host}:{self.port}"


class Identity(_Frozen):
    """A device's X.509 identity on disk: its thing name, certificate, private key and the CA to trust."""

    thing_name: str
    cert_file: Path
    key_file: Path
    ca_file: Path
    certificate_id: str | None = None

    @field_validator("thing_name")
    @classmethod
    def _check_thing(cls, value: str) -> str:
        return validate_thing_name(value)

    @classmethod
    def from_pem(
        cls,
        thing_name: str,
        *,
        certificate: bytes | str,
        private_key: bytes | str,
        ca: bytes | str,
        directory: Path | None = None,
    ) -> Identity:
        """An identity from PEM bytes (e.g. from a secure element or a secrets store).

        Both transports load credentials from files, so the PEMs are written to ``directory`` (default: a
        new private temporary directory), the key and the directory readable by the owner only.
        """
        validate_thing_name(thing_name)
        directory = directory or Path(tempfile.mkdtemp(prefix=f"iotfleet-{thing_name}-"))
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = {"cert.pem": certificate, "key.pem": private_key, "ca.pem": ca}
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            if b"-----BEGIN" not in raw:
                raise ConfigError(f"{name.split('.')[0]} for {thing_name} is not PEM (no -----BEGIN line)")
            write_private(directory / name, raw)
        return cls(
            thing_name=thing_name,
            cert_file=directory / "cert.pem",
            key_file=directory / "key.pem",
            ca_file=directory / "ca.pem",
        )

    def check(self) -> Identity:
        """Load the certificate, the private key and the CA now; return ``self`` if they are usable.

        Raises :class:`CertificateError` naming the file and the problem: missing or unreadable, not PEM,
        an encrypted key, a key that is not the certificate's, an expired certificate, a CA file with no
        certificate. Both transports call it before their first TLS handshake with an identity, and the
        device client when it is entered; the result is kept until one of the files changes.
        """
        _check_identity(self.thing_name, *((path, _signature(path)) for path in self._files()))
        return self

    def _files(self) -> tuple[Path, Path, Path]:
        return (self.cert_file, self.key_file, self.ca_file)


def _signature(path: Path) -> tuple[int, int] | None:
    """What tells a changed file apart: modification time and size (None: cannot stat it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=65536)  # a simulator worker checks each of its identities on entry and in the transport
def _check_identity(
    thing: str,
    cert: tuple[Path, tuple[int, int] | None],
    key: tuple[Path, tuple[int, int] | None],
    ca: tuple[Path, tuple[int, int] | None],
) -> None:
    """:meth:`Identity.check`, once per content of the three files (a failure is not kept: it raises)."""
    certificate = _certificates(thing, cert[0], "certificate")[0]
    private_key = _private_key(thing, key[0])
    _certificates(thing, ca[0], "CA certificate")
    if certificate.public_key() != private_key.public_key():
        raise CertificateError(
            f"{key[0]}: not the private key of {cert[0]} (thing {thing}): their public keys differ; "
            "use the key the certificate was issued for"
        )
    expires = certificate.not_valid_after_utc
    if expires < datetime.datetime.now(datetime.UTC):
        raise CertificateError(
            f"{cert[0]}: the certificate of {thing} expired on {expires:%Y-%m-%d %H:%M} UTC; get a new one"
        )


def _read(thing: str, path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read the {what} of {thing}: {exc.strerror or exc}") from exc


def _certificates(thing: str, path: Path, what: str) -> list[x509.Certificate]:
    data = _read(thing, path, what)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        hint = " (it holds a private key: are the certificate and key files swapped?)" if b"PRIVATE KEY" in data else ""
        raise CertificateError(f"{path}: the {what} of {thing} is not a PEM certificate{hint}") from exc


def _private_key(thing: str, path: Path) -> PrivateKeyTypes:
    data = _read(thing, path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError as exc:  # encrypted
        raise CertificateError(f"{path}: the private key of {thing} is encrypted; give it unencrypted (0600)") from exc
    except ValueError as exc:
        raise CertificateError(f"{path}: the private key of {thing} is not a PEM private key ({exc})") from exc


class ReconnectPolicy(_Frozen):
    """How a device keeps a connection: liveness, backoff, failover and failback.

    Per endpoint, reconnects back off exponentially with full jitter between ``min_backoff_s`` and
    ``max_backoff_s``. A session counts as a connection once it has lasted ``stable_after_s``: that resets
    the backoff and the failure count. A session that ends sooner (a revoked certificate, an eviction, a
    broker that accepts and then drops) is a failed attempt. The device moves to the next endpoint after
    ``failover_after_failures`` consecutive failed attempts, or ``failover_after_s`` without a stable
    connection, whichever comes first. Connected anywhere but the first
    endpoint, it probes the first every ``failback_probe_s`` and moves back when a probe connects.
    A session is declared dead when a PINGRESP or a PUBACK is ``ping_timeout_s`` late.
    With ``standby``, a second session is kept open to the next endpoint of another region, with the
    same client id (regions are separate brokers), and takes over the moment the live one ends: a
    failover with no handshake and no backoff, and a failback once it is open on the first endpoint.
    Defaults follow the AWS CRT (keepalive 1200 s, ping timeout 30 s, backoff 1-120 s); tests against
    the local cloud use seconds.
    """

    keepalive_s: int = Field(default=1200, ge=1, le=65535)
    ping_timeout_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    min_backoff_s: float = Field(default=1.0, gt=0)
    max_backoff_s: float = Field(default=120.0, gt=0)
    stable_after_s: float = Field(default=5.0, ge=0)
    failover_after_failures: int = Field(default=3, ge=1)
    failover_after_s: float = Field(default=20.0, gt=0)
    failback: bool = True
    failback_probe_s: float = Field(default=30.0, gt=0)
    standby: bool = False

    @model_validator(mode="after")
    def _check_backoff(self) -> Self:
        if self.max_backoff_s < self.min_backoff_s:
            raise ValueError(f"max_backoff_s ({self.max_backoff_s}) must be >= min_backoff_s ({self.min_backoff_s})")
        if self.stable_after_s >= self.failover_after_s:
            raise ValueError(
                f"stable_after_s ({self.stable_after_s}) must be less than failover_after_s ({self.failover_after_s}):"
                " a session has to be able to prove stable before the time rule moves the device on;"
                " lower stable_after_s"
            )
        return self


LOCAL_FAST: Final = ReconnectPolicy(
    keepalive_s=2,
    ping_timeout_s=1.0,
    connect_timeout_s=1.0,
    min_backoff_s=0.05,
    max_backoff_s=0.5,
    failover_after_failures=2,
    failover_after_s=3.0,
    failback_probe_s=0.5,
    stable_after_s=1.0,
)
"""Reconnect timings for tests against the local cloud: a dead or frozen region is noticed and left within
seconds, not IoT Core's minutes. A session proves stable after 1 s, well before the 3 s time rule fails
over, so a hiccup on the secondary right after a failover does not send the device back to the dead region.
Exported by :mod:`iotfleet.testing`; for other numbers use ``LOCAL_FAST.model_copy(update={...})``."""


class OverflowPolicy(StrEnum):
    """What a full outbox does with one more message."""

    DROP_OLDEST = "drop-oldest"
    DROP_NEWEST = "drop-newest"
    REJECT = "reject"


class Durability(StrEnum):
    """How hard the SQLite outbox tries: survive a killed process, or a lost machine."""

    PROCESS = "process"  # WAL, synchronous=NORMAL: survives kill -9, not power loss
    POWER = "power"  # WAL, synchronous=FULL: every commit fsynced


class OutboxPolicy(_Frozen):
    """The store-and-forward outbox: where it lives, how big it may grow, what happens when full.

    ``path=None`` keeps it in memory (the simulator); a path makes it a SQLite WAL file that survives a
    kill -9 of the device process. ``envelope=True`` also writes the message id and sequence number
    into JSON object payloads (key ``_iotfleet``), for consumers that cannot read MQTT5 user properties.
    """

    path: Path | None = None
    max_messages: int = Field(default=100_000, ge=1)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    overflow: OverflowPolicy = OverflowPolicy.REJECT
    durability: Durability = Durability.PROCESS
    envelope: bool = False


class PublishLimits(_Frozen):
    """Client-side limits, IoT Core's per-connection quotas by default (IOT_CORE.md sections 3-4).

    Excess publishes wait rather than being dropped by the broker. ``enabled=False`` lifts the rate
    limits (local stress tests); the payload limit always holds.
    """

    enabled: bool = True
    max_publishes_per_s: float = Field(default=100.0, gt=0)
    max_bytes_per_s: float = Field(default=512 * 1024, gt=0)
    max_payload_bytes: int = Field(default=128 * 1024, ge=1, le=128 * 1024)
    max_inflight: int = Field(default=100, ge=1, le=65535)
