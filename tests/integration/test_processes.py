"""`iotfleet simulate`'s processes as a terminal and an operator treat them: Ctrl-C, kill -9, a full disk."""

from __future__ import annotations

import json
import os
import selectors
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import process_alive, wait_until

pytestmark = pytest.mark.integration
IOTFLEET = [sys.executable, "-m", "iotfleet"]
RUNNING = "running: "  # the line `simulate` prints on stderr (no terminal) once messages are acknowledged


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (workers, the resource tracker, the brokers' setpriv/mosquitto)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 90.0) -> list[str]:
    """Read stderr until a line starts with ``prefix``; the lines read so far."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith(prefix):
                return lines
    raise AssertionError(f"no {prefix!r} line from simulate; stderr so far: {''.join(lines)}")


@contextmanager
def simulate(*args: str, family: set[int] | None = None) -> Iterator[subprocess.Popen[str]]:
    """`iotfleet simulate` in its own process group, as a shell runs a job; it and ``family`` (the
    processes below it, as far as the test saw them) are stopped by PID after."""
    proc = subprocess.Popen(
        [*IOTFLEET, "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
    )
    family = set() if family is None else family
    try:
        yield proc
    finally:
        family |= descendants(proc.pid)
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
        for pid in family:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "timeout(1)"])
def test_a_signal_to_the_process_group_stops_the_run_and_still_writes_the_report(tmp_path: Path, signum: int) -> None:
    report = tmp_path / "report.json"
    family: set[int] = set()
    with simulate(
        "--sites",
        "2",
        "--speed",
        "10",
        "--workers",
        "2",
        "--ingest-workers",
        "1",
        "--report",
        str(report),
        family=family,
    ) as proc:
        wait_for_line(proc, RUNNING)
        family |= descendants(proc.pid)
        os.killpg(proc.pid, signum)  # what Ctrl-C (or `timeout`) does: signal the whole group
        out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err  # the README: 0 when the thresholds hold, and Ctrl-C still reports
    assert "KeyboardInterrupt" not in err
    assert "Error" not in err
    written = json.loads(report.read_text())
    assert written["devices"] == 80
    assert written["acked"] > 0
    assert written["lost"] == 0
    assert written["thresholds"]["held"] is True
    assert "thresholds" in out


def test_after_kill_9_of_the_parent_its_workers_and_brokers_exit_within_seconds(tmp_path: Path) -> None:
    family: set[int] = set()
    with simulate("--sites", "2", "--speed", "10", "--workers", "2", "--ingest-workers", "1", family=family) as proc:
        wait_for_line(proc, RUNNING)
        family |= descendants(proc.pid)
        workers = [p for p in family if b"multiprocessing" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) >= 5  # two simulator workers, two ingest workers (a region each), the resource tracker
        proc.kill()
        proc.wait(timeout=10)
        assert wait_until(lambda: not [p for p in family if process_alive(p)], timeout=10), [
            Path(f"/proc/{p}/cmdline").read_bytes() for p in family if process_alive(p)
        ]


def test_a_full_disk_at_the_end_still_prints_the_summary_and_names_the_report_path() -> None:
    with simulate("--sites", "1", "--speed", "10", "--duration", "3s", "--report", "/dev/full") as proc:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "thresholds" in out  # the summary
    assert "Error: cannot write the report to /dev/full: No space left on device" in err
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # written to, never replaced by a file of ours
