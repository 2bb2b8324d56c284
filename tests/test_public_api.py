"""The public surface: a sorted __all__, py.typed, and nothing happening at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import iotfleet


def test_all_is_sorted_and_every_name_exists() -> None:
    assert iotfleet.__all__ == sorted(iotfleet.__all__)
    assert all(hasattr(iotfleet, name) for name in iotfleet.__all__)


def test_package_is_typed() -> None:
    assert (Path(iotfleet.__file__).parent / "py.typed").is_file()


def test_import_has_no_side_effects() -> None:
    """Importing iotfleet starts no thread, adds no log handler and registers no exit hook."""
    code = (
        "import atexit, logging, threading, sys\n"
        "before = (threading.active_count(), list(logging.getLogger().handlers), atexit._ncallbacks())\n"
        "import iotfleet, iotfleet.cli, iotfleet.testing\n"
        "after = (threading.active_count(), list(logging.getLogger().handlers), atexit._ncallbacks())\n"
        "sys.exit(0 if before == after else f'{before} -> {after}')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_every_error_says_what_to_do_through_one_base() -> None:
    for name in (
        "BrokerNotInstalled",
        "CertificateError",
        "ConfigError",
        "PolicyError",
        "RegistryError",
        "TopicError",
    ):
        assert issubclass(getattr(iotfleet, name), iotfleet.IotFleetError)
    err = iotfleet.TopicError("topic too long", rule="max-bytes", value="x")
    assert str(err) == err.message == "topic too long"
