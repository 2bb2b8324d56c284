"""iotfleet: device SDK, fleet simulator and local multi-region cloud for AWS IoT Core style platforms.

Nothing happens at import: no logging set-up, no threads, no event loops. The device SDK loads at once;
the local cloud (mosquitto, POSIX only) loads on first use of one of its names, so ``import iotfleet``
works on macOS and Windows laptops as well.
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

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
    Connected,
    ConnectFailed,
    DeviceClient,
    DeviceEvent,
    DeviceState,
    Disconnected,
    DisconnectReason,
    EventKind,
    FailedOver,
    JobExecution,
    JobRejected,
    PublishAcked,
    PublishFailed,
    PublishReceipt,
    settle_heap,
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
    IdentityRefused,
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
from iotfleet.provisioning import (
    FleetProvisioner,
    IdentityStore,
    KeyType,
    Method,
    ProvisionedDevice,
    StoredIdentity,
)
from iotfleet.shadow import Shadow, ShadowDelta, ShadowDocument, ShadowLimits, ShadowState, ShadowSync
from iotfleet.topics import ShadowTopics, ThingScope, TopicScheme

if _TYPE_CHECKING:
    from iotfleet.cloud.local import CloudInfo, LocalCloud, Region, ThingSpec

# names loaded on first use: module that defines them
_LAZY = dict.fromkeys(("CloudInfo", "LocalCloud", "Region", "ThingSpec"), "iotfleet.cloud.local")

__version__ = "0.1.0"

__all__ = [
    "BlockingDeviceClient",
    "BrokerNotInstalled",
    "BrokerStartError",
    "CertificateError",
    "ClientError",
    "ClientStateError",
    "CloudError",
    "CloudInfo",
    "Command",
    "ConfigError",
    "ConnectError",
    "ConnectFailed",
    "Connected",
    "ConnectionLost",
    "DeviceClient",
    "DeviceEvent",
    "DeviceState",
    "DisconnectReason",
    "Disconnected",
    "Durability",
    "Endpoint",
    "EventKind",
    "FailedOver",
    "FleetProvisioner",
    "Identity",
    "IdentityRefused",
    "IdentityStore",
    "IotFleetError",
    "JobExecution",
    "JobRejected",
    "KeyType",
    "LocalCloud",
    "Method",
    "OutboxFull",
    "OutboxPolicy",
    "OverflowPolicy",
    "PolicyError",
    "ProvisionedDevice",
    "ProvisioningRejected",
    "PublishAcked",
    "PublishFailed",
    "PublishLimits",
    "PublishReceipt",
    "PublishRejected",
    "ReconnectPolicy",
    "Region",
    "RegistryError",
    "RequestTimeout",
    "Shadow",
    "ShadowDelta",
    "ShadowDocument",
    "ShadowLimits",
    "ShadowRejected",
    "ShadowState",
    "ShadowSync",
    "ShadowTopics",
    "StoredIdentity",
    "ThingScope",
    "ThingSpec",
    "TopicError",
    "TopicScheme",
    "settle_heap",
]


def __getattr__(name: str) -> _Any:
    """Load the local cloud's names on first use (PEP 562); they need POSIX-only modules."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'iotfleet' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """What is here, the names loaded on first use included."""
    return sorted({*globals(), *_LAZY})
