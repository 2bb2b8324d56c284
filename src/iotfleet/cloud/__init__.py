"""The local cloud: regions on loopback standing in for AWS IoT Core."""

from iotfleet.cloud.local import DEFAULT_REGIONS, DEFAULT_TEMPLATE, CloudInfo, LocalCloud, Region, ThingSpec

__all__ = ["DEFAULT_REGIONS", "DEFAULT_TEMPLATE", "CloudInfo", "LocalCloud", "Region", "ThingSpec"]
