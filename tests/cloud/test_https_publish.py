"""HTTPS device publish: POST /topics/<topic> with the device certificate, through the policy and into
the broker (and so to subscribers and the ingest), with AWS's error shapes."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfleet.cloud.local import LocalCloud, ThingSpec
from iotfleet.config import Identity
from tests.conftest import TEST_QUOTAS, identity_context

HTTPS_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/dt/acme/hq/*"}],
}


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalCloud]:
    with LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud", ingest=True, quotas=TEST_QUOTAS) as local:
        local.create_policy("https-device", HTTPS_POLICY)
        yield local


def post(
    cloud: LocalCloud, identity: Identity, topic: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict[str, str]]:
    region = cloud.region("eu-west-1")
    assert region.https is not None
    url = f"https://localhost:{region.https.port}/topics/{urllib.parse.quote(topic, safe='')}?qos=1"
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=identity_context(identity), timeout=10) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def test_a_device_publishes_over_https_and_the_ingest_stores_it(cloud: LocalCloud) -> None:
    [meter] = cloud.register_things([ThingSpec("meter-1", "acme", "hq", policy="https-device")])
    properties = [{"key": "iotfleet-msg-id", "value": "m-1"}, {"key": "iotfleet-seq", "value": "1"}]
    header = base64.b64encode(json.dumps(properties).encode()).decode()
    body = json.dumps({"ts": 1_700_000_000, "power_w": 12.5, "dim": 40, "lux": 300.0, "occupancy": True,
                       "temperature_c": 21.0}).encode()  # fmt: skip
    status, answer, _ = post(
        cloud, meter, "dt/acme/hq/meter-1/telemetry", body, {"x-amz-mqtt5-user-properties": header}
    )
    assert (status, answer["message"]) == (200, "OK")
    stats = cloud.ingest_stats()[0]
    assert stats["ingested"] == 1  # with its user properties, as from MQTT: dedupe and sequence
    assert [s.ranges() for s in stats["by_device"].values()] == [[[1, 1]]]


def test_https_refuses_what_iot_core_refuses(cloud: LocalCloud, tmp_path: Path) -> None:
    [meter] = cloud.register_things([ThingSpec("meter-2", "acme", "hq", policy="https-device")])
    status, answer, headers = post(cloud, meter, "dt/other/hq/meter-2/telemetry", b"{}")
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("ForbiddenException")
    assert "traceId" in answer
    # the rendered device policy is built on the thing name, which HTTPS does not resolve: nothing allowed
    lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
    assert post(cloud, lamp, "dt/acme/hq/lamp-1/telemetry", b"{}")[0] == 403
    assert post(cloud, meter, "$aws/things/meter-2/shadow/bogus", b"{}")[0] == 400
    assert post(cloud, meter, "dt/acme/hq/meter-2/big", b"x" * (128 * 1024 + 1))[0] == 413
    certificate_id = cloud.region("eu-west-1").registry.certificates_of("meter-2")[0].certificate_id
    cloud.update_certificate(certificate_id, "INACTIVE")
    assert post(cloud, meter, "dt/acme/hq/meter-2/telemetry", b"{}")[0] == 403
    # and no certificate at all: the TLS handshake fails
    region = cloud.region("eu-west-1")
    assert region.https is not None
    bare = ssl.create_default_context(cafile=str(cloud.ca_file))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(
            urllib.request.Request(f"https://localhost:{region.https.port}/topics/x", data=b"{}", method="POST"),
            context=bare, timeout=10,
        ).read()  # fmt: skip
    assert cloud.info()["regions"][0]["https_port"] == region.https.port
