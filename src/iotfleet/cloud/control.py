"""A running local cloud's control socket: fault injection from another process.

``iotfleet cloud up`` listens on ``<workdir>/control.sock`` (a Unix socket, so nothing leaves the
machine); ``iotfleet cloud chaos kill eu-west-1 --workdir DIR`` and :func:`send` talk to it. One
request per connection: a line ``<action> <region>``, answered by ``ok <state>`` or ``error <why>``.

The socket is 0600 whatever the umask (it is bound in a private directory, then moved into place).
Each connection is served in its own thread and must send its line within ``REQUEST_TIMEOUT_S``: a
client that connects and says nothing neither blocks other requests nor delays shutdown.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import tempfile
import threading
from enum import StrEnum
from pathlib import Path

from iotfleet.cloud.local import LocalCloud
from iotfleet.errors import CloudError, ConfigError, IotFleetError

__all__ = ["Action", "ControlServer", "Outage", "send", "socket_path"]


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


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True  # a silent client's thread never holds up shutdown
    block_on_close = False


def socket_path(workdir: Path) -> Path:
    return workdir / "control.sock"


class ControlServer:
    """Serves chaos requests for ``cloud`` on its workdir's control socket, in a background thread."""

    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud = cloud
        self.path = socket_path(cloud.workdir)
        self._server: socketserver.UnixStreamServer | None = None
        self._thread: threading.Thread | None = None
        self._acting = threading.Lock()  # connections are served in parallel; actions run one at a time

    def handle(self, line: str) -> str:
        with self._acting:
            return self._handle(line)

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
                    line = self.rfile.readline(1024).decode("utf-8", "replace").strip()
                except TimeoutError:
                    return  # said nothing in time: dropped
                self.wfile.write((control.handle(line) + "\n").encode())

        self._server = self._bind_private(Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="iotfleet-control", daemon=True)
        self._thread.start()
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
    except TimeoutError as exc:
        raise CloudError(f"the cloud in {workdir} did not answer within {timeout:g} s") from exc
    except OSError as exc:
        raise CloudError(f"cannot talk to the cloud in {workdir} through {path}: {exc.strerror or exc}") from exc
    status, _, detail = answer.partition(" ")
    if status != "ok":
        raise CloudError(detail or f"the cloud in {workdir} gave no answer")
    return detail
