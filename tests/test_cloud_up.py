"""`iotfleet cloud up` and its control socket, run as a user runs them: a real process, real brokers."""

from __future__ import annotations

import json
import signal
import socket
import stat
import time
from pathlib import Path

from iotfleet.cloud.control import send
from tests.conftest import cloud_up


def test_control_socket_is_private_and_a_silent_client_blocks_neither_chaos_nor_sigterm(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    with cloud_up("--json", "--regions", "eu-west-1", "--workdir", str(workdir), umask=0) as proc:  # socket: 0600
        assert proc.stdout is not None
        json.loads(proc.stdout.readline())
        control = workdir / "control.sock"
        assert stat.S_IMODE(control.stat().st_mode) == 0o600
        assert [p.name for p in workdir.iterdir() if p.name.startswith(".control-")] == []
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
            silent.connect(str(control))  # connects and sends nothing
            assert send(workdir, "status", "eu-west-1", timeout=3) == "running"
            assert send(workdir, "blackhole", "eu-west-1", timeout=3) == "blackholed"
            asked_to_stop = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
            stopped_in = time.monotonic() - asked_to_stop
    assert proc.returncode == 0, err
    assert stopped_in < 5
    assert not control.exists()
