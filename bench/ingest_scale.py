"""The ingest's own throughput and CPU per message: one ingest worker process against two.

One local-cloud region with ``ingest_workers=W``. A lean generator (its own process: raw awscrt
MQTT5 clients with their own mTLS identities, no iotfleet code on the send path, each PUBACK
callback publishing the next message on the CRT thread) publishes ``--messages`` valid telemetry
messages, each with the message id, sequence and send time the device SDK puts in its user
properties, as fast as the broker acknowledges them, while the ingest workers are stopped (SIGSTOP,
by their PIDs): the broker queues every message for them (the cloud's queues are unbounded, so
nothing is dropped). Then the workers are continued and drain that backlog with nothing else running:
the load is pre-recorded, and the generator cannot be the limit. Measured over the drain, for each W:

- stored/s: messages stored during the drain / its wall time;
- ingest CPU per message: the workers' CPU (user + system, from /proc) during the drain / messages
  stored. The broker's CPU per message (in from the generator and out to the workers: it writes them
  out while the workers are held, as they grant it 65,535 messages in flight) is shown apart.

Every message must be stored exactly once (ingested == messages, duplicates 0), or the run fails.

    python bench/ingest_scale.py [--messages 60000] [--clients 20] [--window 50] [--workers 1,2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from iotfleet.cloud.broker import Quotas
from iotfleet.cloud.local import LocalCloud, ThingSpec
from iotfleet.cloud.services.ingest_pool import IngestPool

HOUR = 1_795_000_000


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------------- the generator (its own process)


def generate(setup: dict[str, Any]) -> None:
    """Publish ``setup['messages']`` messages over the clients, ``window`` in flight each; print a JSON
    line with the wall and CPU time it took."""
    import resource  # noqa: PLC0415

    from awscrt import mqtt5  # noqa: PLC0415
    from awscrt_fleet import started_client  # noqa: PLC0415 - bench/ is the script's directory

    from iotfleet.topics import MESSAGE_ID_PROPERTY, SENT_AT_PROPERTY, SEQUENCE_PROPERTY  # noqa: PLC0415
    from iotfleet.transport.crt import CrtRuntime, skip_system_trust_store  # noqa: PLC0415

    skip_system_trust_store()
    runtime = CrtRuntime()
    clients = setup["clients"]
    per_client = setup["messages"] // len(clients)
    connected = threading.Semaphore(0)
    done = threading.Event()
    lock = threading.Lock()
    remaining = [per_client * len(clients)]
    refused = [0]

    def packet(thing: str, topic: str, seq: int) -> mqtt5.PublishPacket:
        body = {"ts": HOUR + seq, "power_w": 10.0 + seq % 90, "dim": seq % 100, "lux": 400.0,
                "occupancy": seq % 2 == 0, "temperature_c": 21.5}  # fmt: skip
        properties = [
            mqtt5.UserProperty(MESSAGE_ID_PROPERTY, f"{thing}-{seq}"),
            mqtt5.UserProperty(SEQUENCE_PROPERTY, str(seq)),
            mqtt5.UserProperty(SENT_AT_PROPERTY, str(int(time.time() * 1000))),
        ]
        return mqtt5.PublishPacket(
            topic=topic, payload=json.dumps(body).encode(), qos=mqtt5.QoS.AT_LEAST_ONCE, user_properties=properties
        )

    started = [started_client(setup, entry, runtime, lambda _d: connected.release()) for entry in clients]
    for _ in started:
        if not connected.acquire(timeout=60):
            raise SystemExit("generator: a client did not connect within 60 s")

    def pump(client: mqtt5.Client, thing: str, topic: str) -> None:
        next_seq = [1]

        def send() -> None:
            seq = next_seq[0]
            next_seq[0] += 1
            client.publish(packet(thing, topic, seq)).add_done_callback(on_ack)

        def on_ack(future: Any) -> None:
            puback = future.result().puback
            with lock:
                remaining[0] -= 1
                if puback is None or puback.reason_code >= 0x80:
                    refused[0] += 1
                if remaining[0] == 0:
                    done.set()
            if next_seq[0] <= per_client:
                send()

        for _ in range(min(setup["window"], per_client)):
            send()

    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for client, entry in zip(started, clients, strict=True):
        pump(client, entry["thing"], entry["topic"])
    finished = done.wait(timeout=600)
    wall = time.perf_counter() - wall0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    for client in started:
        client.stop()
    print(json.dumps({"finished": finished, "refused": refused[0], "wall_s": wall, "cpu_s": cpu_s}), flush=True)


# -------------------------------------------------------------------- the driver


def one_run(workers: int, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    with LocalCloud(["eu-west-1"], workdir=workdir, ingest=True, ingest_workers=workers, quotas=Quotas.none()) as cloud:
        region = cloud.region("eu-west-1")
        pool = region.ingest
        assert isinstance(pool, IngestPool)
        identities = cloud.register_things([ThingSpec(f"gen-{i:03d}", "bench", "hq") for i in range(args.clients)])
        setup = {
            "host": cloud.endpoints[0].host,
            "port": cloud.endpoints[0].port,
            "ca": str(cloud.ca_file),
            "messages": args.messages,
            "window": args.window,
            "clients": [
                {
                    "thing": i.thing_name,
                    "cert": str(i.cert_file),
                    "key": str(i.key_file),
                    "topic": f"dt/bench/hq/{i.thing_name}/telemetry",
                }
                for i in identities
            ],
        }
        setup_file = workdir / "generator.json"
        setup_file.write_text(json.dumps(setup))
        total = args.messages // args.clients * args.clients
        broker_pid = region.broker.pid
        assert broker_pid is not None
        broker_start = process_cpu(broker_pid)
        for pid in pool.pids:  # held while the load is recorded in the broker's queues
            os.kill(pid, signal.SIGSTOP)
        gen = subprocess.run(
            [sys.executable, __file__, "--generate", str(setup_file)], capture_output=True, text=True, check=False
        )
        if gen.returncode != 0:
            raise SystemExit(f"generator failed: {gen.stderr}")
        generated = json.loads(gen.stdout.strip().splitlines()[-1])
        if not generated["finished"] or generated["refused"]:
            raise SystemExit(f"generator: {generated}")
        # the drain: from the workers' continuing until every message is stored
        cpu0 = sum(process_cpu(pid) for pid in pool.pids)
        t0 = time.perf_counter()
        for pid in pool.pids:
            os.kill(pid, signal.SIGCONT)
        while pool.ingested < total:
            if time.perf_counter() - t0 > 600:
                raise SystemExit(f"the ingest stored {pool.ingested} of {total} in 600 s")
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        cpu = sum(process_cpu(pid) for pid in pool.pids) - cpu0
        broker = process_cpu(broker_pid) - broker_start
        stats = cloud.ingest_stats()[0]
        if (stats["ingested"], stats["duplicates"], stats["broker_dropped"]) != (total, 0, 0):
            raise SystemExit(f"not every message stored exactly once: {stats['ingested']} of {total}")
        drained = total
        return {
            "generator_msgs_per_s": total / generated["wall_s"],
            "generator_cpu_us": generated["cpu_s"] / total * 1e6,
            "stored_per_s": drained / wall,
            "ingest_cpu_us": cpu / drained * 1e6,
            "ingest_cores": cpu / wall,
            "broker_cpu_us": broker / total * 1e6,
            "split": stats["received_by_worker"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate is not None:
        generate(json.loads(args.generate.read_text()))
        return
    counts = [int(w) for w in args.workers.split(",")]
    print(f"machine: {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.messages} messages, {args.clients} generator clients, window {args.window}; rounds alternate")
    header = ("workers", "stored/s", "ingest CPU us/msg", "ingest cores", "broker CPU us/msg", "split",
              "gen msg/s", "gen CPU us/msg")  # fmt: skip
    print(" | ".join(header))
    for round_ in range(args.rounds):
        for workers in counts:
            with tempfile.TemporaryDirectory(prefix="iotfleet-ingest-bench-") as tmp:
                r = one_run(workers, args, Path(tmp))
            print(
                f"{workers} | {r['stored_per_s']:,.0f} | {r['ingest_cpu_us']:.0f} | {r['ingest_cores']:.2f} | "
                f"{r['broker_cpu_us']:.0f} | {r['split']} | {r['generator_msgs_per_s']:,.0f} | "
                f"{r['generator_cpu_us']:.0f}   (round {round_ + 1})",
                flush=True,
            )


if __name__ == "__main__":
    main()
