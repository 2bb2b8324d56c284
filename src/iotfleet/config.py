"""Typed, frozen configuration objects (keyword-only, unknown fields refused)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from iotfleet.errors import ConfigError
from iotfleet.topics import validate_thing_name

__all__ = ["Endpoint", "Identity", "validate_region"]

_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


def validate_region(name: str) -> str:
    """Return ``name`` if it is a usable region name, else raise :class:`ConfigError`."""
    if not isinstance(name, str) or not _REGION.fullmatch(name):
        raise ConfigError(f"region name {name!r}: use 1-32 characters from a-z 0-9 -, e.g. eu-west-1")
    return name


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Endpoint(_Frozen):
    """One regional MQTT endpoint: AWS IoT's ``iot:Data-ATS`` host, or a local cloud region."""

    region: str
    host: str
    port: int = Field(default=8883, ge=1, le=65535)

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        try:
            return validate_region(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from exc

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
        except ValueError as exc:
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
