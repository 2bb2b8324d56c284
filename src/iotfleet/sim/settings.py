"""``iotfleet simulate``'s settings: one frozen model, validated before anything starts.

Precedence, for every value: the model's defaults, then the fleet file (``--config fleet.toml``), then
the flags actually given (on the command line or as ``IOTFLEET_SIMULATE_*``). Every problem is reported
at once, each as ``<file>: <section>.<key>: <what is wrong>`` (or ``--flag: <what is wrong>``), so a bad
file fails in a second, never after the run.

The file's sections are ``[fleet]`` (:class:`~iotfleet.sim.fleet.FleetShape`), ``[placement]``
(:class:`~iotfleet.sim.fleet.Placement`), ``[workload]``,
``[thresholds]`` and ``[target]``; the ``run`` section holds what only flags set.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from iotfleet.cloud.broker import Quotas
from iotfleet.cloud.local import DEFAULT_REGIONS
from iotfleet.cloud.rules import Rule
from iotfleet.config import Endpoint, Identity, PublishLimits, ReconnectPolicy
from iotfleet.errors import ConfigError
from iotfleet.sim.fleet import FleetShape, Placement
from iotfleet.sim.ota import OtaSpec
from iotfleet.sim.shared_cloud import SharedCloud
from iotfleet.sim.simulate import (
    LOCAL_RECONNECT,
    ChaosEvent,
    ProvisionMode,
    SimConfig,
    Target,
    parse_chaos,
    parse_duration,
)

__all__ = ["FILE_SECTIONS", "RunOptions", "SimSettings", "Target", "Thresholds", "Workload", "load_settings"]

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _seconds(value: Any, what: str) -> float | None:
    """A duration as seconds: a number, or text such as ``20s``, ``5m``, ``1h``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what} is seconds or a duration such as 20s, 5m, 1h")
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds")
    return float(value)


class Workload(BaseModel):
    """``[workload]``: how fast and how long, and the operator's desired-state changes."""

    model_config = _STRICT

    speed: float = Field(default=1.0, gt=0)
    duration: float | None = None  # seconds; None: until Ctrl-C
    operator_fraction: float = Field(default=0.05, ge=0, le=1)
    operator_every: float = 300.0  # simulated seconds
    command_every: float | None = 3600.0  # simulated seconds between commands to one device; None: none
    reboot_share: float = Field(default=0.1, ge=0, le=1)  # of the commands that are reboots
    reboot_offline: float = 30.0  # simulated seconds a rebooting device stays offline
    https_fraction: float = Field(default=0.0, ge=0, le=1)  # of the devices publish over HTTPS only
    ota: str | None = Field(default=None, min_length=1, max_length=64)  # the firmware version to roll out
    rollout_per_minute: int = Field(default=1000, ge=1, le=1000)
    abort_failure_pct: float | None = Field(default=None, gt=0, le=100)
    ota_failure_rate: float = Field(default=0.0, ge=0, le=1)
    ota_size: int = Field(default=256 * 1024, ge=1, le=16 << 20)  # bytes of the firmware image

    @field_validator("duration", "operator_every", "reboot_offline", mode="before")
    @classmethod
    def _duration(cls, value: Any, info: ValidationInfo) -> float | None:
        return _seconds(value, str(info.field_name))

    @field_validator("command_every", mode="before")
    @classmethod
    def _command_every(cls, value: Any) -> float | None:
        return None if value in ("off", 0) else _seconds(value, "command_every")


class Thresholds(BaseModel):
    """``[thresholds]``: what makes the run exit 1."""

    model_config = _STRICT

    max_lost: int = Field(default=0, ge=0)
    max_error_rate: float | None = Field(default=None, ge=0)


class TargetSection(BaseModel):
    """``[target]``: real endpoints to drive instead of the local cloud; files relative to the fleet file."""

    model_config = _STRICT

    endpoints: list[str] = Field(min_length=1)
    ca: str
    claim_cert: str
    claim_key: str
    template: str = Field(default="iotfleet-default", min_length=1)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                Endpoint.parse(text)
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("ca", "claim_cert", "claim_key")
    @classmethod
    def _exists(cls, value: str, info: ValidationInfo) -> str:
        base = (info.context or {}).get("base", Path())
        path = base / value
        if not path.is_file():
            raise ValueError(f"file {path} does not exist" if not path.exists() else f"{path} is not a file")
        return value

    def target(self, base: Path) -> Target:
        ca = base / self.ca
        claim = Identity(
            thing_name="claim", cert_file=base / self.claim_cert, key_file=base / self.claim_key, ca_file=ca
        )
        return Target([Endpoint.parse(e) for e in self.endpoints], ca, claim, self.template)


class RunOptions(BaseModel):
    """What only flags set (the fleet file has no section for it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    workers: int | None = Field(default=None, ge=1)
    transport: Literal["crt", "paho"] = "crt"
    provision: ProvisionMode | None = None  # direct; claim against a [target] or a shared cloud
    ramp_per_s: float = Field(default=500.0, gt=0)
    no_limits: bool = False
    no_quotas: bool = False
    basic_ingest: bool = False
    ingest_workers: int = Field(default=0, ge=0, le=64)  # the embedded cloud's ingest processes per region
    account_rate: float | None = Field(default=None, gt=0)
    regions: tuple[str, ...] = DEFAULT_REGIONS
    cloud: Path | None = None  # a running `cloud up`'s --json line, to drive instead of an embedded cloud
    start_at: float | None = Field(default=None, ge=0)  # epoch: the shards' start barrier
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # live Prometheus metrics
    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from other pods
    chaos: tuple[ChaosEvent, ...] = ()
    shard: tuple[int, int] = (0, 1)
    shadow: bool = True
    keepalive: int | None = Field(default=None, ge=1, le=1200)
    standby: bool = False  # each device keeps a standby session open to its next region
    workdir: Path | None = None
    report: Path | None = None

    @field_validator("chaos", mode="before")
    @classmethod
    def _chaos(cls, value: Any) -> Any:
        try:
            return tuple(parse_chaos(v) if isinstance(v, str) else v for v in value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None


FILE_SECTIONS = ("fleet", "workload", "thresholds", "target", "placement")
FILE_TABLE_ARRAYS = ("rules",)  # [[rules]]: name, topic (the FROM filter), action


class SimSettings(BaseModel):
    """Everything one ``iotfleet simulate`` run was asked to do, checked as a whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fleet: FleetShape = Field(default_factory=FleetShape)
    placement: Placement = Field(default_factory=Placement)
    workload: Workload = Field(default_factory=Workload)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    target: TargetSection | None = None
    run: RunOptions = Field(default_factory=RunOptions)
    rules: tuple[Rule, ...] = ()
    source: Path | None = None  # the fleet file, if any; [target] files are relative to it

    @field_validator("rules", mode="before")
    @classmethod
    def _rules(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise ValueError("[[rules]] must be an array of tables: name, topic, action")
        try:
            return tuple(v if isinstance(v, Rule) else Rule.from_dict(v) for v in value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    def _quotas(self) -> Quotas:
        """The embedded cloud's quotas: IoT Core's, none with --no-quotas, and without the per-connection
        publish rate with --no-limits (the devices would otherwise be refused what they were told to send)."""
        if self.run.no_quotas:
            return Quotas.none()
        return Quotas(publish_per_connection=0) if self.run.no_limits else Quotas()

    def sim_config(self) -> SimConfig:
        """The simulator's run configuration (checked: a bad combination raises :class:`ConfigError`)."""
        run, workload = self.run, self.workload
        target = None if self.target is None else self.target.target(self._base())
        cloud = None if run.cloud is None else SharedCloud.from_file(run.cloud)
        provision = run.provision or (ProvisionMode.CLAIM if cloud is not None else ProvisionMode.DIRECT)
        workers: dict[str, Any] = {} if run.workers is None else {"workers": run.workers}
        reconnect = None
        changes: dict[str, Any] = {}
        if run.keepalive is not None:
            changes["keepalive_s"] = run.keepalive
        if run.standby:
            changes["standby"] = True
        if changes:
            base = LOCAL_RECONNECT if target is None else ReconnectPolicy()
            reconnect = base.model_copy(update=changes)
        return SimConfig(
            shape=self.fleet,
            duration_s=workload.duration,
            speed=workload.speed,
            transport=run.transport,
            provision=ProvisionMode.CLAIM if target is not None else provision,
            ramp_per_s=run.ramp_per_s,
            limits=PublishLimits(enabled=False) if run.no_limits else PublishLimits(),
            reconnect=reconnect,
            regions=run.regions,
            placement=self.placement,
            workdir=run.workdir,
            shard=run.shard,
            chaos=run.chaos,
            target=target,
            shadow=run.shadow,
            operator_fraction=workload.operator_fraction,
            operator_every_s=workload.operator_every,
            command_every_s=workload.command_every,
            reboot_share=workload.reboot_share,
            reboot_offline_s=workload.reboot_offline,
            account_publish_rate=run.account_rate,
            quotas=self._quotas(),
            basic_ingest=run.basic_ingest,
            ingest_workers=run.ingest_workers,
            rules=self.rules,
            cloud=cloud,
            start_at=run.start_at,
            metrics_port=run.metrics_port,
            metrics_host=run.metrics_host,
            https_fraction=workload.https_fraction,
            ota=self._ota(),
            **workers,
        )

    def _ota(self) -> OtaSpec | None:
        workload = self.workload
        if workload.ota is None:
            return None
        return OtaSpec(
            workload.ota,
            rollout_per_minute=workload.rollout_per_minute,
            abort_failure_pct=workload.abort_failure_pct,
            failure_rate=workload.ota_failure_rate,
            size_bytes=workload.ota_size,
            reboot_s=workload.reboot_offline,
        )

    def _base(self) -> Path:
        return Path() if self.source is None else self.source.parent


def read_fleet_file(path: Path) -> dict[str, Any]:
    """The fleet file's TOML, its sections checked by name (their values by :func:`load_settings`)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the fleet file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    problems = []
    for name, section in data.items():
        if name in FILE_TABLE_ARRAYS:
            if not isinstance(section, list) or not all(isinstance(t, dict) for t in section):
                problems.append(f"{path}: {name}: must be [[{name}]] tables")
        elif name not in FILE_SECTIONS:
            problems.append(
                f"{path}: {name}: unknown section; use [fleet], [placement], [workload], [thresholds], [target], "
                "[[rules]]"
            )
        elif not isinstance(section, dict):
            problems.append(f"{path}: {name}: must be a [{name}] section of key = value lines")
    if problems:
        raise ConfigError("; ".join(problems))
    return data


def load_settings(
    file: Path | None = None,
    given: Mapping[str, Mapping[str, Any]] | None = None,
    run: Mapping[str, Any] | None = None,
) -> SimSettings:
    """Defaults, then ``file``'s sections, then ``given`` (flags actually given, by section and key).

    ``run`` holds the flag-only options. Raises one :class:`ConfigError` listing every problem.
    """
    data: dict[str, Any] = {}
    if file is not None:
        data = {
            name: list(section) if name in FILE_TABLE_ARRAYS else dict(section)
            for name, section in read_fleet_file(file).items()
        }
    from_flags: set[tuple[str, str]] = set()
    for section, values in (given or {}).items():
        for key, value in values.items():
            data.setdefault(section, {})[key] = value
            from_flags.add((section, key))
    document: dict[str, Any] = {**data, "run": dict(run or {}), "source": file}
    try:
        return SimSettings.model_validate(document, context={"base": file.parent if file else Path()})
    except ValidationError as exc:
        raise ConfigError("; ".join(_problem(e, file, from_flags) for e in exc.errors())) from None


def _problem(error: Any, file: Path | None, from_flags: set[tuple[str, str]]) -> str:
    loc = [str(part) for part in error["loc"]]
    section, key = [*loc, "", ""][:2]
    if error["type"] == "extra_forbidden":
        known = _known(section)
        what = f"unknown key; known: {', '.join(known)}" if known else "unknown key"
    else:
        msg = str(error["msg"]).removeprefix("Value error, ")
        what = msg[:1].lower() + msg[1:]
        if error["type"] not in ("missing", "value_error"):
            what += f" (got {error['input']!r})"
    if section == "run" or (section, key) in from_flags or file is None:
        return f"--{key.replace('_', '-')}: {what}"
    return f"{file}: {'.'.join(loc)}: {what}"


def _known(section: str) -> list[str]:
    field = SimSettings.model_fields.get(section)
    model = getattr(field, "annotation", None)
    fields = getattr(model, "model_fields", None)
    if fields is None and section == "target":
        fields = TargetSection.model_fields
    return sorted(fields or ())
