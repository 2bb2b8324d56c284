"""The public surface: a sorted __all__, py.typed, and nothing happening at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import iotfleet


def python(code: str) -> None:
    """Run ``code`` in a fresh interpreter; it passes when it exits 0."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


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
    python(code)


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


def test_every_public_error_is_exported_from_the_package() -> None:
    from iotfleet import errors  # noqa: PLC0415

    assert set(errors.__all__) <= set(iotfleet.__all__)


def test_import_and_device_sdk_need_no_posix_only_modules() -> None:
    """Without pwd and resource (macOS/Windows laptops) the SDK imports; the cloud and simulator load lazily."""
    code = (
        "import sys\n"
        "sys.modules['pwd'] = None\n"
        "sys.modules['resource'] = None\n"
        "import iotfleet.device\n"
        "from iotfleet import DeviceClient, Identity, ProvisioningRejected\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('iotfleet.cloud', 'iotfleet.sim')))\n"
        "assert not loaded, loaded\n"
        "assert {'LocalCloud', 'Region', 'ThingSpec'} <= set(dir(iotfleet)), dir(iotfleet)\n"
        "try:\n"
        "    iotfleet.LocalCloud\n"
        "except ImportError as exc:\n"
        "    assert 'pwd' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('the local cloud imported without pwd')\n"
        "try:\n"
        "    iotfleet.NoSuchName\n"
        "except AttributeError:\n"
        "    pass\n"
    )
    python(code)


def test_the_local_cloud_loads_on_first_use() -> None:
    code = (
        "import sys, iotfleet\n"
        "assert 'iotfleet.cloud.local' not in sys.modules\n"
        "from iotfleet.cloud.local import LocalCloud\n"
        "assert iotfleet.LocalCloud is LocalCloud\n"
    )
    python(code)


def test_region_faults_refuses_an_unknown_outage_mode_with_config_error() -> None:
    from iotfleet.testing import RegionFaults  # noqa: PLC0415

    faults = RegionFaults(cloud=None)  # type: ignore[arg-type]  # the mode is checked before the cloud is used
    with pytest.raises(iotfleet.ConfigError, match="outage mode 'flood'"), faults.outage("eu-west-1", mode="flood"):
        pass
