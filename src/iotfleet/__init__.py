"""iotfleet: device SDK, fleet simulator and local multi-region cloud for AWS IoT Core style platforms.

Nothing happens at import: no logging set-up, no threads, no event loops.
"""

from iotfleet.cloud.local import LocalCloud, Region
from iotfleet.config import Endpoint, Identity
from iotfleet.errors import (
    BrokerNotInstalled,
    BrokerStartError,
    CertificateError,
    CloudError,
    ConfigError,
    IotFleetError,
    PolicyError,
    RegistryError,
    TopicError,
)
from iotfleet.topics import ShadowTopics, ThingScope, TopicScheme

__version__ = "0.1.0"

__all__ = [
    "BrokerNotInstalled",
    "BrokerStartError",
    "CertificateError",
    "CloudError",
    "ConfigError",
    "Endpoint",
    "Identity",
    "IotFleetError",
    "LocalCloud",
    "PolicyError",
    "Region",
    "RegistryError",
    "ShadowTopics",
    "ThingScope",
    "TopicError",
    "TopicScheme",
]
