"""LocalCloud: several regions on loopback, each a real mosquitto plus its registry.

Every region's broker trusts the one local CA and maps a client certificate's CN to its username.
What each identity may do comes from the registry: the ACL file is rendered from each thing's policy
(:func:`iotfleet.policy.acl_lines`) and reloaded on every registration. The connection guard reads
the broker's log and evicts any connection whose certificate is not an ACTIVE certificate attached to
a thing in this region, or whose client id is not that thing's name (IoT Core's Connect policy).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import queue
import re
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ConfigDict

from iotfleet import policy
from iotfleet.cloud.broker import Broker, BrokerState, TlsFiles
from iotfleet.cloud.ca import CertificateAuthority, Credentials, certificate_id
from iotfleet.cloud.owned import Failures
from iotfleet.cloud.registry import (
    CertificateRecord,
    CertificateStatus,
    Registration,
    Registry,
    Replicator,
    Thing,
)
from iotfleet.cloud.services.base import SERVICE_CLIENT_PREFIX, ServiceHost
from iotfleet.cloud.services.ingest import IngestService
from iotfleet.cloud.services.provisioning import TOKEN_TTL, ProvisioningService
from iotfleet.cloud.services.shadow import ShadowOperator, ShadowService, ShadowStore
from iotfleet.cloud.templates import ProvisioningTemplate, default_template_body
from iotfleet.config import Endpoint, Identity, validate_region
from iotfleet.errors import CloudError, ConfigError, RegistryError
from iotfleet.topics import ThingScope, TopicScheme

__all__ = [
    "CLAIM_IDENTITY",
    "DEFAULT_REGIONS",
    "DEFAULT_TEMPLATE",
    "DEVICE_POLICY",
    "SERVICE_IDENTITY",
    "CloudInfo",
    "CloudThing",
    "GuardEvent",
    "LocalCloud",
    "Region",
    "ThingSpec",
]

log = logging.getLogger(__name__)

DEFAULT_REGIONS: Final = ("eu-west-1", "us-east-1")
SERVICE_IDENTITY: Final = "iotfleet-service"
CLAIM_IDENTITY: Final = "iotfleet-claim"
DEFAULT_TEMPLATE: Final = "iotfleet-default"
DEVICE_POLICY: Final = "iotfleet-device"
LOCAL_HOST: Final = "localhost"


@dataclass(frozen=True, slots=True)
class ThingSpec:
    """A thing to register: its name, tenant, site and any further attributes."""

    name: str
    tenant: str
    site: str
    attributes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ThingScope(self.tenant, self.site, self.name)  # validates all three

    @property
    def all_attributes(self) -> dict[str, str]:
        return {**self.attributes, "tenant": self.tenant, "site": self.site}


@dataclass(frozen=True, slots=True)
class GuardEvent:
    """A connection the guard evicted, and why."""

    region: str
    client_id: str
    identity: str | None
    reason: str


class CloudThing(BaseModel):
    """A thing registered by ``iotfleet cloud up --thing``, as listed in its JSON line."""

    model_config = ConfigDict(extra="ignore")

    name: str
    tenant: str
    site: str
    cert: Path
    key: Path


class CloudRegion(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    host: str
    port: int


def _claim_identity(cert_file: Path, key_file: Path, ca_file: Path) -> Identity:
    return Identity(thing_name="claim", cert_file=cert_file, key_file=key_file, ca_file=ca_file)


def _loopback(region: Region) -> tuple[str, int]:
    internal = region.internal_endpoint
    return internal.host, internal.port


_LABEL: Final = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME: Final = re.compile(rf"(\*\.)?({_LABEL}\.)*{_LABEL}")


def _checked_san(name: str) -> str:
    """A server-certificate name: an IP address or a DNS host name (``*.`` allowed in front)."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(name))
    if len(name) > 253 or not _HOST_NAME.fullmatch(name):
        raise ConfigError(f"--san {name!r} is neither an IP address nor a host name (e.g. 192.168.1.20, iot.lan)")
    return name


def _listeners(names: Sequence[str], listen: Iterable[Endpoint]) -> dict[str, list[tuple[str, int]]]:
    """``listen`` by region, checked: known regions, and no address and port given twice."""
    by_region: dict[str, list[tuple[str, int]]] = {}
    seen: dict[tuple[str, int], str] = {}
    for endpoint in listen:
        if endpoint.region not in names:
            raise ConfigError(f"--listen {endpoint}: no region {endpoint.region!r}; the regions are {', '.join(names)}")
        address = (endpoint.host, endpoint.port)
        if address in seen:
            raise ConfigError(
                f"--listen {endpoint}: {endpoint.host}:{endpoint.port} is already {seen[address]}'s; regions share "
                "a port on distinct addresses (127.0.0.1, 127.0.0.2, ...)"
            )
        seen[address] = endpoint.region
        by_region.setdefault(endpoint.region, []).append(address)
    return by_region


class CloudInfo(BaseModel):
    """The JSON line ``iotfleet cloud up --json`` prints: what a device needs to reach a running cloud."""

    model_config = ConfigDict(extra="ignore")

    regions: list[CloudRegion]
    ca_file: Path
    claim_cert: Path
    claim_key: Path
    template: str
    workdir: Path
    things: list[CloudThing] = []

    @classmethod
    def load(cls, path: Path) -> CloudInfo:
        """Read the JSON line saved from ``iotfleet cloud up --json > PATH``."""
        try:
            return cls.model_validate_json(path.read_text().strip().splitlines()[0])
        except (OSError, IndexError, ValueError) as exc:
            raise ConfigError(f"{path} does not hold the line of 'iotfleet cloud up --json' ({exc})") from exc

    @property
    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(region=r.name, host=r.host, port=r.port) for r in self.regions]

    @property
    def claim_identity(self) -> Identity:
        """The claim credentials as an :class:`Identity`, for a ``FleetProvisioner``."""
        return _claim_identity(self.claim_cert, self.claim_key, self.ca_file)

    def identity(self, name: str | None = None) -> tuple[Identity, CloudThing]:
        """The identity of thing ``name`` (default: the first listed) and where it belongs."""
        for thing in self.things:
            if name is None or thing.name == name:
                identity = Identity(
                    thing_name=thing.name, cert_file=thing.cert, key_file=thing.key, ca_file=self.ca_file
                )
                return identity, thing
        raise ConfigError(f"no thing {name or ''} in the cloud's JSON: start it with 'iotfleet cloud up --thing NAME'")


class Region:
    """One region: a broker, a registry, the ACL rendered from it and the connection guard."""

    def __init__(
        self,
        name: str,
        directory: Path,
        *,
        ca: CertificateAuthority,
        server: tuple[Path, Path],
        service: TlsFiles,
        claim_policy: dict[str, Any],
        failures: Failures | None = None,
        listeners: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.name = validate_region(name)
        self.failures = failures or Failures()
        self.directory = directory
        self.registry = Registry(directory / "registry.sqlite")
        self._service = service
        self._claim_policy = claim_policy
        self._acl_lock = threading.Lock()
        self._acl_cache: dict[tuple[str, str, str, str], list[str]] = {}
        self.acl_file = directory / "acl"
        self.evictions: list[GuardEvent] = []
        self.shadow_service: ShadowService | None = None
        self.provisioning: ProvisioningService | None = None
        self.ingest: IngestService | None = None
        self._shadows: ShadowOperator | None = None
        self.eviction_counts: Counter[str] = Counter()
        self._kicks: queue.Queue[str | None] = queue.Queue()
        self._kicker: threading.Thread | None = None
        self.broker = Broker(
            name=name,
            directory=directory,
            ca_file=ca.cert_file,
            cert_file=server[0],
            key_file=server[1],
            acl_file=self.acl_file,
            service=service,
            listeners=listeners,
            on_connect=self._guard,
        )

    @property
    def endpoint(self) -> Endpoint:
        """Where devices connect: the first listener asked for (``listen``), else the loopback one."""
        if self.broker.listeners:
            host, port = self.broker.listeners[0]
            return Endpoint(region=self.name, host=host, port=port)
        return self.internal_endpoint

    @property
    def internal_endpoint(self) -> Endpoint:
        """The ephemeral loopback listener every region has; the cloud's own services use it."""
        return Endpoint(region=self.name, host=LOCAL_HOST, port=self.broker.port)

    @property
    def state(self) -> BrokerState:
        return self.broker.state

    def broker_dropped(self) -> int:
        """How many times this region's broker dropped messages for a cloud service (lost by the cloud)."""
        return sum(n for client, n in self.broker.drops.items() if client.startswith(SERVICE_CLIENT_PREFIX))

    @property
    def shadows(self) -> ShadowOperator:
        """Operator access to this region's shadows: ``update(thing, desired=...)``, ``get(thing)``."""
        if self._shadows is None:
            raise CloudError(f"region {self.name} has no shadow service: start the cloud first")
        return self._shadows

    def start_services(
        self,
        host: ServiceHost,
        identity: Identity,
        provisioning: Callable[[Region], ProvisioningService],
        *,
        ingest: TopicScheme | None = None,
        ingest_max_bytes: int | None = None,
    ) -> None:
        """Start this region's services on ``host`` (MQTT clients of this region's broker).

        With ``ingest`` (the topic scheme of device data) the region also runs an ingestion pipeline,
        whose store may be capped at ``ingest_max_bytes``.
        """
        service = ShadowService(
            region=self.name, registry=self.registry, store=ShadowStore(self.directory / "shadows.sqlite")
        )
        provisioner = self.provisioning = provisioning(self)
        connections = [
            service.attach(self.internal_endpoint, identity, host),
            provisioner.attach(self.internal_endpoint, identity, host),
        ]
        if ingest is not None:
            self.ingest = IngestService(
                region=self.name, path=self.directory / "ingest.sqlite", scheme=ingest, max_store_bytes=ingest_max_bytes
            )
            connections.append(self.ingest.attach(self.internal_endpoint, identity, host))
        pipeline = self.ingest

        async def start() -> None:
            provisioner.start()
            if pipeline is not None:
                pipeline.start()
            for connection in connections:
                connection.start()
            for connection in connections:
                await connection.wait_ready()

        host.call(start())
        self.shadow_service = service
        self._shadows = ShadowOperator(service, host)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self.write_acl()
        self._kicker = self.failures.thread(self._kick_loop, f"guard {self.name}")
        self.broker.start()

    def stop(self) -> None:
        self.broker.stop()
        if self.shadow_service is not None:
            self.shadow_service.store.close()
        if self.ingest is not None:
            self.ingest.close()  # what cannot be written is counted in its stats, not raised
        if self._kicker is not None:
            self._kicks.put(None)
            self._kicker.join(timeout=5)
            self._kicker = None
        self.registry.close()

    def kill(self) -> None:
        """SIGKILL this region's broker: its devices see a reset at once."""
        self.broker.kill()

    def blackhole(self) -> None:
        """Freeze this region's broker (SIGSTOP): its devices notice only by keepalive timeout."""
        self.broker.blackhole()

    def restore(self) -> None:
        """Bring the broker back after :meth:`kill` or :meth:`blackhole`, on the same port."""
        self.broker.restore()

    # ------------------------------------------------------------------ registry and ACL

    def put(self, registrations: tuple[Registration, ...]) -> None:
        """Record registrations and make them effective: rewrite the ACL and reload the broker once."""
        self.registry.put(*registrations)
        self.sync_acl()

    def sync_acl(self) -> None:
        with self._acl_lock:
            self.write_acl()
            self.broker.reload()

    def write_acl(self) -> None:
        """Render the ACL: the service may do anything, the claim only provisioning, a thing its policy."""
        lines = [
            "# generated by iotfleet from the region's registry; do not edit",
            f"user {SERVICE_IDENTITY}",
            "topic readwrite #",
            "topic readwrite $aws/#",
            "",
            *policy.acl_lines(self._claim_policy, CLAIM_IDENTITY, policy.ThingVariables("claim", {})),
            "",
        ]
        cache: dict[tuple[str, str, str, str], list[str]] = {}
        for row in self.registry.acl_rows():
            rendered = self._acl_cache.get(row)
            if rendered is None:
                identity, thing, attributes, document = row
                variables = policy.ThingVariables(thing, json.loads(attributes))
                rendered = policy.acl_lines(json.loads(document), identity, variables)
            cache[row] = rendered
            lines.extend(rendered)
            lines.append("")
        self._acl_cache = cache
        tmp = self.acl_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        tmp.replace(self.acl_file)

    # ------------------------------------------------------------------ connection guard

    def _guard(self, client_id: str, identity: str | None) -> None:
        """Decide on an accepted connection (called from the broker's log reader)."""
        if identity in (SERVICE_IDENTITY, CLAIM_IDENTITY):
            return
        reason = self._refusal(client_id, identity)
        if reason is None:
            return
        event = GuardEvent(self.name, client_id, identity, reason)
        self.evictions.append(event)
        self.eviction_counts[reason] += 1
        log.warning("region %s evicts client %r (identity %r): %s", self.name, client_id, identity, reason)
        self._kicks.put(client_id)

    def _refusal(self, client_id: str, identity: str | None) -> str | None:
        if identity is None:
            return "no certificate identity"
        cert = self.registry.certificate_by_identity(identity)
        if cert is None or cert.thing is None:
            return "certificate not registered in this region"
        if cert.status is not CertificateStatus.ACTIVE:
            return f"certificate is {cert.status}"
        if client_id != cert.thing:
            return f"client id must be the thing name {cert.thing!r}"
        return None

    def _kick_loop(self) -> None:
        while (client_id := self._kicks.get()) is not None:
            try:
                self._take_over(client_id)
            except Exception as exc:  # noqa: BLE001 - recorded below; the guard goes on to the next connection
                if self.broker.state is BrokerState.RUNNING:  # not a chaos outage: something is wrong
                    self.failures.record(f"guard {self.name} evicting {client_id!r}", exc)
                else:
                    log.info("region %s is %s: could not evict %r (%s)", self.name, self.broker.state, client_id, exc)

    def _take_over(self, client_id: str, timeout: float = 5.0) -> None:
        """Evict ``client_id`` by connecting with the same client id (MQTT5 session takeover, 0x8E)."""
        if self.broker.state is not BrokerState.RUNNING:
            return
        done = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.tls_set_context(self._service.client_context())
        client.on_connect = lambda *_args: done.set()
        client.connect(self.internal_endpoint.host, self.broker.port, keepalive=30, clean_start=True)
        while not done.is_set() and timeout > 0:
            client.loop(timeout=0.05)
            timeout -= 0.05
        client.disconnect()
        client.loop(timeout=0.05)


class LocalCloud:
    """Several regions on loopback with one CA, claim credentials and a replicated registry.

    ``LocalCloud(regions=[...], workdir=...)`` is a context manager; without ``workdir`` it works in a
    temporary directory that is removed on :meth:`stop`. With one, things and identities persist
    across runs. Each region holds its own shadows, as on AWS; ``replicate_shadows=True`` copies classic
    shadows to every other region at once (the shape of the AWS DR solution's global table; named shadows
    stay regional, and the copy publishes no delta). ``ingest_max_bytes`` caps each region's ingest store
    (beyond it, messages are counted as not stored, as on a full disk).
    """

    def __init__(
        self,
        regions: Iterable[str] = DEFAULT_REGIONS,
        *,
        workdir: Path | None = None,
        scheme: TopicScheme | None = None,
        replication_lag: float = 0.0,
        template: str = DEFAULT_TEMPLATE,
        templates: Iterable[ProvisioningTemplate] = (),
        token_ttl: float = TOKEN_TTL,
        provisioning_rate_limit: float | None = None,
        replicate_shadows: bool = False,
        ingest: bool = False,
        ingest_max_bytes: int | None = None,
        listen: Iterable[Endpoint] = (),
        sans: Iterable[str] = (),
    ) -> None:
        names = list(regions)
        if not names:
            raise ConfigError("a local cloud needs at least one region")
        if len(set(names)) != len(names):
            raise ConfigError(f"region names must be unique, got {names}")
        for name in names:
            validate_region(name)
        self.listen = _listeners(names, listen)
        self.sans = tuple(dict.fromkeys(_checked_san(name) for name in sans))
        self._own_workdir = workdir is None
        self.workdir = (workdir or Path(tempfile.mkdtemp(prefix="iotfleet-cloud-"))).resolve()
        self.scheme = scheme or TopicScheme()
        self.template = template
        self.device_policy = policy.render(self.scheme)
        self.templates = {t.name: t for t in templates}
        self.templates.setdefault(template, ProvisioningTemplate(template, default_template_body(DEVICE_POLICY)))
        self.token_ttl = token_ttl
        self.provisioning_rate_limit = provisioning_rate_limit
        self._names = names
        self._regions: dict[str, Region] = {}
        self._register_lock = threading.Lock()
        # every background task and thread of the cloud, and what went wrong in them (see ingest_stats, stop)
        self.failures = Failures()
        self.problems: list[str] = []  # what stop() found: failures, messages not stored, broker drops
        self.final_ingest_stats: list[dict[str, Any]] = []  # each region's ingest figures at stop()
        self.replicator = Replicator(self._apply_replica, lag=replication_lag, failures=self.failures)
        self._services: ServiceHost | None = None
        self.replicate_shadows = replicate_shadows
        self.ingest = ingest
        self.ingest_max_bytes = ingest_max_bytes
        self.ca = CertificateAuthority.open(self.workdir / "ca")
        self.service = self._identity_files(SERVICE_IDENTITY)
        self.claim = self._identity_files(CLAIM_IDENTITY)
        self._started = False

    # ------------------------------------------------------------------ files

    def _identity_files(self, common_name: str) -> TlsFiles:
        directory = self.workdir / "identities"
        cert, key = directory / f"{common_name}.pem", directory / f"{common_name}.key"
        if not (cert.exists() and key.exists()):
            self.ca.issue(common_name).write(cert, key)
        return TlsFiles(self.ca.cert_file, cert, key)

    @property
    def ca_file(self) -> Path:
        return self.ca.cert_file

    @property
    def claim_identity(self) -> Identity:
        """The claim credentials as an :class:`Identity`, for a ``FleetProvisioner`` (provisioning by claim)."""
        return _claim_identity(self.claim.cert_file, self.claim.key_file, self.ca_file)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> LocalCloud:
        if self._started:
            return self
        server = self.workdir / "identities"
        # issued on every start, for the names and addresses of this run's listeners (the CA stays)
        hosts = [host for listeners in self.listen.values() for host, _ in listeners]
        self.ca.issue_server(extra_hosts=(*hosts, *self.sans)).write(server / "server.pem", server / "server.key")
        claim_policy = policy.render_claim(sorted(self.templates))
        self._services = ServiceHost(self.failures)
        service_identity = Identity(
            thing_name=SERVICE_IDENTITY,
            cert_file=self.service.cert_file,
            key_file=self.service.key_file,
            ca_file=self.ca_file,
        )
        try:
            for name in self._names:
                region = Region(
                    name,
                    self.workdir / "regions" / name,
                    ca=self.ca,
                    server=(server / "server.pem", server / "server.key"),
                    service=self.service,
                    claim_policy=claim_policy,
                    failures=self.failures,
                    listeners=self.listen.get(name, ()),
                )
                self._regions[name] = region
                region.start()
                region.start_services(
                    self._services,
                    service_identity,
                    self._provisioning_service,
                    ingest=self.scheme if self.ingest else None,
                    ingest_max_bytes=self.ingest_max_bytes,
                )
            if self.replicate_shadows:
                services = [r.shadow_service for r in self._regions.values() if r.shadow_service is not None]
                for service in services:
                    service.replicas = [other.store for other in services if other is not service]
        except BaseException:
            self.stop()
            raise
        self._started = True
        return self

    def ingest_stats(self) -> list[dict[str, Any]]:
        """Each region's ingest figures (see :meth:`IngestService.stats`), after writing what arrived.

        Besides the pipeline's own figures (``ingested``, ``rejected``, ``not_stored``, ``store_error``,
        ...), each region's entry has ``broker_dropped`` (messages the broker dropped for the cloud's own
        clients: lost by the cloud) and ``failures`` (this region's background failures, one line per
        source); ``cloud_failures`` counts every failure of the cloud's background work.
        """
        if self._services is None:
            raise CloudError("the cloud is not running")
        pipelines = [r.ingest for r in self._regions.values() if r.ingest is not None]
        if not pipelines:
            raise CloudError("this cloud has no ingestion pipeline: start it with LocalCloud(ingest=True)")

        async def snapshot() -> list[dict[str, Any]]:
            return [await pipeline.settle() for pipeline in pipelines]

        return [self._with_cloud_figures(stats) for stats in self._services.call(snapshot())]

    def _with_cloud_figures(self, stats: dict[str, Any]) -> dict[str, Any]:
        region = self._regions.get(stats["region"])
        stats["broker_dropped"] = region.broker_dropped() if region is not None else 0
        stats["failures"] = [str(f) for f in self.failures.kept() if stats["region"] in f.source]
        stats["cloud_failures"] = self.failures.count
        return stats

    def _provisioning_service(self, region: Region) -> ProvisioningService:
        def commit(registrations: tuple[Registration, ...]) -> None:
            with self._register_lock:
                region.put(registrations)
            self.replicate(registrations, source=region.name)

        return ProvisioningService(
            region=region.name,
            registry=region.registry,
            ca=self.ca,
            templates=self.templates,
            policies={DEVICE_POLICY: self.device_policy},
            commit=commit,
            claim_certificate_id=certificate_id(self.claim.cert_file.read_bytes()),
            token_ttl=self.token_ttl,
            rate_limit=self.provisioning_rate_limit,
        )

    def stop(self) -> list[str]:
        """Stop every broker and background thread; remove the workdir if it was temporary.

        Returns what went wrong during the cloud's life, one line each (also logged, and kept in
        :attr:`problems`): failures of background work, messages the ingest could not store, messages
        a broker dropped for a cloud service. Each region's last ingest figures stay in
        :attr:`final_ingest_stats`.
        """
        if not self._regions and self._services is None:
            return list(self.problems)  # stopped already
        self.replicator.close()
        if self._services is not None:
            self._services.stop()
            self._services = None
        final: list[dict[str, Any]] = []
        for region in self._regions.values():
            try:
                region.stop()
            except Exception as exc:  # noqa: BLE001 - recorded; keep stopping the others, nothing may outlive the cloud
                self.failures.record(f"stopping region {region.name}", exc)
            if region.ingest is not None:
                final.append(self._with_cloud_figures(region.ingest.stats()))
        if final:
            self.final_ingest_stats = final
        self.problems = self._problems(final)
        for line in self.problems:
            log.warning("local cloud: %s", line)
        self._regions.clear()
        self._started = False
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return list(self.problems)

    def _problems(self, final: list[dict[str, Any]]) -> list[str]:
        lines = self.failures.summary()
        for stats in final:
            region = stats["region"]
            if stats["not_stored"]:
                lines.append(
                    f"region {region}: {stats['not_stored']} messages were not stored ({stats['store_error']})"
                )
            if stats["hourly_not_stored"]:
                lines.append(
                    f"region {region}: {stats['hourly_not_stored']} messages are missing from hourly aggregates"
                )
            if stats["broker_dropped"]:
                lines.append(
                    f"region {region}: the broker dropped messages for a cloud service {stats['broker_dropped']} times"
                )
        return lines

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ regions

    @property
    def regions(self) -> list[Region]:
        return list(self._regions.values())

    def region(self, name: str) -> Region:
        try:
            return self._regions[name]
        except KeyError:
            raise ConfigError(
                f"no region {name!r}; this cloud has {', '.join(self._regions) or 'none (not started)'}"
            ) from None

    @property
    def endpoints(self) -> list[Endpoint]:
        """Every region's endpoint, the first region first (the devices' preferred order)."""
        return [r.endpoint for r in self._regions.values()]

    def info(self) -> dict[str, Any]:
        """What `iotfleet cloud up --json` prints: endpoints, CA, claim credentials and template."""
        return {
            "regions": [
                {
                    "name": r.name,
                    "host": r.endpoint.host,
                    "port": r.endpoint.port,
                    "listeners": [f"{host}:{port}" for host, port in [*r.broker.listeners, _loopback(r)]],
                }
                for r in self.regions
            ],
            "ca_file": str(self.ca_file),
            "claim_cert": str(self.claim.cert_file),
            "claim_key": str(self.claim.key_file),
            "template": self.template,
            "templates": sorted(self.templates),
            "workdir": str(self.workdir),
        }

    # ------------------------------------------------------------------ things

    def register_thing(
        self,
        name: str,
        *,
        tenant: str,
        site: str,
        attributes: dict[str, str] | None = None,
        region: str | None = None,
    ) -> Identity:
        """Register one thing; see :meth:`register_things`."""
        spec = ThingSpec(name, tenant, site, attributes or {})
        return self.register_things([spec], region=region)[0]

    def register_things(self, specs: Iterable[ThingSpec], *, region: str | None = None) -> list[Identity]:
        """Register things in ``region`` (default: the first) with new certificates: the fast path.

        Each thing gets the device policy rendered from the scheme; its certificate (CN = thing name)
        and key are written under ``workdir/things/<name>/``. The whole batch is one registry
        transaction and one ACL reload per region, and replicates to the other regions after the
        replication lag. A thing already registered with the same attributes keeps its identity.
        """
        home = self.region(region or self._names[0])
        identities: list[Identity] = []
        fresh: list[tuple[Registration, Credentials, Path, Path]] = []
        with self._register_lock:
            for spec in specs:
                thing_dir = self.workdir / "things" / spec.name
                cert_file, key_file = thing_dir / "cert.pem", thing_dir / "key.pem"
                record = self._existing(home, spec, cert_file, key_file)
                if record is None:
                    creds = self.ca.issue(spec.name)
                    record = CertificateRecord(
                        creds.certificate_id,
                        spec.name,
                        creds.certificate_pem.decode(),
                        CertificateStatus.ACTIVE,
                        spec.name,
                    )
                    thing = Thing(spec.name, spec.all_attributes, DEVICE_POLICY)
                    fresh.append((Registration(thing, record, self.device_policy), creds, cert_file, key_file))
                identities.append(
                    Identity(
                        thing_name=spec.name,
                        cert_file=cert_file,
                        key_file=key_file,
                        ca_file=self.ca_file,
                        certificate_id=record.certificate_id,
                    )
                )
            if fresh:
                for _, creds, cert_file, key_file in fresh:
                    creds.write(cert_file, key_file)
                registrations = tuple(r for r, *_ in fresh)
                home.put(registrations)
        if fresh:
            self.replicate(registrations, source=home.name)
        return identities

    def _existing(self, home: Region, spec: ThingSpec, cert_file: Path, key_file: Path) -> CertificateRecord | None:
        """The certificate of an already registered thing, if its files are still in the workdir."""
        existing = home.registry.thing(spec.name)
        if existing is None:
            return None
        if dict(existing.attributes) != spec.all_attributes:
            raise RegistryError(
                f"thing {spec.name!r} is already registered with attributes {dict(existing.attributes)}; "
                "use another name or the same tenant, site and attributes"
            )
        record = home.registry.certificate_by_identity(spec.name)
        if record is None or not (cert_file.exists() and key_file.exists()):
            raise RegistryError(
                f"thing {spec.name!r} is registered but its credentials are not in {cert_file.parent}: "
                "delete the thing or use another name"
            )
        return record

    def replicate(self, registrations: tuple[Registration, ...], *, source: str) -> None:
        """Copy registrations from ``source`` to every other region, after the replication lag."""
        self.replicator.replicate(registrations, [n for n in self._regions if n != source])

    def _apply_replica(self, target: str, registrations: tuple[Registration, ...]) -> None:
        region = self._regions.get(target)
        if region is None:
            raise CloudError(f"region {target} is gone")
        region.put(registrations)
