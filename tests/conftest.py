"""Shared test helpers: a small synchronous MQTT5 probe over real TLS, and process checks."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from awscrt import mqtt5, mqtt_request_response
from awsiot import mqtt5_client_builder
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from iotfleet.cloud.broker import Quotas, TlsFiles
from iotfleet.cloud.local import LocalCloud
from iotfleet.config import LOCAL_FAST, Endpoint, Identity, PublishLimits
from iotfleet.topics import MESSAGE_ID_PROPERTY
from iotfleet.transport.base import ConnectOptions, InboundMessage, Session
from iotfleet.transport.paho import PahoTransport
from iotfleet.transport.tls import tls_client_context


def identity_context(identity: Identity | TlsFiles) -> ssl.SSLContext:
    return tls_client_context(identity.ca_file, identity.cert_file, identity.key_file)


@dataclass
class Probe:
    """One paho MQTT5 client driven by explicit ``loop()`` calls: no background thread."""

    endpoint: Endpoint
    client_id: str
    context: ssl.SSLContext
    keepalive: int = 60
    client: mqtt.Client = field(init=False)
    connack: ReasonCode | None = None
    disconnected: ReasonCode | None = None
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    pubacks: dict[int, int] = field(default_factory=dict)
    subacks: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set_context(self.context)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, bytes(msg.payload)))
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc.value)
        self.client.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(mid, [r.value for r in rcs])

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None) -> None:
        self.connack = rc

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None) -> None:
        self.disconnected = rc

    def is_closed(self) -> bool:
        """Whether the broker (or the network) ended the session."""
        return self.disconnected is not None

    def pump(self, until: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Run the client's loop until ``until()`` holds or ``timeout`` passes; return whether it held."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                return False
            try:
                self.client.loop(timeout=0.02)
            except (OSError, ssl.SSLError):
                self.disconnected = self.disconnected or ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
                return until()
        return True

    def connect(self, timeout: float = 5.0) -> bool:
        """Connect; True once a successful CONNACK arrived and the broker did not drop us at once."""
        try:
            self.client.connect(self.endpoint.host, self.endpoint.port, keepalive=self.keepalive, clean_start=True)
        except (OSError, ssl.SSLError):
            return False
        self.pump(lambda: self.connack is not None or self.disconnected is not None, timeout)
        return self.connack is not None and not self.connack.is_failure and self.disconnected is None

    def publish(self, topic: str, payload: bytes = b"x", timeout: float = 5.0) -> int | None:
        """Publish QoS 1; return the PUBACK reason code, or None if none came."""
        info = self.client.publish(topic, payload, qos=1)
        self.pump(lambda: info.mid in self.pubacks or self.disconnected is not None, timeout)
        return self.pubacks.get(info.mid)

    def subscribe(self, topic_filter: str, timeout: float = 5.0) -> list[int] | None:
        _, mid = self.client.subscribe(topic_filter, qos=1)
        assert mid is not None
        self.pump(lambda: mid in self.subacks or self.disconnected is not None, timeout)
        return self.subacks.get(mid)

    def close(self) -> None:
        if self.connack is not None and self.disconnected is None:
            self.client.disconnect()
            self.pump(lambda: self.disconnected is not None, 1.0)
        sock = self.client.socket()
        if sock is not None:
            sock.close()


# IoT Core's quotas, but for two the tests break on purpose: they reconnect a client id at once (a takeover,
# a fresh probe per case) and burst publishes with the client's rate limits lifted. tests/cloud/test_quotas.py
# checks those two quotas.
TEST_QUOTAS = Quotas(connect_per_client=0, publish_per_connection=0)


@pytest.fixture
def iotfleet_quotas() -> Quotas:
    return TEST_QUOTAS


Probes = Callable[..., Probe]  # the type of the ``probes`` fixture
ANY_ARN = "arn:aws:iot:*:*"  # the region and account part of a resource in the tests' policy documents


@pytest.fixture
def probes() -> Iterator[Callable[..., Probe]]:
    """Make :class:`Probe` clients; all are closed after the test."""
    made: list[Probe] = []

    def make(endpoint: Endpoint, client_id: str, context: ssl.SSLContext, *, keepalive: int = 60) -> Probe:
        probe = Probe(endpoint, client_id, context, keepalive)
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


# --------------------------------------------------------------------------- the one poll
# Poll only what has no event to wait for: the state of another thread or process, or of the cloud. When
# the thing awaited is a message, wait for it (Watcher.wait_for) instead.


def _polls(predicate: Callable[[], bool], timeout: float) -> Iterator[None]:
    """Yields (the caller then pauses) while ``predicate()`` is false and ``timeout`` seconds have not passed."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        yield


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Whether ``predicate()`` came true within ``timeout`` seconds, checked every ``interval`` (blocking)."""
    for _ in _polls(predicate, timeout):
        time.sleep(interval)
    return predicate()


async def until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """:func:`wait_until` from a coroutine: the event loop runs between the checks."""
    for _ in _polls(predicate, timeout):
        await asyncio.sleep(interval)
    return predicate()


@pytest.fixture(autouse=True, scope="session")
def _no_stray_brokers() -> Iterator[None]:
    """After the whole suite, no broker this test process started may still run."""
    yield
    children = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _ppid(int(p.name)) == os.getpid() and _comm(int(p.name)) == "mosquitto"
    ]
    assert not [pid for pid in children if process_alive(pid)], f"stray mosquitto processes: {children}"


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------- the CLI as a user runs it

IOTFLEET = [sys.executable, "-m", "iotfleet"]


@contextmanager
def cloud_up(*args: str, **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """``iotfleet cloud up ARGS`` in its own process, pipes for stdout and stderr; at the end it gets SIGTERM
    if still running, and is killed by its PID if it does not stop (also when the test failed)."""
    command = [*IOTFLEET, "cloud", "up", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# --------------------------------------------------------------------------- device tests

UNLIMITED = PublishLimits(enabled=False)


def lamp_options(cloud: LocalCloud, lamp: Identity, transport: str = "crt", **overrides: Any) -> dict[str, Any]:
    """A device client's keyword arguments for the tests' thing in acme/hq on ``cloud``: fast reconnects and
    no rate limits (for :class:`DeviceClient` and :class:`BlockingDeviceClient` alike)."""
    options = {"tenant": "acme", "site": "hq", "transport": transport, "reconnect": LOCAL_FAST, "limits": UNLIMITED}
    return {"identity": lamp, "endpoints": cloud.endpoints, **options, **overrides}


@pytest.fixture(params=["crt", "paho"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every device test runs on both transports."""
    return str(request.param)


class Watcher:
    """A service-identity subscriber per region (paho, QoS 0) counting what arrived, by message id."""

    def __init__(self, cloud: LocalCloud, topic_filter: str = "dt/#") -> None:
        self.cloud = cloud
        self.topic_filter = topic_filter
        self.messages: list[tuple[str, InboundMessage]] = []
        self.ids: collections.Counter[str] = collections.Counter()
        self.sessions: dict[str, Session] = {}
        self._arrived = asyncio.Event()
        self._identity = Identity(
            thing_name="watcher",
            cert_file=cloud.service.cert_file,
            key_file=cloud.service.key_file,
            ca_file=cloud.ca_file,
        )

    async def watch(self, endpoint: Endpoint) -> None:
        def on_message(message: InboundMessage) -> None:
            self.messages.append((endpoint.region, message))
            message_id = message.property(MESSAGE_ID_PROPERTY)
            if message_id:
                self.ids[message_id] += 1
            self._arrived.set()  # paho's callbacks run on the event loop

        options = ConnectOptions(client_id=f"watcher-{endpoint.region}", identity=self._identity, on_message=on_message)
        session = await PahoTransport().connect(endpoint, options)
        await session.subscribe([(self.topic_filter, 0)])
        old = self.sessions.get(endpoint.region)
        if old is not None:  # e.g. its broker was killed: close what is left of it
            await old.close()
        self.sessions[endpoint.region] = session

    async def start(self) -> Watcher:
        for endpoint in self.cloud.endpoints:
            await self.watch(endpoint)
        return self

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Whether ``predicate()`` came true within ``timeout`` seconds, checked each time a message arrives."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.ids.values() if n > 1)


@pytest.fixture
def lamp(local_cloud: LocalCloud) -> Identity:
    return local_cloud.register_thing("lamp-1", tenant="acme", site="hq")


@contextmanager
def aws_sdk_client(
    endpoint: Endpoint, files: Identity | TlsFiles, client_id: str
) -> Iterator[tuple[mqtt5.Client, mqtt_request_response.ClientOptions]]:
    """AWS's own MQTT5 client (awsiot's builder, as a device would build it) connected to ``endpoint``."""
    import threading  # noqa: PLC0415

    connected, stopped = threading.Event(), threading.Event()
    client: mqtt5.Client = mqtt5_client_builder.mtls_from_path(
        cert_filepath=str(files.cert_file),
        pri_key_filepath=str(files.key_file),
        ca_filepath=str(files.ca_file),
        endpoint=endpoint.host,
        port=endpoint.port,
        client_id=client_id,
        on_lifecycle_connection_success=lambda _data: connected.set(),
        on_lifecycle_stopped=lambda _data: stopped.set(),
    )
    client.start()
    try:
        assert connected.wait(10), "AWS's MQTT5 client did not connect to the local cloud"
        yield (
            client,
            mqtt_request_response.ClientOptions(
                max_request_response_subscriptions=4, max_streaming_subscriptions=2, operation_timeout_in_seconds=10
            ),
        )
    finally:
        client.stop()
        # an awscrt client freed while it is still stopping crashes the process on a CRT thread (a SIGSEGV
        # with no Python frame): keep it referenced until it reports that it has stopped
        stopped.wait(10)
