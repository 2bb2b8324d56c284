"""Debian's Chromium, headless, loading a page this package wrote: what its console said, and a screenshot.

Chromium runs in its own process group under ``setpriv --pdeathsig KILL`` (it dies with the test process)
and the group is killed by its id at the end, also when the page hangs. It resolves no host name
(``--host-resolver-rules``) and starts none of its background connections, so nothing leaves loopback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed here; ./dev test installs it (apt-get)"
)


@dataclass
class Loaded:
    console: list[str]  # each message the page's console logged (errors included)
    screenshot: Image.Image

    def pixels_near(self, colour: str, tolerance: int = 40) -> int:
        """How many pixels of the screenshot are within ``tolerance`` (sum over R, G, B) of ``#rrggbb``."""
        want = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        near = 0
        for n, rgb in self.screenshot.convert("RGB").getcolors(maxcolors=1 << 24) or []:
            assert isinstance(rgb, tuple)
            if sum(abs(int(a) - b) for a, b in zip(rgb, want, strict=True)) <= tolerance:
                near += n
        return near

    def colours(self) -> int:
        return len(self.screenshot.convert("RGB").getcolors(maxcolors=1 << 24) or [])


def load(page: Path, workdir: Path, *, width: int = 1200, height: int = 8000, timeout: float = 90.0) -> Loaded:
    """Open ``page`` in headless Chromium, wait for it to load, and screenshot ``width`` x ``height``."""
    assert CHROMIUM is not None
    shot = workdir / "screenshot.png"
    argv = [
        "setpriv", "--pdeathsig", "KILL", CHROMIUM, *FLAGS,
        f"--user-data-dir={workdir / 'chromium-profile'}", f"--window-size={width},{height}",
        f"--screenshot={shot}", page.resolve().as_uri(),
    ]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True) as p:
        try:
            _, stderr = p.communicate(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # its renderer and helpers too, whatever happened
            p.wait()
    assert p.returncode == 0, f"chromium failed ({p.returncode}): {stderr[-2000:]}"
    assert shot.exists(), f"chromium wrote no screenshot: {stderr[-2000:]}"
    console = [line for line in stderr.splitlines() if ":CONSOLE" in line]
    with Image.open(shot) as image:  # read at once: a lazily read image would hold the file open
        return Loaded(console, image.copy())
