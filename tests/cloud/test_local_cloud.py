"""LocalCloud against real mosquitto processes on ephemeral loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from iotfleet.cloud.broker import BrokerState
from iotfleet.cloud.ca import CertificateAuthority
from iotfleet.cloud.local import LocalCloud
from iotfleet.config import Identity
from iotfleet.errors import CloudError, ConfigError, RegistryError
from iotfleet.transport.tls import tls_client_context
from tests.conftest import Probes, identity_context, process_alive, wait_until

NOT_AUTHORIZED = 0x87
SUCCESS_CODES = {0x00, 0x10}  # 0x10: no matching subscribers, what mosquitto says when nobody listens


def test_registered_thing_connects_with_mtls_and_publishes_its_own_topics(
    local_cloud: LocalCloud, thing_factory: Callable[..., Identity], probes: Probes
) -> None:
    lamp = thing_factory("lamp-1", tenant="acme", site="hq")
    eu = local_cloud.region("eu-west-1").endpoint
    watcher = probes(eu, "watcher", identity_context(local_cloud.service))
    assert watcher.connect()
    assert watcher.subscribe("dt/#") == [1]

    device = probes(eu, "lamp-1", identity_context(lamp))
    assert device.connect()
    assert device.publish("dt/acme/hq/lamp-1/power", b"42") == 0x00
    assert watcher.pump(lambda: watcher.messages == [("dt/acme/hq/lamp-1/power", b"42")])


def test_client_without_certificate_is_refused(local_cloud: LocalCloud, probes: Probes) -> None:
    probe = probes(local_cloud.region("eu-west-1").endpoint, "anon", tls_client_context(local_cloud.ca_file))
    assert not probe.connect(timeout=3)
    assert probe.connack is None


def test_certificate_from_another_ca_is_refused(local_cloud: LocalCloud, tmp_path: Path, probes: Probes) -> None:
    foreign = CertificateAuthority.open(tmp_path / "foreign")
    foreign.issue("lamp-1").write(tmp_path / "f.pem", tmp_path / "f.key")
    ctx = tls_client_context(local_cloud.ca_file, tmp_path / "f.pem", tmp_path / "f.key")
    probe = probes(local_cloud.region("eu-west-1").endpoint, "lamp-1", ctx)
    assert not probe.connect(timeout=3)
    assert probe.connack is None


def test_publish_to_another_things_topic_is_refused_and_not_delivered(
    local_cloud: LocalCloud, thing_factory: Callable[..., Identity], probes: Probes
) -> None:
    a, b = thing_factory("lamp-a"), thing_factory("lamp-b")
    eu = local_cloud.region("eu-west-1").endpoint
    watcher = probes(eu, "watcher", identity_context(local_cloud.service))
    assert watcher.connect()
    watcher.subscribe("dt/#")
    device_a = probes(eu, "lamp-a", identity_context(a))
    assert device_a.connect()

    assert device_a.publish("dt/acme/site-1/lamp-b/power", b"forged") == NOT_AUTHORIZED
    assert device_a.publish("dt/acme/other-site/lamp-a/power", b"wrong site") == NOT_AUTHORIZED
    assert device_a.publish("$aws/things/lamp-b/shadow/update", b"{}") == NOT_AUTHORIZED
    assert device_a.publish("dt/acme/site-1/lamp-a/power", b"own") == 0x00
    assert watcher.pump(lambda: len(watcher.messages) == 1)
    watcher.pump(lambda: False, timeout=0.3)  # anything forged would have arrived by now
    assert watcher.messages == [("dt/acme/site-1/lamp-a/power", b"own")]
    del b


def test_subscribing_to_another_things_commands_receives_nothing(
    local_cloud: LocalCloud, thing_factory: Callable[..., Identity], probes: Probes
) -> None:
    a, b = thing_factory("lamp-a"), thing_factory("lamp-b")
    eu = local_cloud.region("eu-west-1").endpoint
    device_a, device_b = probes(eu, "lamp-a", identity_context(a)), probes(eu, "lamp-b", identity_context(b))
    operator = probes(eu, "operator", identity_context(local_cloud.service))
    assert device_a.connect()
    assert device_b.connect()
    assert operator.connect()
    device_a.subscribe("cmd/acme/site-1/lamp-b/+")
    device_b.subscribe("cmd/acme/site-1/lamp-b/+")
    assert operator.publish("cmd/acme/site-1/lamp-b/dim", b"50") == 0x00
    assert device_b.pump(lambda: device_b.messages == [("cmd/acme/site-1/lamp-b/dim", b"50")])
    device_a.pump(lambda: False, timeout=0.3)
    assert device_a.messages == []


def test_a_certificate_connecting_under_another_client_id_is_refused_in_the_connack_and_the_holder_stays(
    local_cloud: LocalCloud, thing_factory: Callable[..., Identity], probes: Probes
) -> None:
    a, b = thing_factory("lamp-a"), thing_factory("lamp-b")
    region = local_cloud.region("eu-west-1")
    holder = probes(region.endpoint, "lamp-b", identity_context(b))
    assert holder.connect()
    impostor = probes(region.endpoint, "lamp-b", identity_context(a))
    assert not impostor.connect()
    assert impostor.connack is not None
    assert impostor.connack.value == 0x87  # refused in the CONNACK: iot:Connect on client/lamp-b is denied
    assert holder.publish("dt/acme/site-1/lamp-b/power") in SUCCESS_CODES  # never taken over, never disturbed
    assert holder.disconnected is None


def test_thing_is_refused_in_another_region_until_replicated(tmp_path: Path, probes: Probes) -> None:
    with LocalCloud(workdir=tmp_path / "cloud", replication_lag=1.5) as cloud:
        lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
        us = cloud.region("us-east-1")
        early = probes(us.endpoint, "lamp-1", identity_context(lamp))
        assert not early.connect()
        assert early.connack is None  # unknown in this region: hung up on with no CONNACK, as a failed TLS session
        assert cloud.replicator.pending() == 1

        assert wait_until(lambda: cloud.replicator.pending() == 0, timeout=5)
        assert wait_until(lambda: us.registry.thing("lamp-1") is not None, timeout=5)
        late = probes(us.endpoint, "lamp-1", identity_context(lamp))
        assert late.connect()
        assert late.publish("dt/acme/hq/lamp-1/power") in SUCCESS_CODES
        assert late.disconnected is None


def test_kill_resets_connections_and_restore_restarts_on_the_same_port(
    local_cloud: LocalCloud, thing_factory: Callable[..., Identity], probes: Probes
) -> None:
    lamp = thing_factory("lamp-1")
    region = local_cloud.region("eu-west-1")
    port, pid = region.endpoint.port, region.broker.pid
    device = probes(region.endpoint, "lamp-1", identity_context(lamp))
    assert device.connect()
    region.kill()
    assert region.state is BrokerState.KILLED
    assert not process_alive(pid)  # type: ignore[arg-type]
    assert device.pump(lambda: device.disconnected is not None, timeout=2), "peer did not see the reset"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    region.restore()
    assert region.endpoint.port == port
    assert region.broker.pid != pid
    again = probes(region.endpoint, "lamp-1", identity_context(lamp))
    assert again.connect()
    assert again.publish("dt/acme/site-1/lamp-1/power") in SUCCESS_CODES  # the ACL came back too


def test_blackhole_hangs_connections_until_restore(
    local_cloud: LocalCloud, thing_factory: Callable[..., Identity], probes: Probes
) -> None:
    lamp = thing_factory("lamp-1")
    region = local_cloud.region("eu-west-1")
    device = probes(region.endpoint, "lamp-1", identity_context(lamp), keepalive=1)
    assert device.connect()
    region.blackhole()
    assert region.state is BrokerState.BLACKHOLED
    # nothing is reset: the connection only dies when the client's keepalive goes unanswered
    assert not device.pump(lambda: device.disconnected is not None, timeout=0.5)
    assert device.pump(lambda: device.disconnected is not None, timeout=5)
    # a new TLS handshake hangs instead of failing fast
    with (
        socket.create_connection(("127.0.0.1", region.endpoint.port), timeout=1) as raw,
        pytest.raises(TimeoutError),
    ):
        identity_context(lamp).wrap_socket(raw, server_hostname="localhost")

    region.restore()
    again = probes(region.endpoint, "lamp-1", identity_context(lamp))
    assert again.connect()


def test_chaos_on_a_stopped_region_says_what_to_do(local_cloud: LocalCloud) -> None:
    region = local_cloud.region("us-east-1")
    region.kill()
    with pytest.raises(CloudError, match="start or restore it first"):
        region.kill()
    with pytest.raises(CloudError, match="only a running broker"):
        region.blackhole()
    with pytest.raises(ConfigError, match="no region 'mars-1'"):
        local_cloud.region("mars-1")


def test_re_registering_returns_the_same_identity_and_conflicts_are_named(
    local_cloud: LocalCloud, thing_factory: Callable[..., Identity]
) -> None:
    first = thing_factory("lamp-1", tenant="acme", site="hq")
    assert thing_factory("lamp-1", tenant="acme", site="hq") == first
    with pytest.raises(RegistryError, match="already registered"):
        thing_factory("lamp-1", tenant="acme", site="elsewhere")


def test_brokers_are_stopped_by_pid_when_the_cloud_stops(tmp_path: Path) -> None:
    with LocalCloud(workdir=tmp_path / "c") as cloud:
        pids = [r.broker.pid for r in cloud.regions]
        assert all(pid and process_alive(pid) for pid in pids)
    assert not [pid for pid in pids if pid and process_alive(pid)]


def test_no_broker_outlives_a_test_that_fails_midway(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            def test_fails(local_cloud):
                open({str(pid_file)!r}, "w").write(" ".join(str(r.broker.pid) for r in local_cloud.regions))
                raise AssertionError("failing midway on purpose")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_inner.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    pids = [int(p) for p in pid_file.read_text().split()]
    assert len(pids) == 2
    assert not [pid for pid in pids if process_alive(pid)]


def test_no_broker_outlives_a_sigkilled_owner(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from iotfleet.cloud.local import LocalCloud
        cloud = LocalCloud(workdir=Path({str(tmp_path / "c")!r})).start()
        print(" ".join(str(r.broker.pid) for r in cloud.regions), flush=True)
        time.sleep(60)
        """
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as owner:
        try:
            assert owner.stdout is not None
            pids = [int(p) for p in owner.stdout.readline().split()]
            assert len(pids) == 2
            assert all(process_alive(p) for p in pids)
        finally:
            os.kill(owner.pid, signal.SIGKILL)
            owner.wait()
    assert wait_until(lambda: not any(process_alive(p) for p in pids), timeout=5), "broker outlived its owner"


def test_missing_mosquitto_is_named_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("iotfleet.cloud.broker.shutil.which", lambda *a, **k: None)
    with pytest.raises(CloudError, match="apt-get install -y mosquitto"):
        LocalCloud(workdir=tmp_path / "c").start()


def test_tls_handshake_is_served_with_the_loopback_certificate(local_cloud: LocalCloud) -> None:
    port = local_cloud.region("eu-west-1").endpoint.port
    ctx = identity_context(local_cloud.service)
    for host in ("localhost", "127.0.0.1"):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname="example.com")
