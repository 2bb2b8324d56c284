"""The one exception tree of iotfleet.

Every failure a user can meet is an :class:`IotFleetError` whose message says what happened and what to do::

    IotFleetError
    ├── ConfigError          bad usage or configuration (the CLI exits 2)
    ├── TopicError           a topic, filter or name breaks IoT Core's rules (``.rule`` names which)
    ├── PolicyError          a policy document cannot be rendered or evaluated
    ├── CertificateError     a certificate, key or CSR is malformed or not ours
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
    "CloudError",
    "ConfigError",
    "IotFleetError",
    "PolicyError",
    "RegistryError",
    "TopicError",
]


class IotFleetError(Exception):
    """Base of every iotfleet error; the message says what happened and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(IotFleetError):
    """Bad usage or configuration."""


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
