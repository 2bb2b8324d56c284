"""Build iotfleet's mosquitto plugin (``iotfleet_routing.c``) once per machine, into a cache.

The plugin gives fleet-provisioning answers IoT Core's per-connection delivery (see the C file).
Building needs a C compiler and mosquitto's plugin headers (Debian/Ubuntu: ``gcc``, ``libc6-dev``,
``mosquitto-dev``, ``libmosquitto-dev``); ``./dev`` installs them. The result is cached by the hash of
the source under ``$XDG_CACHE_HOME/iotfleet`` (default ``~/.cache/iotfleet``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from iotfleet.errors import BrokerStartError

__all__ = ["BUILD_HINT", "plugin_path"]

BUILD_HINT = (
    "install a C compiler and mosquitto's plugin headers: "
    "'sudo apt-get install -y gcc libc6-dev mosquitto-dev libmosquitto-dev'"
)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iotfleet"


def plugin_path() -> Path:
    """The built plugin, compiling it first if this machine has not yet; raise with the fix if it cannot."""
    source = resources.files(__package__).joinpath("iotfleet_routing.c").read_bytes()
    target = _cache_dir() / f"iotfleet_routing-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BrokerStartError(f"the local cloud's mosquitto plugin needs a C compiler: {BUILD_HINT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "iotfleet_routing.c"
        src.write_bytes(source)
        built = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(built), str(src)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise BrokerStartError(
                f"building the local cloud's mosquitto plugin failed; {BUILD_HINT}. Compiler output:\n{result.stderr}",
                log=result.stderr,
            )
        os.replace(built, target)  # atomic: a concurrent build yields the same file
    return target
