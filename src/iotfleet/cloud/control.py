"""A running local cloud's control socket: fault injection and ingest figures from another process.

``iotfleet cloud up`` listens on ``<workdir>/control.sock`` (a Unix socket, so nothing leaves the
machine) and, with ``--control HOST:PORT``, on TCP too, for simulator shards on other machines;
``iotfleet cloud chaos kill eu-west-1 --workdir DIR``, :func:`send` and :class:`ControlClient` talk to
it. One request per connection, one line each way:

- ``<action> <region>`` (kill, blackhole, restore, status), answered by ``ok <state>``;
- ``ingest <json>``, with ``{"sites": ["<tenant>/<site>", ...] | null, "cloud": bool}``: each region's
  ingest figures of those sites' devices (:meth:`LocalCloud.ingest_stats`), answered by ``ok <json>``;
- the operator's requests, answered by ``ok <json>``: ``shadow-update {"region", "thing", "desired"}``,
  ``shadow-get {"region", "thing"}`` (the classic shadow's document) and ``publish {"region", "topic",
  "payload"}`` (``true`` when sent, ``false`` when the region is down).

Any failure is answered by ``error <why>``. The TCP listener has no authentication: it is for a test
cloud on a trusted network (anyone who reaches it can kill a region), like the brokers' ``--listen``.

The socket is 0600 whatever the umask (it is bound in a private directory, then moved into place).
Each connection is served in its own thread and must send its line within ``REQUEST_TIMEOUT_S``: a
client that connects and says nothing neither blocks other requests nor delays shutdown.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import socketserver
import tempfile
import threading
from collections.abc import Collection, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from iotfleet.cloud.jobs import CONFIG_FIELDS, JobsError
from iotfleet.cloud.local import LocalCloud, Region
from iotfleet.errors import CloudError, ConfigError, IotFleetError
from iotfleet.metrics import Histogram, SeqSet

__all__ = ["Action", "ControlClient", "ControlServer", "Outage", "parse_address", "send", "socket_path"]


class Action(StrEnum):
    """What can be done to a region: the chaos actions (all but STATUS) and asking for its state."""

    KILL = "kill"
    BLACKHOLE = "blackhole"
    RESTORE = "restore"
    STATUS = "status"


class Outage(StrEnum):
    """The two ways a region goes down: killed (connections reset at once) or blackholed (silence)."""

    KILL = "kill"
    BLACKHOLE = "blackhole"


CHAOS_ACTIONS = (Action.KILL, Action.BLACKHOLE, Action.RESTORE)


REQUEST_TIMEOUT_S = 5.0
# an ingest request names the sites of a shard (thousands, not millions); object-put carries a firmware image
MAX_REQUEST_BYTES = 24 << 20
INGEST = "ingest"
_OPERATOR_VERBS = {
    "shadow-update": ("region", "thing", "desired"),
    "shadow-get": ("region", "thing"),
    "publish": ("region", "topic", "payload"),
    "object-put": ("bucket", "key", "data_b64"),
    "group-add": ("group", "things"),
    "job-create": ("job_id", "group", "document", "config"),
    "job-describe": ("region", "job_id"),
    "job-cancel": ("region", "job_id", "comment"),
}


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True  # a silent client's thread never holds up shutdown
    block_on_close = False


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` of a TCP control listener (port 0: any free one, to listen on)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"control address {text!r} is not HOST:PORT (e.g. 127.0.0.1:7000)")
    return host.strip("[]"), int(port)


def ingest_to_json(stats: dict[str, Any]) -> dict[str, Any]:
    """One region's ingest figures as JSON (sequence sets and histograms as their dicts)."""
    return {
        **stats,
        "e2e": stats["e2e"].to_dict(),
        "by_device": {thing: seqs.to_dict() for thing, seqs in stats["by_device"].items()},
        "per_second": {str(second): n for second, n in stats["per_second"].items()},
    }


def ingest_from_json(data: dict[str, Any]) -> dict[str, Any]:
    """:func:`ingest_to_json` undone."""
    return {
        **data,
        "e2e": Histogram.from_dict(data["e2e"]),
        "by_device": {thing: SeqSet.from_dict(seqs) for thing, seqs in data["by_device"].items()},
        "per_second": {int(second): n for second, n in data["per_second"].items()},
    }


def socket_path(workdir: Path) -> Path:
    return workdir / "control.sock"


class ControlServer:
    """Serves chaos requests for ``cloud`` on its workdir's control socket, in a background thread."""

    def __init__(self, cloud: LocalCloud, *, tcp: tuple[str, int] | None = None) -> None:
        self.cloud = cloud
        self.path = socket_path(cloud.workdir)
        self.tcp = tcp  # also listen here (port 0: an ephemeral one, see tcp_address once started)
        self._servers: list[socketserver.BaseServer] = []
        self._acting = threading.Lock()  # connections are served in parallel; actions run one at a time

    @property
    def tcp_address(self) -> str | None:
        """``host:port`` of the TCP listener, once started (None without one)."""
        for server in self._servers:
            if isinstance(server, _TcpServer):
                host, port = server.server_address[:2]
                return f"{host!s}:{port}"
        return None

    def handle(self, line: str) -> str:
        verb, _, rest = line.partition(" ")
        if verb == INGEST:
            return self._ingest(rest)
        if verb in _OPERATOR_VERBS:
            return self._operate(verb, rest)
        with self._acting:
            return self._handle(line)

    def _operate(self, verb: str, text: str) -> str:
        """The operator's shadow and publish requests (:class:`ControlClient` sends them)."""
        try:
            try:
                return "ok " + json.dumps(self._operation(verb, json.loads(text)))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{verb}: expected a JSON object with {', '.join(_OPERATOR_VERBS[verb])} ({exc!r})"
                ) from exc
        except IotFleetError as exc:
            return f"error {exc.message}"
        except JobsError as exc:
            return f"error {exc.code}: {exc.message}"

    def _operation(self, verb: str, request: dict[str, Any]) -> Any:
        cloud = self.cloud
        if verb == "object-put":
            data = base64.b64decode(str(request["data_b64"]), validate=True)
            return cloud.put_object(str(request["bucket"]), str(request["key"]), data)
        if verb == "group-add":
            cloud.add_things_to_group(str(request["group"]), [str(t) for t in request["things"]])
        elif verb == "job-create":
            config = dict(request["config"])
            unknown = sorted(set(config) - CONFIG_FIELDS)
            if unknown:
                raise ConfigError(f"job-create: config takes CreateJob's {sorted(CONFIG_FIELDS)}, not {unknown}")
            cloud.create_job(
                str(request["job_id"]), targets=[f"group:{request['group']}"], document=request["document"], **config
            )
        else:
            return self._in_region(verb, cloud.region(str(request["region"])), request)
        return {}

    def _in_region(self, verb: str, region: Region, request: dict[str, Any]) -> Any:
        if verb == "job-describe":
            return region.jobs.describe_job(str(request["job_id"]))
        if verb == "job-cancel":
            self.cloud.cancel_job(str(request["job_id"]), comment=str(request["comment"]), regions=[region.name])
        elif verb == "publish":
            return region.publish(str(request["topic"]), str(request["payload"]).encode())
        elif verb == "shadow-get":
            return region.shadows.get(str(request["thing"]))
        else:
            region.shadows.update(str(request["thing"]), desired=dict(request["desired"]))
        return {}

    def _ingest(self, text: str) -> str:
        try:
            try:
                request = json.loads(text)
                sites, whole = request["sites"], bool(request.get("cloud", True))
                if sites is not None and not (isinstance(sites, list) and all(isinstance(s, str) for s in sites)):
                    raise TypeError("sites")
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f'expected \'ingest {{"sites": ["<tenant>/<site>", ...] or null, "cloud": true}}\' ({exc})'
                ) from exc
            stats = self.cloud.ingest_stats(None if sites is None else set(sites), cloud=whole)
            return "ok " + json.dumps([ingest_to_json(region) for region in stats])
        except IotFleetError as exc:
            return f"error {exc.message}"

    def _handle(self, line: str) -> str:
        words = line.split()
        try:
            if len(words) != 2 or words[0] not in set(Action):
                raise ConfigError(f"expected '<{'|'.join(Action)}> <region>', got {line!r}")
            action, region = Action(words[0]), self.cloud.region(words[1])
            if action is not Action.STATUS:
                getattr(region, action.value)()
            return f"ok {region.state}"
        except IotFleetError as exc:
            return f"error {exc.message}"

    def start(self) -> ControlServer:
        self.path.unlink(missing_ok=True)
        control = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = REQUEST_TIMEOUT_S

            def handle(self) -> None:
                try:
                    line = self.rfile.readline(MAX_REQUEST_BYTES).decode("utf-8", "replace").strip()
                except TimeoutError:
                    return  # said nothing in time: dropped
                self.wfile.write((control.handle(line) + "\n").encode())

        self._servers.append(self._bind_private(Handler))
        if self.tcp is not None:
            self._servers.append(_TcpServer(self.tcp, Handler))
        for server in self._servers:
            threading.Thread(target=server.serve_forever, name="iotfleet-control", daemon=True).start()
        return self

    def _bind_private(self, handler: type[socketserver.BaseRequestHandler]) -> _Server:
        """Bind in a fresh 0700 directory, make the socket 0600, then rename it to ``self.path``: no
        moment exists where another user could connect, whatever the umask."""
        private = Path(tempfile.mkdtemp(prefix=".control-", dir=self.path.parent))
        try:
            staged = private / self.path.name
            server = _Server(str(staged), handler, bind_and_activate=False)
            try:
                server.server_bind()
                os.chmod(staged, 0o600)
                os.replace(staged, self.path)
                server.server_activate()
            except BaseException:
                server.server_close()
                raise
        finally:
            with contextlib.suppress(OSError):
                (private / self.path.name).unlink()
            with contextlib.suppress(OSError):
                private.rmdir()
        return server

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def send(workdir: Path, action: Action | str, region: str, timeout: float = 30.0) -> str:
    """Ask the cloud running in ``workdir`` to apply ``action`` to ``region``; return the region's state."""
    return ControlClient(socket_path(workdir), name=f"the cloud in {workdir}").request(f"{action} {region}", timeout)


class ControlClient:
    """A running cloud's control socket, by its path (a Unix socket) or ``host:port`` (TCP)."""

    def __init__(self, address: Path | str, *, name: str | None = None) -> None:
        self.address = address
        self.name = name or f"the cloud at {address}"

    def chaos(self, action: Action | str, region: str, timeout: float = 30.0) -> str:
        """Apply a chaos ``action`` to ``region``; return the region's state."""
        return self.request(f"{action} {region}", timeout)

    def ingest_stats(
        self, sites: Collection[str] | None, *, cloud: bool = True, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Each region's ingest figures of ``sites``' devices (see :meth:`LocalCloud.ingest_stats`)."""
        request = json.dumps({"sites": None if sites is None else sorted(sites), "cloud": cloud})
        answer = self.request(f"{INGEST} {request}", timeout)
        return [ingest_from_json(region) for region in json.loads(answer)]

    # the operator's access to the cloud (iotfleet.sim.access.CloudAccess), one request each

    def shadow_update(self, region: str, thing: str, desired: Mapping[str, Any]) -> None:
        self._operate("shadow-update", region=region, thing=thing, desired=dict(desired))

    def shadow_get(self, region: str, thing: str) -> dict[str, Any]:
        document: dict[str, Any] = self._operate("shadow-get", region=region, thing=thing)
        return document

    def publish(self, region: str, topic: str, payload: bytes) -> bool:
        return bool(self._operate("publish", region=region, topic=topic, payload=payload.decode()))

    def put_object(self, bucket: str, key: str, data: bytes) -> str:
        return str(self._operate("object-put", bucket=bucket, key=key, data_b64=base64.b64encode(data).decode()))

    def add_things_to_group(self, group: str, things: Sequence[str]) -> None:
        self._operate("group-add", group=group, things=list(things))

    def create_job(self, job_id: str, group: str, document: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        self._operate("job-create", job_id=job_id, group=group, document=dict(document), config=dict(config))

    def describe_job(self, region: str, job_id: str) -> dict[str, Any]:
        described: dict[str, Any] = self._operate("job-describe", region=region, job_id=job_id)
        return described

    def cancel_job(self, region: str, job_id: str, comment: str) -> None:
        self._operate("job-cancel", region=region, job_id=job_id, comment=comment)

    def _operate(self, verb: str, **request: Any) -> Any:
        return json.loads(self.request(f"{verb} {json.dumps(request)}"))

    def request(self, line: str, timeout: float = 30.0) -> str:
        """Send one request line; return the answer after ``ok`` (:class:`CloudError` on ``error``)."""
        try:
            if isinstance(self.address, Path):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                target: Any = str(self.address)
            else:
                target = parse_address(self.address)
                sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_STREAM)
            with sock:
                sock.settimeout(timeout)
                sock.connect(target)
                sock.sendall(f"{line}\n".encode())
                answer = sock.makefile("r", encoding="utf-8").readline().strip()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            where = f"no {self.address.name}" if isinstance(self.address, Path) else "connection refused"
            raise ConfigError(
                f"no local cloud is running there ({self.name}: {where}): start one with 'iotfleet cloud up'"
            ) from exc
        except TimeoutError as exc:
            raise CloudError(f"{self.name} did not answer within {timeout:g} s") from exc
        except OSError as exc:
            raise CloudError(f"cannot talk to {self.name} through {self.address}: {exc.strerror or exc}") from exc
        status, _, detail = answer.partition(" ")
        if status != "ok":
            raise CloudError(detail or f"{self.name} gave no answer")
        return detail
