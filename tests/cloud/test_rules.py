"""Topic rules and Basic Ingest (IOT_CORE.md section 3): ``$aws/rules/<rule>/<topic>`` reaches the named
rule and no subscriber; the ingest pipeline is fed by its rule both ways; a republish rule publishes
again; Basic Ingest to a rule that does not exist is counted."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfleet.cloud.local import LocalCloud, ThingSpec
from iotfleet.cloud.rules import Rule
from iotfleet.config import Identity
from iotfleet.device import DeviceClient
from iotfleet.errors import ConfigError, TopicError
from iotfleet.topics import INGEST_RULE, basic_ingest_topic, split_basic_ingest
from tests.conftest import ANY_ARN, TEST_QUOTAS, Probe, Probes, identity_context, lamp_options, wait_until

ALERTS = Rule("alerts", "dt/+/+/+/fault", "republish:alerts/${topic()}")
SNOOP_POLICY = {  # may subscribe to and receive anything, Basic Ingest included
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{ANY_ARN}:client/snoop"},
        {"Effect": "Allow", "Action": ["iot:Subscribe", "iot:Receive"], "Resource": "*"},
    ],
}


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalCloud]:
    with LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud", ingest=True, quotas=TEST_QUOTAS, rules=[ALERTS]) as c:
        yield c


@pytest.fixture
def lamp(cloud: LocalCloud) -> Identity:
    return cloud.register_thing("lamp-1", tenant="acme", site="hq")


def telemetry() -> bytes:
    body = {"ts": time.time(), "power_w": 5.0, "dim": 50, "lux": 100.0, "occupancy": False, "temperature_c": 21.5}
    return json.dumps(body).encode()


def snoop(cloud: LocalCloud, probes: Probes) -> Probe:
    cloud.create_policy("snoop", SNOOP_POLICY)
    (identity,) = cloud.register_things([ThingSpec("snoop", "ops", "hq", policy="snoop")])
    probe = probes(cloud.region("eu-west-1").endpoint, "snoop", identity_context(identity))
    assert probe.connect()
    return probe


def test_basic_ingest_reaches_the_ingest_rule_and_no_subscriber(
    cloud: LocalCloud, lamp: Identity, probes: Probes, transport: str
) -> None:
    watcher = snoop(cloud, probes)
    assert watcher.subscribe("$aws/rules/iotfleet_ingest/#") == [0x87]  # refused whatever the policy says
    assert watcher.subscribe("$aws/+/iotfleet_ingest/#") == [1]  # granted, and still receives nothing
    assert watcher.subscribe("dt/#") == [1]

    async def scenario() -> str:
        async with DeviceClient(**lamp_options(cloud, lamp, transport, basic_ingest=INGEST_RULE)) as device:
            topic = device.data_topic("telemetry")
            receipt = await device.publish("telemetry", telemetry())
            assert receipt.reason_code == 0x00  # it reached the rules engine
            return topic

    topic = asyncio.run(scenario())
    assert topic == "$aws/rules/iotfleet_ingest/dt/acme/hq/lamp-1/telemetry"
    assert wait_until(lambda: cloud.ingest_stats()[0]["ingested"] == 1)
    stats = cloud.ingest_stats()[0]
    assert stats["basic_ingest"] == 1
    assert stats["rules"]["rules"] == {INGEST_RULE: 1}
    rows = cloud.region("eu-west-1").ingest.query("SELECT thing, stream FROM raw")  # type: ignore[union-attr]
    assert rows == [("lamp-1", "telemetry")]  # the rule saw the data topic without the prefix
    watcher.pump(lambda: bool(watcher.messages), timeout=0.5)
    assert watcher.messages == []


def test_a_republish_rule_publishes_again_by_filter_and_by_basic_ingest(
    cloud: LocalCloud, lamp: Identity, probes: Probes
) -> None:
    watcher = snoop(cloud, probes)
    assert watcher.subscribe("alerts/#") == [1]
    device = probes(cloud.region("eu-west-1").endpoint, "lamp-1", identity_context(lamp))
    assert device.connect()
    assert device.publish("dt/acme/hq/lamp-1/fault", b'{"code": 7}') in (0x00, 0x10)
    assert watcher.pump(lambda: len(watcher.messages) >= 1)
    assert watcher.messages[0] == ("alerts/dt/acme/hq/lamp-1/fault", b'{"code": 7}')
    service = probes(cloud.region("eu-west-1").endpoint, "service", identity_context(cloud.service))
    assert service.connect()
    assert service.publish("$aws/rules/alerts/dt/acme/hq/lamp-2/fault", b'{"code": 8}') == 0x00
    assert watcher.pump(lambda: len(watcher.messages) >= 2)
    assert watcher.messages[1] == ("alerts/dt/acme/hq/lamp-2/fault", b'{"code": 8}')
    assert cloud.ingest_stats()[0]["rules"]["republished"] == 2


def test_basic_ingest_to_a_rule_that_does_not_exist_is_counted(cloud: LocalCloud, probes: Probes) -> None:
    service = probes(cloud.region("eu-west-1").endpoint, "service", identity_context(cloud.service))
    assert service.connect()
    assert service.publish("$aws/rules/nosuchrule/dt/acme/hq/lamp-1/telemetry", telemetry()) == 0x00
    assert wait_until(lambda: cloud.ingest_stats()[0]["rules"]["rule_not_found"] == 1)
    assert cloud.ingest_stats()[0]["ingested"] == 0


def test_rules_are_checked_when_made() -> None:
    with pytest.raises(ConfigError, match="rule name 'bad name'"):
        Rule("bad name", "a/b")
    with pytest.raises(ConfigError, match="neither 'ingest' nor 'republish:<topic>'"):
        Rule("r", "a/b", "lambda:fn")
    with pytest.raises(ConfigError, match="rule 'r'"):
        Rule("r", "a/#/b")
    with pytest.raises(ConfigError, match="takes name, topic and action, not sql"):
        Rule.from_dict({"name": "r", "sql": "SELECT *"})
    assert Rule.from_dict({"name": "r", "topic": "a/+"}) == Rule("r", "a/+", "ingest")
    with pytest.raises(ConfigError, match="given twice: dup"):
        LocalCloud(["eu-west-1"], rules=[Rule("dup", None), Rule("dup", "a/b")])


def test_basic_ingest_topics_keep_iot_cores_rules() -> None:
    assert split_basic_ingest("$aws/rules/r/a/b") == ("r", "a/b")
    assert split_basic_ingest("a/b") is None
    assert basic_ingest_topic("r", "1/2/3/4/5/6/7/8") == "$aws/rules/r/1/2/3/4/5/6/7/8"  # the prefix is free
    with pytest.raises(TopicError):
        basic_ingest_topic("r-1", "a")
