"""A fleet-wide firmware rollout (``iotfleet simulate --ota VERSION``) over AWS IoT Jobs.

The operator's side (:class:`OtaDirector`, in the parent: shard 0 against a shared cloud) puts the
firmware image in the cloud's object store, puts the luminaires in a thing group and, once the fleet has
connected, creates one job for that group **in every region** (jobs are regional, IOT_CORE.md section 10:
a device that fails over finds its job where it lands). Each region rolls out at ``--rollout-per-minute``
over the whole group, in which only its own devices act (a region's rate is spent on every device, and
a device takes the job from the region it is connected to), so the fleet's rate is about the one asked
for; it aborts by ``--abort-failure-pct``; when one region's job aborts, the operator cancels it in the
others too, as a fleet operator would, and the report says when and where.

The device's side (:func:`run_ota`, in each worker): every luminaire iterates ``device.jobs()``. For a
firmware job it reports ``downloading``, fetches the image over HTTPS through the presigned URL of its
job document (checking size and SHA-256), applies it for ``apply_s`` simulated seconds, fails with
probability ``--ota-failure-rate`` (FAILED, ``apply-failed``), else switches its firmware, reports
``rebooting`` and reboots (offline for the reboot time: the reconnect storm). After the reboot the
execution is handed over again (still IN_PROGRESS, maybe in another region after a failover), and a
device already on the job's version reports SUCCEEDED: the update is done only once the device is back.
Nothing is lost to a failure in the middle: a report that cannot be sent is sent again on the next
session, and a device that already switched does not download twice.

Figures (:class:`OtaFigures`) merge exactly over workers and shards: each device's time of reaching the
new version (its SUCCEEDED accepted) and its failure, the downloads and reboots; the operator adds the
job's creation time, the abort and each region's job status. The report's ``ota`` section turns them into
the rollout curve and the time to 50%, 95% and 100% of the targeted devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import ssl
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp

from iotfleet.device.jobs import JobExecution, JobRejected
from iotfleet.errors import ClientError, ConfigError, IotFleetError
from iotfleet.sim.fleet import SimDevice
from iotfleet.transport.tls import tls_client_context

__all__ = ["OTA_GROUP", "OTA_OPERATION", "OtaDirector", "OtaFigures", "OtaSpec", "job_id_of", "run_ota"]

log = logging.getLogger(__name__)

OTA_OPERATION: Final = "firmware-update"
OTA_GROUP: Final = "iotfleet-luminaires"
FIRMWARE_BUCKET: Final = "iotfleet-firmware"
POLL_S: Final = 1.0  # how often the operator reads the jobs' status
RETRY_S: Final = 1.0  # a device's pause after its jobs request was refused
CURVE_POINTS: Final = 600


def job_id_of(version: str) -> str:
    """The rollout's job id: ``ota-<version>`` with AWS's allowed characters (``[a-zA-Z0-9_-]``)."""
    return "ota-" + "".join(c if c.isalnum() or c in "_-" else "_" for c in version)


@dataclass(frozen=True, slots=True)
class OtaSpec:
    """The rollout, as ``--ota`` and its options ask for it (picklable: the workers get it)."""

    version: str
    rollout_per_minute: int = 1000  # CreateJob's default maximumPerMinute
    abort_failure_pct: float | None = None  # cancel the job once this share of executed things failed
    failure_rate: float = 0.0  # each device's chance that applying the image fails
    size_bytes: int = 256 * 1024
    apply_s: float = 20.0  # simulated seconds to write the image
    reboot_s: float = 30.0  # simulated seconds offline while rebooting into it
    abort_min_executed: int = 10  # minNumberOfExecutedThings of the abort criterion

    def __post_init__(self) -> None:
        if not self.version or len(self.version) > 64:
            raise ConfigError("--ota takes the firmware version to roll out, 1-64 characters (e.g. 2.5.0)")
        if not 1 <= self.rollout_per_minute <= 1000:
            raise ConfigError("--rollout-per-minute is 1-1000 (CreateJob's maximumPerMinute)")
        if self.abort_failure_pct is not None and not 0 < self.abort_failure_pct <= 100:
            raise ConfigError("--abort-failure-pct is a percentage in (0, 100]")
        if not 0 <= self.failure_rate <= 1:
            raise ConfigError("--ota-failure-rate is a probability from 0 to 1")
        if not 1 <= self.size_bytes <= 64 << 20:
            raise ConfigError("--ota-size is 1 byte to 64 MiB")

    @property
    def job_id(self) -> str:
        return job_id_of(self.version)

    def image(self) -> bytes:
        """The firmware image: deterministic bytes of the version, ``size_bytes`` long."""
        seed = hashlib.sha256(self.version.encode()).digest()
        blocks = math.ceil(self.size_bytes / 32)
        return b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(blocks))[: self.size_bytes]

    def job_config(self) -> dict[str, Any]:
        """CreateJob's configuration, the same in every region."""
        config: dict[str, Any] = {
            "jobExecutionsRolloutConfig": {"maximumPerMinute": self.rollout_per_minute},
            "presignedUrlConfig": {"expiresInSec": 3600},
        }
        if self.abort_failure_pct is not None:
            config["abortConfig"] = {
                "criteriaList": [
                    {
                        "failureType": "FAILED",
                        "action": "CANCEL",
                        "thresholdPercentage": self.abort_failure_pct,
                        "minNumberOfExecutedThings": self.abort_min_executed,
                    }
                ]
            }
        return config


# --------------------------------------------------------------------------- figures


@dataclass
class OtaFigures:
    """What the rollout did, in the form that merges exactly (a thing runs in one worker of one shard)."""

    targets: int = 0  # devices that took part (one per luminaire with an MQTT connection)
    updated: dict[str, float] = field(default_factory=dict)  # thing -> epoch its SUCCEEDED was accepted
    failed: dict[str, str] = field(default_factory=dict)  # thing -> why its update failed
    counts: Counter[str] = field(default_factory=Counter)  # downloads, download_bytes, reboots, errors
    job: dict[str, Any] | None = None  # the operator's: created_at, abort, each region's job (one shard)

    def merge(self, other: OtaFigures) -> None:
        self.targets += other.targets
        self.updated.update(other.updated)
        self.failed.update(other.failed)
        self.counts.update(other.counts)
        if other.job is not None and self.job is None:
            self.job = other.job

    def to_dict(self) -> dict[str, Any]:
        return {
            "targets": self.targets,
            "updated": self.updated,
            "failed": self.failed,
            "counts": dict(self.counts),
            "job": self.job,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OtaFigures:
        return cls(
            int(data["targets"]),
            {k: float(v) for k, v in data["updated"].items()},
            dict(data["failed"]),
            Counter(data["counts"]),
            data.get("job"),
        )

    def summary(self) -> dict[str, Any]:
        """The report's ``ota`` section: the rollout curve (devices on the new version, by second since the
        job was created), failures, the abort, and the time to 50%, 95% and 100% of the targets."""
        job = self.job or {}
        origin = job.get("created_at")
        if origin is None and self.updated:
            origin = min(self.updated.values())
        times = sorted(at - origin for at in self.updated.values()) if origin is not None else []

        def time_to(share: float) -> float | None:
            needed = math.ceil(share * self.targets) if self.targets else 0
            return round(times[needed - 1], 1) if 0 < needed <= len(times) else None

        abort = job.get("abort")
        if abort is not None:
            abort = {**abort, "at_s": None if origin is None else round(abort["epoch"] - origin, 1)}
        return {
            "version": job.get("version"),
            "job_id": job.get("job_id"),
            "error": job.get("error"),
            "created_at": origin,
            "targets": self.targets,
            "updated": len(self.updated),
            "failed": len(self.failed),
            "failures": dict(Counter(self.failed.values())),
            "not_updated": max(0, self.targets - len(self.updated) - len(self.failed)),
            "time_to_s": {"50%": time_to(0.5), "95%": time_to(0.95), "100%": time_to(1.0)},
            "aborted": abort,
            "curve": _curve(times),
            "regions": job.get("regions", {}),
            **dict(sorted(self.counts.items())),
        }


def _curve(times: Sequence[float]) -> list[list[float]]:
    """``[[seconds since the job, devices updated by then], ...]``: a point where the count changed,
    at most :data:`CURVE_POINTS` of them (evenly spread over the count), and the last."""
    if not times:
        return []
    step = max(1, math.ceil(len(times) / CURVE_POINTS))
    points = [[round(times[i], 1), i + 1] for i in range(step - 1, len(times), step)]
    if points[-1][1] != len(times):
        points.append([round(times[-1], 1), len(times)])
    return [[0.0, 0], *points]


# --------------------------------------------------------------------------- the device's side


class _Device(Protocol):
    def jobs(self) -> Any: ...

    def reboot(self, offline_s: float) -> None: ...


class _Firmware(Protocol):
    firmware: str


async def run_ota(
    device: SimDevice,
    client: _Device,
    state: _Firmware,
    spec: OtaSpec,
    figures: OtaFigures,
    *,
    ca_file: Path,
    speed: float,
) -> None:
    """One luminaire's part of the rollout, until its client closes (the task is cancelled then)."""
    figures.targets += 1
    rollout = _Rollout(device, client, state, spec, figures, tls_client_context(ca_file), speed)
    while True:
        try:
            async for job in client.jobs():
                try:
                    await rollout.handle(job)
                except JobRejected as exc:  # e.g. the job was canceled meanwhile: counted, the device goes on
                    figures.counts[f"rejected {exc.code}"] += 1
                except ClientError as exc:  # the session ended: the execution comes back on the next one
                    figures.counts[f"interrupted {type(exc).__name__}"] += 1
        except JobRejected as exc:  # start-next refused (throttled, an internal error): ask again later
            figures.counts[f"rejected {exc.code}"] += 1
            await asyncio.sleep(RETRY_S)


@dataclass
class _Rollout:
    """What one device needs to run firmware jobs."""

    device: SimDevice
    client: _Device
    state: _Firmware
    spec: OtaSpec
    figures: OtaFigures
    tls: ssl.SSLContext
    speed: float

    def __post_init__(self) -> None:
        self.rng = random.Random(self.device.seed ^ 0x07A)

    async def handle(self, job: JobExecution) -> None:
        document = job.document if isinstance(job.document, dict) else {}
        if document.get("operation") != OTA_OPERATION:
            await job.reject(f"unknown operation {document.get('operation')!r}: this device runs firmware updates")
            return
        version, figures, thing = str(document.get("version")), self.figures, self.device.thing
        if self.state.firmware == version:  # back from the reboot into it (or it was there already)
            await job.succeed({"firmware": version})
            figures.updated.setdefault(thing, time.time())
            figures.failed.pop(thing, None)
            return
        await job.progress({"step": "downloading", "version": version})
        try:
            image = await _download(str(document.get("url")), self.tls)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            figures.counts["download_errors"] += 1
            await self._fail(job, "download-failed", type(exc).__name__)
            return
        figures.counts["downloads"] += 1
        figures.counts["download_bytes"] += len(image)
        if len(image) != document.get("size") or hashlib.sha256(image).hexdigest() != document.get("sha256"):
            await self._fail(job, "checksum-mismatch", f"{len(image)} bytes")
            return
        await asyncio.sleep(self.spec.apply_s / self.speed)
        if self.rng.random() < self.spec.failure_rate:
            await self._fail(job, "apply-failed", "the image did not verify after writing")
            return
        self.state.firmware = version
        with contextlib.suppress(IotFleetError):  # said again once back: the device is on the new version now
            await job.progress({"step": "rebooting", "version": version})
        figures.counts["reboots"] += 1
        self.client.reboot(self.spec.reboot_s / self.speed)

    async def _fail(self, job: JobExecution, reason: str, detail: str) -> None:
        self.figures.failed[self.device.thing] = reason
        await job.fail(reason, {"detail": detail[:100]})


async def _download(url: str, tls: ssl.SSLContext) -> bytes:
    """GET the presigned URL; an answer other than 200 is an error naming the status."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=tls)) as session,
        session.get(url) as response,
    ):
        body = await response.read()
        if response.status != 200:
            raise aiohttp.ClientResponseError(
                response.request_info, (), status=response.status, message=body[:200].decode(errors="replace")
            )
        return body


# --------------------------------------------------------------------------- the operator's side


class JobsAccess(Protocol):
    """What the operator needs of the cloud for a rollout (:class:`~iotfleet.sim.access.CloudAccess`)."""

    def put_object(self, bucket: str, key: str, data: bytes) -> str: ...

    def add_things_to_group(self, group: str, things: Sequence[str]) -> None: ...

    def create_job(self, job_id: str, group: str, document: Mapping[str, Any], config: Mapping[str, Any]) -> None: ...

    def describe_job(self, region: str, job_id: str) -> dict[str, Any]: ...

    def cancel_job(self, region: str, job_id: str, comment: str) -> None: ...


class OtaDirector:
    """Creates the rollout's job once the fleet is up, watches it in every region, and cancels it
    everywhere when one region's abort criterion fires."""

    def __init__(self, access: JobsAccess, regions: Sequence[str], devices: Sequence[SimDevice], spec: OtaSpec) -> None:
        self.access = access
        self.regions = list(regions)
        self.devices = [d.thing for d in devices]
        self.spec = spec
        self.job: dict[str, Any] | None = None
        self._next_poll = 0.0
        self.errors: Counter[str] = Counter()

    def start(self) -> None:
        """Put the image, group the devices and create the job in every region (a job id of its own: a
        cloud kept from an earlier run may hold an earlier rollout of the same version). A refusal is
        logged and reported (``ota.error``), not raised: the rest of the run goes on."""
        spec = self.spec
        job_id = f"{spec.job_id}-{int(time.time())}"
        self.job = {"job_id": job_id, "version": spec.version, "created_at": None, "abort": None, "regions": {}}
        image = spec.image()
        try:
            url = self.access.put_object(FIRMWARE_BUCKET, f"luminaire-{spec.version}.bin", image)
            self.access.add_things_to_group(OTA_GROUP, self.devices)
            document = {
                "operation": OTA_OPERATION,
                "version": spec.version,
                "url": f"${{aws:iot:s3-presigned-url:{url}}}",
                "size": len(image),
                "sha256": hashlib.sha256(image).hexdigest(),
            }
            self.access.create_job(job_id, OTA_GROUP, document, spec.job_config())
        except IotFleetError as exc:
            log.error("the firmware rollout could not start: %s", exc)
            self.job["error"] = str(exc)
            return
        self.job["created_at"] = time.time()

    def tick(self) -> None:
        """Read each region's job (once a second); propagate an abort."""
        job = self.job
        now = time.monotonic()
        if job is None or job.get("error") or now < self._next_poll:
            return
        self._next_poll = now + POLL_S
        for region in self.regions:
            try:
                described = self.access.describe_job(region, job["job_id"])
            except IotFleetError as exc:  # the region is down: its last status stays
                self.errors[f"describe {region}: {type(exc).__name__}"] += 1
                continue
            job["regions"][region] = {
                k: described[k] for k in ("status", "reasonCode", "comment", "jobProcessDetails") if k in described
            }
            if job["abort"] is None and described.get("reasonCode") == "ABORTED":
                job["abort"] = {"region": region, "epoch": time.time(), "comment": described.get("comment")}
                self._cancel_others(job["job_id"], region)

    def _cancel_others(self, job_id: str, aborted_in: str) -> None:
        for region in self.regions:
            if region == aborted_in:
                continue
            try:
                self.access.cancel_job(region, job_id, f"aborted in {aborted_in}")
            except IotFleetError as exc:
                self.errors[f"cancel {region}: {type(exc).__name__}"] += 1
                log.warning("could not cancel %s in %s after its abort in %s: %s", job_id, region, aborted_in, exc)

    def figures(self) -> OtaFigures:
        """The operator's part of the report (the devices add theirs)."""
        job = None if self.job is None else {**self.job, "operator_errors": dict(self.errors)}
        return OtaFigures(job=job)
