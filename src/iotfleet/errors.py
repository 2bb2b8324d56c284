"""The one exception tree of iotfleet.

Every failure a user can meet is an :class:`IotFleetError` whose message says what happened and what to do::

    IotFleetError
    ├── ConfigError          bad usage or configuration (the CLI exits 2); also a ValueError
    ├── TopicError           a topic, filter or name breaks IoT Core's rules (``.rule`` names which)
    ├── PolicyError          a policy document cannot be rendered or evaluated
    ├── CertificateError     a certificate, key or CSR is malformed or not ours
    ├── ClientError          the device client could not do what was asked
    │   ├── ClientStateError     the client was used in the wrong state (not entered, closed, re-entered)
    │   ├── ConnectError         no endpoint accepted a connection (``.endpoint``, ``.reason``)
    │   ├── ConnectionLost       the session ended while an operation was in flight
    │   ├── PublishRejected      the broker refused a publish (``.reason_code``, ``.topic``)
    │   ├── ShadowRejected       a shadow request was rejected (``.code``, ``.error``, ``.client_token``)
    │   ├── ProvisioningRejected a fleet-provisioning step was rejected (``.step``, AWS's three fields)
    │   ├── OutboxFull           the outbox is full and its overflow policy is ``reject``
    │   └── RequestTimeout       a request got no answer in time (``.operation``, ``.timeout``)
    └── CloudError           the local cloud cannot do what was asked
        ├── BrokerNotInstalled   mosquitto is missing (the message says how to install it)
        ├── BrokerStartError     mosquitto exited or never became ready (its log is attached)
        └── RegistryError        a thing or certificate is unknown, or already registered

Third-party errors are translated where they enter (``raise ... from exc``), never leaked.
"""

from __future__ import annotations

__all__ = [
    "BrokerNotInstalled",
    "BrokerStartError",
    "CertificateError",
    "ClientError",
    "ClientStateError",
    "CloudError",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "IdentityRefused",
    "IotFleetError",
    "OutboxFull",
    "PolicyError",
    "ProvisioningRejected",
    "PublishRejected",
    "RegistryError",
    "RequestTimeout",
    "ShadowRejected",
    "TopicError",
]


class IotFleetError(Exception):
    """Base of every iotfleet error; the message says what happened and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(IotFleetError, ValueError):
    """Bad usage or configuration.

    Also a ``ValueError``, so a config model built inside a user's own pydantic validator still becomes
    that model's validation error.
    """


class TopicError(IotFleetError):
    """A topic, topic filter or name breaks one of IoT Core's rules.

    ``rule`` is a short stable identifier of the rule that failed (``"max-bytes"``, ``"wildcard"``, ...),
    ``value`` the offending input.
    """

    def __init__(self, message: str, *, rule: str, value: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.value = value


class PolicyError(IotFleetError):
    """A policy document cannot be rendered or evaluated."""


class CertificateError(IotFleetError):
    """A certificate, private key or CSR is malformed, or was not issued by the expected CA."""


class ClientError(IotFleetError):
    """The device client could not do what was asked."""


class ClientStateError(ClientError):
    """The client was used in the wrong state; the message says which state it needs."""


class ConnectError(ClientError):
    """A connection attempt failed. ``endpoint`` is ``region=host:port``; ``reason`` a short cause."""

    def __init__(self, message: str, *, endpoint: str, reason: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.reason = reason


class IdentityRefused(ConnectError):
    """Every endpoint refused this device's identity: CONNACK "not authorized" (or a similar refusal), or a
    hang-up right after the TLS handshake, which is how a certificate that is not ACTIVE is turned away.
    ``reasons`` maps each endpoint to its answer. Retrying soon would not help: the certificate was
    revoked or deactivated, or its policies do not allow ``iot:Connect`` on ``client/<client id>``."""

    def __init__(self, message: str, *, endpoint: str, reasons: dict[str, str]) -> None:
        super().__init__(message, endpoint=endpoint, reason="identity-refused")
        self.reasons = reasons


class ConnectionLost(ClientError):
    """The session ended while an operation was in flight; queued publishes stay in the outbox."""


class PublishRejected(ClientError):
    """The broker answered a publish with a failure reason code (MQTT5 PUBACK, e.g. 0x87 Not authorized).

    The message left the outbox: a rejection is final, it is not retried forever.
    """

    def __init__(self, message: str, *, reason_code: int, topic: str, message_id: str | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.topic = topic
        self.message_id = message_id


class ShadowRejected(ClientError):
    """A Device Shadow request was rejected, with AWS's HTTP-style ``code`` and message text ``error``.

    The same exception describes a rejection on both sides: the local shadow service raises it while
    applying a request and sends it as the ``/rejected`` payload; the device client raises it on receipt.
    """

    def __init__(self, code: int, error: str, *, client_token: str | None = None) -> None:
        super().__init__(f"shadow request rejected: {code} {error}")
        self.code = code
        self.error = error
        self.client_token = client_token


class ProvisioningRejected(ClientError):
    """A fleet-provisioning step was rejected, with AWS's ``statusCode``, ``errorCode`` and ``errorMessage``.

    ``step`` is ``CreateCertificateFromCsr``, ``CreateKeysAndCertificate`` or ``RegisterThing``. Like
    :class:`ShadowRejected` it serves both sides: the local service raises it and sends its fields as the
    ``/rejected`` payload; the device's provisioner raises it on receipt. ``retryable`` says whether
    asking again can succeed (throttling and server errors), so a provisioner never retries a request
    that cannot work.
    """

    def __init__(self, step: str, status_code: int, error_code: str, error_message: str) -> None:
        super().__init__(f"{step} rejected: {status_code} {error_code}: {error_message}")
        self.step = step
        self.status_code = status_code
        self.error_code = error_code
        self.error_message = error_message

    @property
    def retryable(self) -> bool:
        return self.status_code == 429 or self.status_code >= 500

    def payload(self) -> dict[str, object]:
        """The ``/rejected`` message body, exactly AWS's three fields."""
        return {"statusCode": self.status_code, "errorCode": self.error_code, "errorMessage": self.error_message}


class OutboxFull(ClientError):
    """The outbox reached its bound and its overflow policy is ``reject``."""


class RequestTimeout(ClientError):
    """A request got no answer within ``timeout`` seconds."""

    def __init__(self, message: str, *, operation: str, timeout: float) -> None:
        super().__init__(message)
        self.operation = operation
        self.timeout = timeout


class CloudError(IotFleetError):
    """The local cloud cannot do what was asked."""


class BrokerNotInstalled(CloudError):
    """The mosquitto binary was not found."""


class BrokerStartError(CloudError):
    """mosquitto exited during start-up or never accepted a connection.

    ``log`` holds what the broker printed, for the reader to see why.
    """

    def __init__(self, message: str, *, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class RegistryError(CloudError):
    """A thing or certificate is unknown to a region's registry, or already registered."""
