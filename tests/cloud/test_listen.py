"""Endpoints like IoT Core's: regions listen where the user says (8883, 443 with ALPN), the brokers'
certificate names those addresses and any --san, and AWS's own client connects trusting the CA through
SSL_CERT_FILE alone, the way AWS's sample apps do (no CA path given)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from iotfleet.cli import cli
from iotfleet.cloud.broker import check_bindable, unprivileged_port_start
from iotfleet.cloud.local import LocalCloud
from iotfleet.config import Endpoint, Identity
from iotfleet.errors import ConfigError
from tests.conftest import cloud_up

pytestmark = pytest.mark.integration

# AWS's sample apps build their client this way: no ca_filepath (the system trust store), the endpoint's
# host, and the port only when it is not the builder's default (443 with ALPN x-amzn-mqtt-ca).
AWS_SAMPLE_CONNECT = textwrap.dedent(
    """
    import sys, threading
    from awsiot import mqtt5_client_builder
    host, port, cert, key, client_id = sys.argv[1:6]
    connected, stopped, failed = threading.Event(), threading.Event(), []
    options = {"port": int(port)} if port != "default" else {}
    client = mqtt5_client_builder.mtls_from_path(
        endpoint=host, cert_filepath=cert, pri_key_filepath=key, client_id=client_id,
        on_lifecycle_connection_success=lambda data: connected.set(),
        on_lifecycle_connection_failure=lambda data: failed.append(str(data.exception)),
        on_lifecycle_stopped=lambda data: stopped.set(), **options)
    client.start()
    ok = connected.wait(15)
    client.stop()
    stopped.wait(10)
    print("connected" if ok else f"not connected: {failed[:1]}")
    """
)


def loopback() -> str:
    """A loopback address away from other tests' (127.0.0.1 stays for the ephemeral listeners)."""
    return "127." + ".".join(str(2 + secrets.randbelow(250)) for _ in range(3))


def aws_sample_connects(endpoint: Endpoint | tuple[str, str], identity: Identity, ca_file: Path) -> str:
    host, port = (endpoint.host, str(endpoint.port)) if isinstance(endpoint, Endpoint) else endpoint
    env = {**os.environ, "SSL_CERT_FILE": str(ca_file)}
    files = [str(identity.cert_file), str(identity.key_file)]
    result = subprocess.run(
        [sys.executable, "-c", AWS_SAMPLE_CONNECT, host, port, *files, "lamp-1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    return (result.stdout.strip() or result.stderr.strip()[-400:]) if result.returncode == 0 else result.stderr[-400:]


def server_names(cloud: LocalCloud) -> set[str]:
    cert = x509.load_pem_x509_certificate((cloud.workdir / "identities" / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in sans}


def test_regions_share_8883_on_distinct_addresses_and_aws_clients_trust_the_ca_through_ssl_cert_file(
    tmp_path: Path,
) -> None:
    eu, us = loopback(), loopback()
    listen = [Endpoint(region="eu-west-1", host=eu, port=8883), Endpoint(region="us-east-1", host=us, port=8883)]
    with LocalCloud(workdir=tmp_path / "cloud", listen=listen, sans=["iot.lan", "192.168.1.20"]) as cloud:
        assert cloud.endpoints == listen
        assert {eu, us, "iot.lan", "192.168.1.20", "127.0.0.1", "localhost"} <= server_names(cloud)
        lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
        for endpoint in listen:
            assert aws_sample_connects(endpoint, lamp, cloud.ca_file) == "connected"
        info = cloud.info()["regions"]
        assert [(r["host"], r["port"]) for r in info] == [(eu, 8883), (us, 8883)]
        assert all(len(r["listeners"]) == 2 for r in info)  # the asked-for one and the loopback one


def may_bind_443() -> bool:
    return os.geteuid() == 0 or unprivileged_port_start() <= 443


@pytest.mark.skipif(
    not may_bind_443(), reason="binding port 443 needs root or CAP_NET_BIND_SERVICE, which this test run does not have"
)
def test_port_443_takes_aws_clients_that_offer_alpn(tmp_path: Path) -> None:
    host = loopback()
    listen = [Endpoint(region="eu-west-1", host=host, port=443)]
    with LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud", listen=listen) as cloud:
        lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
        # the builder's default port is 443, with ALPN x-amzn-mqtt-ca offered (AWS's MQTT5 sample)
        assert aws_sample_connects((host, "default"), lamp, cloud.ca_file) == "connected"


def test_bad_listen_and_san_values_are_refused_before_anything_starts(tmp_path: Path) -> None:
    same = Endpoint(region="eu-west-1", host="127.0.0.1", port=8883)
    with pytest.raises(ConfigError, match="already eu-west-1's; regions share a port on distinct addresses"):
        LocalCloud(workdir=tmp_path, listen=[same, same.model_copy(update={"region": "us-east-1"})])
    with pytest.raises(ConfigError, match="no region 'ap-south-1'; the regions are eu-west-1, us-east-1"):
        LocalCloud(workdir=tmp_path, listen=[Endpoint(region="ap-south-1", host="127.0.0.1", port=8883)])
    with pytest.raises(ConfigError, match="'bad name!' is neither an IP address nor a host name"):
        LocalCloud(workdir=tmp_path, sans=["bad name!"])
    result = CliRunner().invoke(cli, ["cloud", "up", "--listen", "eu-west-1=127.0.0.1", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not host:port" in result.output


def test_an_address_in_use_is_named_with_what_to_do() -> None:
    host = loopback()
    with socket.socket() as taken:
        taken.bind((host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on {host}:{port}: Address already in use; choose"):
            check_bindable(host, port)


def test_cloud_up_listens_where_asked_and_prints_the_ca_for_ssl_cert_file(tmp_path: Path) -> None:
    """What 'cloud up' prints (its clean stop on SIGTERM is test_cli's: the helper stops this one by PID)."""
    host = loopback()
    args = ["--regions", "eu-west-1", "--workdir", str(tmp_path / "w"), "--listen", f"eu-west-1={host}:8883"]
    with cloud_up(*args, "--san", "iot.lan", "--thing", "lamp-1") as proc:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("running;"):
            line = proc.stdout.readline()
            assert line, f"cloud up ended early: {lines}"
            lines.append(line)
    text = "".join(lines)
    assert f"region eu-west-1    mqtts://{host}:8883  (also mqtts://localhost:" in text
    ca = tmp_path / "w" / "ca" / "ca.pem"
    assert f"trust       SSL_CERT_FILE={ca}" in text, text
    assert "account     000000000000" in text
