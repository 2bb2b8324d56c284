"""The local certificate authority: one root for every region, EC P-256.

One CA signs for all regions, the shape of AWS multi-account registration: a device certificate is
valid everywhere, and each region's registry decides whether it may connect. Certificate ids are the
SHA-256 fingerprint of the DER certificate in lowercase hex, as AWS IoT's are. Private keys are written
0600 and never logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotfleet._files import write_private
from iotfleet.errors import CertificateError

__all__ = ["CertificateAuthority", "Credentials", "Usage", "certificate_id", "unique_common_name", "write_private"]

_VALIDITY = dt.timedelta(days=3650)
_LEEWAY = dt.timedelta(minutes=5)


class Usage(StrEnum):
    """What a certificate is for: the TLS server of a broker, or a client (device, claim, service)."""

    SERVER = "server"
    CLIENT = "client"


def certificate_id(cert_pem: bytes | str) -> str:
    """AWS IoT's certificate id: the SHA-256 of the DER encoding, in hex."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError("not a PEM certificate: pass the certificate file, not the key or CSR") from exc
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def unique_common_name() -> str:
    """A fresh broker identity (CN) for a certificate that is not a thing's first: the broker maps
    identities by CN, so each certificate needs its own, and a thing may hold several."""
    return f"iotfleet-{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """A certificate and its private key, in PEM, with AWS's certificate id."""

    certificate_pem: bytes
    private_key_pem: bytes
    certificate_id: str

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate to ``cert_path`` and the private key to ``key_path`` (0600)."""
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(self.certificate_pem)
        write_private(key_path, self.private_key_pem)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CertificateAuthority:
    """A root CA kept in a directory as ``ca.pem`` and ``ca.key`` (0600)."""

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey, directory: Path) -> None:
        self._cert = certificate
        self._key = key
        self.directory = directory

    @property
    def cert_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def certificate_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def open(cls, directory: Path, *, common_name: str = "iotfleet local root CA") -> CertificateAuthority:
        """Load the CA in ``directory``, creating it on first use."""
        cert_path, key_path = directory / "ca.pem", directory / "ca.key"
        if cert_path.exists() and key_path.exists():
            try:
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            except ValueError as exc:
                raise CertificateError(
                    f"the CA in {directory} is unreadable: delete ca.pem and ca.key to create a new one"
                ) from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise CertificateError(f"{key_path} is not an EC key: delete it to create a new CA")
            return cls(cert, key, directory)
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _LEEWAY)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(key_path, _pem_key(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert, key, directory)

    def _sign(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        common_name: str,
        usage: Usage,
        hosts: tuple[str, ...] = (),
    ) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _LEEWAY)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if usage is Usage.SERVER else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def issue(self, common_name: str, usage: Usage = Usage.CLIENT, *, hosts: tuple[str, ...] = ()) -> Credentials:
        """A new key pair and a certificate for it, signed by this CA."""
        key = _new_key()
        cert = self._sign(key.public_key(), common_name, usage, hosts)
        pem = cert.public_bytes(serialization.Encoding.PEM)
        return Credentials(pem, _pem_key(key), certificate_id(pem))

    def issue_server(self, extra_hosts: Iterable[str] = ()) -> Credentials:
        """A broker certificate: SANs localhost, 127.0.0.1 and ::1, and ``extra_hosts`` (names or addresses
        devices reach the brokers by, e.g. a LAN address or a host name for firmware on real hardware)."""
        hosts = dict.fromkeys(("localhost", "127.0.0.1", "::1", *extra_hosts))
        return self.issue("localhost", Usage.SERVER, hosts=tuple(hosts))

    def sign_csr(self, csr_pem: bytes | str, common_name: str) -> bytes:
        """Sign a device CSR, returning the certificate PEM.

        The certificate's CN is ``common_name``, not the CSR's: the local broker maps identities by CN
        and needs each certificate's to be unique (AWS keeps the CSR subject; see README, differences).
        """
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(data)
        except ValueError as exc:
            raise CertificateError(
                "the certificate signing request is not a valid PEM CSR: send the '-----BEGIN CERTIFICATE "
                "REQUEST-----' block generated with the device's private key"
            ) from exc
        if not csr.is_signature_valid:
            raise CertificateError("the CSR's signature does not verify: it was not signed by its own key")
        key = csr.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in ("secp256r1", "secp384r1"):
                raise CertificateError(f"EC curve {key.curve.name} is not accepted: use P-256 or P-384")
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise CertificateError(f"RSA key of {key.key_size} bits is too small: use 2048 bits or more")
        else:
            raise CertificateError("the CSR's key type is not accepted: use EC P-256/P-384 or RSA 2048+")
        return self._sign(key, common_name, Usage.CLIENT).public_bytes(serialization.Encoding.PEM)

    def revocation_list(self, certificates: Iterable[tuple[int, bool]]) -> bytes:
        """A CRL (PEM) of ``(serial number, revoked)`` pairs: a revoked certificate is listed for good
        (reason unspecified), the others on hold (``certificateHold``: INACTIVE, taken off when made ACTIVE
        again). Valid for a year; the brokers re-read it with every registry change."""
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(now - _LEEWAY)
            .next_update(now + dt.timedelta(days=365))
        )
        for serial, revoked in certificates:
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - _LEEWAY)
            if not revoked:
                entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags.certificate_hold), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    @staticmethod
    def serial_number(cert_pem: str) -> int:
        return x509.load_pem_x509_certificate(cert_pem.encode()).serial_number

    def verify(self, cert_pem: bytes | str) -> x509.Certificate:
        """Return the parsed certificate if this CA issued it, else raise :class:`CertificateError`."""
        data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
        try:
            cert = x509.load_pem_x509_certificate(data)
            cert.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CertificateError("the certificate was not issued by this local cloud's CA") from exc
        return cert
