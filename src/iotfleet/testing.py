"""pytest fixtures over the local cloud, for your own device and failover tests.

Installed as a pytest plugin (entry point ``iotfleet``), so the fixtures are there once iotfleet is::

    def test_survives_region_outage(local_cloud, thing_factory):
        device = thing_factory()                      # registered in every region
        local_cloud.region("eu-west-1").kill()        # the preferred region dies
        ...

Fixtures:

``local_cloud``
    A started :class:`~iotfleet.LocalCloud` with the regions of ``iotfleet_regions``, in the test's
    ``tmp_path``; every broker is stopped when the test ends, pass or fail.
``iotfleet_regions``
    The region names (default ``eu-west-1``, ``us-east-1``); override it in your conftest.
``thing_factory``
    ``thing_factory(name=None, *, tenant="acme", site="site-1", region=None)`` registers a thing with
    a fresh certificate and returns its :class:`~iotfleet.Identity`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from iotfleet.cloud.local import LocalCloud
    from iotfleet.config import Identity

__all__ = ["iotfleet_regions", "local_cloud", "thing_factory"]


@pytest.fixture
def iotfleet_regions() -> list[str]:
    """Region names for ``local_cloud``; override to change them."""
    return ["eu-west-1", "us-east-1"]


@pytest.fixture
def local_cloud(iotfleet_regions: list[str], tmp_path: Path) -> Iterator[LocalCloud]:
    """A running local cloud, stopped (every broker by PID) when the test ends."""
    from iotfleet.cloud.local import LocalCloud  # noqa: PLC0415 - the plugin loads in every pytest run

    cloud = LocalCloud(iotfleet_regions, workdir=tmp_path / "iotfleet-cloud")
    with cloud:
        yield cloud


@pytest.fixture
def thing_factory(local_cloud: LocalCloud) -> Callable[..., Identity]:
    """Register things with unique names in ``local_cloud``."""
    counter = itertools.count(1)

    def make(
        name: str | None = None, *, tenant: str = "acme", site: str = "site-1", region: str | None = None
    ) -> Identity:
        return local_cloud.register_thing(name or f"thing-{next(counter)}", tenant=tenant, site=site, region=region)

    return make
