"""The local CA: ids, key permissions, CSR signing and foreign certificates."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotfleet.cloud.ca import CertificateAuthority, certificate_id
from iotfleet.errors import CertificateError


def make_csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str = "device") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_ca_persists_and_keys_are_private(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    again = CertificateAuthority.open(tmp_path)
    assert again.certificate_pem == ca.certificate_pem
    creds = ca.issue("lamp-1")
    creds.write(tmp_path / "d" / "cert.pem", tmp_path / "d" / "key.pem")
    assert stat.S_IMODE((tmp_path / "d" / "key.pem").stat().st_mode) == 0o600


def test_certificate_id_is_sha256_of_der(tmp_path: Path) -> None:
    creds = CertificateAuthority.open(tmp_path).issue("lamp-1")
    der = x509.load_pem_x509_certificate(creds.certificate_pem).public_bytes(serialization.Encoding.DER)
    assert creds.certificate_id == hashlib.sha256(der).hexdigest() == certificate_id(creds.certificate_pem)
    assert len(creds.certificate_id) == 64


def test_server_certificate_names_loopback(tmp_path: Path) -> None:
    cert = x509.load_pem_x509_certificate(CertificateAuthority.open(tmp_path).issue_server().certificate_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku


def test_sign_csr_keeps_the_device_key_and_sets_a_unique_identity(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = ca.sign_csr(make_csr(key, cn="anything"), "cert-0001")
    cert = ca.verify(pem)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == key.public_key().public_numbers()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cert-0001"


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"not a csr", "not a valid PEM CSR"),
        (make_csr(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "too small"),  # noqa: S505
        (make_csr(ec.generate_private_key(ec.SECP256K1())), "not accepted"),
    ],
)
def test_bad_csr_is_refused_with_the_reason(tmp_path: Path, csr: bytes, message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        CertificateAuthority.open(tmp_path).sign_csr(csr, "cert-x")


def test_foreign_certificate_is_recognised(tmp_path: Path) -> None:
    ours = CertificateAuthority.open(tmp_path / "ours")
    theirs = CertificateAuthority.open(tmp_path / "theirs")
    ours.verify(ours.issue("a").certificate_pem)
    with pytest.raises(CertificateError, match="not issued by this"):
        ours.verify(theirs.issue("a").certificate_pem)
