"""A running local cloud's control socket: fault injection from another process.

``iotfleet cloud up`` listens on ``<workdir>/control.sock`` (a Unix socket, so nothing leaves the
machine); ``iotfleet cloud chaos kill eu-west-1 --workdir DIR`` and :func:`send` talk to it. One
request per connection: a line ``<action> <region>``, answered by ``ok <state>`` or ``error <why>``.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from enum import StrEnum
from pathlib import Path

from iotfleet.cloud.local import LocalCloud
from iotfleet.errors import CloudError, ConfigError, IotFleetError

__all__ = ["Action", "ControlServer", "send", "socket_path"]


class Action(StrEnum):
    KILL = "kill"
    BLACKHOLE = "blackhole"
    RESTORE = "restore"
    STATUS = "status"


def socket_path(workdir: Path) -> Path:
    return workdir / "control.sock"


class ControlServer:
    """Serves chaos requests for ``cloud`` on its workdir's control socket, in a background thread."""

    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud = cloud
        self.path = socket_path(cloud.workdir)
        self._server: socketserver.UnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def handle(self, line: str) -> str:
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
            def handle(self) -> None:
                line = self.rfile.readline(1024).decode("utf-8", "replace").strip()
                self.wfile.write((control.handle(line) + "\n").encode())

        self._server = socketserver.UnixStreamServer(str(self.path), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="iotfleet-control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def send(workdir: Path, action: Action | str, region: str, timeout: float = 30.0) -> str:
    """Ask the cloud running in ``workdir`` to apply ``action`` to ``region``; return the region's state."""
    path = socket_path(workdir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(f"{action} {region}\n".encode())
            answer = sock.makefile("r").readline().strip()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ConfigError(
            f"no local cloud is running in {workdir} (no {path.name}): start one with "
            f"'iotfleet cloud up --workdir {workdir}'"
        ) from exc
    status, _, detail = answer.partition(" ")
    if status != "ok":
        raise CloudError(detail or f"the cloud in {workdir} gave no answer")
    return detail
