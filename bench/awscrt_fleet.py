"""The raw awscrt side of bench/locust_compare.py: the same luminaires with awscrt alone, the physical
limit of this client library.

Each luminaire is one awscrt MQTT 5 client with its own mTLS identity (client id = thing name) publishing
the simulator's telemetry payload at QoS 1 every ``1 / rate`` seconds. One Python thread paces them all
(a heap of due times, sending what falls due within 50 ms together, as the simulator's pacer does, so
each wakeup of the thread sends a batch) and calls ``client.publish``; each PUBACK is counted in the
publish future's done callback, on the CRT's own thread. No asyncio, no outbox, no bookkeeping beyond
those counts. Clients are started at ``--ramp`` a second. Acknowledged publishes and connected clients
are written once a second to ``IOTFLEET_LOCUST_STATS``, as the Locust side does, for the driver to
sample.

Not run by the test suite; the driver starts it with ``python bench/awscrt_fleet.py``.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from awscrt import io, mqtt5

from iotfleet.sim.fleet import SimDevice
from iotfleet.sim.workload import LUMINAIRE
from iotfleet.transport.crt import CrtRuntime, skip_system_trust_store

BATCH_S = 0.05  # iotfleet.sim.runner.pacer.BATCH_S: the same window, so the two pace alike


def main() -> None:
    skip_system_trust_store()  # as the simulator's workers do: 4 ms of CPU less per identity
    setup = json.loads(Path(os.environ["IOTFLEET_LOCUST_SETUP"]).read_text())
    stats = Path(os.environ["IOTFLEET_LOCUST_STATS"])
    ramp, seconds, rate = float(os.environ["IOTFLEET_RAMP"]), float(os.environ["IOTFLEET_SECONDS"]), setup["rate"]
    runtime = CrtRuntime()
    lock = threading.Lock()
    counts = {"acked": 0, "failed": 0, "connected": 0}

    def on_connected(_data: Any) -> None:
        with lock:
            counts["connected"] += 1

    def on_ack(future: Any) -> None:  # on the CRT's thread
        try:
            puback = future.result().puback
            ok = puback is not None and puback.reason_code < 0x80
        except Exception:  # noqa: BLE001 - a failed publish is counted, as Locust counts its failures
            ok = False
        with lock:
            counts["acked" if ok else "failed"] += 1

    clients: list[tuple[mqtt5.Client, str, Any, random.Random]] = []
    schedule: list[tuple[float, int]] = []
    start = time.monotonic()
    for index, thing in enumerate(setup["things"]):
        time.sleep(max(0.0, start + index / ramp - time.monotonic()))
        client = started_client(setup, thing, runtime, on_connected)
        device = SimDevice(**thing["device"])
        rng = random.Random(device.seed)  # noqa: S311 - a workload stream, as in the simulator
        topic = f"dt/{thing['tenant']}/{thing['site']}/{thing['thing']}/telemetry"
        clients.append((client, topic, LUMINAIRE.new_state(device, rng), rng))
        heapq.heappush(schedule, (time.monotonic() + rng.random() / rate, index))
    until = time.monotonic() + seconds - len(clients) / ramp
    last_write = 0.0
    while True:
        now = time.monotonic()
        if now - last_write >= 1.0:
            last_write = now
            with lock:
                stats.write_text(json.dumps({**counts, "t": time.time()}))
        if now >= until:
            break
        due, index = schedule[0]
        if due > now + BATCH_S:  # what falls due within the window goes now, as the simulator's pacer does
            time.sleep(min(due - now, 0.05))
            continue
        heapq.heapreplace(schedule, (due + 1.0 / rate, index))
        client, topic, state, rng = clients[index]
        body = LUMINAIRE.tasks[0].build(state, rng, time.time())
        packet = mqtt5.PublishPacket(topic=topic, payload=json.dumps(body).encode(), qos=mqtt5.QoS.AT_LEAST_ONCE)
        client.publish(packet).add_done_callback(on_ack)
    for client, *_ in clients:
        client.stop()


def started_client(
    setup: dict[str, Any], thing: dict[str, Any], runtime: CrtRuntime, on_connected: Any
) -> mqtt5.Client:
    """One device's awscrt MQTT 5 client with its own mTLS identity, started: ``setup`` names the broker
    (``host``, ``port``) and the CA (``ca``), ``thing`` the device (``thing``, ``cert``, ``key``). Also
    the client of bench/ingest_scale.py's generator."""
    opts = io.TlsContextOptions.create_client_with_mtls_from_path(thing["cert"], thing["key"])
    opts.override_default_trust_store_from_path(None, setup["ca"])
    client = mqtt5.Client(
        mqtt5.ClientOptions(
            host_name=setup["host"],
            port=setup["port"],
            bootstrap=runtime.bootstrap,
            tls_ctx=io.ClientTlsContext(opts),
            connect_options=mqtt5.ConnectPacket(client_id=thing["thing"], keep_alive_interval_sec=1200),
            on_lifecycle_event_connection_success_fn=on_connected,
        )
    )
    client.start()
    return client


if __name__ == "__main__":
    main()
