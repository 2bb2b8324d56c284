"""What the simulator's operator does to the cloud: its regions, classic shadows, commands and jobs.

:class:`CloudAccess` is met by :class:`LocalAccess` (an embedded :class:`LocalCloud`, in this process)
and by :class:`~iotfleet.cloud.control.ControlClient` (a shared ``cloud up``, through its control API),
so the operator and the commander run the same against either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from iotfleet.cloud.jobs import JobsError
from iotfleet.cloud.local import LocalCloud
from iotfleet.errors import CloudError

__all__ = ["CloudAccess", "LocalAccess"]


class CloudAccess(Protocol):
    def shadow_update(self, region: str, thing: str, desired: Mapping[str, Any]) -> None:
        """Set ``desired`` in ``thing``'s classic shadow in ``region``."""

    def shadow_get(self, region: str, thing: str) -> dict[str, Any]:
        """``thing``'s classic shadow document in ``region``."""

    def publish(self, region: str, topic: str, payload: bytes) -> bool:
        """Publish as the cloud's operator through ``region``; False when the region is down."""

    def put_object(self, bucket: str, key: str, data: bytes) -> str:
        """Store an object for job documents; its S3 URL (:meth:`LocalCloud.put_object`)."""

    def add_things_to_group(self, group: str, things: Sequence[str]) -> None:
        """Put ``things`` in thing group ``group`` in every region."""

    def create_job(self, job_id: str, group: str, document: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        """CreateJob for thing group ``group`` in every region, with CreateJob's ``config`` fields."""

    def describe_job(self, region: str, job_id: str) -> dict[str, Any]:
        """DescribeJob's ``job`` in ``region``."""

    def cancel_job(self, region: str, job_id: str, comment: str) -> None:
        """CancelJob in ``region`` (QUEUED executions are canceled)."""


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

    def put_object(self, bucket: str, key: str, data: bytes) -> str:
        return self.cloud.put_object(bucket, key, data)

    def add_things_to_group(self, group: str, things: Sequence[str]) -> None:
        self.cloud.add_things_to_group(group, list(things))

    def create_job(self, job_id: str, group: str, document: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        with _jobs_errors():
            self.cloud.create_job(job_id, targets=[f"group:{group}"], document=dict(document), **config)

    def describe_job(self, region: str, job_id: str) -> dict[str, Any]:
        with _jobs_errors():
            return self.cloud.region(region).jobs.describe_job(job_id)

    def cancel_job(self, region: str, job_id: str, comment: str) -> None:
        with _jobs_errors():
            self.cloud.cancel_job(job_id, comment=comment, regions=[region])


@contextlib.contextmanager
def _jobs_errors() -> Iterator[None]:
    """The Jobs service's refusal as the :class:`CloudError` the control API gives for it."""
    try:
        yield
    except JobsError as exc:
        raise CloudError(f"{exc.code}: {exc.message}") from exc
