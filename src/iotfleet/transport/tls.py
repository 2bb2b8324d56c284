"""TLS client contexts from PEM files: the one place iotfleet builds an :class:`ssl.SSLContext`.

Used by the paho transport (a device's mTLS), the local cloud's own clients (the service identity) and
tests. The awscrt transport builds its TLS in the CRT from the same files.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from iotfleet.config import Identity
from iotfleet.errors import CertificateError

__all__ = ["identity_context", "tls_client_context"]


def tls_client_context(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None, *, alpn: Sequence[str] = ()
) -> ssl.SSLContext:
    """A client context trusting only ``ca_file``; with ``cert_file`` and ``key_file`` it presents them (mTLS).

    ``alpn`` lists the protocols offered (AWS IoT Core wants ``x-amzn-mqtt-ca`` for MQTT on port 443).
    Raises :class:`ssl.SSLError`, :class:`OSError` or :class:`ValueError` for a file that is missing, not
    PEM, or a key that does not belong to the certificate; callers translate them for their users.
    """
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None and key_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def identity_context(identity: Identity, *, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """mTLS with ``identity``'s files, checked first so a missing or bad file is named; a file that will not
    load (not PEM, a key that is not the certificate's) raises :class:`CertificateError` naming them all."""
    identity.check()
    try:
        return tls_client_context(identity.ca_file, identity.cert_file, identity.key_file, alpn=alpn)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise CertificateError(
            f"cannot load the identity of {identity.thing_name} ({identity.cert_file}, {identity.key_file}, "
            f"{identity.ca_file}): {exc}; check the files exist and belong together"
        ) from exc
