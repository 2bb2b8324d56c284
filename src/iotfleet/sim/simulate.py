"""``iotfleet simulate``: one :class:`Simulation` sets up the target, runs the workers and reports.

The default target is an embedded two-region local cloud with its ingestion pipeline, started and
stopped by the run. ``--config fleet.toml`` with a ``[target]`` section names real endpoints instead
(the CA, claim credentials and template to provision with); ingest figures are then unavailable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import random
import re
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from iotfleet.cloud.broker import Quotas
from iotfleet.cloud.control import CHAOS_ACTIONS, Action
from iotfleet.cloud.local import DEFAULT_REGIONS, DEVICE_POLICY, HTTPS_TEMPLATE, LocalCloud, ThingSpec
from iotfleet.cloud.rules import Rule
from iotfleet.config import Endpoint, Identity, PublishLimits, ReconnectPolicy
from iotfleet.errors import ConfigError
from iotfleet.metrics import SeqSet
from iotfleet.sim.access import CloudAccess, LocalAccess
from iotfleet.sim.commands import Commander
from iotfleet.sim.fleet import FleetShape, Placement, SimDevice, build_fleet, home_regions, shard_of
from iotfleet.sim.operator import Operator
from iotfleet.sim.ota import OtaDirector, OtaSpec
from iotfleet.sim.report import Report
from iotfleet.sim.runner import ClaimSettings, WorkerMetrics, WorkerSpec, default_workers, run_workers
from iotfleet.sim.shared_cloud import SharedCloud
from iotfleet.topics import INGEST_RULE

__all__ = [
    "LOCAL_RECONNECT",
    "ChaosEvent",
    "Progress",
    "ProvisionMode",
    "SimConfig",
    "Simulation",
    "Target",
    "parse_chaos",
    "parse_duration",
]

log = logging.getLogger(__name__)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# Local-cloud timings: a dead or frozen region is noticed within seconds, not IoT Core's minutes. A
# publishing device notices a frozen region when a PUBACK is 2 s late; an idle one after keepalive + 2 s.
# Keepalive 30 s, not 5: a PINGREQ per device every 5 s cost more CPU than the luminaires' telemetry.
LOCAL_RECONNECT = ReconnectPolicy(
    keepalive_s=30,
    ping_timeout_s=2.0,
    connect_timeout_s=2.0,
    min_backoff_s=0.1,
    max_backoff_s=2.0,
    failover_after_failures=2,
    failover_after_s=3.0,
    failback_probe_s=5.0,
    stable_after_s=2.0,  # below failover_after_s, so a hiccup right after a failover does not bounce back
)
OPERATOR_QUIET_S = 3.0
SETTLE_CAP = 30  # an ingest still storing is waited for up to 30 times settle_s
AWS_ACCOUNT_PUBLISH_RATE = 20_000.0  # inbound publishes/s per account, the larger Regions' default quota


def parse_duration(text: str) -> float:
    """``20s``, ``5m``, ``1h``, ``1.5h`` or plain seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"duration {text!r} is not a positive number of seconds or a unit (20s, 5m, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


class ProvisionMode(StrEnum):
    """Where the simulated devices' identities come from."""

    DIRECT = "direct"  # the local cloud issues each a certificate
    CLAIM = "claim"  # each provisions itself with the claim certificate (fleet provisioning)


@dataclass(frozen=True, slots=True)
class ChaosEvent:
    """``kill:eu-west-1@30s``: at 30 s into the run, kill region eu-west-1."""

    action: Action  # one of CHAOS_ACTIONS
    region: str
    at_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "region": self.region, "at_s": self.at_s}


def parse_chaos(text: str) -> ChaosEvent:
    action, sep, rest = text.partition(":")
    region, at, when = rest.partition("@")
    if not sep or not at or action not in CHAOS_ACTIONS or not region:
        raise ConfigError(
            f"chaos event {text!r} is not ACTION:REGION@TIME with ACTION kill, blackhole or restore "
            "(e.g. kill:eu-west-1@30s)"
        )
    return ChaosEvent(Action(action), region, parse_duration(when) if when.strip() not in ("0", "0s") else 0.0)


@dataclass(frozen=True)
class Target:
    """Real endpoints to drive instead of the local cloud."""

    endpoints: Sequence[Endpoint]
    ca_file: Path
    claim: Identity
    template: str


@dataclass(frozen=True)
class SimConfig:
    """Everything one simulation is asked to do, checked when it is made (:class:`ConfigError`)."""

    shape: FleetShape = field(default_factory=FleetShape)
    duration_s: float | None = None
    speed: float = 1.0
    workers: int = field(default_factory=default_workers)
    transport: str = "crt"
    provision: ProvisionMode = ProvisionMode.DIRECT
    ramp_per_s: float = 500.0
    limits: PublishLimits = field(default_factory=PublishLimits)
    reconnect: ReconnectPolicy | None = None
    regions: Sequence[str] = DEFAULT_REGIONS
    placement: Placement = field(default_factory=Placement)  # each site's home region (default: spread evenly)
    workdir: Path | None = None
    shard: tuple[int, int] = (0, 1)
    chaos: Sequence[ChaosEvent] = ()
    target: Target | None = None
    drain_s: float = 10.0
    settle_s: float = 10.0
    shadow: bool = True  # devices sync their classic shadow
    operator_fraction: float = 0.05  # of the devices get a new desired state every `operator_every_s`
    operator_every_s: float = 300.0  # simulated seconds
    operator_on_fault: float = 0.0  # fraction of the devices given a new desired state right after each fault
    command_every_s: float | None = 3600.0  # simulated seconds between commands to one device; None: none
    reboot_share: float = 0.1  # of the commands that are reboots
    reboot_offline_s: float = 30.0  # simulated seconds a rebooting device stays offline
    # account-wide publishes per second, split over the workers; None: unlimited on the local cloud,
    # IoT Core's default inbound quota (IOT_CORE.md section 4) against a real target
    account_publish_rate: float | None = None
    # the embedded local cloud's rate quotas (IoT Core's by default); a real target has its own
    quotas: Quotas = field(default_factory=Quotas)
    basic_ingest: bool = False  # devices send their data to the ingest rule by Basic Ingest
    ingest_workers: int = 0  # the embedded cloud's ingest processes per region (0: in this process)
    rules: Sequence[Rule] = ()  # the embedded cloud's topic rules besides the ingest one
    cloud: SharedCloud | None = None  # a running `cloud up` to drive instead of an embedded one
    start_at: float | None = None  # epoch when every shard's simulated time starts (a start barrier)
    metrics_port: int | None = None  # serve live Prometheus metrics here (0: any free port)
    metrics_host: str = "0.0.0.0"  # noqa: S104 - Prometheus scrapes the pod from elsewhere
    https_fraction: float = 0.0  # of the devices publish their data over HTTPS only (constrained devices)
    ota: OtaSpec | None = None  # a fleet-wide firmware rollout over IoT Jobs

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ConfigError("--speed must be greater than 0")
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if self.provision not in tuple(ProvisionMode):
            raise ConfigError("--provision is direct or claim")
        if self.target is not None and self.provision == "direct":
            raise ConfigError(
                "a real target needs --provision claim: only the local cloud can issue identities directly"
            )
        if self.target is not None and self.chaos:
            raise ConfigError("--chaos works against the local cloud only")
        if self.cloud is not None and self.target is not None:
            raise ConfigError("--cloud and a [target] are two targets: name one")
        if self.cloud is not None and self.provision == ProvisionMode.DIRECT:
            raise ConfigError("a shared cloud (--cloud) needs --provision claim: its devices provision themselves")
        if self.account_publish_rate is not None and self.account_publish_rate <= 0:
            raise ConfigError("--account-rate must be a positive number of messages per second")
        for event in self.chaos:
            if event.region not in self.region_names:
                raise ConfigError(
                    f"chaos event names region {event.region!r}; the regions are {list(self.region_names)}"
                )
        if self.target is None:
            self.placement.check(self.region_names)
        self._check_operator()
        self._check_local_only()

    def _check_operator(self) -> None:
        """The operator's settings: its desired-state rounds and its commands."""
        if not 0 <= self.operator_fraction <= 1:
            raise ConfigError("--operator-fraction is a fraction of the devices, from 0 to 1")
        if self.operator_every_s <= 0:
            raise ConfigError("--operator-every must be a positive duration")
        if self.command_every_s is not None and self.command_every_s <= 0:
            raise ConfigError("--command-every must be a positive duration, or 'off'")
        if not 0 <= self.reboot_share <= 1 or self.reboot_offline_s < 0:
            raise ConfigError("--reboot-share is a fraction from 0 to 1, and --reboot-offline a duration >= 0")

    def _check_local_only(self) -> None:
        """What only a local cloud (embedded or shared) serves: HTTPS devices' policies, firmware objects."""
        if not 0 <= self.https_fraction <= 1:
            raise ConfigError("--https-fraction is a fraction of the devices, from 0 to 1")
        if self.https_fraction and self.target is not None:
            raise ConfigError(
                "--https-fraction works against the local cloud (embedded or --cloud): a real target needs "
                "a provisioning template that gives such devices an HTTPS policy"
            )
        if self.ingest_workers and not self.embedded:
            raise ConfigError(
                "--ingest-workers sets the embedded cloud's ingest: give it to 'iotfleet cloud up --ingest-workers' "
                "for a shared cloud (a real target has its own ingestion)"
            )
        if self.ota is not None and self.target is not None:
            raise ConfigError(
                "--ota works against the local cloud (embedded or --cloud): it serves the firmware and the jobs"
            )

    @property
    def region_names(self) -> list[str]:
        """The regions the devices connect to: the shared cloud's, the target's or ``regions``."""
        if self.cloud is not None:
            return self.cloud.regions
        if self.target is not None:
            return list(dict.fromkeys(e.region for e in self.target.endpoints))
        return list(self.regions)

    @property
    def embedded(self) -> bool:
        """Whether the run starts its own local cloud (no real target, no shared cloud)."""
        return self.target is None and self.cloud is None

    @property
    def shards(self) -> int:
        return self.shard[1]

    @property
    def commands(self) -> bool:
        """Whether the operator sends commands (it can through a local cloud, embedded or shared)."""
        return self.command_every_s is not None and self.target is None

    def publish_rate(self) -> float | None:
        """The account-wide publish rate in force: the option, else IoT Core's quota for a real target."""
        if self.account_publish_rate is not None:
            return self.account_publish_rate
        return AWS_ACCOUNT_PUBLISH_RATE if self.target is not None else None


@dataclass
class Progress:
    """The live figures the parent holds: each worker's last snapshot, and chaos events done."""

    snapshots: dict[int, dict[str, Any]] = field(default_factory=dict)
    chaos_done: list[dict[str, Any]] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)  # regions killed or blackholed and not yet restored
    started: float = field(default_factory=time.monotonic)
    metrics_url: str | None = None  # where the live Prometheus metrics are served, if they are

    def total(self, key: str) -> float:
        return float(sum(s.get(key, 0) for s in self.snapshots.values()))

    def by_region(self, key: str = "by_region") -> dict[str, int]:
        """A per-region figure of the snapshots, summed over the workers: connected devices by default,
        ``acked_by_region`` for the publishes each region acknowledged."""
        regions: dict[str, int] = {}
        for snapshot in self.snapshots.values():
            for region, n in snapshot.get(key, {}).items():
                regions[region] = regions.get(region, 0) + n
        return regions


def _split(devices: Sequence[SimDevice], workers: int) -> list[list[SimDevice]]:
    """Whole sites per worker, balanced by device count."""
    by_site: dict[int, list[SimDevice]] = {}
    for device in devices:
        by_site.setdefault(device.site_index, []).append(device)
    buckets: list[list[SimDevice]] = [[] for _ in range(min(workers, max(1, len(by_site))))]
    for site in sorted(by_site.values(), key=len, reverse=True):
        min(buckets, key=len).extend(site)
    return [b for b in buckets if b]


class _Director:
    """What the parent does while the workers run: the chaos schedule, the operator's rounds and commands.

    Against a shared cloud, only shard 0 directs (through the control API), for the whole fleet: one
    fault, one operator, one stream of commands, not one per shard. Otherwise each shard directs its
    own cloud and devices."""

    def __init__(
        self,
        config: SimConfig,
        reached: Reached,
        devices: Sequence[SimDevice],
        fleet: Sequence[SimDevice],
        progress: Progress,
    ) -> None:
        self.config = config
        self.chaos = reached.chaos
        self.progress = progress
        directs = config.cloud is None or config.shard[0] == 0
        access = reached.access if directs else None
        # the operator's shadow changes and commands go to the devices that hold an MQTT connection
        targets = [d for d in (fleet if config.cloud is not None else devices) if not d.https]
        self.pending = sorted(config.chaos, key=lambda e: e.at_s) if reached.chaos is not None and directs else []
        self.operator = None
        if access is not None and config.shadow:
            self.operator = Operator(
                access,
                config.region_names,
                targets,
                fraction=config.operator_fraction,
                every_s=config.operator_every_s,
                speed=config.speed,
                seed=config.shape.seed,
            )
        self.commander = None
        self.devices = len(devices)  # commands start once this shard's devices are all connected
        if access is not None and config.commands and config.command_every_s is not None:
            self.commander = Commander(
                access,
                config.region_names,
                targets,
                every_s=config.command_every_s,
                reboot_share=config.reboot_share,
                reboot_offline_s=config.reboot_offline_s,
                speed=config.speed,
                seed=config.shape.seed,
            )
        self.ota = None
        if access is not None and config.ota is not None:
            self.ota = OtaDirector(access, config.region_names, targets, config.ota)
        self.fleet_up_at: float | None = None  # run time when this shard's devices were first all connected
        # no desired change nor command in the last seconds of a timed run: devices need a moment to act
        self.operator_until = None if config.duration_s is None else config.duration_s - OPERATOR_QUIET_S

    def tick(self) -> None:
        progress, operator = self.progress, self.operator
        elapsed = time.monotonic() - progress.started
        while self.pending and self.pending[0].at_s <= elapsed and self.chaos is not None:
            event = self.pending.pop(0)
            self.chaos(event.action, event.region)
            if event.action is Action.RESTORE:
                progress.failed.discard(event.region)
            else:
                progress.failed.add(event.region)
            progress.chaos_done.append({**event.to_dict(), "done_at_s": round(elapsed, 3), "epoch": time.time()})
            if operator is not None and event.action is not Action.RESTORE and self.config.operator_on_fault > 0:
                operator.change(self.config.operator_on_fault, progress.failed)
        if operator is not None:
            operator.tick(elapsed, progress.failed, until_s=self.operator_until)
        # commands and the rollout start once the whole fleet has connected: sent before, they'd find nobody
        if self.fleet_up_at is None and progress.total("connected") >= self.devices:
            self.fleet_up_at = elapsed
        if self.commander is not None and self.fleet_up_at is not None:
            until = None if self.operator_until is None else self.operator_until - self.fleet_up_at
            self.commander.tick(elapsed - self.fleet_up_at, progress.failed, until_s=until)
        if self.ota is not None and self.fleet_up_at is not None:
            if self.ota.job is None:
                self.ota.start()
            self.ota.tick()


@dataclass(frozen=True)
class Reached:
    """What the devices connect to and trust, how they get identities, the embedded local cloud if it
    is one, and how to inject faults and read the ingest where the run can (a local or shared cloud)."""

    endpoints: Sequence[Endpoint]
    ca_file: Path
    claim: ClaimSettings
    identity_dir: Path
    cloud: LocalCloud | None
    chaos: Callable[[Action, str], object] | None = None  # apply a chaos action to a region
    access: CloudAccess | None = None  # the operator's: shadows and commands
    # each region's ingest figures (of these sites, and with the cloud's own figures if the bool)
    ingest: Callable[[Collection[str] | None, bool], list[dict[str, Any]]] | None = None
    https_endpoints: Sequence[Endpoint] = ()  # each region's HTTPS publish endpoint


class Simulation:
    """One run of the fleet, from one frozen :class:`SimConfig`: the composition root that the CLI, the
    drill, the bench scripts and the tests all use, like locust's ``Environment``.

    ``devices`` is this shard's part of the fleet, known before anything starts. :meth:`run` sets up the
    target (the embedded local cloud, or the real endpoints), splits the devices over worker processes,
    directs the chaos schedule and the operator while they run, waits for the ingest to settle and
    returns the report.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        homes = home_regions(config.shape, config.region_names, config.placement)
        self.fleet = [
            dataclasses.replace(d, home=homes[d.site_index], https=_over_https(d, config.https_fraction))
            for d in build_fleet(config.shape)
        ]
        self.devices = shard_of(self.fleet, *config.shard)
        if not self.devices:
            raise ConfigError(f"shard {config.shard[0]}/{config.shard[1]} holds no site of this fleet")

    def run(self, *, on_progress: Callable[[Progress], None] = lambda _p: None, stop: Any = None) -> dict[str, Any]:
        """Run the fleet and return the report. ``stop`` (a multiprocessing Event) ends it early (Ctrl-C)."""
        config = self.config
        stop = stop or multiprocessing.get_context("spawn").Event()
        with contextlib.ExitStack() as stack:
            workdir = config.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="iotfleet-sim-")))
            workdir.mkdir(parents=True, exist_ok=True)
            reached = self._reach(stack, workdir)
            specs = self.worker_specs(reached, start_at=_barrier(config.start_at, stop))
            progress = Progress()
            if config.metrics_port is not None:
                progress.metrics_url = self._serve_metrics(stack, progress, reached, config.metrics_port)
            director = _Director(config, reached, self.devices, self.fleet, progress)

            def tick() -> None:
                director.tick()
                on_progress(progress)

            def snapshot(index: int, body: dict[str, Any]) -> None:
                progress.snapshots[index] = body

            timeout = None
            if config.duration_s is not None:  # a generous bound: the run, its drain, and the connect ramp
                timeout = config.duration_s + config.drain_s + 300 + len(self.devices) / 50
            started = time.monotonic()
            metrics = run_workers(specs, stop, snapshot, tick, timeout)
            duration = time.monotonic() - started
            ingest, read_ingest = None, reached.ingest
            if read_ingest is not None:
                sites = None if config.shards == 1 else {f"{d.tenant}/{d.site}" for d in self.devices}
                whole = config.cloud is None or config.shard[0] == 0  # the cloud's own figures: once
                ingest = _settle(lambda: read_ingest(sites, whole), metrics, config.settle_s)
            shadow = None if director.operator is None else director.operator.reconcile(progress.failed)
            return Report.of_run(
                workers=metrics,
                ingest=ingest,
                operator=shadow,
                commands=None if director.commander is None else director.commander.figures(),
                ota=None if director.ota is None else director.ota.figures(),
                duration_s=duration,
                config=self.report_config(reached, len(specs)),
                chaos=progress.chaos_done,
            ).to_dict()

    def _serve_metrics(self, stack: contextlib.ExitStack, progress: Progress, reached: Reached, port: int) -> str:
        """Start the live Prometheus metrics (stopped with ``stack``); return their URL."""
        from iotfleet.sim.prometheus import MetricsServer, RunMetrics  # noqa: PLC0415 - only when asked for

        config, cloud = self.config, reached.cloud
        metrics = RunMetrics(
            config.shard[0],
            lambda: dict(progress.snapshots),
            None if cloud is None else cloud.ingested_counts,
        )
        server = stack.enter_context(MetricsServer(metrics, port, config.metrics_host))
        return f"http://{config.metrics_host}:{server.port}/metrics"

    def _reach(self, stack: contextlib.ExitStack, workdir: Path) -> Reached:
        """Start the embedded local cloud (stopped with ``stack``), or take the configured real target."""
        config = self.config
        identity_dir = workdir / "identities"  # where devices that provision by claim keep what they got
        if config.target is not None:
            claim = ClaimSettings(config.target.claim, config.target.template)
            return Reached(config.target.endpoints, config.target.ca_file, claim, identity_dir, None)
        if config.cloud is not None:
            shared, control = config.cloud, config.cloud.client()
            ca_file, claim_identity = shared.write_files(workdir / "shared-cloud")
            return Reached(
                shared.endpoints,
                ca_file,
                ClaimSettings(claim_identity, shared.template),
                identity_dir,
                None,
                chaos=control.chaos,
                access=control,
                ingest=lambda sites, whole: control.ingest_stats(sites, cloud=whole),
                https_endpoints=shared.https_endpoints,
            )
        cloud = stack.enter_context(
            LocalCloud(
                config.regions,
                workdir=workdir / "cloud",
                ingest=True,
                ingest_workers=config.ingest_workers,
                replicate_shadows=True,
                quotas=config.quotas,
                rules=config.rules,
            )
        )
        if config.provision == ProvisionMode.DIRECT:
            cloud.register_things(
                [
                    ThingSpec(
                        d.thing,
                        d.tenant,
                        d.site,
                        policy=cloud.create_https_policy(d.tenant, d.site, d.thing) if d.https else DEVICE_POLICY,
                    )
                    for d in self.devices
                ]
            )
            identity_dir = cloud.workdir / "things"
        return Reached(
            cloud.endpoints,
            cloud.ca_file,
            ClaimSettings(cloud.claim_identity, cloud.template),
            identity_dir,
            cloud,
            chaos=lambda action, region: getattr(cloud.region(region), action)(),
            access=LocalAccess(cloud),
            ingest=lambda sites, whole: cloud.ingest_stats(sites, cloud=whole),
            https_endpoints=cloud.https_endpoints,
        )

    def worker_specs(self, reached: Reached, *, start_at: float) -> list[WorkerSpec]:
        """Whole sites per worker process; the ramp and the account's publish rate split among them and
        among the shards (N shards against one account ask for its quota once, not N times)."""
        config = self.config
        if not reached.https_endpoints and any(d.https for d in self.devices):
            raise ConfigError(
                "--https-fraction: the cloud names no HTTPS endpoint (https_port); write its JSON line with "
                "this version's 'iotfleet cloud up --json'"
            )
        chunks = _split(self.devices, config.workers)
        account_rate = config.publish_rate()
        if account_rate is not None:
            account_rate /= config.shards
        reconnect = config.reconnect or (LOCAL_RECONNECT if config.target is None else ReconnectPolicy())
        return [
            WorkerSpec(
                index=i,
                devices=chunk,
                endpoints=list(reached.endpoints),
                identity_dir=reached.identity_dir,
                ca_file=reached.ca_file,
                speed=config.speed,
                duration_s=config.duration_s,
                ramp_per_s=config.ramp_per_s / config.workers / config.shards,
                reconnect=reconnect,
                limits=config.limits,
                transport=config.transport,
                drain_s=config.drain_s,
                claim=reached.claim if config.provision == ProvisionMode.CLAIM else None,
                start_at=start_at,
                shadow=config.shadow,
                publish_rate=None if account_rate is None else account_rate / len(chunks),
                basic_ingest=INGEST_RULE if config.basic_ingest else None,
                commands=config.commands,
                https_endpoints=list(reached.https_endpoints),
                https_template=HTTPS_TEMPLATE,
                ota=config.ota,
            )
            for i, chunk in enumerate(chunks)
        ]

    def report_config(self, reached: Reached, workers: int) -> dict[str, Any]:
        """What the report says the run was asked to do."""
        config = self.config
        return {
            "shape": config.shape.model_dump(),
            "speed": config.speed,
            "workers": workers,
            "transport": config.transport,
            "provision": config.provision,
            "shard": f"{config.shard[0]}/{config.shard[1]}",
            "start_at": config.start_at,
            "target": _target_name(config, reached),
            "shadow": config.shadow,
            "operator": {"fraction": config.operator_fraction, "every_s": config.operator_every_s},
            "commands": {
                "every_s": config.command_every_s if config.commands else None,
                "reboot_share": config.reboot_share,
                "reboot_offline_s": config.reboot_offline_s,
            },
            "account_publish_rate": config.publish_rate(),
            "basic_ingest": INGEST_RULE if config.basic_ingest else None,
            "ingest_workers": config.ingest_workers if config.embedded else None,
            "rules": [{"name": r.name, "topic": r.topic_filter, "action": r.action} for r in config.rules],
            "https": {"fraction": config.https_fraction, "devices": sum(d.https for d in self.devices)},
            "ota": None if config.ota is None else dataclasses.asdict(config.ota),
        }


def _over_https(device: SimDevice, fraction: float) -> bool:
    """Whether ``device`` is one of the ``fraction`` that publish over HTTPS: decided by its seed alone,
    so every shard and every rerun of the fleet agrees."""
    return fraction > 0 and random.Random(device.seed ^ 0x48545450).random() < fraction


def _target_name(config: SimConfig, reached: Reached) -> Any:
    if config.cloud is not None:
        return f"shared-cloud {config.cloud.source}"
    return "local-cloud" if reached.cloud is not None else [str(e) for e in reached.endpoints]


def _barrier(start_at: float | None, stop: Any) -> float:
    """Wait for ``start_at`` (epoch; None: now), unless ``stop`` is set; return when simulated time
    starts. A shard that comes after it (a restarted pod) starts at once, from now."""
    now = time.time()
    if start_at is None or start_at <= now:
        if start_at is not None and now - start_at > 1.0:
            log.warning("--start-at was %.1f s ago: starting now", now - start_at)
        return now
    log.info("waiting %.1f s for --start-at", start_at - now)
    stop.wait(start_at - now)
    return start_at


def _settle(
    read: Callable[[], list[dict[str, Any]]], metrics: Sequence[WorkerMetrics], settle_s: float
) -> list[dict[str, Any]]:
    """Wait until the ingest has everything that was acknowledged, or until it stored nothing more for
    ``settle_s`` (an ingest that is behind but still storing is waited for, up to ``SETTLE_CAP`` times
    ``settle_s``: what it stores late is late, not lost)."""
    acked = sum(sum(len(s) for s in m.acked_seqs.values()) for m in metrics)
    started = time.monotonic()
    deadline = started + settle_s
    stored, pause = -1, 0.1
    while True:
        stats = read()
        distinct: dict[str, SeqSet] = {}
        for region in stats:
            for thing, seqs in region["by_device"].items():
                distinct.setdefault(thing, SeqSet()).update(seqs)
        now = time.monotonic()
        if sum(len(v) for v in distinct.values()) >= acked or now > deadline:
            return stats
        # still working (a duplicate it handles counts: a resumed session may hand it thousands again)
        handled = sum(region["ingested"] + region["duplicates"] for region in stats)
        if handled > stored:  # give it settle_s more, within the cap
            deadline = min(now + settle_s, started + settle_s * SETTLE_CAP)
            stored = handled
        time.sleep(pause)
        pause = min(1.0, pause * 2)  # reading a large fleet's figures is not free: less often as it goes
