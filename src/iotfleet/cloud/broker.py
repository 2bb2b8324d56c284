"""One mosquitto process per region: generated config, mTLS listeners, chaos operations.

The broker is started through ``setpriv --pdeathsig KILL`` from one long-lived spawner thread, so the
kernel kills it if the Python process dies for any reason, even SIGKILL; it runs in its own process
group and is stopped by its PID, never by name. Readiness is a completed TLS handshake with a client
certificate, not a sleep. Its log is read line by line: ``Reloading config.`` confirms a reload of the
plugin's authorization data, and a queue that overflows (mosquitto logs "Outgoing messages are being
dropped for client ...") is counted per client in :attr:`Broker.drops`. Queues are practically
unlimited (:data:`UNLIMITED_QUEUE`; mosquitto's own default is 1,000 messages per client, beyond which
it drops silently), so a slow cloud service falls behind but loses nothing.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Final

from iotfleet.cloud.plugin import plugin_path
from iotfleet.errors import BrokerNotInstalled, BrokerStartError, CloudError, ConfigError
from iotfleet.transport.tls import tls_client_context

__all__ = [
    "Broker",
    "BrokerState",
    "Quotas",
    "TlsFiles",
    "check_bindable",
    "find_mosquitto",
    "free_port",
    "unprivileged_port_start",
]

log = logging.getLogger(__name__)

INSTALL_HINT: Final = (
    "mosquitto is not installed: run 'sudo apt-get install -y mosquitto' (Debian/Ubuntu), "
    "or put its directory on PATH (mosquitto is often in /usr/sbin)"
)
# IoT Core's PUBLISH payload limit is 128 KiB; the packet may also carry the topic and properties.
MAX_PACKET_SIZE: Final = 128 * 1024 + 4096
_RELOADED: Final = "Reloading config."
# Queued messages per client: as good as no limit. Not 0 ("no maximum" in mosquitto.conf(5)): with 0,
# mosquitto 2.0.11 disconnects a client right after refusing it a QoS 1 publish (seen in this project's
# tests), where it should only answer PUBACK 0x87.
UNLIMITED_QUEUE: Final = 100_000_000
_DROPPING = re.compile(r"Outgoing messages are being dropped for client (?P<id>.*)\.$")
_THROTTLED = re.compile(r" (?P<kind>[a-z_]+)=(?P<count>\d+)")  # the counts of "iotfleet: throttled ...; e.g. ..."


def find_mosquitto() -> Path:
    """The mosquitto binary: on PATH, else in /usr/sbin; raise :class:`BrokerNotInstalled` if absent."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerNotInstalled(INSTALL_HINT)
    return Path(found)


def check_bindable(host: str, port: int) -> None:
    """Raise :class:`~iotfleet.errors.ConfigError` naming the fix when ``host:port`` cannot be listened on
    by this user: a port below ``net.ipv4.ip_unprivileged_port_start`` (1024 by default, so 443) needs
    root or CAP_NET_BIND_SERVICE; a port in use or an address this machine lacks fails too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto does: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except PermissionError:
            raise ConfigError(
                f"listening on {host}:{port} needs root or CAP_NET_BIND_SERVICE (ports below "
                f"{unprivileged_port_start()} are privileged): run as root, or "
                f"'sudo setcap cap_net_bind_service=+ep {find_mosquitto()}', or "
                f"'sudo sysctl net.ipv4.ip_unprivileged_port_start={port}'; or listen on 8883"
            ) from None
        except OSError as exc:
            problem = f"cannot listen on {host}:{port}: {exc.strerror}"
            raise ConfigError(f"{problem}; choose another address or port") from None


def unprivileged_port_start() -> int:
    """The lowest port any user may listen on (net.ipv4.ip_unprivileged_port_start; 1024 when unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Quotas:
    """IoT Core's rate quotas, enforced by each region's broker (IOT_CORE.md section 4; 0 means none).

    The defaults are IoT Core's: 1 CONNECT a second per client id, 500 CONNECTs a second and 20,000 inbound
    publishes a second per account (here: per region), 100 publishes a second per connection, inbound
    and outbound. What a broker throttled is in :attr:`Broker.throttled`, by kind. :meth:`none` lifts them.
    """

    connect_per_client: float = 1.0
    connect_per_account: float = 500.0
    publish_per_connection: float = 100.0
    publish_per_account: float = 20_000.0

    def __post_init__(self) -> None:
        for name in ("connect_per_client", "connect_per_account", "publish_per_connection", "publish_per_account"):
            if getattr(self, name) < 0:
                raise ConfigError(f"quota {name} must be >= 0 per second (0: no limit)")

    @classmethod
    def none(cls) -> Quotas:
        return cls(0.0, 0.0, 0.0, 0.0)

    def plugin_options(self) -> list[str]:
        return [
            f"plugin_opt_quota_{name} {getattr(self, name):g}"
            for name in ("connect_per_client", "connect_per_account", "publish_per_connection", "publish_per_account")
        ]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A client identity on disk: the CA to trust, the certificate and its key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        return tls_client_context(self.ca_file, self.cert_file, self.key_file)


class BrokerState(StrEnum):
    """Where a broker process is in its life."""

    STOPPED = "stopped"
    RUNNING = "running"
    KILLED = "killed"
    BLACKHOLED = "blackholed"


class _Spawner:
    """One long-lived thread that starts every broker.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process, so brokers
    are forked from a thread that lives as long as the interpreter.
    """

    _lock = threading.Lock()
    _instance: _Spawner | None = None

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[list[str], queue.Queue[subprocess.Popen[bytes] | BaseException]]]
        self._requests = queue.Queue()
        threading.Thread(target=self._run, name="iotfleet-broker-spawner", daemon=True).start()

    @classmethod
    def get(cls) -> _Spawner:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _run(self) -> None:
        while True:
            argv, reply = self._requests.get()
            try:
                reply.put(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller, which re-raises it
                reply.put(exc)

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        reply: queue.Queue[subprocess.Popen[bytes] | BaseException] = queue.Queue()
        self._requests.put((argv, reply))
        result = reply.get()
        if isinstance(result, BaseException):
            raise result
        return result


class Broker:
    """A mosquitto process for one region, on a fixed loopback port for its whole life.

    ``service`` is the identity used to probe readiness.
    """

    def __init__(
        self,
        *,
        name: str,
        directory: Path,
        ca_file: Path,
        cert_file: Path,
        key_file: Path,
        authz_file: Path,
        service: TlsFiles,
        crl_file: Path | None = None,
        quotas: Quotas | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        listeners: Sequence[tuple[str, int]] = (),
        start_timeout: float = 10.0,
        max_queued_messages: int = UNLIMITED_QUEUE,
    ) -> None:
        self.name = name
        self.directory = directory
        self.host = host
        self.port = port or 0
        self.listeners = list(listeners)  # fixed (host, port) listeners besides the main one, e.g. 8883, 443
        self._ca_file, self._cert_file, self._key_file, self._authz_file = (
            ca_file,
            cert_file,
            key_file,
            authz_file,
        )
        self._service = service
        self._crl_file = crl_file  # certificates the TLS handshake refuses (re-read with each reload)
        self.quotas = quotas or Quotas()
        # what the plugin's quotas refused, by kind (connect_client, publish_connection, ...), from its log
        self.throttled: collections.Counter[str] = collections.Counter()
        self._start_timeout = start_timeout
        self._max_queued_messages = max_queued_messages  # per client
        # times mosquitto started dropping a client's outgoing messages (its queue was full), by client id
        self.drops: collections.Counter[str] = collections.Counter()
        # called with every log line, on the log reader's thread; each must not raise (and must be quick)
        self.log_listeners: list[Callable[[str], None]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=400)
        self._reloads = 0
        self._reload_cond = threading.Condition()
        self._state_lock = threading.RLock()
        self.state = BrokerState.STOPPED
        self.started_count = 0

    # ------------------------------------------------------------------ life cycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def config_file(self) -> Path:
        return self.directory / "mosquitto.conf"

    def recent_log(self) -> str:
        """The broker's last few hundred log lines."""
        return "\n".join(self._log)

    def _config(self) -> str:
        user = pwd.getpwuid(os.getuid()).pw_name
        return "\n".join(
            [
                "# generated by iotfleet; rewritten on every start",
                "per_listener_settings false",
                f"user {user}",
                "allow_anonymous false",
                "persistence false",
                "log_dest stderr",  # unbuffered in C: each line reaches the guard at once
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
                "connection_messages true",
                "log_timestamp false",
                f"plugin {plugin_path()}",
                f"plugin_opt_authz_file {self._authz_file}",  # no acl_file: the plugin's answer is final
                *self.quotas.plugin_options(),
                "max_keepalive 1200",
                "max_inflight_messages 100",
                # a slow subscriber's queue grows instead of dropping: nothing acknowledged is lost unseen
                f"max_queued_messages {self._max_queued_messages}",
                "max_queued_bytes 0",
                f"max_packet_size {MAX_PACKET_SIZE}",
                "set_tcp_nodelay true",
                # no use_identity_as_username: the plugin makes the certificate CN the username in its
                # auth check, where it can also refuse a CONNECT in the CONNACK (see iotfleet_routing.c).
                # TLS settings belong to each listener. A client offering ALPN (x-amzn-mqtt-ca on 443)
                # connects: mosquitto selects no protocol, which RFC 7301 allows and AWS's clients accept.
                *(
                    line
                    for host, port in [(self.host, self.port), *self.listeners]
                    for line in (
                        f"listener {port} {host}",
                        f"cafile {self._ca_file}",
                        f"certfile {self._cert_file}",
                        f"keyfile {self._key_file}",
                        "require_certificate true",
                        *([f"crlfile {self._crl_file}"] if self._crl_file is not None else []),
                    )
                ),
                "",
            ]
        )

    def start(self) -> None:
        """Start mosquitto and return once it completes a TLS handshake; pick a port on first start."""
        with self._state_lock:
            if self.state is not BrokerState.STOPPED and self.state is not BrokerState.KILLED:
                raise CloudError(f"broker {self.name} is {self.state}: stop or restore it instead of starting")
            binary = find_mosquitto()
            for host, port in self.listeners:
                check_bindable(host, port)  # a clear error now, not a line in mosquitto's log
            fixed_port = self.port != 0
            for attempt in range(5):
                if not fixed_port:
                    self.port = free_port(self.host)
                try:
                    self._launch(binary)
                    return
                except BrokerStartError as exc:
                    if fixed_port or "Address already in use" not in exc.log or attempt == 4:
                        raise
                    log.debug("port %d was taken while %s started; trying another", self.port, self.name)

    def _launch(self, binary: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._config())
        argv = [str(binary), "-c", str(self.config_file)]
        setpriv = shutil.which("setpriv")
        if setpriv:
            argv = [setpriv, "--pdeathsig", "KILL", *argv]
        self._log.clear()
        proc = _Spawner.get().spawn(argv)
        _running.add(self)
        self._proc = proc
        if proc.stdout is None:  # pragma: no cover - Popen was given stdout=PIPE
            raise BrokerStartError(f"mosquitto for region {self.name} has no log pipe")
        self._reader = threading.Thread(
            target=self._read_log, args=(proc.stdout,), name=f"iotfleet-broker-log-{self.name}", daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + self._start_timeout
        while True:
            if proc.poll() is not None:
                self._reader.join(timeout=2)
                self._proc = None
                _running.discard(self)
                raise BrokerStartError(
                    f"mosquitto for region {self.name} exited with code {proc.returncode} during start-up; "
                    f"its log:\n{self.recent_log()}",
                    log=self.recent_log(),
                )
            if self._handshake(timeout=0.5):
                break
            if time.monotonic() > deadline:
                self._terminate()
                raise BrokerStartError(
                    f"mosquitto for region {self.name} did not accept a TLS connection on {self.host}:"
                    f"{self.port} within {self._start_timeout:.0f}s; its log:\n{self.recent_log()}",
                    log=self.recent_log(),
                )
            time.sleep(0.01)
        self.state = BrokerState.RUNNING
        self.started_count += 1
        log.info("broker %s ready on %s:%d (pid %d)", self.name, self.host, self.port, proc.pid)

    def _handshake(self, timeout: float) -> bool:
        try:
            with (
                socket.create_connection((self.host, self.port), timeout=timeout) as raw,
                self._service.client_context().wrap_socket(raw, server_hostname="localhost"),
            ):
                return True
        except (OSError, ssl.SSLError):
            return False

    def _read_log(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._log.append(line)
            for listener in self.log_listeners:
                listener(line)
            if line == _RELOADED:
                with self._reload_cond:
                    self._reloads += 1
                    self._reload_cond.notify_all()
                continue
            if line.startswith("iotfleet: throttled "):
                counts = line.partition(";")[0]  # the client ids after the ';' are the devices' own text
                self.throttled.update({m["kind"]: int(m["count"]) for m in _THROTTLED.finditer(counts)})
                log.info("broker %s: %s", self.name, line)
                continue
            dropping = _DROPPING.search(line)
            if dropping is not None:
                self.drops[dropping.group("id")] += 1
                log.warning("broker %s: %s", self.name, line)
                continue

    def reload(self, timeout: float = 5.0) -> None:
        """Make the plugin re-read its authorization data (SIGHUP) and wait until mosquitto has reloaded.

        mosquitto 2.0 blocks signals while it sits in ``epoll_wait`` (up to 100 ms), so a TCP connect
        wakes it and the signal lands at once. The wait ends when the broker logs the reload and then
        answers a TLS handshake; mosquitto is single-threaded, so that handshake is served after the
        reload completed.
        """
        with self._state_lock:
            proc = self._proc
            if proc is None or self.state is not BrokerState.RUNNING:
                return  # a stopped, killed or blackholed broker reads the data when it runs again
            deadline = time.monotonic() + timeout
            with self._reload_cond:
                target = self._reloads + 1
                proc.send_signal(signal.SIGHUP)
                while self._reloads < target:
                    if time.monotonic() > deadline:
                        raise CloudError(f"broker {self.name} did not reload its authorization data within {timeout}s")
                    self._wake()
                    self._reload_cond.wait(timeout=0.05)
            self._handshake(timeout=timeout)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # the broker died; the caller's deadline reports it
            socket.create_connection((self.host, self.port), timeout=1).close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout``), whatever state it is in."""
        with self._state_lock:
            self._terminate(timeout)
            self.state = BrokerState.STOPPED

    def _terminate(self, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if self.state is BrokerState.BLACKHOLED:
                proc.kill()
            else:
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None
        _running.discard(self)

    # ------------------------------------------------------------------ chaos

    def kill(self) -> None:
        """SIGKILL the broker: every peer sees its connection reset at once."""
        with self._state_lock:
            if self._proc is None:
                raise CloudError(f"broker {self.name} is not running: start or restore it first")
            self._proc.kill()
            self._terminate()
            self.state = BrokerState.KILLED

    def blackhole(self) -> None:
        """SIGSTOP the broker: connections hang like a network partition until :meth:`restore`."""
        with self._state_lock:
            if self._proc is None or self.state is not BrokerState.RUNNING:
                raise CloudError(f"broker {self.name} is {self.state}: only a running broker can be blackholed")
            self._proc.send_signal(signal.SIGSTOP)
            self.state = BrokerState.BLACKHOLED

    def restore(self) -> None:
        """Undo :meth:`kill` (restart on the same port) or :meth:`blackhole` (SIGCONT)."""
        with self._state_lock:
            if self.state is BrokerState.BLACKHOLED and self._proc is not None:
                self._proc.send_signal(signal.SIGCONT)
                self.state = BrokerState.RUNNING
                return
            if self.state is BrokerState.KILLED:
                self.start()
                return
            if self.state is BrokerState.RUNNING:
                return
            raise CloudError(f"broker {self.name} is {self.state}: start it instead of restoring it")


class _RunningBrokers:
    """Brokers still running, stopped at interpreter exit (pdeathsig covers harder deaths)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._brokers: set[Broker] = set()
        self._hooked = False

    def add(self, broker: Broker) -> None:
        with self._lock:
            if not self._hooked:  # registered on first use: importing iotfleet has no side effects
                atexit.register(self.stop_all)
                self._hooked = True
            self._brokers.add(broker)

    def discard(self, broker: Broker) -> None:
        with self._lock:
            self._brokers.discard(broker)

    def stop_all(self) -> None:
        with self._lock:
            brokers = list(self._brokers)
        for broker in brokers:
            broker.stop(timeout=2)


_running = _RunningBrokers()
