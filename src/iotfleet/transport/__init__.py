"""Transports: one MQTT5 connection at a time, over awscrt (the default) or paho-mqtt, or HTTPS publish
(``https``: publish only, as constrained devices send).

``DeviceClient(..., transport="crt" | "paho" | "https" | a Transport)`` picks one through :func:`resolve_transport`.
The protocol is in :mod:`iotfleet.transport.base`; each implementation loads only when it is used.
"""

from iotfleet.errors import ConfigError as _ConfigError
from iotfleet.transport.base import Transport

__all__ = ["Transport", "resolve_transport"]

_shared: dict[str, Transport] = {}


def resolve_transport(transport: Transport | str) -> Transport:
    """``"crt"`` (the default), ``"paho"`` or ``"https"`` (HTTPS publish only) name a process-wide shared
    transport; or pass your own."""
    if not isinstance(transport, str):
        return transport
    if transport not in _shared:
        if transport == "crt":
            from iotfleet.transport.crt import CrtTransport  # noqa: PLC0415 - load awscrt only when used

            _shared[transport] = CrtTransport()
        elif transport == "paho":
            from iotfleet.transport.paho import PahoTransport  # noqa: PLC0415

            _shared[transport] = PahoTransport()
        elif transport == "https":
            from iotfleet.transport.https import HttpsTransport  # noqa: PLC0415

            _shared[transport] = HttpsTransport()
        else:
            raise _ConfigError(
                f"unknown transport {transport!r}: use 'crt' (awscrt, the default), 'paho' or 'https' (publish only)"
            )
    return _shared[transport]
