"""Fleet provisioning by claim: keys and CSRs, the provisioner, and the identity store."""

from iotfleet.provisioning.client import FleetProvisioner, Method, ProvisionedDevice
from iotfleet.provisioning.keys import KeyType
from iotfleet.provisioning.store import IdentityStore, StoredIdentity

__all__ = ["FleetProvisioner", "IdentityStore", "KeyType", "Method", "ProvisionedDevice", "StoredIdentity"]
