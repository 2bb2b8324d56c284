"""What the simulator's operator does to the cloud: its regions, classic shadows and commands.

:class:`CloudAccess` is met by :class:`LocalAccess` (an embedded :class:`LocalCloud`, in this process)
and by :class:`~iotfleet.cloud.control.ControlClient` (a shared ``cloud up``, through its control API),
so the operator and the commander run the same against either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from iotfleet.cloud.local import LocalCloud

__all__ = ["CloudAccess", "LocalAccess"]


class CloudAccess(Protocol):
    def shadow_update(self, region: str, thing: str, desired: Mapping[str, Any]) -> None:
        """Set ``desired`` in ``thing``'s classic shadow in ``region``."""

    def shadow_get(self, region: str, thing: str) -> dict[str, Any]:
        """``thing``'s classic shadow document in ``region``."""

    def publish(self, region: str, topic: str, payload: bytes) -> bool:
        """Publish as the cloud's operator through ``region``; False when the region is down."""


class LocalAccess:
    """:class:`CloudAccess` to an embedded local cloud."""

    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud = cloud

    def shadow_update(self, region: str, thing: str, desired: Mapping[str, Any]) -> None:
        self.cloud.region(region).shadows.update(thing, desired=dict(desired))

    def shadow_get(self, region: str, thing: str) -> dict[str, Any]:
        return self.cloud.region(region).shadows.get(thing)

    def publish(self, region: str, topic: str, payload: bytes) -> bool:
        return self.cloud.region(region).publish(topic, payload)
