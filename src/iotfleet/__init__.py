"""iotfleet: device SDK, fleet simulator and local multi-region cloud for AWS IoT Core style platforms.

Nothing happens at import: no logging set-up, no threads, no event loops.
"""

from iotfleet.cloud.local import LocalCloud, Region, ThingSpec
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
    PublishRejected,
    RegistryError,
    RequestTimeout,
    ShadowRejected,
    TopicError,
)
from iotfleet.shadow import Shadow, ShadowSync
from iotfleet.topics import ShadowTopics, ThingScope, TopicScheme

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
