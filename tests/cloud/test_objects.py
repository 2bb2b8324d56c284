"""Firmware objects for job documents: stored, presigned by the Jobs service, fetched over HTTPS; and the
control API's jobs and objects requests (what a simulator shard drives a shared cloud with)."""

from __future__ import annotations

import hashlib
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfleet.cloud.control import ControlClient, ControlServer
from iotfleet.cloud.local import LocalCloud
from iotfleet.cloud.objects import Presigner, s3_url
from iotfleet.errors import CloudError, ConfigError
from tests.conftest import TEST_QUOTAS

IMAGE = bytes(range(256)) * 300


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalCloud]:
    with LocalCloud(["eu-west-1", "us-east-1"], workdir=tmp_path / "cloud", quotas=TEST_QUOTAS) as local:
        yield local


def fetch(cloud: LocalCloud, url: str) -> tuple[int, bytes]:
    """GET ``url`` as a device does: trusting the cloud's CA, with no client certificate."""
    context = ssl.create_default_context(cafile=str(cloud.ca_file))
    try:
        with urllib.request.urlopen(url, context=context, timeout=10) as answer:  # noqa: S310 - https only
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_presigned_url_is_valid_unchanged_until_it_expires() -> None:
    presigner = Presigner(b"k" * 32)
    url = presigner.sign("https://example.com/a/b.bin", 60, now=1_800_000_000)
    assert "X-Amz-Expires=60" in url
    assert "X-Amz-Signature=" in url
    assert presigner.valid(url, now=1_800_000_030)
    assert not presigner.valid(url, now=1_800_000_061)  # expired
    assert not presigner.valid(url.replace("b.bin", "c.bin"), now=1_800_000_030)  # another object
    assert not Presigner(b"x" * 32).valid(url, now=1_800_000_030)  # signed by another cloud
    assert not presigner.valid("https://example.com/a/b.bin", now=1_800_000_030)  # not signed at all


def test_a_job_document_gets_a_url_the_device_downloads_the_object_from(cloud: LocalCloud) -> None:
    url = cloud.put_object("firmware", "lamp/2.0.bin", IMAGE)
    assert url == s3_url("eu-west-1", "firmware", "lamp/2.0.bin")
    lamp = "lamp-1"
    cloud.register_thing(lamp, tenant="acme", site="hq")
    document = {"operation": "firmware-update", "url": f"${{aws:iot:s3-presigned-url:{url}}}"}
    cloud.create_job("fw-2", targets=[lamp], document=document, presignedUrlConfig={"expiresInSec": 120})
    handed = cloud.region("us-east-1").jobs.describe_execution("fw-2", lamp)["jobDocument"]["url"]
    assert handed.startswith("https://localhost:")
    assert "X-Amz-Expires=120" in handed
    assert fetch(cloud, handed) == (200, IMAGE)
    status, body = fetch(cloud, handed.replace("X-Amz-Expires=120", "X-Amz-Expires=999"))
    assert status == 403
    assert b"<Code>AccessDenied</Code>" in body
    assert cloud.objects is not None
    gone = cloud.objects.presigner.sign(f"https://localhost:{cloud.objects.port}/firmware/gone.bin", 60)
    status, body = fetch(cloud, gone)
    assert status == 404
    assert b"<Code>NoSuchKey</Code>" in body
    # a URL the store does not hold stays where it points, signed: the device fetches it from there
    assert cloud.objects.presign("https://cdn.example.com/x.bin", 60).startswith("https://cdn.example.com/x.bin?")
    virtual_host = "https://firmware.s3.eu-west-1.amazonaws.com/lamp/2.0.bin"
    assert fetch(cloud, cloud.objects.presign(virtual_host, 60)) == (200, IMAGE)
    assert cloud.objects.served == 2


def test_object_names_that_leave_the_store_are_refused(cloud: LocalCloud) -> None:
    hostile = [
        ("firmware", "../../etc/passwd"),
        ("firmware", "/etc/passwd"),  # an absolute key would replace the store's path
        ("..", "x"),
        ("a/b", "x"),
        ("firmware", ""),
        ("firmware", "a//b"),
        ("firmware", "a/./b"),
    ]
    for bucket, key in hostile:
        with pytest.raises(ConfigError, match="naming rules"):
            cloud.put_object(bucket, key, b"x")
    assert cloud.objects is not None
    assert [p for p in cloud.workdir.rglob("*") if p.is_file() and "objects" in p.parts] == []
    # nor can a job document name a file outside the store: presigned as a foreign URL, refused when fetched
    escaped = cloud.objects.presign("https://s3.eu-west-1.amazonaws.com/firmware//etc/passwd", 60)
    assert not escaped.startswith("https://localhost")


def test_presigned_urls_last_their_time_in_any_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The date stamp is UTC: a summer-time zone must not take an hour off (or add one)."""
    presigner = Presigner(b"k" * 32)
    july = 1_783_000_000.0  # 2026-07-02, summer time in Berlin and New York
    for zone in ("Europe/Berlin", "America/New_York", "UTC"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        url = presigner.sign("https://example.com/f.bin", 3600, now=july)
        assert presigner.valid(url, now=july + 3599), zone
        assert not presigner.valid(url, now=july + 3601), zone
    monkeypatch.delenv("TZ")
    time.tzset()


def test_the_control_api_puts_objects_and_creates_describes_and_cancels_jobs(cloud: LocalCloud) -> None:
    cloud.register_thing("lamp-1", tenant="acme", site="hq")
    with ControlServer(cloud) as server:
        client = ControlClient(server.path)
        url = client.put_object("firmware", "3.0.bin", IMAGE)
        client.add_things_to_group("lamps", ["lamp-1"])
        document = {"url": f"${{aws:iot:s3-presigned-url:{url}}}", "sha256": hashlib.sha256(IMAGE).hexdigest()}
        config = {"jobExecutionsRolloutConfig": {"maximumPerMinute": 10}}
        client.create_job("fw-3", "lamps", document, config)
        for region in ("eu-west-1", "us-east-1"):
            described = client.describe_job(region, "fw-3")
            assert described["targets"] == ["group:lamps"]
            assert described["status"] == "IN_PROGRESS"
        client.cancel_job("us-east-1", "fw-3", "aborted in eu-west-1")
        assert client.describe_job("us-east-1", "fw-3")["status"] == "CANCELED"
        assert client.describe_job("eu-west-1", "fw-3")["status"] == "IN_PROGRESS"
        with pytest.raises(CloudError, match="ResourceNotFound"):
            client.describe_job("eu-west-1", "no-such-job")
        with pytest.raises(CloudError, match="object-put: expected"):
            client.request("object-put " + json.dumps({"bucket": "b", "key": "k", "data_b64": "%%%"}))
        with pytest.raises(CloudError, match="not \\['regions'\\]"):  # a request cannot reach other arguments
            client.create_job("fw-4", "lamps", document, {"regions": ["eu-west-1"]})
    document_url = cloud.region("eu-west-1").jobs.describe_execution("fw-3", "lamp-1")["jobDocument"]["url"]
    assert fetch(cloud, document_url) == (200, IMAGE)  # through the control API as base64, and back whole
