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
``provisioned_device``
    ``await provisioned_device(serial=None, *, tenant="acme", site="site-1")`` provisions a device the
    way it would be in the field: claim certificate, CSR, RegisterThing; returns the new identity.
``region_faults``
    ``region_faults.kill(region)``, ``.blackhole(region)``, ``.restore(region)``, and
    ``with region_faults.outage(region, mode="kill"):`` which restores on exit; every region is
    restored when the test ends.

Presets:

``LOCAL_FAST``
    A :class:`~iotfleet.ReconnectPolicy` with local-cloud timings (seconds, not IoT Core's minutes), for
    the devices of your tests: ``DeviceClient(..., reconnect=LOCAL_FAST)``.

See ``examples/test_regional_failover.py`` for a whole regional-failover test written with them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from iotfleet.config import LOCAL_FAST  # importing iotfleet has loaded the config models already
from iotfleet.errors import ConfigError

if TYPE_CHECKING:
    from iotfleet.cloud.broker import Quotas
    from iotfleet.cloud.local import LocalCloud
    from iotfleet.config import Identity

__all__ = [
    "LOCAL_FAST",
    "RegionFaults",
    "iotfleet_quotas",
    "iotfleet_regions",
    "local_cloud",
    "provisioned_device",
    "region_faults",
    "thing_factory",
]


@pytest.fixture
def iotfleet_regions() -> list[str]:
    """Region names for ``local_cloud``; override to change them."""
    return ["eu-west-1", "us-east-1"]


@pytest.fixture
def iotfleet_quotas() -> Quotas:
    """IoT Core's rate quotas for ``local_cloud`` (on, with AWS's values); override to change or lift them,
    e.g. ``Quotas(connect_per_client=0)`` for tests that reconnect one client id within a second."""
    from iotfleet.cloud.broker import Quotas  # noqa: PLC0415 - the plugin loads in every pytest run

    return Quotas()


@pytest.fixture
def local_cloud(iotfleet_regions: list[str], iotfleet_quotas: Quotas, tmp_path: Path) -> Iterator[LocalCloud]:
    """A running local cloud, stopped (every broker by PID) when the test ends."""
    from iotfleet.cloud.local import LocalCloud  # noqa: PLC0415 - the plugin loads in every pytest run

    cloud = LocalCloud(iotfleet_regions, workdir=tmp_path / "iotfleet-cloud", quotas=iotfleet_quotas)
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


@pytest.fixture
def provisioned_device(local_cloud: LocalCloud, tmp_path: Path) -> Callable[..., Awaitable[Identity]]:
    """Provision devices by claim against ``local_cloud`` (an async factory: ``await provisioned_device()``)."""
    from iotfleet.provisioning import FleetProvisioner, IdentityStore  # noqa: PLC0415

    counter = itertools.count(1)
    claim = local_cloud.claim_identity

    async def make(
        serial: str | None = None, *, tenant: str = "acme", site: str = "site-1", transport: str = "crt"
    ) -> Identity:
        serial = serial or f"device-{next(counter)}"
        provisioner = FleetProvisioner(
            endpoints=local_cloud.endpoints,
            claim=claim,
            template=local_cloud.template,
            parameters={"Tenant": tenant, "Site": site, "SerialNumber": serial},
            transport=transport,
        )
        stored = await provisioner.provision_into(IdentityStore(tmp_path / "identities" / serial))
        return stored.identity

    return make


class RegionFaults:
    """Fault injection on ``local_cloud``'s regions; :meth:`restore_all` runs when the test ends."""

    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud = cloud
        self.failed: set[str] = set()

    def kill(self, region: str) -> None:
        """SIGKILL the region's broker: devices see a connection reset at once."""
        self.cloud.region(region).kill()
        self.failed.add(region)

    def blackhole(self, region: str) -> None:
        """Freeze the region's broker: devices notice only by keepalive (ping) timeout."""
        self.cloud.region(region).blackhole()
        self.failed.add(region)

    def restore(self, region: str) -> None:
        self.cloud.region(region).restore()
        self.failed.discard(region)

    @contextlib.contextmanager
    def outage(self, region: str, mode: str = "kill") -> Iterator[None]:
        """The region is down (``kill`` or ``blackhole``, an :class:`~iotfleet.cloud.control.Outage`) inside the
        block and restored after it."""
        from iotfleet.cloud.control import Outage  # noqa: PLC0415 - the plugin loads in every pytest run

        if mode not in tuple(Outage):
            raise ConfigError(f"outage mode {mode!r}: use 'kill' (a reset at once) or 'blackhole' (silence)")
        getattr(self, mode)(region)
        try:
            yield
        finally:
            self.restore(region)

    def restore_all(self) -> None:
        for region in sorted(self.failed):
            self.restore(region)


@pytest.fixture
def region_faults(local_cloud: LocalCloud) -> Iterator[RegionFaults]:
    """Kill, blackhole and restore regions of ``local_cloud``; everything is restored afterwards."""
    faults = RegionFaults(local_cloud)
    yield faults
    faults.restore_all()
