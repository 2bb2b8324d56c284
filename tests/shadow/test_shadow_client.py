"""The device's shadow client and sync engine against the local shadow service."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from iotfleet.cloud.local import LocalCloud
from iotfleet.cloud.services import shadow as shadow_service
from iotfleet.config import Identity
from iotfleet.device import DeviceClient
from iotfleet.errors import PublishRejected, RequestTimeout, ShadowRejected
from iotfleet.shadow.client import Shadow, ShadowSync
from tests.conftest import Watcher, lamp_options, until


@pytest.fixture
def lamp(local_cloud: LocalCloud) -> Identity:
    return local_cloud.register_thing("lamp-1", tenant="acme", site="hq")


def connect(cloud: LocalCloud, lamp: Identity, transport: str = "crt") -> DeviceClient:
    return DeviceClient(**lamp_options(cloud, lamp, transport))


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_get_update_delete_and_rejections(local_cloud: LocalCloud, lamp: Identity, transport: str) -> None:
    async def scenario() -> None:
        async with connect(local_cloud, lamp, transport) as device:
            shadow = Shadow(device)
            with pytest.raises(ShadowRejected) as missing:
                await shadow.get()
            assert (missing.value.code, missing.value.error) == (404, "No shadow exists with name: 'lamp-1'")
            accepted = await shadow.update(desired={"dim": 40}, reported={"dim": 10})
            assert accepted.version == 1
            doc = await shadow.get()
            assert (doc.state.desired, doc.state.reported, doc.state.delta) == ({"dim": 40}, {"dim": 10}, {"dim": 40})
            with pytest.raises(ShadowRejected) as conflict:
                await shadow.update(reported={"dim": 40}, version=7)
            assert conflict.value.code == 409
            assert conflict.value.client_token is not None
            with pytest.raises(PublishRejected) as refused:  # the default device policy leaves out delete
                await shadow.delete()
            assert refused.value.reason_code == 0x87
            deleted = await asyncio.to_thread(local_cloud.region("eu-west-1").shadows.delete, "lamp-1")
            assert deleted["version"] == 1
            assert isinstance(deleted["timestamp"], int)
            named = await Shadow(device, "config").update(reported={"fw": "2.1"})
            assert named.version == 1

    run(scenario())


def test_deltas_stream_operator_changes(local_cloud: LocalCloud, lamp: Identity) -> None:
    async def scenario() -> None:
        async with connect(local_cloud, lamp) as device:
            deltas = await Shadow(device).deltas()  # subscribed on return: no sleep
            await asyncio.to_thread(local_cloud.region("eu-west-1").shadows.update, "lamp-1", desired={"dim": 55})
            delta = await asyncio.wait_for(anext(deltas), 5)
            assert (delta.state, delta.version) == ({"dim": 55}, 1)
            await deltas.aclose()

    run(scenario())


def test_sync_applies_desired_values_and_reports_them(local_cloud: LocalCloud, lamp: Identity, tmp_path: Path) -> None:
    applied: list[int] = []
    operator = local_cloud.region("eu-west-1").shadows

    async def scenario() -> None:
        async with connect(local_cloud, lamp) as device:
            sync = ShadowSync(Shadow(device), handlers={"dim": applied.append}, state_file=tmp_path / "lamp.json")
            await sync.start()
            await asyncio.to_thread(operator.update, "lamp-1", desired={"dim": 30})
            assert await until(lambda: operator.get("lamp-1")["state"].get("reported") == {"dim": 30})
            assert "delta" not in operator.get("lamp-1")["state"]
            await sync.stop()
        assert applied == [30]
        assert json.loads((tmp_path / "lamp.json").read_text()) == {"reported": {"dim": 30}}

    run(scenario())


def test_sync_drops_stale_deltas(local_cloud: LocalCloud, lamp: Identity) -> None:
    applied: list[int] = []

    async def scenario() -> None:
        watcher = Watcher(local_cloud)
        await watcher.watch(local_cloud.endpoints[0])
        async with connect(local_cloud, lamp) as device:
            sync = ShadowSync(Shadow(device), handlers={"dim": applied.append})
            await sync.start()
            await asyncio.to_thread(local_cloud.region("eu-west-1").shadows.update, "lamp-1", desired={"dim": 60})
            assert await until(lambda: applied == [60])
            stale = json.dumps({"state": {"dim": 1}, "version": 1, "timestamp": 0}).encode()  # older than seen
            await watcher.sessions["eu-west-1"].publish("$aws/things/lamp-1/shadow/update/delta", stale, 1)
            assert await until(lambda: sync.stale_dropped == 1)
            await sync.stop()
        await watcher.close()
        assert applied == [60]

    run(scenario())


def test_reported_state_survives_a_restart_and_is_republished(
    local_cloud: LocalCloud, lamp: Identity, tmp_path: Path
) -> None:
    state = tmp_path / "lamp.json"
    state.write_text(json.dumps({"reported": {"dim": 25, "firmware": "3.0"}}))

    async def scenario() -> None:
        async with connect(local_cloud, lamp) as device:
            sync = ShadowSync(Shadow(device), state_file=state)
            await sync.start()
            await sync.stop()

    run(scenario())
    assert local_cloud.region("eu-west-1").shadows.get("lamp-1")["state"]["reported"] == {"dim": 25, "firmware": "3.0"}


def test_desired_change_made_while_offline_is_applied_on_reconnect(
    local_cloud: LocalCloud, lamp: Identity, tmp_path: Path
) -> None:
    applied: list[int] = []
    operator = local_cloud.region("eu-west-1").shadows

    async def session(start: bool) -> None:
        async with connect(local_cloud, lamp) as device:
            sync = ShadowSync(Shadow(device), handlers={"dim": applied.append}, state_file=tmp_path / "s.json")
            await sync.start()
            await sync.stop()

    run(session(True))
    operator.update("lamp-1", desired={"dim": 90})  # the device is offline
    run(session(False))
    assert applied == [90]
    assert operator.get("lamp-1")["state"]["reported"] == {"dim": 90}


def test_after_failover_the_device_reconciles_with_the_second_regions_shadow(
    local_cloud: LocalCloud, lamp: Identity
) -> None:
    applied: list[int] = []
    eu, us = local_cloud.region("eu-west-1"), local_cloud.region("us-east-1")

    async def scenario() -> None:
        async with connect(local_cloud, lamp) as device:
            sync = ShadowSync(Shadow(device), handlers={"dim": applied.append})
            await sync.start()
            await asyncio.to_thread(eu.shadows.update, "lamp-1", desired={"dim": 10})
            assert await until(lambda: applied == [10])
            await asyncio.to_thread(us.shadows.update, "lamp-1", desired={"dim": 77})  # a different document
            eu.kill()
            assert await until(lambda: device.endpoint is not None and device.endpoint.region == "us-east-1", 10)
            assert await until(lambda: applied == [10, 77], 10)
            assert await until(lambda: us.shadows.get("lamp-1")["state"].get("reported") == {"dim": 77}, 10)
            assert sync.resyncs >= 2
            await sync.stop()
        eu.restore()

    run(scenario())


def test_a_first_resync_that_fails_is_retried_on_the_next_session(
    local_cloud: LocalCloud, lamp: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied: list[int] = []
    eu = local_cloud.region("eu-west-1")
    for region in local_cloud.regions:
        region.shadows.update("lamp-1", desired={"dim": 30})

    async def scenario() -> None:
        async with connect(local_cloud, lamp) as device:
            sync = ShadowSync(Shadow(device), handlers={"dim": applied.append})
            monkeypatch.setattr(shadow_service, "RATE_PER_THING", 0)  # the service throttles every request
            with pytest.raises(ShadowRejected) as throttled:
                await sync.start()
            assert throttled.value.code == 429
            assert applied == []
            monkeypatch.setattr(shadow_service, "RATE_PER_THING", 20)
            eu.kill()  # a new session (in the other region) must resync
            assert await until(lambda: applied == [30], 10)
            assert sync.resyncs == 2
            await sync.stop()
        eu.restore()

    run(scenario())


def test_a_desired_change_that_causes_a_version_conflict_is_applied(local_cloud: LocalCloud, lamp: Identity) -> None:
    """The operator's change lands between the device's get and its report: the 409's re-get carries it."""
    applied: list[int] = []
    operator = local_cloud.region("eu-west-1").shadows

    async def scenario() -> None:
        async with connect(local_cloud, lamp) as device:
            sync = ShadowSync(Shadow(device), handlers={"dim": applied.append})
            await sync.resync()  # not started: no delta follower, so only the conflict path can see the change
            await asyncio.to_thread(operator.update, "lamp-1", desired={"dim": 70})
            await sync.report({"lux": 5})

    run(scenario())
    assert applied == [70]
    assert operator.get("lamp-1")["state"]["reported"] == {"lux": 5, "dim": 70}
    assert "delta" not in operator.get("lamp-1")["state"]


def test_report_recovers_from_a_version_conflict(local_cloud: LocalCloud, lamp: Identity) -> None:
    operator = local_cloud.region("eu-west-1").shadows

    async def scenario() -> None:
        async with connect(local_cloud, lamp) as device:
            sync = ShadowSync(Shadow(device))
            await sync.start()
            for level in (1, 2, 3):  # someone else moves the shadow on: our version is now stale
                await asyncio.to_thread(operator.update, "lamp-1", reported={"lux": level})
            stale = sync.version
            await sync.report({"dim": 5})
            assert sync.version is not None
            assert stale is not None
            assert sync.version > stale + 3  # re-got the version after the 409, then updated
            await sync.stop()

    run(scenario())
    assert operator.get("lamp-1")["state"]["reported"] == {"lux": 3, "dim": 5}


def test_a_handler_that_raises_is_counted_and_the_sync_goes_on(local_cloud: LocalCloud, lamp: Identity) -> None:
    applied: list[int] = []
    operator = local_cloud.region("eu-west-1").shadows

    def set_dim(value: int) -> None:
        if value < 0:
            raise ValueError("the lamp cannot dim below 0")
        applied.append(value)

    async def scenario() -> None:
        async with connect(local_cloud, lamp) as device:
            sync = ShadowSync(Shadow(device), handlers={"dim": set_dim})
            await sync.start()
            await asyncio.to_thread(operator.update, "lamp-1", desired={"dim": -5})
            assert await until(lambda: sync.handler_errors == 1)
            await asyncio.to_thread(operator.update, "lamp-1", desired={"dim": 20})
            assert await until(lambda: applied == [20])
            await sync.stop()

    run(scenario())


def test_a_request_whose_session_ends_while_it_is_sent_fails_once_and_leaves_nothing_unretrieved(
    local_cloud: LocalCloud, lamp: Identity
) -> None:
    """The session ends (its region killed) while the request awaits its PUBACK, and no region answers
    in time: the caller gets the timeout, and the answer's ConnectionLost is not left for asyncio to
    report as a future whose exception was never retrieved."""
    eu, us = local_cloud.region("eu-west-1"), local_cloud.region("us-east-1")
    unretrieved: list[dict[str, Any]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
        async with connect(local_cloud, lamp) as device:
            shadow = Shadow(device)
            await shadow.update(reported={"dim": 1})  # subscribed, and the shadow exists
            us.blackhole()
            eu.blackhole()  # no PUBACK, no answer
            request = asyncio.ensure_future(shadow.get(timeout=3))
            await asyncio.sleep(0.3)  # the request is out, waiting for its PUBACK (nothing to wait on)
            eu.kill()  # the session ends while the request is being sent
            with pytest.raises(RequestTimeout):
                await request
            del request
            gc.collect()
        eu.restore()
        us.restore()

    run(scenario())
    assert [c for c in unretrieved if "never retrieved" in str(c.get("message"))] == []
