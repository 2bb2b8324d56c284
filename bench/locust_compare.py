"""iotfleet's simulator against Locust's MQTT user, side by side in one run on one machine.

For each device count in ``--devices``, both tools drive that many luminaires, each with its own mTLS
identity and connection, publishing the simulator's telemetry payload at QoS 1 (MQTT 5) at ``--rate``
messages per second per device to a local-cloud broker. iotfleet runs one worker process
(a ``Simulation`` with ``workers=1``, no shadow traffic, so both send only telemetry); Locust runs
headless in one process with ``bench/locust_mqtt_user.py`` (its ``MqttUser``, one paho client each).
Both ramp at ``--ramp`` devices per second.

A third row, ``awscrt``, drives the same devices, identities, payload, rate and ramp with awscrt alone
(``bench/awscrt_fleet.py``: PUBACKs counted on the CRT's thread, one pacing thread, no asyncio): the
physical limit of this client library, against which iotfleet's own cost shows.

All are measured the same way, from outside: the CPU time (utime + stime from /proc) of the load
generator's own processes, sampled once a second with the tool's count of acknowledged publishes and
connected devices. The steady window runs from 2 s after every device is connected to the end.
Reported: achieved msg/s against offered, CPU in cores, msgs per CPU-second, RSS per device (the whole
process divided by the device count, interpreter included), and whether the tool held the count (every
device connected and at least 95% of the offered rate in the window).

    pip install -e '.[bench]'       # locust[mqtt]; not a dependency of iotfleet itself
    python bench/locust_compare.py --devices 1000,2000,5000 --rate 1 --duration 30
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotfleet.cloud.broker import Quotas  # the benches measure speed, beyond IoT Core's quotas
from iotfleet.cloud.local import LocalCloud, ThingSpec
from iotfleet.config import PublishLimits
from iotfleet.sim.fleet import FleetShape, build_fleet
from iotfleet.sim.simulate import Progress, SimConfig, Simulation

LOCUSTFILE = Path(__file__).with_name("locust_mqtt_user.py")
AWSCRT_FLEET = Path(__file__).with_name("awscrt_fleet.py")
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _cpu_and_rss(pids: Iterable[int]) -> tuple[float, int]:
    """CPU seconds (user + system) and resident KB of ``pids`` now."""
    cpu, rss = 0.0, 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK
            rss += int(fields[21]) * PAGE_KB
    return cpu, rss


def _spawned_workers() -> list[int]:
    """This process's multiprocessing workers (not the brokers, not the resource tracker)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
            if ppid == os.getpid() and b"spawn_main" in cmdline:
                pids.append(int(stat.parent.name))
    return pids


@dataclass
class Samples:
    """(time, CPU s, acked, connected, RSS KB) once a second; the steady window computed from them."""

    devices: int
    offered_per_s: float
    until: float  # monotonic time when the tool stops publishing (its drain is not measured)
    rows: list[tuple[float, float, int, int, int]] = field(default_factory=list)
    last: float = 0.0

    def take(self, pids: list[int], acked: int, connected: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= 1.0:
            self.last = now
            cpu, rss = _cpu_and_rss(pids)
            self.rows.append((now, cpu, acked, connected, rss))

    def result(self) -> dict[str, Any]:
        full = [r for r in self.rows if r[3] >= self.devices]
        window = [r for r in self.rows if full and full[0][0] + 2.0 <= r[0] <= self.until]
        peak_rss = max((r[4] for r in self.rows), default=0)
        if len(window) < 2:
            return {"held": False, "connected": max((r[3] for r in self.rows), default=0), "rss_kb": peak_rss}
        (t0, c0, a0, _, _), (t1, c1, a1, _, _) = window[0], window[-1]
        rate, cores = (a1 - a0) / (t1 - t0), (c1 - c0) / (t1 - t0)
        return {
            "held": rate >= 0.95 * self.offered_per_s and min(r[3] for r in window) >= self.devices,
            "connected": min(r[3] for r in window),
            "msgs_per_s": rate,
            "cores": cores,
            "msgs_per_cpu_s": rate / cores if cores else math.inf,
            "rss_kb": peak_rss,
            "window_s": t1 - t0,
        }


def run_iotfleet(devices: int, rate: float, seconds: float, ramp: float) -> dict[str, Any]:
    samples = Samples(devices, devices * rate, math.inf)
    shape = FleetShape(sites=math.ceil(devices / 40))

    def sample(progress: Progress) -> None:
        if samples.until == math.inf:  # the run's clock starts with its workers, after the cloud's set-up
            samples.until = time.monotonic() + seconds
        samples.take(_spawned_workers(), int(progress.total("acked")), int(progress.total("connected")))

    config = SimConfig(
        shape=shape,
        duration_s=seconds,
        speed=10.0 * rate,  # telemetry every 10 simulated seconds
        workers=1,
        ramp_per_s=ramp,
        limits=PublishLimits(enabled=False),
        quotas=Quotas.none(),  # limits lifted in the devices: lifted in the cloud too
        shadow=False,
        command_every_s=None,  # no commands (and so no reboots): the others send telemetry only
        settle_s=5.0,
    )
    report = Simulation(config).run(on_progress=sample)
    return {**samples.result(), "lost": report["lost"], "errors": report["errors"]["total"]}


def run_locust(devices: int, rate: float, seconds: float, ramp: float, workdir: Path) -> dict[str, Any]:
    command = [
        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"),
        *("-u", str(devices), "-r", str(ramp), "--run-time", f"{seconds:.0f}s", "--loglevel", "WARNING"),
    ]
    return run_external("locust", command, devices=devices, rate=rate, seconds=seconds, workdir=workdir)


def run_awscrt(devices: int, rate: float, seconds: float, ramp: float, workdir: Path) -> dict[str, Any]:
    env = {"IOTFLEET_RAMP": str(ramp), "IOTFLEET_SECONDS": str(seconds)}
    command = [sys.executable, str(AWSCRT_FLEET)]
    return run_external("awscrt", command, devices=devices, rate=rate, seconds=seconds, workdir=workdir, extra_env=env)


def run_external(
    tool: str,
    command: list[str],
    *,
    devices: int,
    rate: float,
    seconds: float,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A load generator in its own process (Locust, raw awscrt) on the same fleet, identities and payload,
    sampled from outside: its CPU from /proc, its counts from the stats file it writes once a second."""
    shape = FleetShape(sites=math.ceil(devices / 40))
    fleet = build_fleet(shape)
    with LocalCloud(["eu-west-1"], workdir=workdir / "locust-cloud", quotas=Quotas.none()) as cloud:
        identities = cloud.register_things([ThingSpec(d.thing, d.tenant, d.site) for d in fleet])
        setup = {
            "host": cloud.endpoints[0].host,
            "port": cloud.endpoints[0].port,
            "ca": str(cloud.ca_file),
            "rate": rate,
            "things": [
                {
                    "thing": d.thing,
                    "tenant": d.tenant,
                    "site": d.site,
                    "cert": str(i.cert_file),
                    "key": str(i.key_file),
                    "device": dataclasses.asdict(d),
                }
                for d, i in zip(fleet, identities, strict=True)
            ],
        }
        (workdir / "setup.json").write_text(json.dumps(setup))
        stats = workdir / f"{tool}-stats.json"
        env = {
            **os.environ,
            **(extra_env or {}),
            "IOTFLEET_LOCUST_SETUP": str(workdir / "setup.json"),
            "IOTFLEET_LOCUST_STATS": str(stats),
        }
        with (workdir / f"{tool}.log").open("w") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
            samples = Samples(devices, devices * rate, time.monotonic() + seconds)
            try:
                while process.poll() is None:
                    with contextlib.suppress(OSError, ValueError):
                        counts = json.loads(stats.read_text())
                        samples.take([process.pid], counts["acked"], counts["connected"])
                    time.sleep(0.2)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)  # its own process group, by PID
                    process.wait()
    result = samples.result()
    if not result["held"]:
        lines = (workdir / f"{tool}.log").read_text().splitlines()
        tail = [line for line in lines if "connect" in line.lower() or "error" in line.lower()][:8]
        print(f"  {tool}'s log ends:", *tail, sep="\n    ", file=sys.stderr)
    return result


def _row(tool: str, devices: int, rate: float, result: dict[str, Any]) -> str:
    if "msgs_per_s" not in result:
        return f"{tool:<9} {devices:>7} {devices * rate:>9.0f}   did not connect every device ({result['connected']})"
    return (
        f"{tool:<9} {devices:>7} {devices * rate:>9.0f} {result['msgs_per_s']:>9.0f} {result['cores']:>7.3f} "
        f"{result['msgs_per_cpu_s']:>13.0f} {result['rss_kb'] / devices:>14.1f} {'yes' if result['held'] else 'NO':>5}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1000,2000", help="device counts, comma separated")
    parser.add_argument("--rate", type=float, default=1.0, help="messages per second per device")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds after the ramp")
    parser.add_argument("--ramp", type=float, default=500.0, help="devices started per second")
    parser.add_argument("--only", help="run only these tools, comma separated (iotfleet, locust, awscrt)")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else {"iotfleet", "locust", "awscrt"}
    if only - {"iotfleet", "locust", "awscrt"}:
        parser.error(f"--only: unknown tools {sorted(only - {'iotfleet', 'locust', 'awscrt'})}")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per device, for both tools
    print(f"machine: {platform.machine()} cores={os.cpu_count()} python={platform.python_version()}")
    print(f"rate {args.rate} msg/s per device, {args.duration:.0f} s after a ramp of {args.ramp:.0f} devices/s")
    print(
        f"{'tool':<9} {'devices':>7} {'offered/s':>9} {'acked/s':>9} {'cores':>7} {'msgs/CPU-s':>13} "
        f"{'RSS KB/device':>14} {'held':>5}"
    )
    runners: dict[str, Callable[[int, Path], dict[str, Any]]] = {
        "iotfleet": lambda n, _w: run_iotfleet(n, args.rate, n / args.ramp + args.duration, args.ramp),
        "locust": lambda n, w: run_locust(n, args.rate, n / args.ramp + args.duration, args.ramp, w),
        "awscrt": lambda n, w: run_awscrt(n, args.rate, n / args.ramp + args.duration, args.ramp, w),
    }
    for devices in (40 * math.ceil(int(n) / 40) for n in args.devices.split(",")):  # whole sites
        for tool, run in runners.items():
            if tool in only:
                with tempfile.TemporaryDirectory(prefix="iotfleet-vs-locust-") as workdir:
                    print(_row(tool, devices, args.rate, run(devices, Path(workdir))), flush=True)


if __name__ == "__main__":
    main()
