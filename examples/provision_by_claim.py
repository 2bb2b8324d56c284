"""Provision a lamp by claim against a running local cloud, then publish with its new identity.

    iotfleet cloud up --json > cloud.json &
    python examples/provision_by_claim.py cloud.json lamp-0042 [IDENTITY_DIR]

The lamp holds only the shared claim certificate. It makes its own key and CSR, asks for a certificate
(CreateCertificateFromCsr), registers itself with the template (RegisterThing, thing name = serial
number), saves the identity (key 0600) and reconnects with it. Run it twice with the same directory:
the second run finds the identity and skips provisioning.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from iotfleet import DeviceClient
from iotfleet.cloud import CloudInfo
from iotfleet.provisioning import FleetProvisioner, IdentityStore


async def main(info_file: Path, serial: str, directory: Path) -> None:
    cloud = CloudInfo.load(info_file)
    claim = cloud.claim_identity
    store = IdentityStore(directory)
    print("identity already on disk" if store.exists() else f"provisioning {serial} by claim")
    provisioner = FleetProvisioner(
        endpoints=cloud.endpoints,
        claim=claim,
        template=cloud.template,
        parameters={"Tenant": "acme", "Site": "hq", "SerialNumber": serial},
    )
    stored = await provisioner.provision_into(store)
    identity = stored.identity
    print(f"thing {identity.thing_name} certificate {identity.certificate_id and identity.certificate_id[:12]}...")
    async with DeviceClient(identity=identity, endpoints=stored.endpoints, tenant="acme", site="hq") as lamp:
        receipt = await lamp.publish("telemetry", {"power_w": 10.5, "dim": 80})
        print(f"{receipt.topic} acked by {receipt.endpoint.region}")


if __name__ == "__main__":
    target = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(tempfile.mkdtemp()) / "identity"
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], target))
