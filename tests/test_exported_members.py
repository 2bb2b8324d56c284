"""Each package's ``__all__`` is exactly its public names, and every name in it can be imported (as httpx checks).

A public name is one that ``dir()`` lists, not starting with ``_``, that is not a submodule. The facade's
lazily loaded names (the local cloud's) are in its ``dir()`` and are loaded to be checked like the others.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import iotfleet
from iotfleet import errors

PACKAGES = [
    "iotfleet",
    "iotfleet.device",
    "iotfleet.shadow",
    "iotfleet.provisioning",
    "iotfleet.transport",
    "iotfleet.cloud",
]


def public_names(module: ModuleType) -> set[str]:
    """The names ``dir(module)`` lists (loading any lazy one) that are neither private nor submodules."""
    names = (name for name in dir(module) if not name.startswith("_"))
    return {name for name in names if not inspect.ismodule(getattr(module, name))}


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_and_is_exactly_the_public_names(package: str) -> None:
    module = importlib.import_module(package)
    exported = module.__all__
    for name in exported:  # importable, the lazy ones too
        assert getattr(module, name) is not None, name
    assert set(exported) == public_names(module)  # (ruff's RUF022 keeps each __all__ sorted)


def test_every_subpackage_with_an_all_is_checked() -> None:
    subpackages = [info.name for info in pkgutil.iter_modules(iotfleet.__path__, "iotfleet.") if info.ispkg]
    with_all = {name for name in subpackages if hasattr(importlib.import_module(name), "__all__")}
    assert {"iotfleet", *with_all} == set(PACKAGES)


def test_the_facade_exports_what_a_user_needs() -> None:
    needed = {
        "DeviceClient",
        "BlockingDeviceClient",
        "Shadow",
        "ShadowSync",
        "FleetProvisioner",
        "IdentityStore",
        "LocalCloud",
        "DeviceEvent",
        "Connected",
        "ConnectFailed",
        "Disconnected",
        "FailedOver",
        "PublishAcked",
        "PublishFailed",
    }
    error_classes = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == errors.__name__
    }
    assert (needed | error_classes) <= set(iotfleet.__all__)
