"""LocalCloud: several regions on loopback, each a real mosquitto plus its registry.

Every region's broker trusts the one local CA and maps a client certificate's CN to its username.
What each identity may do comes from the registry: every ACTIVE certificate's thing's AWS IoT policy
is written for the broker plugin's policy engine (:mod:`iotfleet.cloud.authz`), which authorizes each
CONNECT, SUBSCRIBE, PUBLISH and delivery as IoT Core does, and is reloaded on every registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from iotfleet import policy
from iotfleet._files import write_private
from iotfleet.cloud.authz import Principal, render_authz, write_authz
from iotfleet.cloud.broker import Broker, BrokerState, Quotas, TlsFiles
from iotfleet.cloud.ca import CertificateAuthority, Credentials, certificate_id, unique_common_name
from iotfleet.cloud.https_publish import HttpsPublish
from iotfleet.cloud.jobs import JobConfig
from iotfleet.cloud.objects import ObjectStore
from iotfleet.cloud.owned import Failures
from iotfleet.cloud.registry import (
    CertificateAddition,
    CertificateRecord,
    CertificateStatus,
    Change,
    PolicyAttachment,
    Registration,
    Registry,
    Replicator,
    StatusChange,
    Thing,
    ThingChange,
    ThingPrincipal,
)
from iotfleet.cloud.rules import Rule, default_rules
from iotfleet.cloud.services.base import SERVICE_CLIENT_PREFIX, OperatorConnection, ServiceConnection, ServiceHost
from iotfleet.cloud.services.ingest import IngestService
from iotfleet.cloud.services.ingest_pool import IngestPool
from iotfleet.cloud.services.jobs import JobsOperator, JobsService
from iotfleet.cloud.services.lifecycle import LifecycleService
from iotfleet.cloud.services.provisioning import TOKEN_TTL, ProvisioningService
from iotfleet.cloud.services.rules import RulesService
from iotfleet.cloud.services.shadow import ShadowOperator, ShadowService, ShadowStore
from iotfleet.cloud.templates import ProvisioningTemplate, default_template_body
from iotfleet.config import Endpoint, Identity, validate_region
from iotfleet.errors import CloudError, ConfigError, RegistryError
from iotfleet.policy_engine import PolicyDocument
from iotfleet.topics import ThingScope, TopicScheme

__all__ = [
    "CLAIM_IDENTITY",
    "DEFAULT_REGIONS",
    "DEFAULT_TEMPLATE",
    "DEVICE_POLICY",
    "HTTPS_TEMPLATE",
    "SERVICE_IDENTITY",
    "CloudInfo",
    "CloudThing",
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
HTTPS_TEMPLATE: Final = "iotfleet-https"  # provisions a device that publishes over HTTPS only
LOCAL_HOST: Final = "localhost"
LOCAL_ACCOUNT: Final = "000000000000"  # the account id in the local cloud's ARNs
SERVICES_BACK_S: Final = 20.0  # how long a restarted broker waits for its services (under the CLI's 30 s)


def _https_template_body(scheme: TopicScheme) -> dict[str, Any]:
    """:data:`HTTPS_TEMPLATE`: the default template's thing, with a policy of its own rendered from the
    parameters (``Fn::Sub``): publish to its own data streams only, as HTTPS resolves no thing variable."""
    document = policy.render_https(scheme, tenant="${Tenant}", site="${Site}", thing="${SerialNumber}")
    body = default_template_body(DEVICE_POLICY)
    body["Resources"]["policy"] = {
        "Type": "AWS::IoT::Policy",
        "Properties": {"PolicyDocument": {"Fn::Sub": json.dumps(document)}},
    }
    return body


@dataclass(frozen=True, slots=True)
class ThingSpec:
    """A thing to register: its name, tenant, site and any further attributes, and the name of the policy
    its certificate gets (the device policy rendered from the scheme, or one made by ``create_policy``)."""

    name: str
    tenant: str
    site: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    policy: str = DEVICE_POLICY

    def __post_init__(self) -> None:
        ThingScope(self.tenant, self.site, self.name)  # validates all three

    @property
    def all_attributes(self) -> dict[str, str]:
        return {**self.attributes, "tenant": self.tenant, "site": self.site}


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


_POLICY_NAME: Final = re.compile(r"[\w+=,.@-]{1,128}")
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
    """One region: a broker, a registry, and the authorization data written from it for the broker."""

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
        quotas: Quotas | None = None,
    ) -> None:
        self.name = validate_region(name)
        self.failures = failures or Failures()
        self.directory = directory
        self.registry = Registry(directory / "registry.sqlite")
        self._service = service
        self._claim_policy = claim_policy
        self._authz_lock = threading.Lock()
        self.authz_file = directory / "authz"  # the plugin's authorization data
        self.crl_file = directory / "crl.pem"  # the certificates taken off ACTIVE: refused in the TLS handshake
        self._ca = ca
        self._serials: dict[str, int] = {}  # certificate id -> serial number, for the CRL
        self.shadow_service: ShadowService | None = None
        self.provisioning: ProvisioningService | None = None
        self.ingest: IngestService | IngestPool | None = None
        self.lifecycle: LifecycleService | None = None
        self.rules: RulesService | None = None
        self._operator: OperatorConnection | None = None
        self._host: ServiceHost | None = None
        self._connections: list[ServiceConnection] = []  # the services' connections on _host
        self._services_only = False  # a restarted broker serves no device until its services are back
        self._shadows: ShadowOperator | None = None
        self.jobs_service: JobsService | None = None
        self.https: HttpsPublish | None = None  # HTTPS device publish, once the cloud started
        self._jobs: JobsOperator | None = None
        self._principals: dict[str, str] = {}  # certificate CN -> certificate id, for lifecycle events
        self.broker = Broker(
            name=name,
            directory=directory,
            ca_file=ca.cert_file,
            cert_file=server[0],
            key_file=server[1],
            authz_file=self.authz_file,
            service=service,
            crl_file=self.crl_file,
            listeners=listeners,
            quotas=quotas,
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

    def publish(
        self, topic: str, payload: bytes, user_properties: Sequence[tuple[str, str]] = (), *, acked: bool = False
    ) -> bool:
        """Publish to devices as the cloud's operator (QoS 1, through this region's broker): e.g. a
        command on ``cmd/...``. False when the region is down (nothing was sent). With ``acked``, return
        only once the broker acknowledged it (False if it did not): what iot-data Publish answers 200 on."""
        operator, host = self._operator_on_host()

        async def send() -> bool:
            if acked:
                return await operator.deliver(topic, payload, user_properties)
            return operator.publish(topic, payload, user_properties)

        return host.call(send())

    def _operator_on_host(self) -> tuple[OperatorConnection, ServiceHost]:
        operator, host = self._operator, self._host
        if operator is None or host is None:
            raise CloudError(f"region {self.name} has no services: start the cloud first")
        return operator, host

    async def deliver(self, topic: str, payload: bytes, user_properties: Sequence[tuple[str, str]] = ()) -> bool:
        """:meth:`publish` with ``acked``, awaited from another event loop (HTTPS publish's) without
        holding a thread while the broker answers."""
        operator, host = self._operator_on_host()
        sent = asyncio.run_coroutine_threadsafe(operator.deliver(topic, payload, user_properties), host.loop)
        return await asyncio.wrap_future(sent)

    @property
    def shadows(self) -> ShadowOperator:
        """Operator access to this region's shadows: ``update(thing, desired=...)``, ``get(thing)``."""
        if self._shadows is None:
            raise CloudError(f"region {self.name} has no shadow service: start the cloud first")
        return self._shadows

    @property
    def jobs(self) -> JobsOperator:
        """Operator access to this region's jobs (CreateJob, CancelJob, DescribeJob, thing groups, ...)."""
        if self._jobs is None:
            raise CloudError(f"region {self.name} has no jobs service: start the cloud first")
        return self._jobs

    def start_services(
        self,
        host: ServiceHost,
        identity: Identity,
        provisioning: Callable[[Region], ProvisioningService],
        *,
        ingest: TopicScheme | None = None,
        ingest_max_bytes: int | None = None,
        ingest_workers: int = 0,
        rules: Sequence[Rule] = (),
        presign: Callable[[str, int], str] | None = None,
    ) -> None:
        """Start this region's services on ``host`` (MQTT clients of this region's broker).

        With ``ingest`` (the topic scheme of device data) the region also runs an ingestion pipeline,
        whose store may be capped at ``ingest_max_bytes``; its ``rules`` with the ``ingest`` action feed
        it, and the rules engine serves the others (and counts Basic Ingest to rules that do not exist).
        With ``ingest_workers`` the pipeline runs in that many processes of its own (:class:`IngestPool`),
        else on ``host`` with the other services.
        """
        service = ShadowService(
            region=self.name, registry=self.registry, store=ShadowStore(self.directory / "shadows.sqlite")
        )
        provisioner = self.provisioning = provisioning(self)
        lifecycle = self.lifecycle = LifecycleService(self.name, self._principal)
        self.broker.log_listeners.append(self._log_line)
        self.rules = RulesService(self.name, rules)
        jobs = self.jobs_service = JobsService(
            region=self.name, registry=self.registry, path=self.directory / "jobs.json", presign=presign
        )
        self._operator = OperatorConnection(self.name)
        self._host = host
        connections = self._connections = [
            service.attach(self.internal_endpoint, identity, host),
            provisioner.attach(self.internal_endpoint, identity, host),
            lifecycle.attach(self.internal_endpoint, identity, host),
            self.rules.attach(self.internal_endpoint, identity, host),
            jobs.attach(self.internal_endpoint, identity, host),
            self._operator.attach(self.internal_endpoint, identity, host),
        ]
        pipeline: IngestService | None = None
        if ingest is not None and ingest_workers:
            self.ingest = IngestPool(
                region=self.name,
                path=self.directory / "ingest.sqlite",
                scheme=ingest,
                max_store_bytes=ingest_max_bytes,
                rules=rules,
                workers=ingest_workers,
                endpoint=self.internal_endpoint,
                identity=identity,
                failures=self.failures,
            ).start()
        elif ingest is not None:
            pipeline = self.ingest = IngestService(
                region=self.name,
                path=self.directory / "ingest.sqlite",
                scheme=ingest,
                max_store_bytes=ingest_max_bytes,
                rules=rules,
            )
            connections.append(pipeline.attach(self.internal_endpoint, identity, host))

        async def start() -> None:
            provisioner.start()
            jobs.start()
            if pipeline is not None:
                pipeline.start()
            for connection in connections:
                connection.start()
            for connection in connections:
                await connection.wait_ready()

        host.call(start())
        self.shadow_service = service
        self._shadows = ShadowOperator(service, host)
        self._jobs = JobsOperator(jobs, host)

    def _principal(self, common_name: str) -> str:
        """The certificate id behind a connection's CN (IoT Core's ``principalIdentifier``)."""
        known = self._principals.get(common_name)
        if known is None:
            record = self.registry.certificate_by_identity(common_name)
            if record is None:
                return common_name  # the claim and service certificates are not in the registry
            known = self._principals[common_name] = record.certificate_id
        return known

    def _log_line(self, line: str) -> None:
        """Each broker log line, on its reader's thread: a failure is recorded, and the next line goes on."""
        if self.lifecycle is None:
            return
        try:
            self.lifecycle.feed(line)
        except Exception as exc:  # noqa: BLE001 - recorded and surfaced by the cloud; the log reader must live
            self.failures.record(f"lifecycle events of {self.name}", exc)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self.write_authz_file()
        self.broker.start()

    def stop(self) -> None:
        self.broker.stop()
        if self.shadow_service is not None:
            self.shadow_service.store.close()
        if self.jobs_service is not None:
            self.jobs_service.save()
        if self.ingest is not None:
            self.ingest.close()  # what cannot be written is counted in its stats, not raised
        self.registry.close()

    def kill(self) -> None:
        """SIGKILL this region's broker: its devices see a reset at once (and its HTTPS endpoint stops)."""
        self.broker.kill()
        if self.https is not None:
            self.https.kill()

    def blackhole(self) -> None:
        """Freeze this region's broker (SIGSTOP): its devices notice only by keepalive timeout (and its
        HTTPS endpoint answers nothing)."""
        self.broker.blackhole()
        if self.https is not None:
            self.https.freeze()

    def restore(self) -> None:
        """Bring the broker back after :meth:`kill` or :meth:`blackhole`, on the same port (and the HTTPS
        endpoint).

        A killed broker restarts with no session: until its services have reconnected and subscribed, a
        device's message would reach no subscriber and be dropped (and a provisioning request would go
        unanswered). So it restarts serving the services alone (every device is hung up on before its
        CONNACK, as a region still coming up; a device retries or fails over), and the devices are let in
        once every service is back."""
        host = self._host
        if host is None or self.broker.state is not BrokerState.KILLED:
            self.broker.restore()
        else:
            with self._authz_lock:
                self._services_only = True
                self.write_authz_file()
            try:
                since = time.monotonic()  # a service's session from now on is with the restarted broker
                self.broker.restore()
                self._await_services(host, since, since + SERVICES_BACK_S)
            finally:
                with self._authz_lock:
                    self._services_only = False
                self.sync_authz()
        if self.https is not None and self.broker.state is BrokerState.RUNNING:  # not killed again meanwhile
            self.https.restore()

    def _await_services(self, host: ServiceHost, since: float, deadline: float) -> None:
        """Wait until every service serves the restarted broker; one that does not by ``deadline`` is
        recorded, by name (the devices are let in anyway: a region that never opens would hide the fault)."""

        async def late() -> list[BaseException]:
            waits = (c.wait_served_since(since, deadline) for c in self._connections)
            results = await asyncio.gather(*waits, return_exceptions=True)
            return [r for r in results if isinstance(r, BaseException)]

        for problem in host.call(late(), timeout=SERVICES_BACK_S + 5.0):
            self.failures.record(f"region {self.name} restore", f"{problem}; its devices were let in anyway")
        if isinstance(self.ingest, IngestPool):
            self.ingest.wait_served_since(since, deadline)

    # ------------------------------------------------------------------ registry and authorization

    def apply(self, changes: tuple[Change, ...]) -> None:
        """Record changes and make them effective: rewrite the authorization data and reload the broker once.
        The reload ends the live sessions of every certificate that may no longer connect."""
        self.registry.apply(*changes)
        self.sync_authz()

    def use_claim_policy(self, document: dict[str, Any]) -> None:
        """The claim certificate's policy from now on (a template was added): effective at once."""
        self._claim_policy = document
        self.sync_authz()

    def sync_authz(self) -> None:
        """Make the registry's state effective: rewrite the authorization data and reload the broker."""
        with self._authz_lock:
            self.write_authz_file()
            self.broker.reload()

    def write_authz_file(self) -> None:
        """Write the broker plugin's authorization data: the claim's policy for the claim certificate, and
        for every ACTIVE certificate the policies attached to it (IoT Core's authorization, enforced by the
        plugin). The service identity is trusted by the plugin itself."""
        documents: dict[str, int] = {}
        parsed: list[PolicyDocument] = []

        def index(text: str) -> int:
            if text not in documents:
                documents[text] = len(parsed)
                parsed.append(PolicyDocument.parse(text, name=f"the policy of {self.name}'s registry"))
            return documents[text]

        principals: list[Principal] = []
        if not self._services_only:  # else no principal at all: every device is hung up on before its CONNACK
            principals.append(Principal(CLAIM_IDENTITY, [index(json.dumps(self._claim_policy, sort_keys=True))]))
            for row in self.registry.principals():
                indexes = [index(document) for document in row.documents]
                attributes = json.loads(row.attributes)
                principals.append(Principal(row.common_name, indexes, thing=row.thing, attributes=attributes))
        write_authz(self.authz_file, render_authz(self.name, LOCAL_ACCOUNT, parsed, principals))
        self._write_crl()

    def _write_crl(self) -> None:
        """The CRL the brokers' TLS handshake checks: every INACTIVE and REVOKED certificate, so a device
        presenting one fails the handshake as on IoT Core (a live session is ended by the plugin's re-check)."""
        entries = []
        for cert_id, pem, status in self.registry.taken_off():
            serial = self._serials.get(cert_id)
            if serial is None:
                serial = self._serials[cert_id] = self._ca.serial_number(pem)
            entries.append((serial, status is CertificateStatus.REVOKED))
        write_private(self.crl_file, self._ca.revocation_list(entries))


class LocalCloud:
    """Several regions on loopback with one CA, claim credentials and a replicated registry.

    ``LocalCloud(regions=[...], workdir=...)`` is a context manager; without ``workdir`` it works in a
    temporary directory that is removed on :meth:`stop`. With one, things and identities persist
    across runs. Each region holds its own shadows, as on AWS; ``replicate_shadows=True`` copies classic
    shadows to every other region at once (the shape of the AWS DR solution's global table; named shadows
    stay regional, and the copy publishes no delta). ``ingest_max_bytes`` caps each region's ingest store
    (beyond it, messages are counted as not stored, as on a full disk). ``ingest_workers`` runs each
    region's ingest in that many processes of its own, on its shared subscription (0: on the services'
    thread, in this process).
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
        ingest_workers: int = 0,
        listen: Iterable[Endpoint] = (),
        sans: Iterable[str] = (),
        quotas: Quotas | None = None,
        rules: Iterable[Rule] = (),
    ) -> None:
        names = list(regions)
        if not names:
            raise ConfigError("a local cloud needs at least one region")
        if len(set(names)) != len(names):
            raise ConfigError(f"region names must be unique, got {names}")
        for name in names:
            validate_region(name)
        self.listen = _listeners(names, listen)
        self.quotas = quotas or Quotas()
        self.sans = tuple(dict.fromkeys(_checked_san(name) for name in sans))
        self._own_workdir = workdir is None
        self.workdir = (workdir or Path(tempfile.mkdtemp(prefix="iotfleet-cloud-"))).resolve()
        self.scheme = scheme or TopicScheme()
        # the rule feeding the ingest pipeline, then the user's (one of the same name replaces it)
        own = list(rules)
        named = [rule.name for rule in own]
        twice = sorted({name for name in named if named.count(name) > 1})
        if twice:
            raise ConfigError(f"rule names are unique; given twice: {', '.join(twice)}")
        self.rules = [rule for rule in default_rules(self.scheme) if rule.name not in named] + own
        self.template = template
        self.device_policy = policy.render(self.scheme)
        self.policies: dict[str, dict[str, Any]] = {DEVICE_POLICY: self.device_policy}
        self.templates = {t.name: t for t in templates}
        self.templates.setdefault(template, ProvisioningTemplate(template, default_template_body(DEVICE_POLICY)))
        https_template = ProvisioningTemplate(HTTPS_TEMPLATE, _https_template_body(self.scheme))
        self.templates.setdefault(HTTPS_TEMPLATE, https_template)
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
        self.objects: ObjectStore | None = None  # S3-like objects for job documents, once started
        self.replicate_shadows = replicate_shadows
        self.ingest = ingest
        self.ingest_max_bytes = ingest_max_bytes
        if ingest_workers < 0:
            raise ConfigError(f"ingest workers must be 0 (in the cloud's process) or more, got {ingest_workers}")
        self.ingest_workers = ingest_workers
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
            self.objects = ObjectStore(
                self.workdir / "objects",
                cert_file=server / "server.pem",
                key_file=server / "server.key",
                start_thread=self.failures.thread,
            ).start()
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
                    quotas=self.quotas,
                )
                self._regions[name] = region
                region.start()
                region.start_services(
                    self._services,
                    service_identity,
                    self._provisioning_service,
                    ingest=self.scheme if self.ingest else None,
                    ingest_max_bytes=self.ingest_max_bytes,
                    ingest_workers=self.ingest_workers,
                    rules=self.rules,
                    presign=self.objects.presign,
                )
                region.https = HttpsPublish(
                    region=name,
                    account=LOCAL_ACCOUNT,
                    registry=region.registry,
                    publish=region.deliver,
                    ca_file=self.ca_file,
                    cert_file=server / "server.pem",
                    key_file=server / "server.key",
                    account_rate=self.quotas.publish_per_account,
                    start_thread=self.failures.thread,
                ).start()
            if self.replicate_shadows:
                services = [r.shadow_service for r in self._regions.values() if r.shadow_service is not None]
                for service in services:
                    service.replicas = [other.store for other in services if other is not service]
        except BaseException:
            self.stop()
            raise
        self._started = True
        return self

    def ingest_stats(self, sites: Collection[str] | None = None, *, cloud: bool = True) -> list[dict[str, Any]]:
        """Each region's ingest figures (see :meth:`IngestService.stats`), after writing what arrived:
        of the devices of ``sites`` ("<tenant>/<site>"; None for all), and with ``cloud`` the figures
        that belong to no site.

        Besides the pipeline's own figures (``ingested``, ``rejected``, ``not_stored``, ``store_error``,
        ...), with ``cloud`` each region's entry has ``broker_dropped`` (messages the broker dropped for
        the cloud's own clients: lost by the cloud) and ``failures`` (this region's background failures,
        one line per source); ``cloud_failures`` counts every failure of the cloud's background work.
        """
        if self._services is None:
            raise CloudError("the cloud is not running")
        pipelines = [r.ingest for r in self._regions.values() if r.ingest is not None]
        if not pipelines:
            raise CloudError("this cloud has no ingestion pipeline: start it with LocalCloud(ingest=True)")

        async def snapshot() -> list[dict[str, Any]]:
            return [await pipeline.settle(sites, cloud=cloud) for pipeline in pipelines]

        snapshots = self._services.call(snapshot())
        return [self._with_cloud_figures(stats) for stats in snapshots] if cloud else snapshots

    def ingested_counts(self) -> dict[str, int]:
        """Messages each region's ingest has stored so far: a cheap live reading (no flush, unlike
        :meth:`ingest_stats`), for a dashboard."""
        return {r.name: r.ingest.ingested for r in self._regions.values() if r.ingest is not None}

    def _with_cloud_figures(self, stats: dict[str, Any]) -> dict[str, Any]:
        region = self._regions.get(stats["region"])
        stats["broker_dropped"] = region.broker_dropped() if region is not None else 0
        stats["throttled"] = dict(region.broker.throttled) if region is not None else {}
        stats["rules"] = region.rules.stats() if region is not None and region.rules is not None else {}
        stats["failures"] = [str(f) for f in self.failures.kept() if stats["region"] in f.source]
        stats["cloud_failures"] = self.failures.count
        return stats

    def _provisioning_service(self, region: Region) -> ProvisioningService:
        def commit(registrations: tuple[Registration, ...]) -> None:
            self.change(*registrations, region=region.name)

        return ProvisioningService(
            region=region.name,
            registry=region.registry,
            ca=self.ca,
            templates=self.templates,
            policies=self.policies,
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
        if self.objects is not None:
            self.objects.stop()
        for region in self._regions.values():
            if region.https is not None:
                region.https.stop()
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

    @property
    def https_endpoints(self) -> list[Endpoint]:
        """Every region's HTTPS publish endpoint (``transport="https"``), the first region first."""
        return [
            Endpoint(region=r.name, host=r.endpoint.host, port=r.https.port)
            for r in self._regions.values()
            if r.https is not None
        ]

    def info(self) -> dict[str, Any]:
        """What `iotfleet cloud up --json` prints: endpoints, CA, claim credentials and template."""
        return {
            "regions": [
                {
                    "name": r.name,
                    "host": r.endpoint.host,
                    "port": r.endpoint.port,
                    "https_port": r.https.port if r.https is not None else None,
                    "listeners": [
                        *(f"{host}:{port}" for host, port in r.broker.listeners),
                        f"{r.internal_endpoint.host}:{r.internal_endpoint.port}",
                    ],
                }
                for r in self.regions
            ],
            "ca_file": str(self.ca_file),
            "claim_cert": str(self.claim.cert_file),
            "claim_key": str(self.claim.key_file),
            # the same, inline: the line is all a simulator shard on another machine needs
            "ca_pem": self.ca_file.read_text(),
            "claim_cert_pem": self.claim.cert_file.read_text(),
            "claim_key_pem": self.claim.key_file.read_text(),
            "template": self.template,
            "templates": sorted(self.templates),
            "account": LOCAL_ACCOUNT,  # the account id in the local cloud's ARNs (fill AWS's sample policies)
            "quotas": dataclasses.asdict(self.quotas),  # per second, 0 for none
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
        transaction and one authorization reload per region, and replicates to the other regions after the
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
                    thing = Thing(spec.name, spec.all_attributes)
                    policies = {spec.policy: self._policy(spec.policy)}
                    fresh.append((Registration(thing, record, policies), creds, cert_file, key_file))
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
                home.apply(registrations)
        if fresh:
            self.replicate(registrations, source=home.name)
        return identities

    # ------------------------------------------------------------------ jobs

    def create_job(
        self,
        job_id: str,
        *,
        targets: Sequence[str],
        document: str | Mapping[str, Any],
        regions: Sequence[str] | None = None,
        description: str = "",
        **config: Any,
    ) -> dict[str, dict[str, Any]]:
        """CreateJob in ``regions`` (default: every region; jobs are per region on AWS, and a device
        that fails over finds its job where it lands). ``targets`` are thing names or ``group:<name>``;
        ``config`` takes CreateJob's fields (``targetSelection``, ``jobExecutionsRolloutConfig``,
        ``abortConfig``, ``timeoutConfig``, ``jobExecutionsRetryConfig``, ``presignedUrlConfig``).
        Returns DescribeJob's ``job`` by region. A bad job raises :class:`JobsError` (AWS's code)."""
        text = document if isinstance(document, str) else json.dumps(document)
        job_config = JobConfig.from_api(config)
        return {
            name: self.region(name).jobs.create_job(job_id, list(targets), text, job_config, description)
            for name in (regions or [r.name for r in self.regions])
        }

    def cancel_job(
        self,
        job_id: str,
        *,
        force: bool = False,
        reason: str | None = None,
        comment: str | None = None,
        regions: Sequence[str] | None = None,
    ) -> None:
        """CancelJob in ``regions`` (default: every region that has the job)."""
        for name in regions or [r.name for r in self.regions]:
            jobs = self.region(name).jobs
            if regions is None and job_id not in jobs.service.state.jobs:
                continue
            jobs.cancel_job(job_id, force=force, reason=reason, comment=comment)

    def put_object(self, bucket: str, key: str, data: bytes) -> str:
        """Store an object (a firmware image) for job documents; return its S3 URL, to put in a document as
        ``${aws:iot:s3-presigned-url:<url>}``: devices get it presigned and fetch it over HTTPS."""
        if self.objects is None:
            raise CloudError("the local cloud is not started: start it before putting objects")
        return self.objects.put(bucket, key, data, region=self._names[0])

    def add_things_to_group(self, group: str, things: Sequence[str], *, regions: Sequence[str] | None = None) -> None:
        """Put things in a thing group (for job targets ``group:<name>``) in ``regions`` (default: all)."""
        for name in regions or [r.name for r in self.regions]:
            self.region(name).jobs.add_to_group(group, list(things))

    def create_policy(self, name: str, document: str | bytes | Mapping[str, Any]) -> None:
        """Create (or replace) the AWS IoT policy ``name``: any valid document (validated as CreatePolicy
        does: :class:`~iotfleet.errors.PolicyError` names each problem). Things registered with
        ``ThingSpec(policy=name)`` and templates naming it get it; the broker enforces it exactly."""
        if not _POLICY_NAME.fullmatch(name):
            raise ConfigError(f"policy name {name!r} must be 1-128 characters of letters, digits and +=,.@-_")
        parsed = PolicyDocument.parse(document, name=f"policy {name}")
        self.policies[name] = json.loads(parsed.text)

    def create_https_policy(self, tenant: str, site: str, thing: str) -> str:
        """Create the policy of a thing that publishes over HTTPS only (:func:`iotfleet.policy.render_https`:
        its own data streams, named literally); return its name, for ``ThingSpec(policy=...)``."""
        name = f"iotfleet-https-{thing}"
        self.create_policy(name, policy.render_https(self.scheme, tenant=tenant, site=site, thing=thing))
        return name

    def _policy(self, name: str) -> dict[str, Any]:
        try:
            return self.policies[name]
        except KeyError:
            raise ConfigError(
                f"no policy {name!r}: create it first with create_policy() (there are {sorted(self.policies)})"
            ) from None

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

    def replicate(self, changes: tuple[Change, ...], *, source: str) -> None:
        """Copy changes from ``source`` to every other region, after the replication lag."""
        self.replicator.replicate(changes, [n for n in self._regions if n != source])

    def _apply_replica(self, target: str, changes: tuple[Change, ...]) -> None:
        region = self._regions.get(target)
        if region is None:
            raise CloudError(f"region {target} is gone")
        region.apply(changes)

    def change(self, *changes: Change, region: str | None = None) -> None:
        """Apply registry changes in ``region`` (default: the first) at once, then in every other region
        after the replication lag, as registrations are. Each region's broker enforces them on reload."""
        home = self.region(region or self._names[0])
        with self._register_lock:
            home.apply(changes)
        self.replicate(changes, source=home.name)

    # ------------------------------------------------------------------ the control plane's operations

    def attach_policy(self, policy_name: str, certificate_id: str, *, region: str | None = None) -> None:
        """AttachPolicy: certificate ``certificate_id`` gets policy ``policy_name`` (made by
        :meth:`create_policy`) besides those it has; its sessions are authorized by all of them."""
        self.change(PolicyAttachment(policy_name, certificate_id, self._policy(policy_name)), region=region)

    def detach_policy(self, policy_name: str, certificate_id: str, *, region: str | None = None) -> None:
        """DetachPolicy. A live session whose CONNECT the remaining policies no longer allow is closed."""
        self.change(PolicyAttachment(policy_name, certificate_id, None), region=region)

    def update_certificate(
        self, certificate_id: str, status: CertificateStatus | str, *, region: str | None = None
    ) -> None:
        """UpdateCertificate: ``ACTIVE``, ``INACTIVE`` or ``REVOKED``, in every region (replicated like a
        registration). A certificate that leaves ACTIVE loses its live sessions and its new CONNECTs fail,
        as on IoT Core; ``ACTIVE`` again lets an INACTIVE one back in (a REVOKED one stays out)."""
        new = CertificateStatus(status)
        if new is CertificateStatus.PENDING_ACTIVATION:
            raise ConfigError("a certificate can be set ACTIVE, INACTIVE or REVOKED, not PENDING_ACTIVATION")
        record = self.region(region or self._names[0]).registry.certificate(certificate_id)
        if record is None:
            raise RegistryError(f"no certificate with id {certificate_id!r}")
        if record.status is CertificateStatus.REVOKED and new is not CertificateStatus.REVOKED:
            raise RegistryError(f"certificate {certificate_id[:12]}... is REVOKED: a revoked certificate stays revoked")
        self.change(StatusChange(certificate_id, new), region=region)

    def add_template(self, template: ProvisioningTemplate) -> None:
        """CreateProvisioningTemplate while the cloud runs: devices may provision with it at once (the
        claim certificate's policy is rendered again to cover it, in every region)."""
        if template.name in self.templates:
            raise ConfigError(f"a provisioning template named {template.name!r} already exists")
        self.templates[template.name] = template
        claim_policy = policy.render_claim(sorted(self.templates))
        for region in self.regions:
            region.use_claim_policy(claim_policy)

    def put_thing(self, name: str, attributes: Mapping[str, str], *, region: str | None = None) -> None:
        """CreateThing or UpdateThing: ``name`` with exactly ``attributes`` (no certificate yet), in
        every region (replicated like a registration)."""
        self.change(ThingChange(Thing(name, dict(attributes))), region=region)

    def remove_thing(self, name: str, *, region: str | None = None) -> None:
        """DeleteThing; refused while certificates are attached (detach them first)."""
        if self.region(region or self._names[0]).registry.thing(name) is None:
            raise RegistryError(f"no thing named {name!r}")
        self.change(ThingChange(Thing(name), delete=True), region=region)

    def new_certificate(
        self, *, csr_pem: str | bytes | None = None, active: bool = False, region: str | None = None
    ) -> tuple[str, str, str | None]:
        """CreateKeysAndCertificate (or CreateCertificateFromCsr with ``csr_pem``): a certificate signed by
        this cloud's CA, attached to nothing, ACTIVE with ``active`` else INACTIVE. Returns
        ``(certificate_id, certificate_pem, private_key_pem)`` (no key for a CSR)."""
        common_name, cert_pem, key_pem = self._issue(csr_pem)
        cert_id = certificate_id(cert_pem)
        status = CertificateStatus.ACTIVE if active else CertificateStatus.INACTIVE
        self.change(CertificateAddition(CertificateRecord(cert_id, common_name, cert_pem, status, None)), region=region)
        return cert_id, cert_pem, key_pem

    def _issue(self, csr_pem: str | bytes | None) -> tuple[str, str, str | None]:
        """A certificate with a new unique identity: ``(common_name, certificate_pem, private_key_pem)``,
        for the device's CSR (no key) or with a new key."""
        common_name = unique_common_name()
        if csr_pem is not None:
            return common_name, self.ca.sign_csr(csr_pem, common_name).decode(), None
        creds = self.ca.issue(common_name)
        return common_name, creds.certificate_pem.decode(), creds.private_key_pem.decode()

    def attach_thing_principal(
        self, thing: str, certificate_id: str, *, attach: bool = True, region: str | None = None
    ) -> None:
        """AttachThingPrincipal (or, with ``attach=False``, DetachThingPrincipal) of a certificate."""
        self.change(ThingPrincipal(thing, certificate_id, attach), region=region)

    def create_certificate(
        self, thing: str, *, csr_pem: str | bytes | None = None, region: str | None = None
    ) -> tuple[str, str, str | None]:
        """A new ACTIVE certificate for ``thing`` with the policies of its current certificates, for a
        rotation (CreateKeysAndCertificate, or CreateCertificateFromCsr with ``csr_pem``, then
        AttachThingPrincipal and AttachPolicy). Returns ``(certificate_id, certificate_pem, private_key_pem)``;
        the key is None when the device sent a CSR (it keeps its key). The old certificates stay ACTIVE
        until :meth:`update_certificate` takes them off."""
        home = self.region(region or self._names[0])
        current = home.registry.thing(thing)
        if current is None:
            raise RegistryError(f"no thing named {thing!r} in region {home.name}")
        policies = home.registry.policies_of_thing(thing)
        common_name, cert_pem, key_pem = self._issue(csr_pem)
        cert_id = certificate_id(cert_pem)
        record = CertificateRecord(cert_id, common_name, cert_pem, CertificateStatus.ACTIVE, thing)
        self.change(Registration(current, record, policies), region=home.name)
        return cert_id, cert_pem, key_pem
