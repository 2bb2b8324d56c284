"""The rollout's pure parts: its settings, the job it asks for, and the figures the report makes of it."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfleet.cloud.jobs import JobConfig
from iotfleet.errors import ConfigError
from iotfleet.sim.ota import CURVE_POINTS, OtaFigures, OtaSpec, job_id_of


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"version": ""}, "--ota takes"),
        ({"rollout_per_minute": 0}, "--rollout-per-minute"),
        ({"rollout_per_minute": 1001}, "--rollout-per-minute"),
        ({"abort_failure_pct": 0.0}, "--abort-failure-pct"),
        ({"failure_rate": 1.5}, "--ota-failure-rate"),
        ({"size_bytes": 0}, "--ota-size"),
    ],
)
def test_bad_rollout_settings_name_the_option(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        OtaSpec(**{"version": "2.5.0", **fields})  # type: ignore[arg-type]


def test_the_job_it_asks_for_is_one_the_jobs_service_accepts() -> None:
    spec = OtaSpec("2.5.0+rc.1", rollout_per_minute=100, abort_failure_pct=20)
    assert spec.job_id == "ota-2_5_0_rc_1" == job_id_of("2.5.0+rc.1")
    config = spec.job_config()
    assert config["jobExecutionsRolloutConfig"] == {"maximumPerMinute": 100}  # each region's, over every device
    [criterion] = config["abortConfig"]["criteriaList"]
    assert criterion["thresholdPercentage"] == 20
    assert criterion["failureType"] == "FAILED"
    parsed = JobConfig.from_api(config)  # what CreateJob makes of it (raises on a bad field)
    assert parsed.presigned_url_expires_s == 3600
    assert "abortConfig" not in OtaSpec("2.5.0").job_config()


def test_the_image_is_the_same_bytes_for_a_version_and_as_long_as_asked() -> None:
    image = OtaSpec("2.5.0", size_bytes=1000).image()
    assert len(image) == 1000
    assert image == OtaSpec("2.5.0", size_bytes=1000).image()
    assert hashlib.sha256(image).digest() != hashlib.sha256(OtaSpec("2.5.1", size_bytes=1000).image()).digest()


def test_the_summary_counts_from_the_jobs_creation_and_names_the_abort() -> None:
    created = 1_800_000_000.0
    figures = OtaFigures(targets=4, updated={"a": created + 3, "b": created + 5}, failed={"c": "apply-failed"})
    figures.job = {
        "job_id": "ota-2_5_0-1",
        "version": "2.5.0",
        "created_at": created,
        "abort": {"region": "eu-west-1", "epoch": created + 9, "comment": "criterion met"},
        "regions": {"eu-west-1": {"status": "CANCELED", "reasonCode": "ABORTED"}},
    }
    summary = figures.summary()
    assert (summary["targets"], summary["updated"], summary["failed"], summary["not_updated"]) == (4, 2, 1, 1)
    assert summary["failures"] == {"apply-failed": 1}
    assert summary["time_to_s"] == {"50%": 5.0, "95%": None, "100%": None}  # 2 of 4 made it
    assert summary["aborted"] == {"region": "eu-west-1", "epoch": created + 9, "comment": "criterion met", "at_s": 9.0}
    assert summary["curve"] == [[0.0, 0], [3.0, 1], [5.0, 2]]


def test_figures_merge_over_workers_and_keep_the_operators_job() -> None:
    worker_a = OtaFigures(targets=2, updated={"a": 1.0})
    worker_a.counts["downloads"] = 2
    worker_b = OtaFigures(targets=3, failed={"c": "download-failed"})
    worker_b.counts["downloads"] = 1
    operator = OtaFigures(job={"job_id": "j", "created_at": 0.0})
    total = OtaFigures()
    for part in (worker_a, operator, worker_b):
        total.merge(part)
    assert (total.targets, total.updated, total.failed) == (5, {"a": 1.0}, {"c": "download-failed"})
    assert total.counts["downloads"] == 3
    assert total.job == {"job_id": "j", "created_at": 0.0}
    assert OtaFigures.from_dict(total.to_dict()) == total


@given(st.lists(st.floats(min_value=0, max_value=10_000, allow_nan=False), max_size=3000))
def test_the_curve_rises_to_every_device_updated_in_few_points(offsets: list[float]) -> None:
    figures = OtaFigures(targets=len(offsets), updated={f"d{i}": 100.0 + t for i, t in enumerate(offsets)})
    figures.job = {"created_at": 100.0}
    curve = figures.summary()["curve"]
    if not offsets:
        assert curve == []
        return
    assert len(curve) <= CURVE_POINTS + 2
    assert curve[-1][1] == len(offsets)
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in itertools.pairwise(curve))
    last = max(figures.updated.values()) - 100.0  # as the figure is taken: time of update minus the job's creation
    assert figures.summary()["time_to_s"]["100%"] == round(last, 1)
