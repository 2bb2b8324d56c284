"""The provisioner's defence in depth: an issued certificate must be this device's and come from its CA."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from iotfleet.cloud.ca import CertificateAuthority
from iotfleet.errors import CertificateError
from iotfleet.provisioning.keys import KeyType, check_issued, load_private_key, new_private_key, private_key_pem


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, CertificateAuthority]:
    root = tmp_path_factory.mktemp("cas")
    return CertificateAuthority.open(root / "ours"), CertificateAuthority.open(root / "theirs", common_name="other")


def signed_for(ca: CertificateAuthority, key_type: KeyType = KeyType.EC_P256) -> tuple[str, bytes]:
    """A certificate from ``ca`` for a new key, and that key."""
    from iotfleet.provisioning.keys import csr_pem  # noqa: PLC0415

    key = new_private_key(key_type)
    return ca.sign_csr(csr_pem(key, "device"), "device").decode(), private_key_pem(key)


def ours_subject(ca: CertificateAuthority) -> x509.Name:
    return x509.load_pem_x509_certificate(ca.certificate_pem).subject


@pytest.mark.parametrize("key_type", list(KeyType))
def test_a_certificate_for_this_devices_key_from_its_ca_passes(
    cas: tuple[CertificateAuthority, CertificateAuthority], key_type: KeyType
) -> None:
    ours, _ = cas
    pem, key = signed_for(ours, key_type)
    issued = check_issued(
        "CreateCertificateFromCsr", pem, key=load_private_key(key, what="k"), issuer_file=ours.cert_file
    )
    assert issued.issuer == issued.issuer  # parsed
    assert check_issued("CreateKeysAndCertificate", pem, key=load_private_key(key, what="k"), issuer_file=None)


def test_a_certificate_for_another_key_is_refused_naming_the_step(
    cas: tuple[CertificateAuthority, CertificateAuthority],
) -> None:
    ours, _ = cas
    pem, _ = signed_for(ours)
    with pytest.raises(
        CertificateError, match=r"^CreateCertificateFromCsr: .* does not carry this device's public key"
    ):
        check_issued("CreateCertificateFromCsr", pem, key=new_private_key(), issuer_file=ours.cert_file)


def test_a_certificate_from_another_ca_is_refused(cas: tuple[CertificateAuthority, CertificateAuthority]) -> None:
    ours, theirs = cas
    pem, key = signed_for(theirs)
    with pytest.raises(
        CertificateError, match=rf"^CreateKeysAndCertificate: .* not signed by a CA in {ours.cert_file}"
    ):
        check_issued("CreateKeysAndCertificate", pem, key=load_private_key(key, what="k"), issuer_file=ours.cert_file)


def test_a_bundle_of_cas_is_searched(cas: tuple[CertificateAuthority, CertificateAuthority], tmp_path: Path) -> None:
    ours, theirs = cas
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(theirs.certificate_pem + ours.certificate_pem)
    pem, key = signed_for(ours)
    assert check_issued("s", pem, key=load_private_key(key, what="k"), issuer_file=bundle)


@settings(max_examples=25)
@given(st.binary(max_size=300))
def test_garbage_certificates_and_keys_are_certificate_errors(junk: bytes) -> None:
    text = junk.decode("latin-1")
    with pytest.raises(CertificateError, match=r"^RegisterThing: the certificatePem .* is not a PEM certificate"):
        check_issued("RegisterThing", text, key=new_private_key(), issuer_file=None)
    with pytest.raises(CertificateError, match=r"^the privateKey is not an unencrypted PEM private key"):
        load_private_key(junk, what="the privateKey")
