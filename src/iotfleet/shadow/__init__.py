"""Device shadows: the document rules (shared with the local service) and the device-side client."""

from iotfleet.shadow.client import Shadow, ShadowDelta, ShadowDocument, ShadowState, ShadowSync
from iotfleet.shadow.document import ShadowLimits

__all__ = ["Shadow", "ShadowDelta", "ShadowDocument", "ShadowLimits", "ShadowState", "ShadowSync"]
