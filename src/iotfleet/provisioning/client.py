"""FleetProvisioner: a device's own identity from a shared claim certificate (IOT_CORE.md section 1).

One attempt: connect with the claim identity, subscribe to the accepted and rejected topics of both
steps (before publishing anything), then CreateCertificateFromCsr (default; the private key never leaves
the device) or CreateKeysAndCertificate, then RegisterThing with the template's parameters. Each step
waits for its answer up to ``timeout``. Throttling (429), server errors (5xx), timeouts and lost
connections are retried from the start, backing off with full jitter and failing over between
endpoints (:class:`~iotfleet.device.failover.EndpointSelector`); a rejection that cannot succeed
(bad parameters, unknown template, denied by the hook) is raised at once as
:class:`~iotfleet.errors.ProvisioningRejected`, naming the step and carrying AWS's three fields.

Answers are matched by topic, as AWS's own identity client does: the payloads carry no token, and IoT
Core (and the local cloud) delivers them on the asking connection only. As defence in depth, the
certificate in an accepted answer must carry this device's public key (its CSR's key, or the key sent
with it) and be signed by ``issuer_ca`` (default: the claim's CA file, which is the local cloud's
issuing CA; pass AWS's issuing CA against IoT Core, or ``verify_issuer=False``); otherwise the step
fails with :class:`~iotfleet.errors.CertificateError`, before RegisterThing and before anything is saved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import cbor2

from iotfleet.config import Endpoint, Identity, ReconnectPolicy
from iotfleet.device.failover import EndpointSelector
from iotfleet.errors import (
    ClientError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    ProvisioningRejected,
    PublishRejected,
    RequestTimeout,
)
from iotfleet.provisioning.keys import (
    KeyType,
    PrivateKey,
    check_issued,
    csr_pem,
    load_private_key,
    new_private_key,
    private_key_pem,
)
from iotfleet.provisioning.store import IdentityStore, StoredIdentity
from iotfleet.topics import (
    PayloadFormat,
    create_certificate_from_csr_topic,
    create_keys_and_certificate_topic,
    register_thing_topic,
    validate_thing_name,
)
from iotfleet.transport import resolve_transport
from iotfleet.transport.base import ConnectOptions, InboundMessage, Session, Transport, reason_name

__all__ = ["FleetProvisioner", "Method", "ProvisionedDevice"]

log = logging.getLogger(__name__)

CONNECT_INTERVAL_S: Final = 1.0  # IoT Core: one CONNECT a second per client id
DEFAULT_RETRY = ReconnectPolicy(min_backoff_s=0.5, max_backoff_s=30.0, failover_after_failures=2, failover_after_s=20)


class Method(StrEnum):
    """How the device gets its certificate."""

    CSR = "csr"  # CreateCertificateFromCsr: the key is made on the device
    KEYS = "keys"  # CreateKeysAndCertificate: the cloud makes the key and sends it back


@dataclass(frozen=True, slots=True)
class ProvisionedDevice:
    """The outcome of provisioning, before it is stored."""

    thing_name: str
    certificate_id: str
    certificate_pem: str
    private_key_pem: bytes
    device_configuration: Mapping[str, str]
    endpoint: Endpoint
    attempts: int = 1
    steps_s: Mapping[str, float] = field(default_factory=dict)  # time spent per step, last attempt


class FleetProvisioner:
    """Provision one device by claim; see the module docstring for the protocol and retry rules."""

    def __init__(
        self,
        *,
        endpoints: Sequence[Endpoint],
        claim: Identity,
        template: str,
        parameters: Mapping[str, str] | None = None,
        method: Method = Method.CSR,
        key_type: KeyType = KeyType.EC_P256,
        transport: Transport | str = "crt",
        client_id: str | None = None,
        timeout: float = 10.0,
        attempts: int = 5,
        retry: ReconnectPolicy = DEFAULT_RETRY,
        payload_format: PayloadFormat = PayloadFormat.JSON,
        issuer_ca: Path | None = None,
        verify_issuer: bool = True,
    ) -> None:
        if not endpoints:
            raise ConfigError("provisioning needs at least one endpoint (host:port)")
        if attempts < 1:
            raise ConfigError("attempts must be at least 1")
        self.endpoints = list(endpoints)
        self.claim = claim
        self.template = template
        self.parameters = dict(parameters or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.parameters.items()):
            raise ConfigError("template parameters must be strings (Key=Value)")
        self.method = Method(method)
        self.key_type = KeyType(key_type)
        self.timeout = timeout
        self.attempts = attempts
        self.retry = retry
        self.format = PayloadFormat(payload_format)
        self.issuer_ca = (issuer_ca or claim.ca_file) if verify_issuer else None
        serial = self.parameters.get("SerialNumber")
        self.client_id = client_id or f"provision-{serial or uuid.uuid4().hex}"
        validate_thing_name(self.client_id)
        self.transport = resolve_transport(transport)
        self._key = new_private_key(self.key_type) if self.method is Method.CSR else None
        self._waiting: dict[str, asyncio.Future[tuple[bool, Any]]] = {}

    # ---------------------------------------------------------------- public API

    async def provision(self) -> ProvisionedDevice:
        """Run the steps until they succeed, a rejection is final, or the attempts are used up."""
        selector = EndpointSelector(self.endpoints, self.retry)
        endpoint = selector.current
        for attempt in range(1, self.attempts + 1):
            try:
                device = await self._attempt(endpoint)
            except ProvisioningRejected as exc:
                if not exc.retryable:
                    raise
                last: ClientError = exc
            except (ConnectError, ConnectionLost, RequestTimeout) as exc:
                last = exc
            else:
                return dataclasses.replace(device, attempts=attempt)
            if attempt == self.attempts:
                raise last
            step = selector.failed()
            log.info("provisioning attempt %d failed (%s); retrying in %.2fs", attempt, last, step.delay_s)
            await asyncio.sleep(step.delay_s)
            endpoint = step.endpoint
        raise ConfigError("attempts must be at least 1")  # unreachable: checked in __init__

    async def provision_into(self, store: IdentityStore, *, verify: bool = True) -> StoredIdentity:
        """Provision unless ``store`` already holds an identity; save it; reconnect with it to prove it works.

        The CA saved with the identity is the claim's CA file.
        """
        if store.exists():
            return store.load()
        device = await self.provision()
        stored = store.save(
            thing_name=device.thing_name,
            certificate_pem=device.certificate_pem,
            private_key_pem=device.private_key_pem,
            ca_pem=self.claim.ca_file.read_bytes(),
            certificate_id=device.certificate_id,
            device_configuration=device.device_configuration,
            endpoints=self.endpoints,
        )
        if verify:
            await self.verify(stored.identity, device.endpoint)
        return stored

    async def verify(self, identity: Identity, endpoint: Endpoint) -> None:
        """Disconnect-and-reconnect step: connect with the new identity (client id = thing name), then leave.

        Returns no sooner than a second after that CONNECT: IoT Core takes one CONNECT a second per client
        id (IOT_CORE.md section 4), and the device's own, right after, would otherwise be throttled.
        """
        options = ConnectOptions(
            client_id=identity.thing_name, identity=identity, keepalive_s=60, connect_timeout_s=self.timeout
        )
        started = time.monotonic()
        session = await self.transport.connect(endpoint, options)
        await session.close()
        await asyncio.sleep(max(0.0, started + CONNECT_INTERVAL_S - time.monotonic()))

    # ---------------------------------------------------------------- one attempt

    def _topics(self) -> tuple[str, str]:
        if self.method is Method.CSR:
            certificate = create_certificate_from_csr_topic(self.format)
        else:
            certificate = create_keys_and_certificate_topic(self.format)
        return certificate, register_thing_topic(self.template, self.format)

    async def _attempt(self, endpoint: Endpoint) -> ProvisionedDevice:
        certificate_topic, register_topic = self._topics()
        options = ConnectOptions(
            client_id=self.client_id,
            identity=self.claim,
            keepalive_s=60,
            ping_timeout_s=self.timeout,
            connect_timeout_s=self.timeout,
            on_message=self._on_message,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        steps: dict[str, float] = {}
        session = await self.transport.connect(endpoint, options)
        try:
            filters = [(f"{t}/{outcome}", 1) for t in (certificate_topic, register_topic) for outcome in _OUTCOMES]
            codes = await session.subscribe(filters)
            refused = [f for (f, _), code in zip(filters, codes, strict=True) if code >= 0x80]
            if refused:
                raise ProvisioningRejected(
                    "Subscribe",
                    403,
                    "AccessDenied",
                    f"the claim certificate may not subscribe to {refused}: check the claim policy and template name",
                )
            steps["connect"] = loop.time() - started
            if self._key is not None:
                request = {"certificateSigningRequest": csr_pem(self._key, self.client_id)}
                step = "CreateCertificateFromCsr"
            else:
                request, step = {}, "CreateKeysAndCertificate"
            mark = loop.time()
            certificate = await self._request(session, step, certificate_topic, request)
            steps[step] = loop.time() - mark
            key = self._check_certificate(step, certificate)
            token = _string(certificate, "certificateOwnershipToken", step)
            body: dict[str, Any] = {"certificateOwnershipToken": token, "parameters": self.parameters}
            mark = loop.time()
            registered = await self._request(session, "RegisterThing", register_topic, body)
            steps["RegisterThing"] = loop.time() - mark
        finally:
            await session.close()
        configuration = registered.get("deviceConfiguration") or {}
        return ProvisionedDevice(
            thing_name=_string(registered, "thingName", "RegisterThing"),
            certificate_id=_string(certificate, "certificateId", step),
            certificate_pem=_string(certificate, "certificatePem", step),
            private_key_pem=private_key_pem(key),
            device_configuration={str(k): str(v) for k, v in dict(configuration).items()},
            endpoint=endpoint,
            steps_s=steps,
        )

    def _check_certificate(self, step: str, answer: Mapping[str, Any]) -> PrivateKey:
        """The key that goes with the issued certificate, once the certificate is proven to be this device's."""
        if self._key is not None:
            key = self._key
        else:
            key = load_private_key(_string(answer, "privateKey", step).encode(), what=f"{step}: the privateKey")
        check_issued(step, _string(answer, "certificatePem", step), key=key, issuer_file=self.issuer_ca)
        return key

    async def _request(self, session: Session, step: str, topic: str, body: Mapping[str, Any]) -> dict[str, Any]:
        future: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[topic] = future
        try:
            code = await session.publish(topic, self._encode(body), 1)
            if code >= 0x80:
                raise PublishRejected(
                    f"{step}: the broker refused the request on {topic} ({reason_name(code)}); "
                    "check that the claim policy allows this template",
                    reason_code=code,
                    topic=topic,
                )
            try:
                accepted, answer = await asyncio.wait_for(future, self.timeout)
            except TimeoutError:
                raise RequestTimeout(
                    f"{step}: no answer on {topic}/accepted or /rejected within {self.timeout}s",
                    operation=step,
                    timeout=self.timeout,
                ) from None
        finally:
            self._waiting.pop(topic, None)
        if not isinstance(answer, dict):
            raise ProvisioningRejected(step, 500, "InvalidResponse", f"the answer on {topic} is not an object")
        if not accepted:
            raise ProvisioningRejected(
                step,
                int(answer.get("statusCode", 0)),
                str(answer.get("errorCode", "")),
                str(answer.get("errorMessage", "")),
            )
        return answer

    def _encode(self, body: Mapping[str, Any]) -> bytes:
        if self.format is PayloadFormat.JSON:
            return json.dumps(body, separators=(",", ":")).encode()
        return bytes(cbor2.dumps(dict(body)))

    def _on_message(self, message: InboundMessage) -> None:
        request, _, outcome = message.topic.rpartition("/")
        future = self._waiting.get(request)
        if future is None or future.done() or outcome not in _OUTCOMES:
            return
        try:
            body = json.loads(message.payload) if self.format is PayloadFormat.JSON else cbor2.loads(message.payload)
        except (ValueError, cbor2.CBORDecodeError):
            body = None
        future.set_result((outcome == "accepted", body))


_OUTCOMES = ("accepted", "rejected")


def _string(body: Mapping[str, Any], key: str, step: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ProvisioningRejected(step, 500, "InvalidResponse", f"the accepted answer has no {key}")
    return value
