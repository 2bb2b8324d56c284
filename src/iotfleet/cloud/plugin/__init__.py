"""Build iotfleet's mosquitto plugin (``iotfleet_routing.c`` with the policy engine ``authz.c``) once per
machine, into a cache.

The plugin authorizes every CONNECT, SUBSCRIBE, PUBLISH and delivery with the certificate's AWS IoT
policies, and gives fleet-provisioning answers IoT Core's per-connection delivery (see the C files).
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

SOURCES = ("iotfleet_routing.c", "authz.c", "quota.c")  # the plugin includes the engines
BUILD_HINT = (
    "install a C compiler and mosquitto's plugin headers: "
    "'sudo apt-get install -y gcc libc6-dev mosquitto-dev libmosquitto-dev'"
)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iotfleet"


def plugin_path() -> Path:
    """The built plugin, compiling it first if this machine has not yet; raise with the fix if it cannot."""
    sources = {name: resources.files(__package__).joinpath(name).read_bytes() for name in SOURCES}
    digest = hashlib.sha256(b"".join(sources[name] for name in SOURCES)).hexdigest()[:16]
    target = _cache_dir() / f"iotfleet_routing-{digest}.so"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BrokerStartError(f"the local cloud's mosquitto plugin needs a C compiler: {BUILD_HINT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        for name, text in sources.items():
            (Path(tmp) / name).write_bytes(text)
        src = Path(tmp) / SOURCES[0]
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
