"""Device key pairs and certificate signing requests; the private key never leaves the device."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from iotfleet.errors import CertificateError

__all__ = ["KeyType", "PrivateKey", "check_issued", "csr_pem", "load_private_key", "new_private_key", "private_key_pem"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyType(StrEnum):
    """Key algorithms IoT Core accepts for device certificates; EC P-256 is the default."""

    EC_P256 = "ec-p256"
    RSA_2048 = "rsa-2048"


def new_private_key(kind: KeyType = KeyType.EC_P256) -> PrivateKey:
    if kind is KeyType.RSA_2048:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the identity store writes it 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_pem(key: PrivateKey, common_name: str) -> str:
    """A PEM certificate signing request for ``key``, signed with it (SHA-256)."""
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def load_private_key(pem: bytes, *, what: str) -> PrivateKey:
    """Parse an unencrypted PEM private key (EC or RSA); ``what`` names it in the error."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{what} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"{what} is a {type(key).__name__}; IoT Core takes EC or RSA keys")
    return key


def _der(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_issued(step: str, certificate_pem: str, *, key: PrivateKey, issuer_file: Path | None) -> x509.Certificate:
    """Check a certificate the cloud just issued before anything is registered or saved.

    It must carry ``key``'s public key (the device's own key for CreateCertificateFromCsr, the key that
    came with it for CreateKeysAndCertificate) and, with ``issuer_file``, be signed by a certificate in
    that PEM file. Anything else means the answer was not meant for this device, or was forged: raise
    :class:`CertificateError` naming ``step``.
    """
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError as exc:
        raise CertificateError(f"{step}: the certificatePem in the accepted answer is not a PEM certificate") from exc
    if _der(certificate.public_key()) != _der(key.public_key()):
        raise CertificateError(
            f"{step}: the issued certificate does not carry this device's public key: the answer was meant "
            "for another device or forged; nothing was registered or saved"
        )
    if issuer_file is None:
        return certificate
    try:
        issuers = x509.load_pem_x509_certificates(issuer_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"{issuer_file}: cannot read the issuing CA to check a new certificate: {exc}") from exc
    for issuer in issuers:
        try:
            certificate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return certificate
    raise CertificateError(
        f"{step}: the issued certificate ({certificate.issuer.rfc4514_string()}) was not signed by a CA in "
        f"{issuer_file}; nothing was registered or saved. Pass the CA that issues device certificates "
        "(issuer_ca=, --issuer-ca)"
    )
