"""The simulator end to end: devices publish, mosquitto routes, the ingest stores; what arrives, how fast.

Runs a ``Simulation`` (the code behind ``iotfleet simulate``) on the embedded two-region local cloud
for each offered load in ``--speeds`` (telemetry every 10 simulated seconds per device, so the offered
rate is ``devices x speed / 10`` msg/s). Side by side, in the same run: offered (sent) msg/s against
acknowledged and ingested msg/s, with loss and latency, so the knee is visible. Also the simulator's
own CPU at steady state (worker processes only; broker and ingest excluded) and RSS per device.

    python bench/simulate.py --sites 50 --speeds 1,10,50,100 --duration 30
    python bench/simulate.py --sites 250 --workers 1 --speeds 1 --duration 60   # devices in one worker
"""

from __future__ import annotations

import argparse
import os
import platform

from iotfleet.cloud.broker import Quotas
from iotfleet.config import PublishLimits
from iotfleet.sim.fleet import FleetShape
from iotfleet.sim.simulate import LOCAL_RECONNECT, SimConfig, Simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--speeds", default="1,10,50,100")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ramp", type=float, default=1000.0, help="devices started per second")
    parser.add_argument("--keepalive", type=int, default=30, help="MQTT keepalive seconds (ping timeout stays 2 s)")
    parser.add_argument("--no-shadow", action="store_true", help="devices do not sync their shadow")
    args = parser.parse_args()
    shape = FleetShape(sites=args.sites)
    print(f"machine: {platform.machine()} cores={os.cpu_count()} python={platform.python_version()}")
    print(
        f"{shape.devices} devices ({args.sites} sites), {args.workers} workers, {args.duration:.0f} s per load, "
        f"keepalive {args.keepalive} s"
    )
    header = (
        f"{'speed':>6} {'offered/s':>10} {'acked/s':>9} {'ingested/s':>11} {'lost':>5} {'dups':>5} "
        f"{'ack p99 ms':>11} {'e2e p50 ms':>11} {'e2e p99 ms':>11} {'sim CPU (cores)':>16} {'RSS KB/device':>14}"
    )
    print(header)
    for speed in (float(s) for s in args.speeds.split(",")):
        config = SimConfig(
            shape=shape,
            duration_s=args.duration,
            speed=speed,
            workers=args.workers,
            ramp_per_s=args.ramp,
            limits=PublishLimits(enabled=False),
            quotas=Quotas.none(),  # limits lifted in the devices: lifted in the cloud too
            settle_s=30.0,
            shadow=not args.no_shadow,
            reconnect=LOCAL_RECONNECT.model_copy(update={"keepalive_s": args.keepalive}),
        )
        report = Simulation(config).run()
        steady = report["duration_s"]
        lat = report["latency_ms"]
        res = report["resources"]
        print(
            f"{speed:>6.0f} {report['sent'] / steady:>10.0f} {report['acked'] / steady:>9.0f} "
            f"{(report['ingested'] or 0) / steady:>11.0f} {report['lost']:>5} {report['duplicates']:>5} "
            f"{lat['ack']['p99']:>11.1f} {lat['e2e']['p50']:>11.1f} {lat['e2e']['p99']:>11.1f} "
            f"{res['steady_cpu_core_fraction'] or 0:>16.3f} {res['rss_kb_per_device']:>14.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
