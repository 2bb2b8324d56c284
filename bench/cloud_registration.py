"""Things registered per second in a two-region local cloud: one call per thing vs one batch.

Each registration issues an EC P-256 certificate, writes the registry (SQLite WAL), rewrites each
region's ACL file and reloads its broker (SIGHUP, confirmed). One call per thing pays the ACL rewrite
and reload per thing, so its cost grows with the fleet; a batch pays it once. Same machine, same run.

    python bench/cloud_registration.py [--things 500]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from iotfleet.cloud.broker import Quotas  # the benches measure speed, beyond IoT Core's quotas
from iotfleet.cloud.local import LocalCloud, ThingSpec


def run(things: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cloud = LocalCloud(workdir=Path(tmp) / "cloud", quotas=Quotas.none()).start()
        up = time.perf_counter() - started
        try:
            t0 = time.perf_counter()
            for i in range(things):
                cloud.register_thing(f"single-{i}", tenant="acme", site="hq")
            single = time.perf_counter() - t0
            t0 = time.perf_counter()
            cloud.register_things([ThingSpec(f"batch-{i}", "acme", "hq") for i in range(things)])
            batch = time.perf_counter() - t0
        finally:
            cloud.stop()
    return {"cloud_up_s": up, "single_per_s": things / single, "batch_per_s": things / batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--things", type=int, default=500)
    args = parser.parse_args()
    result = run(args.things)
    print(f"machine: {platform.machine()} {platform.processor() or ''} cores={__import__('os').cpu_count()}")
    print(f"two-region cloud up:          {result['cloud_up_s'] * 1000:.0f} ms")
    print(f"register one call per thing:  {result['single_per_s']:.0f} things/s ({args.things} things)")
    print(f"register one batch:           {result['batch_per_s']:.0f} things/s ({args.things} things)")
    print(f"ratio batch / single:         {result['batch_per_s'] / result['single_per_s']:.1f}x")


if __name__ == "__main__":
    main()
