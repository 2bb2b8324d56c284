"""iotfleet: device SDK, fleet simulator and local multi-region cloud for AWS IoT Core style platforms.

Nothing happens at import: no logging set-up, no threads, no event loops. The device SDK loads at once;
the local cloud (mosquitto, POSIX only) loads on first use of one of its names, so ``import iotfleet``
works on macOS and Windows laptops as well.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from iotfleet.config import (
    Durability,
    Endpoint,
    Identity,
    OutboxPolicy,
    OverflowPolicy,
    PublishLimits,
    ReconnectPolicy,
)
from iotfleet.device import (
    BlockingDeviceClient,
    Command,
    DeviceClient,
    DeviceEvent,
    DeviceState,
    DisconnectReason,
    EventKind,
    PublishReceipt,
)
from iotfleet.errors import (
    BrokerNotInstalled,
    BrokerStartError,
    CertificateError,
    ClientError,
    ClientStateError,
    CloudError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    IotFleetError,
    OutboxFull,
    PolicyError,
    ProvisioningRejected,
    PublishRejected,
    RegistryError,
    RequestTimeout,
    ShadowRejected,
    TopicError,
)
from iotfleet.shadow import Shadow, ShadowSync
from iotfleet.topics import ShadowTopics, ThingScope, TopicScheme

if TYPE_CHECKING:
    from iotfleet.cloud.local import LocalCloud, Region, ThingSpec

# names loaded on first use: module that defines them
_LAZY = {"LocalCloud": "iotfleet.cloud.local", "Region": "iotfleet.cloud.local", "ThingSpec": "iotfleet.cloud.local"}

__version__ = "0.1.0"

__all__ = [
    "BlockingDeviceClient",
    "BrokerNotInstalled",
    "BrokerStartError",
    "CertificateError",
    "ClientError",
    "ClientStateError",
    "CloudError",
    "Command",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "DeviceClient",
    "DeviceEvent",
    "DeviceState",
    "DisconnectReason",
    "Durability",
    "Endpoint",
    "EventKind",
    "Identity",
    "IotFleetError",
    "LocalCloud",
    "OutboxFull",
    "OutboxPolicy",
    "OverflowPolicy",
    "PolicyError",
    "ProvisioningRejected",
    "PublishLimits",
    "PublishReceipt",
    "PublishRejected",
    "ReconnectPolicy",
    "Region",
    "RegistryError",
    "RequestTimeout",
    "Shadow",
    "ShadowRejected",
    "ShadowSync",
    "ShadowTopics",
    "ThingScope",
    "ThingSpec",
    "TopicError",
    "TopicScheme",
]


def __getattr__(name: str) -> Any:
    """Load the local cloud's names on first use (PEP 562); they need POSIX-only modules."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'iotfleet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
