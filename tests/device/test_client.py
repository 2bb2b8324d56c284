"""DeviceClient against real brokers, on both transports (the ``transport`` fixture)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from iotfleet.cloud.local import LocalCloud
from iotfleet.cloud.registry import CertificateStatus
from iotfleet.config import Endpoint, Identity, OutboxPolicy, OverflowPolicy
from iotfleet.device import BlockingDeviceClient, DeviceClient, DeviceState, EventKind, PublishFailed, PublishReceipt
from iotfleet.device.events import Disconnected, PublishAcked
from iotfleet.errors import ClientStateError, ConfigError, ConnectError, PublishRejected, TopicError
from iotfleet.shadow.client import Shadow
from iotfleet.testing import LOCAL_FAST
from iotfleet.topics import MESSAGE_ID_PROPERTY, SEQUENCE_PROPERTY
from tests.conftest import Watcher, lamp_options


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def device(lamp: Identity, cloud: LocalCloud, transport: str, **kw: Any) -> DeviceClient:
    return DeviceClient(**lamp_options(cloud, lamp, transport, **kw))


def test_publish_reaches_the_cloud_with_message_id_and_sequence(
    local_cloud: LocalCloud, lamp: Identity, transport: str
) -> None:
    async def scenario() -> None:
        watcher = await Watcher(local_cloud).start()
        async with device(lamp, local_cloud, transport) as dev:
            first = await dev.publish("power", {"watts": 12.5})
            second = await dev.publish("power", b"raw")
        await watcher.wait_for(lambda: len(watcher.messages) >= 2)
        await watcher.close()
        assert (first.topic, first.reason_code, first.endpoint.region) == ("dt/acme/hq/lamp-1/power", 0x00, "eu-west-1")
        assert (first.seq, second.seq) == (1, 2)
        region, message = watcher.messages[0]
        assert region == "eu-west-1"
        assert json.loads(message.payload) == {"watts": 12.5}
        assert message.property(MESSAGE_ID_PROPERTY) == first.message_id
        assert message.property(SEQUENCE_PROPERTY) == "1"
        assert set(watcher.ids) == {first.message_id, second.message_id}

    run(scenario())


def test_commands_are_received_on_the_things_command_topics(
    local_cloud: LocalCloud, lamp: Identity, transport: str
) -> None:
    async def scenario() -> None:
        operator = await Watcher(local_cloud).start()
        async with device(lamp, local_cloud, transport) as dev:
            commands = await dev.commands()  # returns once the SUBACK is in: no sleep, no polling
            await operator.sessions["eu-west-1"].publish("cmd/acme/hq/lamp-1/dim", b'{"level": 40}', 1)
            await operator.sessions["eu-west-1"].publish("cmd/acme/hq/lamp-2/dim", b'{"level": 99}', 1)
            command = await asyncio.wait_for(anext(commands), 5)
            assert (command.name, command.json()) == ("dim", {"level": 40})
            await commands.aclose()
        await operator.close()

    run(scenario())


def test_foreign_topic_raises_publish_rejected_and_leaves_the_outbox(
    local_cloud: LocalCloud, lamp: Identity, transport: str
) -> None:
    events: list[Any] = []

    async def scenario() -> None:
        async with device(lamp, local_cloud, transport, listeners=[events.append]) as dev:
            with pytest.raises(PublishRejected) as info:
                await dev.publish_to("dt/acme/hq/lamp-2/power", b"forged")
            assert info.value.reason_code == 0x87
            assert "0x87 not-authorized" in info.value.message
            assert len(dev.outbox) == 0
            assert dev.counters.rejected == {"0x87 not-authorized": 1}
            assert (await dev.publish("power", b"ok")).reason_code < 0x80  # the session survived

    run(scenario())
    failed = [e for e in events if e.kind is EventKind.PUBLISH_FAILED]
    assert [(e.topic, e.reason_code) for e in failed] == [("dt/acme/hq/lamp-2/power", 0x87)]


def test_misuse_raises_an_error_that_says_what_to_do(local_cloud: LocalCloud, lamp: Identity, transport: str) -> None:
    async def scenario() -> None:
        dev = device(lamp, local_cloud, transport)
        with pytest.raises(ClientStateError, match="enter the client first"):
            await dev.publish("power", b"x")
        async with dev:
            assert dev.state is DeviceState.CONNECTED
            with pytest.raises(ClientStateError, match="entered once"):
                await dev.__aenter__()
        assert dev.state is DeviceState.CLOSED  # type: ignore[comparison-overlap]  # mypy keeps the narrowing above
        with pytest.raises(ClientStateError, match="closed; create a new DeviceClient"):
            await dev.publish("power", b"x")

    run(scenario())


def test_bad_input_is_refused_before_sending(local_cloud: LocalCloud, lamp: Identity, transport: str) -> None:
    async def scenario() -> None:
        async with device(lamp, local_cloud, transport) as dev:
            with pytest.raises(ConfigError, match="exceeds IoT Core's 131072-byte limit"):
                await dev.publish("power", b"x" * (128 * 1024 + 1))
            with pytest.raises(ConfigError, match="QoS 2"):
                await dev.publish("power", b"x", qos=2)
            with pytest.raises(TopicError, match="stream id"):
                await dev.publish("power/extra", b"x")
            with pytest.raises(TopicError, match="reserved"):
                await dev.publish_to("$aws/things/lamp-1/shadow/update/accepted", b"{}")
            with pytest.raises(ConfigError, match="not JSON-serialisable"):
                await dev.publish("power", {"when": object()})
            assert dev.counters.enqueued == 0
        async with DeviceClient(identity=lamp, endpoints=local_cloud.endpoints, transport=transport) as unscoped:
            with pytest.raises(ConfigError, match=r"tenant=\.\.\., site="):
                await unscoped.publish("power", b"x")

    run(scenario())


def test_reconnect_restores_subscriptions_and_delivers_what_was_queued_offline(tmp_path: Any, transport: str) -> None:
    with LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud") as cloud:
        lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
        region = cloud.region("eu-west-1")

        async def scenario() -> None:
            offline = asyncio.Event()

            def listen(event: Any) -> None:
                if event.kind is EventKind.DISCONNECTED:
                    offline.set()

            async with device(lamp, cloud, transport, listeners=[listen]) as dev:
                await dev.subscribe("cmd/acme/hq/lamp-1/+")
                region.kill()
                await asyncio.wait_for(offline.wait(), 5)
                assert dev.endpoint is None
                queued = [dev.enqueue("power", f"offline-{i}".encode()) for i in range(20)]
                region.restore()
                receipts = await asyncio.wait_for(asyncio.gather(*queued), 10)
                assert [r.seq for r in receipts] == list(range(1, 21))
                watcher = await Watcher(cloud, "dt/#").start()
                inbox = dev.messages("cmd/#")  # collecting from here; the subscription was restored
                await watcher.sessions["eu-west-1"].publish("cmd/acme/hq/lamp-1/dim", b"1", 1)
                assert (await asyncio.wait_for(anext(inbox), 5)).topic == "cmd/acme/hq/lamp-1/dim"
                await inbox.aclose()
                await watcher.close()

        run(scenario())


def test_first_connect_failure_names_every_endpoint(local_cloud: LocalCloud, lamp: Identity, transport: str) -> None:
    for region in local_cloud.regions:
        region.kill()

    async def scenario() -> None:
        with pytest.raises(ConnectError) as info:
            async with device(lamp, local_cloud, transport, connect_wait_s=1.5):
                pass
        for endpoint in local_cloud.endpoints:
            assert str(endpoint) in info.value.message
        assert info.value.reason == "refused"

    run(scenario())


def test_overflow_drop_oldest_reports_every_evicted_message(
    local_cloud: LocalCloud, lamp: Identity, transport: str
) -> None:
    events: list[Any] = []
    down = [Endpoint(region="nowhere", host="127.0.0.1", port=1)]

    async def scenario() -> None:
        policy = OutboxPolicy(max_messages=3, overflow=OverflowPolicy.DROP_OLDEST)
        dev = DeviceClient(
            identity=lamp,
            endpoints=down,
            tenant="acme",
            site="hq",
            transport=transport,
            reconnect=LOCAL_FAST,
            outbox=policy,
            listeners=[events.append],
            connect_wait_s=0,
            drain_on_close_s=0,
        )
        async with dev:
            futures = [dev.enqueue("power", str(i).encode()) for i in range(5)]
            assert [e.payload for e in dev.outbox.pending()] == [b"2", b"3", b"4"]
            assert dev.outbox.stats.dropped_oldest == 2
            for fut in futures[:2]:
                with pytest.raises(Exception, match="dropped-oldest"):
                    await fut

    run(scenario())
    reasons = [e.reason for e in events if isinstance(e, PublishFailed)]
    assert reasons == ["dropped-oldest", "dropped-oldest", "closed", "closed", "closed"]


def test_blocking_facade_publishes_and_receives(local_cloud: LocalCloud, lamp: Identity, transport: str) -> None:
    with BlockingDeviceClient(**lamp_options(local_cloud, lamp, transport)) as dev:
        receipt = dev.publish("power", {"watts": 3})
        assert receipt.reason_code < 0x80
        commands = dev.commands(timeout=5)
        operator = asyncio.run(_publish_once(local_cloud, "cmd/acme/hq/lamp-1/reboot"))
        assert operator == 0x00
        command = next(commands)
        assert command.name == "reboot"
    with pytest.raises(ClientStateError, match="first"):
        dev.publish("power", b"x")


async def _publish_once(cloud: LocalCloud, topic: str) -> int:
    watcher = Watcher(cloud)
    await watcher.watch(cloud.endpoints[0])
    code = await watcher.sessions["eu-west-1"].publish(topic, b"{}", 1)
    await watcher.close()
    return code


Factory = Callable[..., Identity]


def test_identity_from_pem_bytes_connects(local_cloud: LocalCloud, lamp: Identity, tmp_path: Any) -> None:
    from_bytes = Identity.from_pem(
        "lamp-1",
        certificate=lamp.cert_file.read_bytes(),
        private_key=lamp.key_file.read_text(),
        ca=lamp.ca_file.read_bytes(),
        directory=tmp_path / "secrets",
    )
    assert oct(from_bytes.key_file.stat().st_mode & 0o777) == "0o600"

    async def scenario() -> None:
        async with device(from_bytes, local_cloud, "crt") as dev:
            assert (await dev.publish("power", b"1")).reason_code < 0x80

    run(scenario())
    with pytest.raises(ConfigError, match="key for lamp-1 is not PEM"):
        Identity.from_pem("lamp-1", certificate=lamp.cert_file.read_bytes(), private_key=b"oops", ca=b"-----BEGIN x")


def test_envelope_carries_id_and_sequence_in_json_payloads(local_cloud: LocalCloud, lamp: Identity) -> None:
    async def scenario() -> None:
        watcher = await Watcher(local_cloud).start()
        async with device(lamp, local_cloud, "crt", outbox=OutboxPolicy(envelope=True)) as dev:
            receipt = await dev.publish("power", {"watts": 3})
            await dev.publish("power", b"raw bytes stay as they are")
        await watcher.wait_for(lambda: len(watcher.messages) >= 2)
        await watcher.close()
        enveloped = json.loads(watcher.messages[0][1].payload)
        assert enveloped == {"watts": 3, "_iotfleet": {"id": receipt.message_id, "seq": 1}}
        assert watcher.messages[1][1].payload == b"raw bytes stay as they are"

    run(scenario())


def test_qos0_publish_is_sent_and_not_queued(local_cloud: LocalCloud, lamp: Identity, transport: str) -> None:
    async def scenario() -> None:
        watcher = await Watcher(local_cloud).start()
        async with device(lamp, local_cloud, transport) as dev:
            receipt = await dev.publish("power", b"fire-and-forget", qos=0)
            assert (receipt.reason_code, receipt.seq) == (0, 0)
            assert len(dev.outbox) == 0
        await watcher.wait_for(lambda: len(watcher.messages) >= 1)
        await watcher.close()
        assert [m.payload for _, m in watcher.messages] == [b"fire-and-forget"]

    run(scenario())


def test_queue_sends_with_no_receipt_and_the_events_tell_the_outcome(
    local_cloud: LocalCloud, lamp: Identity, transport: str
) -> None:
    acked: list[int] = []

    async def scenario() -> None:
        watcher = await Watcher(local_cloud).start()
        async with device(lamp, local_cloud, transport) as dev:
            dev.add_listener(lambda e: acked.append(e.seq) if isinstance(e, PublishAcked) else None)
            for level in (10, 20, 30):
                dev.queue("power", {"level": level})
            await dev.flush(10)
            assert len(dev.outbox) == 0
        await watcher.wait_for(lambda: len(watcher.messages) >= 3)
        await watcher.close()
        assert sorted(json.loads(m.payload)["level"] for _, m in watcher.messages) == [10, 20, 30]
        with pytest.raises(ClientStateError):
            dev.queue("power", {"level": 40})

    run(scenario())
    assert sorted(acked) == [1, 2, 3]


def test_an_unanswered_publish_ends_the_session_long_before_keepalive_would(
    local_cloud: LocalCloud, lamp: Identity, transport: str
) -> None:
    """Only the per-device ack timer can notice here: keepalive is 60 s, the PUBACK deadline 1 s."""
    policy = LOCAL_FAST.model_copy(update={"keepalive_s": 60, "ping_timeout_s": 1.0})
    eu = local_cloud.region("eu-west-1")
    reasons: list[str] = []

    async def scenario() -> None:
        async with device(lamp, local_cloud, transport, reconnect=policy) as dev:
            dev.add_listener(lambda e: reasons.append(e.reason) if isinstance(e, Disconnected) else None)
            await asyncio.sleep(1.5)  # idle on the preferred endpoint: nothing to wake for
            assert reasons == []
            eu.blackhole()
            try:
                receipt = await asyncio.wait_for(dev.publish("power", b"1"), 15)
            finally:
                eu.restore()
            assert reasons[0] == "ack-timeout"
            assert receipt.endpoint.region == "us-east-1"  # replayed after the failover

    run(scenario())


def test_a_certificate_revoked_in_one_region_fails_over_to_the_region_where_it_is_valid(
    local_cloud: LocalCloud, lamp: Identity, transport: str
) -> None:
    """The revoked certificate's CONNECTs fail (the region's TLS handshake refuses it, as IoT Core's does):
    failed attempts, so the device fails over after ``failover_after_failures`` of them."""
    eu = local_cloud.region("eu-west-1")
    assert lamp.certificate_id is not None
    eu.registry.set_status(lamp.certificate_id, CertificateStatus.REVOKED)
    eu.sync_authz()
    events: list[Any] = []
    policy = LOCAL_FAST.model_copy(update={"failback_probe_s": 60.0})

    async def scenario() -> None:
        failed_over = asyncio.Event()

        def listen(event: Any) -> None:
            events.append(event)
            if event.kind is EventKind.FAILED_OVER:
                failed_over.set()

        async with device(lamp, local_cloud, transport, reconnect=policy, listeners=[listen]) as dev:
            await asyncio.wait_for(failed_over.wait(), 15)
            receipt = await dev.publish("power", b"1", timeout=10)
            assert receipt.endpoint.region == "us-east-1"
            assert dev.counters.short_sessions == 0

    run(scenario())
    eu_sessions = [e for e in events if e.kind is EventKind.CONNECTED and e.endpoint.region == "eu-west-1"]
    assert eu_sessions == []
    eu_refusals = [e for e in events if e.kind is EventKind.CONNECT_FAILED and e.endpoint.region == "eu-west-1"]
    assert len(eu_refusals) == policy.failover_after_failures


def test_streams_end_when_the_client_closes(local_cloud: LocalCloud, lamp: Identity, transport: str) -> None:
    """An ``async for`` over messages(), commands() or deltas() finishes on close (it used to wait forever)."""

    async def drain(stream: Any) -> list[Any]:
        return [item async for item in stream]

    async def scenario() -> None:
        operator = await Watcher(local_cloud).start()
        dev = device(lamp, local_cloud, transport)
        async with dev:
            commands = await dev.commands()
            readers = [
                asyncio.ensure_future(drain(commands)),
                asyncio.ensure_future(drain(dev.messages())),
                asyncio.ensure_future(drain(await Shadow(dev).deltas())),
            ]
            probe = dev.messages("cmd/#")
            await operator.sessions["eu-west-1"].publish("cmd/acme/hq/lamp-1/dim", b"{}", 1)
            await asyncio.wait_for(anext(probe), 5)  # delivered to every stream at once
            await dev.close()
            commands_read, messages_read, deltas_read = await asyncio.wait_for(asyncio.gather(*readers), 5)
        await operator.close()
        assert [c.name for c in commands_read] == ["dim"]  # what was received is still read, then the end
        assert [m.topic for m in messages_read] == ["cmd/acme/hq/lamp-1/dim"]
        assert deltas_read == []
        with pytest.raises(ClientStateError, match="closed"):
            dev.messages()

    run(scenario())


def test_blocking_commands_are_subscribed_on_return_and_end_on_close(
    local_cloud: LocalCloud, lamp: Identity, transport: str
) -> None:
    with BlockingDeviceClient(**lamp_options(local_cloud, lamp, transport)) as dev:
        commands = dev.commands()  # no timeout: only the close ends it
        assert asyncio.run(_publish_once(local_cloud, "cmd/acme/hq/lamp-1/reboot")) == 0x00
        assert next(commands).name == "reboot"
        reader = concurrent.futures.ThreadPoolExecutor(1)
        rest = reader.submit(list, commands)
        dev.close()
        assert rest.result(timeout=10) == []
        reader.shutdown()


def test_a_standby_session_takes_over_when_the_region_dies_and_fails_back_when_it_returns(
    local_cloud: LocalCloud, lamp: Identity, transport: str
) -> None:
    """With ``standby`` the device holds a session in each region; the kill costs it no CONNECT at all."""
    primary, secondary = local_cloud.regions
    events: list[Any] = []

    async def scenario() -> None:
        presence = await Watcher(local_cloud, "$aws/events/presence/connected/lamp-1").start()
        policy = LOCAL_FAST.model_copy(update={"standby": True})
        async with device(lamp, local_cloud, transport, reconnect=policy, listeners=[events.append]) as dev:
            assert await presence.wait_for(lambda: {r for r, _ in presence.messages} == {"eu-west-1", "us-east-1"})
            assert (await dev.publish("power", b"before")).endpoint.region == primary.name
            killed_at = len(events)
            primary.kill()
            after = await dev.publish("power", b"after the kill")
            assert after.endpoint.region == secondary.name
            kinds = [e.kind for e in events[killed_at:] if e.kind is not EventKind.PUBLISH_ACKED]
            # reset, the standby takes over (told as a failover and a connection), and nothing else: no
            # CONNECT refused by the dead region, no backoff
            assert kinds == [EventKind.DISCONNECTED, EventKind.FAILED_OVER, EventKind.CONNECTED]
            primary.restore()
            receipts: list[PublishReceipt] = []
            while not receipts or receipts[-1].endpoint.region != primary.name:  # the failback, once it opens
                receipts.append(await dev.publish("power", b"until back home"))
            moves = [
                (e.from_endpoint.region, e.to_endpoint.region, e.failback)
                for e in events
                if e.kind is EventKind.FAILED_OVER
            ]
            assert moves == [(primary.name, secondary.name, False), (secondary.name, primary.name, True)]
            assert dev.counters.connect_failures == 0
        await presence.close()

    run(scenario())
