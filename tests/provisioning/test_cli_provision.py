"""`iotfleet provision` checks the new certificate against --issuer-ca before anything is registered or saved."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from iotfleet.cli import cli
from iotfleet.cloud.ca import CertificateAuthority
from iotfleet.cloud.local import LocalCloud
from tests.test_cli import provision_args

PARAMS = ("Tenant=acme", "Site=hq", "SerialNumber=lamp-12")


def test_a_certificate_not_signed_by_the_issuer_ca_is_refused(local_cloud: LocalCloud, tmp_path: Path) -> None:
    other = CertificateAuthority.open(tmp_path / "other-ca")
    args = [*provision_args(local_cloud, tmp_path / "id", *PARAMS), "--issuer-ca", str(other.cert_file)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "Error: CreateCertificateFromCsr: the issued certificate" in result.output
    assert str(other.cert_file) in result.output
    assert not (tmp_path / "id").exists()
    assert all(r.registry.thing("lamp-12") is None for r in local_cloud.regions)

    skipped = CliRunner().invoke(cli, [*args, "--no-verify-issuer"])
    assert skipped.exit_code == 0, skipped.output
    assert local_cloud.region("eu-west-1").registry.thing("lamp-12") is not None
