"""The report: shadow figures merged across workers and shards; the JSON a run and a merge write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from iotfleet.cli import cli
from iotfleet.metrics import SeqSet
from iotfleet.sim.report import Raw, Report, _add_shadow, chaos_effects, merge_reports, summary_lines
from tests.sim import report_parts as parts


def test_shadow_figures_add_up_and_a_zero_stays_a_measured_zero() -> None:
    total: dict[str, Any] = {"device": {}, "operator": None}
    _add_shadow(total, {"device": {"get": 2, "report_failures": 0}})
    _add_shadow(total, {"device": {"get": 1, "report_failures": 0}, "operator": None})
    operator = {"changes": 3, "devices_changed": 2, "reconciled": 2, "pending": 0, "errors": {"ShadowRejected": 0}}
    _add_shadow(total, {"operator": {**operator, "pending_devices": []}})
    _add_shadow(total, {"operator": {**operator, "pending": 1, "reconciled": 1, "pending_devices": ["lamp-9"]}})
    assert total["device"] == {"get": 3, "report_failures": 0}
    assert total["operator"] == {
        "changes": 6,
        "devices_changed": 4,
        "reconciled": 3,
        "pending": 1,
        "pending_devices": ["lamp-9"],
        "errors": {"ShadowRejected": 0},
    }


# The golden reports were written by build_report (now Report.of_run) and merge_reports before the
# report became a typed model: the JSON a run or a merge writes must stay the same, key for key and in
# the same order. (The two merged ones were written again once, when a merge began to write raw's keys
# in a run's order: their parsed content was checked equal to the old files'. All six were written again
# when each region's entry began to carry every worker figure of it, e.g. ``connected`` at the end: the
# only difference, key by key, was that key. And again when chaos was measured in every run: raw's
# ``first_ack_at`` became ``ack_moves``, each chaos entry gained its effects (checked by hand: 5 devices on
# eu-west-1 at the kill, RTO 26-28 s), and a merge keeps the chaos of the shard that ran it. And when the
# steady window's ack latency came: ``latency_ms.ack_steady`` and raw's ``histograms.ack_steady``, empty
# (these workers never reached a steady window), and nothing else changed.)
GOLDEN = Path(__file__).parent.parent / "golden" / "reports"


def golden(name: str) -> str:
    return (GOLDEN / f"report-{name}.json").read_text()


def written(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=1) + "\n"


def one_run() -> dict[str, Any]:
    return Report.of_run(
        workers=[parts.worker(0, parts.SHARD_A), parts.worker(1, parts.SHARD_B)],
        ingest=[
            parts.ingest("eu-west-1", parts.SHARD_A + parts.SHARD_B, skip=5),
            parts.ingest("us-east-1", parts.SHARD_A, trouble=True),
        ],
        operator=parts.operator(),
        duration_s=12.34567,
        config=parts.CONFIG,
        chaos=parts.CHAOS,
    ).to_dict()


def shards() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    a = Report.of_run(
        workers=[parts.worker(0, parts.SHARD_A)],
        ingest=[parts.ingest("eu-west-1", parts.SHARD_A)],
        operator=parts.operator(),
        duration_s=8.5,
        config={**parts.CONFIG, "shard": "0/2"},
        chaos=parts.CHAOS,
    ).to_dict()
    b = Report.of_run(
        workers=[parts.worker(1, parts.SHARD_B)],
        ingest=[
            parts.ingest("eu-west-1", parts.SHARD_B, skip=2),
            parts.ingest("us-east-1", parts.SHARD_B, trouble=True),
        ],
        operator=None,
        duration_s=8.25,
        config={**parts.CONFIG, "shard": "1/2"},
    ).to_dict()
    bare = Report.of_run(
        workers=[parts.worker(0, parts.SHARD_A)], ingest=None, duration_s=3.0, config={**parts.CONFIG, "shard": "0/2"}
    ).to_dict()
    return a, b, bare


def test_a_run_writes_the_same_json_as_before() -> None:
    assert written(one_run()) == golden("one")
    a, b, bare = shards()
    assert (written(a), written(b), written(bare)) == (golden("shard_a"), golden("shard_b"), golden("bare"))


def test_merged_shards_write_the_same_json_as_before() -> None:
    a, b, bare = (json.loads(written(r)) for r in shards())
    assert written(merge_reports([a, b])) == golden("merged")
    assert written(merge_reports([a, bare])) == golden("merged_no_ingest")  # no ingest in one shard: none at all


def test_building_a_report_is_merging_its_parts_so_shards_merge_to_the_whole_run() -> None:
    workers = [parts.worker(0, parts.SHARD_A), parts.worker(1, parts.SHARD_B)]
    ingest = [parts.ingest("eu-west-1", parts.SHARD_A, skip=5), parts.ingest("us-east-1", parts.SHARD_B)]
    whole = Report.of_run(workers=workers, ingest=ingest, operator=parts.operator(), duration_s=9.0, config={})
    shard_a = Report.of_run(
        workers=workers[:1], ingest=ingest[:1], operator=parts.operator(), duration_s=9.0, config={"shard": "0/2"}
    )
    shard_b = Report.of_run(workers=workers[1:], ingest=ingest[1:], duration_s=8.0, config={"shard": "1/2"})
    merged = Report.merge([shard_a, Report.from_dict(json.loads(written(shard_b.to_dict())))])
    assert json.loads(json.dumps(merged.raw.to_dict())) == json.loads(json.dumps(whole.raw.to_dict()))
    # acked but never stored: seq 5 of A's first device, and every seq past 10 (1 in A, 6 in B)
    assert merged.to_dict()["lost"] == whole.to_dict()["lost"] == 8
    assert merged.config == {"merged_from": 2, "shards": ["0/2", "1/2"]}
    again = Report.of_run(workers=workers, ingest=ingest, operator=parts.operator(), duration_s=9.0, config={})
    assert again.to_dict() == whole.to_dict()  # building read the parts and changed none of them


def test_a_shard_without_ingest_makes_the_merged_loss_unknown() -> None:
    measured = Report.of_run(workers=[parts.worker(0, parts.SHARD_A)], ingest=[], duration_s=1.0, config={})
    assert measured.to_dict()["lost"] == measured.to_dict()["acked"] == 19  # measured: nothing arrived
    blind = Report.of_run(workers=[parts.worker(1, parts.SHARD_B)], ingest=None, duration_s=1.0, config={})
    assert Report.merge([measured, blind]).to_dict()["lost"] is None


def test_a_regions_throttling_and_lifecycle_events_are_in_its_counts_and_merge() -> None:
    stats = parts.ingest("eu-west-1", parts.SHARD_A)
    stats["throttled"] = {"connect_account": 3, "publish_connection": 0}
    stats["presence"] = {"connected": 40, "disconnected:CONNECTION_LOST": 2, "disconnected:AUTH_ERROR": 1}
    workers = [parts.worker(0, parts.SHARD_A)]
    one = Report.of_run(workers=workers, ingest=[stats], duration_s=1.0, config={}).to_dict()
    counts = one["regions"]["eu-west-1"]
    assert counts["throttled_connect_account"] == 3
    assert "throttled_publish_connection" not in counts  # shown only when it happened
    assert (counts["lifecycle_connected"], counts["lifecycle_disconnected"]) == (40, 3)
    merged = Report.merge([Report.from_dict(one), Report.from_dict(one)]).to_dict()
    assert merged["regions"]["eu-west-1"]["throttled_connect_account"] == 6


def test_commands_sent_and_received_merge_exactly_and_a_run_without_them_has_no_section() -> None:
    worker = parts.worker(0, parts.SHARD_A)
    worker.on_command(1, "identify", 0)
    worker.on_command(2, "reboot", 0)
    assert not worker.on_command(2, "reboot", 0)  # a redelivery counts once
    sent = {"sent": SeqSet([1, 2, 3]), "by_command": {"identify": 2, "reboot": 1}, "not_sent": 1}
    run = Report.of_run(workers=[worker], ingest=[], commands=sent, duration_s=1.0, config={})
    commands = run.to_dict()["commands"]
    assert (commands["sent"], commands["delivered"], commands["lost"], commands["not_sent"]) == (3, 2, 1, 1)
    assert commands["handled"] == {"identify": 1, "reboot": 1}
    assert commands["latency_ms"]["count"] == 2
    merged = Report.merge([Report.from_dict(json.loads(written(run.to_dict()))), run]).to_dict()["commands"]
    assert (merged["sent"], merged["delivered"]) == (3, 2)  # the same ids: a union, not a sum
    assert merged["by_command"] == {"identify": 4, "reboot": 2}
    quiet = Report.of_run(workers=[parts.worker(0, parts.SHARD_A)], ingest=[], duration_s=1.0, config={})
    assert "commands" not in quiet.to_dict()
    assert "commands" not in quiet.to_dict()["raw"]


def test_each_chaos_event_says_whom_it_hit_how_fast_they_moved_and_came_back() -> None:
    raw = Raw(
        acked={"x": SeqSet([1, 2, 3]), "y": SeqSet([1]), "z": SeqSet([1, 2])},
        ingested={"x": SeqSet([1, 2, 3]), "y": SeqSet([1]), "z": SeqSet([1])},
        ack_moves={
            "x": [(0.0, "eu"), (12.0, "us"), (25.0, "eu")],  # failed over 2 s after the kill, back 5 s after
            "y": [(0.0, "us")],  # never on the failed region
            "z": [(1.0, "eu")],  # on it, and never moved (its seq 2 was acked, never stored)
        },
    )
    kill = {"action": "kill", "region": "eu", "at_s": 10.0, "epoch": 10.0}
    restore = {"action": "restore", "region": "eu", "at_s": 20.0, "epoch": 20.0}
    fault, back = chaos_effects([restore, kill], raw)  # in time order, whatever the order given
    assert (fault["devices_affected"], fault["failed_over"], fault["lost"]) == (2, 1, 1)
    assert fault["rto_s"] == {"p50": 2.0, "p95": 2.0, "p99": 2.0, "max": 2.0}
    assert (back["devices_away"], back["devices_returned"]) == (2, 1)
    assert back["failback_s"] == {"p50": 5.0, "p95": 5.0, "p99": 5.0, "max": 5.0}
    raw.ingested = None
    assert chaos_effects([kill], raw)[0]["lost"] is None  # unmeasured, not zero
    nobody = chaos_effects([{"action": "kill", "region": "ap", "at_s": 1.0, "epoch": 1.0}], raw)[0]
    assert (nobody["devices_affected"], nobody["rto_s"]) == (0, None)


def shard_report(shard: str) -> dict[str, Any]:
    return Report.of_run(
        workers=[parts.worker(0, parts.SHARD_A)], ingest=None, duration_s=3.0, config={**parts.CONFIG, "shard": shard}
    ).to_dict()


def test_report_merge_names_missing_and_duplicate_shards_by_index(tmp_path: Path) -> None:
    files = []
    for name, shard in (("a", "0/3"), ("b", "1/3"), ("c", "1/3")):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(shard_report(shard)))
    runner = CliRunner()
    result = runner.invoke(cli, ["report", "merge", *map(str, files)])
    assert result.exit_code == 2
    assert f"shard 1 given 2 times ({files[1]}, {files[2]})" in result.output
    assert "missing shard 2/3 (merge what there is with --partial)" in result.output
    result = runner.invoke(cli, ["report", "merge", str(files[0]), str(files[1])])  # no duplicate, one missing
    assert result.exit_code == 2
    assert "missing shard 2/3" in result.output
    out = tmp_path / "merged.json"
    result = runner.invoke(cli, ["report", "merge", str(files[0]), str(files[1]), "--partial", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["config"]["missing_shards"] == ["shard 2/3"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(shard_report("1/2")))
    result = runner.invoke(cli, ["report", "merge", str(files[0]), str(other), "--partial"])
    assert result.exit_code == 2
    assert "the reports come from different splits" in result.output


T0 = 1_800_000_000  # the run's first second (epoch)


def ramped_worker(index: int, things: list[str], since: float, until: float, *, shift: int = 0) -> Any:
    """A worker whose acks took 400 ms in the ramp (T0 to T0+4), 2 ms after, and 300 ms in the drain after
    the stop (T0+10 and T0+11); ``shift`` seconds later if given (a shard run after another)."""
    metrics = parts.worker(index, things)
    metrics.steady_since, metrics.steady_until = since, until
    for second in range(12):
        for _ in range(len(things)):
            latency = 400.0 if second < 5 else 2.0 if second < 10 else 300.0
            metrics.timeline.latency_ms(latency, at=T0 + shift + second + 0.5)
    return metrics


def test_the_steady_ack_latency_is_each_workers_whole_seconds_between_its_ramp_and_its_stop() -> None:
    workers = [
        ramped_worker(0, parts.SHARD_A, T0 + 4.5, T0 + 10.5),  # seconds 5 to 9
        ramped_worker(1, parts.SHARD_B, T0 + 6.2, T0 + 9.9),  # seconds 7 and 8
        ramped_worker(2, ["site-0003-b1-r01-a01"], 0.0, 0.0),  # still ramping at the stop: none of its acks
    ]
    report = Report.of_run(workers=workers, ingest=None, duration_s=12.0, config={}).to_dict()
    steady = report["latency_ms"]["ack_steady"]
    assert steady["count"] == 5 * len(parts.SHARD_A) + 2 * len(parts.SHARD_B)
    assert steady["max"] == 2.0
    assert dict(summary_lines(report))["ack ms, steady"].startswith("p50 2.0")


def test_shards_run_one_after_another_merge_their_steady_acks() -> None:
    a = Report.of_run(
        workers=[ramped_worker(0, parts.SHARD_A, T0 + 4.5, T0 + 10.5)], ingest=None, duration_s=12.0, config={}
    )
    late = T0 + 100  # shard b ran 100 s later: its window is after all of a's acks
    b = Report.of_run(
        workers=[ramped_worker(1, parts.SHARD_B, late + 4.5, late + 10.5, shift=100)],
        ingest=None,
        duration_s=12.0,
        config={},
    )
    merged = Report.merge([Report.from_dict(json.loads(written(r.to_dict()))) for r in (a, b)]).to_dict()
    assert merged["latency_ms"]["ack_steady"]["count"] == 5 * (len(parts.SHARD_A) + len(parts.SHARD_B))
    assert merged["latency_ms"]["ack_steady"]["max"] == 2.0


def test_a_run_that_ended_in_its_ramp_has_no_steady_latency() -> None:
    report = Report.of_run(
        workers=[ramped_worker(0, parts.SHARD_A, 0.0, 0.0)], ingest=None, duration_s=3.0, config={}
    ).to_dict()
    assert report["latency_ms"]["ack_steady"]["count"] == 0
    assert report["latency_ms"]["ack"]["count"] > 0
    assert dict(summary_lines(report))["ack ms, steady"] == "-"


def test_a_report_written_before_the_steady_figure_still_reads() -> None:
    report = json.loads(golden("one"))
    del report["latency_ms"]["ack_steady"]
    del report["raw"]["histograms"]["ack_steady"]
    assert dict(summary_lines(report))["ack ms, steady"] == "-"
    again = Report.from_dict(report).to_dict()
    assert "ack_steady" not in again["latency_ms"]  # not measured: not shown as an empty measurement
    assert dict(summary_lines(again))["ack ms, steady"] == "-"
