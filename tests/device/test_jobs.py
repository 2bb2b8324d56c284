"""device.jobs(): job executions handed to the device, over real brokers and the local Jobs service."""

from __future__ import annotations

import asyncio
from typing import Any

from iotfleet.cloud.local import LocalCloud
from iotfleet.config import Identity
from iotfleet.device import BlockingDeviceClient, DeviceClient, JobExecution
from tests.conftest import lamp_options, until

FIRMWARE = {"operation": "firmware-update", "version": "2.0.0"}


def status(cloud: LocalCloud, region: str, job_id: str) -> str:
    return str(cloud.region(region).jobs.describe_execution(job_id, "lamp-1")["status"])


def test_jobs_are_handed_over_started_in_order_and_new_ones_wake_the_device(
    local_cloud: LocalCloud, lamp: Identity, transport: str
) -> None:
    local_cloud.create_job("fw-1", targets=["lamp-1"], document=FIRMWARE, regions=["eu-west-1"])
    seen: list[tuple[str, str, Any]] = []

    async def scenario() -> None:
        async with DeviceClient(**lamp_options(local_cloud, lamp, transport)) as device:
            jobs = device.jobs()
            first = await anext(jobs)
            seen.append((first.job_id, first.status, first.document))
            await first.progress({"step": "download", "percent": "50"})
            await first.succeed({"version": "2.0.0"})
            second = asyncio.ensure_future(anext(jobs))  # nothing pending: it waits for notify-next
            await asyncio.sleep(0.2)
            assert not second.done()
            await asyncio.to_thread(
                local_cloud.create_job, "cfg-2", targets=["lamp-1"], document={"dim": 40}, regions=["eu-west-1"]
            )
            job: JobExecution = await asyncio.wait_for(second, 10)
            seen.append((job.job_id, job.status, job.document))
            await job.fail("bad checksum")

    asyncio.run(scenario())
    assert seen == [("fw-1", "IN_PROGRESS", FIRMWARE), ("cfg-2", "IN_PROGRESS", {"dim": 40})]
    jobs = local_cloud.region("eu-west-1").jobs
    assert jobs.describe_execution("fw-1", "lamp-1")["statusDetails"] == {"version": "2.0.0"}
    assert jobs.describe_execution("cfg-2", "lamp-1")["statusDetails"] == {"reason": "bad checksum"}
    assert (jobs.describe_job("fw-1")["status"], jobs.describe_job("cfg-2")["status"]) == ("COMPLETED", "COMPLETED")


def test_a_job_resumes_after_a_failover_and_is_not_run_twice_after_the_failback(
    local_cloud: LocalCloud, lamp: Identity
) -> None:
    local_cloud.create_job("fw-9", targets=["lamp-1"], document=FIRMWARE)  # in both regions
    eu = local_cloud.region("eu-west-1")
    handed: list[str] = []

    async def scenario() -> None:
        async with DeviceClient(**lamp_options(local_cloud, lamp)) as device:
            jobs = device.jobs()
            first = await anext(jobs)
            handed.append(f"{first.job_id} on {device.endpoint.region if device.endpoint else '?'}")
            eu.kill()  # the device is cut off before it finishes
            again = await asyncio.wait_for(anext(jobs), 20)  # resumed where it failed over to
            handed.append(f"{again.job_id} on {device.endpoint.region if device.endpoint else '?'}")
            await again.succeed()
            eu.restore()
            assert await until(lambda: device.endpoint is not None and device.endpoint.region == "eu-west-1", 20)
            # back home, its execution there is still IN_PROGRESS: reported SUCCEEDED, not handed over again
            nothing = asyncio.ensure_future(anext(jobs))
            assert await until(lambda: status(local_cloud, "eu-west-1", "fw-9") == "SUCCEEDED", 20)
            assert not nothing.done()
            nothing.cancel()

    asyncio.run(scenario())
    assert handed == ["fw-9 on eu-west-1", "fw-9 on us-east-1"]
    assert status(local_cloud, "us-east-1", "fw-9") == "SUCCEEDED"


def test_the_blocking_client_runs_jobs_too(local_cloud: LocalCloud, lamp: Identity) -> None:
    local_cloud.create_job("fw-b", targets=["lamp-1"], document=FIRMWARE, regions=["eu-west-1"])
    with BlockingDeviceClient(**lamp_options(local_cloud, lamp)) as device:
        handled = []
        for job in device.jobs(timeout=3):
            handled.append(job.job_id)
            job.progress({"step": "apply"})
            job.succeed()
    assert handled == ["fw-b"]
    assert status(local_cloud, "eu-west-1", "fw-b") == "SUCCEEDED"
