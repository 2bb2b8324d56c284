"""The Locust side of bench/locust_compare.py: Locust's own MQTT user, written as a Python load tester would.

Each Locust user is one luminaire with its own mTLS identity (client id = thing name, as the local
cloud's per-thing policy requires) publishing the simulator's telemetry payload at QoS 1, MQTT 5, every
``1 / rate`` seconds (``constant_pacing``). Only Locust's public API is used: ``MqttUser`` (one
paho-mqtt client per user, ``use_loop_selectors`` for more than a few hundred sockets), ``task``,
``constant_pacing`` and the ``request`` event. Acknowledged publishes, failures and connected users
are written once a second to ``IOTFLEET_LOCUST_STATS`` for the driver to read.

Not run by the test suite; the driver starts it with ``python -m locust -f bench/locust_mqtt_user.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import ssl
import time
from pathlib import Path
from typing import Any

import gevent
import paho.mqtt.client as mqtt
from locust import constant_pacing, events, task
from locust.contrib.mqtt import MqttUser

from iotfleet.sim.fleet import SimDevice
from iotfleet.sim.workload import LUMINAIRE

SETUP = json.loads(Path(os.environ["IOTFLEET_LOCUST_SETUP"]).read_text())
STATS = Path(os.environ["IOTFLEET_LOCUST_STATS"])
_users = itertools.count()
_counts = {"acked": 0, "failed": 0, "connected": 0}


@events.request.add_listener
def _count(name: str, exception: Any, **_kwargs: Any) -> None:
    if name.startswith("publish"):
        _counts["failed" if exception else "acked"] += 1
    elif name == "connect" and not exception:
        _counts["connected"] += 1
    elif name == "disconnect":
        _counts["connected"] -= 1


def _write_stats() -> None:
    while True:
        STATS.write_text(json.dumps({**_counts, "t": time.time()}))
        gevent.sleep(1.0)


@events.init.add_listener
def _start_writer(**_kwargs: Any) -> None:
    gevent.spawn(_write_stats)


class Luminaire(MqttUser):
    host = SETUP["host"]
    port = SETUP["port"]
    protocol = mqtt.MQTTv5
    use_loop_selectors = True
    wait_time = constant_pacing(1.0 / SETUP["rate"])

    def __init__(self, environment: Any) -> None:
        thing = SETUP["things"][next(_users) % len(SETUP["things"])]
        context = ssl.create_default_context(cafile=SETUP["ca"])
        context.load_cert_chain(thing["cert"], thing["key"])
        self.tls_context = context
        self.client_id = thing["thing"]
        self.topic = f"dt/{thing['tenant']}/{thing['site']}/{thing['thing']}/telemetry"
        device = SimDevice(**thing["device"])
        self.rng = random.Random(device.seed)  # noqa: S311 - a workload stream, as in the simulator
        self.state = LUMINAIRE.new_state(device, self.rng)
        super().__init__(environment)

    @task
    def telemetry(self) -> None:
        if self.client.is_connected():
            body = LUMINAIRE.tasks[0].build(self.state, self.rng, time.time())
            self.client.publish(self.topic, json.dumps(body).encode(), qos=1)
