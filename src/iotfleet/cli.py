"""The ``iotfleet`` command line: thin wrappers that parse, call the library and exit 0/1/2.

This is the only module that configures logging. Every option can also come from the environment as
``IOTFLEET_<COMMAND>_<OPTION>`` (click's ``auto_envvar_prefix``).
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from iotfleet import policy
from iotfleet.errors import ConfigError, IotFleetError
from iotfleet.topics import TopicScheme

if TYPE_CHECKING:
    from iotfleet.sim.settings import SimSettings
    from iotfleet.sim.simulate import Simulation

__all__ = ["main"]

EXIT_OK, EXIT_BREACHED, EXIT_USAGE = 0, 1, 2
MIN_OPEN_FILES = 16384


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn an :class:`IotFleetError` into one clear line on stderr and exit code 2."""
    try:
        yield
    except IotFleetError as exc:
        _fail(exc.message)


@click.group(context_settings={"auto_envvar_prefix": "IOTFLEET", "help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="iotfleet")
def cli(verbose: int) -> None:
    """Device SDK, fleet simulator and local multi-region cloud for AWS IoT Core style platforms."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# --------------------------------------------------------------------------- doctor


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _check_mosquitto() -> Check:
    from iotfleet.cloud.broker import INSTALL_HINT, find_mosquitto  # noqa: PLC0415 - keep `--help` fast
    from iotfleet.errors import BrokerNotInstalled  # noqa: PLC0415

    try:
        binary = find_mosquitto()
    except BrokerNotInstalled:
        return Check("mosquitto", False, "not found on PATH or in /usr/sbin", INSTALL_HINT)
    out = subprocess.run([str(binary), "-h"], capture_output=True, text=True, timeout=10, check=False).stdout
    match = re.search(r"mosquitto version (\d+)\.(\d+)\.(\d+)", out)
    if not match:
        return Check("mosquitto", False, f"{binary} did not report a version", "reinstall mosquitto 2.0 or newer")
    version = tuple(int(g) for g in match.groups())
    text = ".".join(match.groups())
    if version < (2, 0, 0):
        return Check("mosquitto", False, f"{text} at {binary} is too old", "install mosquitto 2.0 or newer")
    return Check("mosquitto", True, f"{text} at {binary}")


def _check_setpriv() -> Check:
    import shutil  # noqa: PLC0415

    found = shutil.which("setpriv")
    if found:
        return Check("setpriv", True, f"{found}: brokers die with this process even on SIGKILL")
    return Check(
        "setpriv",
        False,
        "not found: a broker could outlive a SIGKILLed iotfleet",
        "install util-linux ('sudo apt-get install -y util-linux')",
    )


def _check_awscrt() -> Check:
    try:
        import awscrt  # noqa: PLC0415
        import awscrt.mqtt5  # noqa: PLC0415
        import awsiot  # noqa: F401, PLC0415
    except ImportError as exc:
        return Check("awscrt", False, f"import failed: {exc}", "pip install --force-reinstall awscrt awsiotsdk")
    version = getattr(awscrt, "__version__", "unknown")
    return Check("awscrt", True, f"awscrt {version} and awsiot import")


def _check_open_files() -> Check:
    try:
        import resource  # noqa: PLC0415 - POSIX only; `import iotfleet` never needs it
    except ImportError:
        return Check("open files", True, "no resource limits on this platform")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    usable = hard if hard != resource.RLIM_INFINITY else MIN_OPEN_FILES * 4
    detail = f"soft {soft}, hard {'unlimited' if hard == resource.RLIM_INFINITY else hard}"
    if usable < MIN_OPEN_FILES:
        return Check(
            "open files",
            False,
            f"{detail}: too few for thousands of simulated devices",
            f"raise the hard limit to at least {MIN_OPEN_FILES} (e.g. 'ulimit -Hn 65536' as root, "
            "or LimitNOFILE= in a systemd unit)",
        )
    return Check("open files", True, f"{detail} (iotfleet raises the soft limit to the hard one when it needs to)")


def _check_plugin() -> Check:
    from iotfleet.cloud.plugin import BUILD_HINT, plugin_path  # noqa: PLC0415

    try:
        path = plugin_path()
    except IotFleetError as exc:
        return Check("plugin", False, exc.message.splitlines()[0], BUILD_HINT)
    return Check("plugin", True, f"mosquitto routing plugin at {path}")


def _check_cloud() -> Check:
    from iotfleet.cloud.local import LocalCloud  # noqa: PLC0415

    try:
        with LocalCloud(regions=["doctor-1"]) as cloud:
            port = cloud.region("doctor-1").endpoint.port
    except IotFleetError as exc:
        return Check("local cloud", False, exc.message.splitlines()[0], "run with -v to see the broker's log")
    return Check("local cloud", True, f"a region started with mTLS on localhost:{port} and stopped")


def _require_awsiot() -> None:
    """``doctor`` also checks AWS's own device SDK (the test suite runs it against the local cloud)."""
    try:
        import awsiot  # noqa: F401, PLC0415
    except ModuleNotFoundError as exc:
        if exc.name != "awsiot":
            return  # awsiot is there but something it imports is not: the awscrt check names it
        _fail(
            "iotfleet doctor needs the awsiotsdk package (AWS's device SDK, which the test suite runs against "
            "the local cloud), and it is not installed: pip install awsiotsdk, or pip install 'iotfleet[test]'"
        )


@cli.command()
def doctor() -> None:
    """Check that this machine can run iotfleet; print what is wrong and how to fix it."""
    _require_awsiot()
    checks = [_check_mosquitto(), _check_setpriv(), _check_awscrt(), _check_open_files()]
    if checks[0].ok:
        checks.append(_check_plugin())
        if checks[-1].ok:
            checks.append(_check_cloud())
    for check in checks:
        click.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<12} {check.detail}")
        if not check.ok:
            click.echo(f"      {'':<12} fix: {check.fix}")
    failed = [c.name for c in checks if not c.ok]
    if failed:
        click.echo(f"\n{len(failed)} problem(s): {', '.join(failed)}")
        sys.exit(EXIT_BREACHED)
    click.echo("\nall checks passed")


# --------------------------------------------------------------------------- cloud


def _regions(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise click.BadParameter("name at least one region, e.g. eu-west-1,us-east-1")
    return names


@contextmanager
def _until_signalled() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM; the previous handlers come back afterwards. Meanwhile SIGUSR1
    prints every thread's Python stack on stderr (``kill -USR1 PID``), to see why a process does not stop."""
    import faulthandler  # noqa: PLC0415

    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:  # faulthandler writes to a file descriptor: not where stderr has none (click's test runner)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        dumps = True
    except (OSError, ValueError, AttributeError):
        dumps = False
    try:
        yield stop
    finally:
        if dumps:
            faulthandler.unregister(signal.SIGUSR1)
        for signum, old in previous.items():
            signal.signal(signum, old)


def _wait_for_signal(stop: threading.Event, tick_s: float = 0.5) -> None:
    """Block until ``stop`` is set by a signal handler. A signal the kernel hands to another thread (the CRT's,
    a broker log reader's) does not wake a main thread blocked on a lock, and Python runs handlers only in
    the main thread: waking every ``tick_s`` lets the handler run (it once left ``cloud up`` deaf to SIGTERM)."""
    while not stop.wait(tick_s):
        pass


@cli.group()
def cloud() -> None:
    """The local cloud: regions of mosquitto + IoT Core services on loopback."""


def _ingest_workers_option(what: str, otherwise: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--ingest-workers N``: run ``what`` in N processes of its own (0: in ``otherwise``)."""
    return click.option(
        "--ingest-workers",
        type=click.IntRange(min=0, max=64),
        default=0,
        show_default=True,
        help=f"Run {what} in N processes of its own, on its shared subscription (for more messages a second "
        f"than one core stores); 0 runs it in {otherwise}.",
    )


@cloud.command("up")
@click.option("--regions", default="eu-west-1,us-east-1", show_default=True, help="Comma-separated region names.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the CA, registry and identities here across runs (default: a temporary directory).",
)
@click.option(
    "--replication-lag",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds before a registration reaches the other regions.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line with endpoints and credentials once ready.")
@click.option(
    "--thing",
    "things",
    multiple=True,
    metavar="NAME",
    help="Register a thing with its own certificate (repeatable); listed under 'things'.",
)
@click.option("--tenant", default="demo", show_default=True, help="Tenant of the --thing things.")
@click.option("--site", default="hq", show_default=True, help="Site of the --thing things.")
@click.option(
    "--listen",
    multiple=True,
    metavar="REGION=HOST:PORT",
    help="Also listen on HOST:PORT for REGION (repeatable): 8883, or 443 (ALPN x-amzn-mqtt-ca) as root. "
    "Regions share a port on distinct addresses (127.0.0.1, 127.0.0.2). Default: an ephemeral loopback port.",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Attach this AWS IoT policy document to the --thing things instead of the rendered device policy "
    "(named after the file). The brokers enforce it as IoT Core does.",
)
@click.option(
    "--template",
    "template_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Load a fleet-provisioning template (repeatable): AWS's template JSON, named after the file, or "
    "'aws iot describe-provisioning-template' output. The claim policy covers every template.",
)
@click.option(
    "--no-quotas",
    is_flag=True,
    help="Lift IoT Core's rate quotas (by default each region throttles as IoT Core does: 1 CONNECT/s per "
    "client id, 500 CONNECTs/s, 100 publishes/s per connection, 20,000 publishes/s).",
)
@click.option(
    "--control",
    "control_address",
    metavar="HOST:PORT",
    help="Also serve the control API (chaos, ingest figures) on TCP HOST:PORT, for simulator shards on other "
    "machines ('iotfleet simulate --cloud'). No authentication: a trusted network only. Port 0: any free one.",
)
@click.option(
    "--api",
    "api_address",
    default="127.0.0.1:0",
    show_default=True,
    metavar="HOST:PORT",
    help="Serve the HTTP control plane for boto3 and the AWS CLI here (iot: jobs, endpoint; iot-data: shadows, "
    "publish); printed as api_url. Signatures are read for the region, not verified.",
)
@_ingest_workers_option("each region's ingest", "the cloud's process")
@click.option(
    "--advertise",
    metavar="HOST",
    help="In the JSON line, name HOST for listeners bound to every address (0.0.0.0, ::), so that shards on "
    "other machines can use it (give it to --san too, for the brokers' certificate).",
)
@click.option(
    "--san",
    "sans",
    multiple=True,
    metavar="NAME",
    help="Also name this host name or IP address in the brokers' certificate (repeatable), for devices on the LAN.",
)
def cloud_up(
    regions: str,
    workdir: Path | None,
    replication_lag: float,
    as_json: bool,
    things: tuple[str, ...],
    tenant: str,
    site: str,
    listen: tuple[str, ...],
    template_files: tuple[Path, ...],
    sans: tuple[str, ...],
    policy_file: Path | None,
    no_quotas: bool,
    control_address: str | None,
    advertise: str | None,
    api_address: str,
    ingest_workers: int,
) -> None:
    """Start the local cloud, with its ingestion pipeline, and run until SIGINT or SIGTERM.

    While it runs, 'iotfleet cloud chaos ACTION REGION --workdir DIR' injects faults into it. Apps that
    trust the system's CA store (AWS's samples) connect with SSL_CERT_FILE set to the printed CA.
    """
    from iotfleet.cloud.broker import Quotas  # noqa: PLC0415
    from iotfleet.cloud.control import ControlServer, parse_address  # noqa: PLC0415
    from iotfleet.cloud.control_plane import ControlPlane  # noqa: PLC0415
    from iotfleet.cloud.local import DEVICE_POLICY, LocalCloud, ThingSpec  # noqa: PLC0415

    with _errors(), _until_signalled() as stop:
        from iotfleet.cloud.templates import ProvisioningTemplate  # noqa: PLC0415
        from iotfleet.config import Endpoint  # noqa: PLC0415

        local = LocalCloud(
            _regions(regions),
            templates=[ProvisioningTemplate.from_file(path) for path in template_files],
            workdir=workdir,
            replication_lag=replication_lag,
            listen=[Endpoint.parse(text) for text in listen],
            sans=sans,
            quotas=Quotas.none() if no_quotas else Quotas(),
            ingest=True,
            ingest_workers=ingest_workers,
        )
        tcp = None if control_address is None else parse_address(control_address)
        api_host, api_port = parse_address(api_address)
        with local, ControlServer(local, tcp=tcp) as control, ControlPlane(local, host=api_host, port=api_port) as api:
            info = {
                **local.info(),
                "control": {"unix": str(control.path), "tcp": control.tcp_address},
                "api_url": api.url,
            }
            if advertise:
                _advertise(info, advertise)
            if things:
                policy_name = DEVICE_POLICY
                if policy_file is not None:
                    policy_name = policy_file.stem
                    local.create_policy(policy_name, _read_text(policy_file, "--policy"))
                specs = [ThingSpec(name, tenant, site, policy=policy_name) for name in things]
                identities = local.register_things(specs)
                info["things"] = [
                    {
                        "name": i.thing_name,
                        "tenant": tenant,
                        "site": site,
                        "cert": str(i.cert_file),
                        "key": str(i.key_file),
                    }
                    for i in identities
                ]
            if as_json:
                click.echo(json.dumps(info))
            else:
                for r in info["regions"]:
                    main = f"{r['host']}:{r['port']}"
                    also = [f"mqtts://{address}" for address in r["listeners"] if address != main]
                    extra = f"  (also {', '.join(also)})" if also else ""
                    click.echo(f"region {r['name']:<12} mqtts://{main}{extra}")
                click.echo(f"CA          {info['ca_file']}")
                click.echo(f"trust       SSL_CERT_FILE={info['ca_file']}  (for apps that use the system's CA store)")
                click.echo(f"claim       {info['claim_cert']} {info['claim_key']}")
                click.echo(f"template    {info['template']} (default); all: {', '.join(info['templates'])}")
                click.echo(f"account     {info['account']} (and region names as above, in policy ARNs)")
                click.echo(f"workdir     {info['workdir']}")
                click.echo(f"api         {api.url}  (boto3 / aws --endpoint-url; any credentials)")
                click.echo(f"control     {control.path}" + (f", tcp {control.tcp_address}" if tcp else ""))
                for thing in info.get("things", []):
                    click.echo(f"thing       {thing['name']} {thing['cert']} {thing['key']}")
                click.echo("running; press Ctrl-C to stop")
            sys.stdout.flush()
            _wait_for_signal(stop)
        if not as_json:
            click.echo("stopped")


def _advertise(info: dict[str, Any], host: str) -> None:
    """Name ``host`` wherever the JSON line has a wildcard address (a listener bound to all of them)."""
    wildcard = {"0.0.0.0", "::", "[::]"}  # noqa: S104 - recognised, not bound
    for region in info["regions"]:
        if region["host"] in wildcard:
            region["host"] = host
    api = info.get("api_url")
    if isinstance(api, str) and any(f"//{w}:" in api for w in wildcard):
        info["api_url"] = f"http://{host}:{api.rpartition(':')[2]}"
    tcp = info["control"]["tcp"]
    if tcp is not None:
        bound, _, port = tcp.rpartition(":")
        if bound in wildcard:
            info["control"]["tcp"] = f"{host}:{port}"


@cloud.command("chaos")
@click.argument("action", type=click.Choice(["kill", "blackhole", "restore", "status"]))
@click.argument("region")
@click.option(
    "--workdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The --workdir of the running 'iotfleet cloud up'.",
)
def cloud_chaos(action: str, region: str, workdir: Path) -> None:
    """Kill (SIGKILL), blackhole (SIGSTOP) or restore a region of a running local cloud."""
    from iotfleet.cloud.control import send  # noqa: PLC0415

    with _errors():
        click.echo(f"{region}: {send(workdir, action, region)}")


# --------------------------------------------------------------------------- provision


def _key_values(values: tuple[str, ...]) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not Key=Value (e.g. SerialNumber=lamp-0001)", param_hint="--param")
        parameters[key] = value
    return parameters


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@cli.command("provision")
@click.option("--claim-cert", required=True, type=_FILE, help="The shared claim certificate (PEM).")
@click.option("--claim-key", required=True, type=_FILE, help="The claim certificate's private key (PEM).")
@click.option("--ca", "ca_file", required=True, type=_FILE, help="The CA that signed the endpoints' certificates.")
@click.option(
    "--endpoint",
    "endpoints",
    required=True,
    multiple=True,
    metavar="[REGION=]HOST:PORT",
    help="Endpoint to provision through and to save for the device (repeatable, preferred first).",
)
@click.option("--template", required=True, help="Provisioning template name.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Template parameter (repeatable).")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Directory for the identity."
)
@click.option(
    "--method",
    type=click.Choice(["csr", "keys"]),
    default="csr",
    show_default=True,
    help="csr: CreateCertificateFromCsr (the key stays here); keys: CreateKeysAndCertificate.",
)
@click.option("--key-type", type=click.Choice(["ec-p256", "rsa-2048"]), default="ec-p256", show_default=True)
@click.option("--client-id", help="Client id of the claim connection (default: provision-<SerialNumber>).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds per step.")
@click.option("--transport", type=click.Choice(["crt", "paho"]), default="crt", show_default=True)
@click.option(
    "--issuer-ca",
    type=_FILE,
    help="The CA that must have signed the new certificate (default: --ca, the local cloud's issuing CA; "
    "against AWS IoT Core give AWS's issuing CA, or --no-verify-issuer).",
)
@click.option(
    "--verify-issuer/--no-verify-issuer",
    default=True,
    show_default=True,
    help="Check that the new certificate was signed by --issuer-ca (its public key is always checked).",
)
def provision(
    claim_cert: Path,
    claim_key: Path,
    ca_file: Path,
    endpoints: tuple[str, ...],
    template: str,
    params: tuple[str, ...],
    out: Path,
    method: str,
    key_type: str,
    client_id: str | None,
    timeout: float,
    transport: str,
    issuer_ca: Path | None,
    verify_issuer: bool,
) -> None:
    """Provision this device by claim and save its identity in --out (skipped if one is there).

    Prints one JSON line: thing name, certificate id, where the files are, the device configuration.
    A rejected step exits 1 with the step and AWS's statusCode, errorCode and errorMessage; so does a
    request the broker refuses (e.g. a template the claim policy does not allow), naming the step.
    """
    import asyncio  # noqa: PLC0415

    from iotfleet.config import Endpoint, Identity  # noqa: PLC0415
    from iotfleet.errors import ProvisioningRejected, PublishRejected  # noqa: PLC0415
    from iotfleet.provisioning import FleetProvisioner, IdentityStore, KeyType, Method  # noqa: PLC0415

    with _errors():
        parsed = [Endpoint.parse(e, region=f"region-{n + 1}") for n, e in enumerate(endpoints)]
        claim = Identity(thing_name="claim", cert_file=claim_cert, key_file=claim_key, ca_file=ca_file)
        store = IdentityStore(out)
        already = store.exists()
        provisioner = FleetProvisioner(
            endpoints=parsed,
            claim=claim,
            template=template,
            parameters=_key_values(params),
            method=Method(method),
            key_type=KeyType(key_type),
            client_id=client_id,
            timeout=timeout,
            transport=transport,
            issuer_ca=issuer_ca,
            verify_issuer=verify_issuer,
        )
        try:
            stored = asyncio.run(provisioner.provision_into(store))
        except (ProvisioningRejected, PublishRejected) as exc:  # the cloud said no: a rejection, naming the step
            _fail(exc.message, EXIT_BREACHED)
        identity = stored.identity
        click.echo(
            json.dumps(
                {
                    "thing_name": identity.thing_name,
                    "certificate_id": identity.certificate_id,
                    "cert": str(identity.cert_file),
                    "key": str(identity.key_file),
                    "ca": str(identity.ca_file),
                    "device_configuration": dict(stored.device_configuration),
                    "already_provisioned": already,
                }
            )
        )


# --------------------------------------------------------------------------- simulate


def _summary(report: dict[str, Any], breaches: list[str]) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from iotfleet.sim.report import summary_lines  # noqa: PLC0415

    table = Table(title="iotfleet simulate", show_header=False)
    for label, value in summary_lines(report):
        table.add_row(label, value)
    table.add_row("thresholds", "held" if not breaches else "BREACHED: " + "; ".join(breaches))
    Console(stderr=False).print(table)


def _shard(value: str) -> tuple[int, int]:
    import os  # noqa: PLC0415

    from iotfleet.sim.fleet import parse_shard  # noqa: PLC0415

    try:
        return parse_shard(value, os.environ)
    except ConfigError as exc:
        raise click.BadParameter(exc.message) from None


@cli.command("simulate")
@click.option("--sites", type=click.IntRange(min=1), help="Sites in the fleet (40 devices each by default).")
@click.option("--tenants", type=click.IntRange(min=1), help="Tenants the sites are spread over [4].")
@click.option("--buildings", type=click.IntRange(min=1), help="Buildings per site [2].")
@click.option("--rooms", type=click.IntRange(min=1), help="Rooms per building [5].")
@click.option("--assets", type=click.IntRange(min=1), help="Luminaires per room [4].")
@click.option("--seed", type=int, help="Seed of the fleet and its workload [1].")
@click.option(
    "--config", "config_file", type=_FILE, help="TOML fleet file: [fleet], [workload], [target], [thresholds]."
)
@click.option("--duration", help="How long to run: seconds or 20s, 5m, 1h (default: until Ctrl-C).")
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Simulated time runs this many times faster (rates scale).",
)
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes [one per core].")
@click.option("--transport", type=click.Choice(["crt", "paho"]), default="crt", show_default=True)
@click.option(
    "--provision",
    type=click.Choice(["direct", "claim"]),
    help="direct: the local cloud issues identities; claim: fleet provisioning for every device "
    "[direct; claim against --cloud or a [target]].",
)
@click.option(
    "--ramp",
    "ramp_per_s",
    type=click.FloatRange(min=0, min_open=True),
    default=500.0,
    show_default=True,
    help="Devices started per second.",
)
@click.option(
    "--no-limits",
    is_flag=True,
    help="Lift IoT Core's per-connection publish limits (100 msg/s, 512 KiB/s) in the devices and in the local cloud.",
)
@_ingest_workers_option("the embedded cloud's ingest of each region", "the simulator's process")
@click.option(
    "--basic-ingest",
    is_flag=True,
    help="Devices send their data by Basic Ingest ($aws/rules/iotfleet_ingest/<topic>): straight to the ingest "
    "rule, with no broker fan-out (on AWS: no messaging charge; create a rule named iotfleet_ingest there).",
)
@click.option(
    "--no-quotas",
    is_flag=True,
    help="Lift the local cloud's IoT Core quotas (CONNECTs per client id and account, publishes per connection "
    "and account). By default a local run is throttled where AWS would throttle it, and the report counts it.",
)
@click.option(
    "--account-rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Account-wide publishes per second for the whole fleet [local cloud: unlimited; a real target: "
    "20,000, IoT Core's default quota]. Lower it for a smaller Region (2,000).",
)
@click.option("--regions", default="eu-west-1,us-east-1", show_default=True, help="Local cloud regions.")
@click.option(
    "--cloud",
    "cloud_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Drive a running 'iotfleet cloud up' (its --json line, in this file) instead of starting a cloud: "
    "shards share it; chaos and ingest figures go through its control API.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    help="Serve live Prometheus metrics on this port while the run goes on (0: any free port, printed).",
)
@click.option(
    "--metrics-host",
    default="0.0.0.0",  # noqa: S104 - Prometheus scrapes the pod from elsewhere
    show_default=True,
    help="Address the metrics are served on (127.0.0.1 keeps them on this machine).",
)
@click.option(
    "--start-at",
    type=click.FloatRange(min=0),
    metavar="EPOCH",
    help="Start simulated time at this Unix time (a start barrier: every shard starts together).",
)
@click.option(
    "--chaos",
    "chaos",
    multiple=True,
    metavar="ACTION:REGION@TIME",
    help="kill|blackhole|restore a region at a time into the run (repeatable), e.g. kill:eu-west-1@30s.",
)
@click.option(
    "--shard",
    type=_shard,
    default="0/1",
    show_default=True,
    help="Run slice i of n (whole sites); auto/n takes i from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's "
    "pod) or AWS_BATCH_JOB_ARRAY_INDEX.",
)
@click.option("--no-shadow", is_flag=True, help="Devices do not sync their shadow (and no operator changes it).")
@click.option(
    "--operator-fraction",
    type=click.FloatRange(min=0, max=1),
    help="Fraction of the devices whose desired state the operator changes each round [0.05].",
)
@click.option("--operator-every", help="Simulated time between the operator's rounds [5m].")
@click.option(
    "--command-every",
    help="Simulated time between the operator's commands to one device, on average [1h]; 'off' for none. "
    "Commands are identify and reboot, sent on cmd/... through the region the device is on.",
)
@click.option(
    "--reboot-share",
    type=click.FloatRange(min=0, max=1),
    help="Share of the commands that are reboots [0.1]; a rebooting device is offline --reboot-offline.",
)
@click.option("--reboot-offline", help="Simulated time a rebooting device stays offline [30s].")
@click.option(
    "--https-fraction",
    type=click.FloatRange(min=0, max=1),
    help="Share of the devices that publish their data over HTTPS only, with no MQTT connection (constrained "
    "devices; each gets a publish-only policy of its own) [0].",
)
@click.option(
    "--ota",
    metavar="VERSION",
    help="Roll firmware VERSION out to the luminaires with an IoT Jobs job in every region, once the fleet is "
    "connected: each downloads it over HTTPS (a presigned URL), applies it, reboots and reports; the report's "
    "'ota' section has the rollout curve.",
)
@click.option(
    "--rollout-per-minute",
    type=click.IntRange(min=1, max=1000),
    help="Devices the rollout notifies a minute, in each region's job (each over the whole fleet) [1000].",
)
@click.option(
    "--abort-failure-pct",
    type=click.FloatRange(min=0, max=100, min_open=True),
    help="Cancel the rollout (everywhere) once this percentage of the devices that finished failed [never].",
)
@click.option(
    "--ota-failure-rate",
    type=click.FloatRange(min=0, max=1),
    help="Each device's chance that applying the image fails (FAILED) [0].",
)
@click.option("--ota-size", type=click.IntRange(min=1, max=16 << 20), help="Bytes of the firmware image [262144].")
@click.option(
    "--keepalive",
    type=click.IntRange(min=1, max=1200),
    help="MQTT keepalive seconds [local cloud: 30, other targets: 1200 like the CRT]. A publishing device "
    "notices a frozen region when a PUBACK is late; an idle one after keepalive plus the ping timeout. "
    "Each ping costs CPU.",
)
@click.option(
    "--standby",
    is_flag=True,
    help="Each device keeps a second session open to its next region (same client id), which takes over the "
    "moment the live one ends: failover with no handshake storm, at twice the connections.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the cloud and identities here; later runs reuse them (default: temporary).",
)
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report.")
@click.option(
    "--csv",
    "csv_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write timeseries.csv (one row a second) and summary.csv into this directory.",
)
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write JUnit XML: one test case per threshold, failed when breached (for CI).",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the HTML report: one self-contained page with the charts and tables, that opens offline.",
)
@click.option("--max-lost", type=click.IntRange(min=0), default=0, show_default=True, help="Threshold: lost messages.")
@click.option("--max-error-rate", type=click.FloatRange(min=0), help="Threshold: errors per message sent.")
@click.option(
    "--check",
    "check_only",
    is_flag=True,
    help="Check the settings (defaults, then --config's file, then the flags given), print them as JSON, exit.",
)
@click.pass_context
def simulate(ctx: click.Context, /, **options: Any) -> None:
    """Run a smart-lighting fleet against the local cloud (or --config's target) and report what arrived.

    Every value comes from the defaults, then --config's file, then the flags given; all are checked
    before anything starts. Ctrl-C stops the run, which still writes its report.

    Exit code: 0 when the thresholds hold, 1 when breached, 2 for bad usage or configuration (or a
    report that could not be written: the summary is printed anyway).
    """
    from iotfleet.sim.simulate import Simulation  # noqa: PLC0415

    with _errors():
        settings = _sim_settings(ctx, options)
        simulation = Simulation(settings.sim_config())
        written = (
            ("--report", settings.run.report),
            ("--junit", options["junit_path"]),
            ("--html", options["html_path"]),
        )
        for option, path in written:
            if path is not None:
                _check_writable(path, option)
        if options["check_only"]:
            click.echo(json.dumps(settings.model_dump(mode="json", exclude={"source"}), indent=1))
            return
        report = _run(simulation)
        breaches = _thresholds(report, settings.thresholds.max_lost, settings.thresholds.max_error_rate)
        failed_write = _write_outputs(report, settings, options["csv_dir"], options["junit_path"], options["html_path"])
        _summary(report, breaches)
    if failed_write is not None:
        _fail(f"{failed_write}; the summary above is what the run measured")
    sys.exit(EXIT_BREACHED if breaches else EXIT_OK)


# flags that a fleet file can also set: (section, key); the flag wins only when it was given
_FILE_KEYS = {
    **{name: ("fleet", name) for name in ("sites", "tenants", "buildings", "rooms", "assets", "seed")},
    **{
        name: ("workload", name)
        for name in (
            "speed",
            "duration",
            "operator_fraction",
            "operator_every",
            "command_every",
            "reboot_share",
            "reboot_offline",
            "https_fraction",
            "ota",
            "rollout_per_minute",
            "abort_failure_pct",
            "ota_failure_rate",
            "ota_size",
        )
    },
    **{name: ("thresholds", name) for name in ("max_lost", "max_error_rate")},
}
_GIVEN = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


def _sim_settings(ctx: click.Context, options: dict[str, Any]) -> SimSettings:
    """One frozen settings model: defaults, then the file, then the flags actually given."""
    from iotfleet.sim.settings import load_settings  # noqa: PLC0415

    given: dict[str, dict[str, Any]] = {}
    for name, (section, key) in _FILE_KEYS.items():
        if ctx.get_parameter_source(name) in _GIVEN and options[name] is not None:
            given.setdefault(section, {})[key] = options[name]
    run = {
        "workers": options["workers"],
        "transport": options["transport"],
        "provision": options["provision"],
        "ramp_per_s": options["ramp_per_s"],
        "no_limits": options["no_limits"],
        "no_quotas": options["no_quotas"],
        "basic_ingest": options["basic_ingest"],
        "ingest_workers": options["ingest_workers"],
        "account_rate": options["account_rate"],
        "regions": _regions(options["regions"]),
        "cloud": options["cloud_file"],
        "start_at": options["start_at"],
        "metrics_port": options["metrics_port"],
        "metrics_host": options["metrics_host"],
        "chaos": options["chaos"],
        "shard": options["shard"],
        "shadow": not options["no_shadow"],
        "keepalive": options["keepalive"],
        "standby": options["standby"],
        "workdir": options["workdir"],
        "report": options["report_path"],
    }
    return load_settings(options["config_file"], given, run)


def _read_text(path: Path, option: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{option} {path}: cannot read it: {exc}") from exc


def _write_outputs(
    report: dict[str, Any], settings: SimSettings, csv_dir: Path | None, junit: Path | None, html: Path | None
) -> str | None:
    """Write the JSON report, the CSV files, the JUnit XML and the HTML page that were asked for; what
    failed, or None."""
    from iotfleet.sim.ci_formats import junit_xml, write_csv  # noqa: PLC0415
    from iotfleet.sim.html_report import write_html  # noqa: PLC0415

    thresholds = settings.thresholds
    writes: list[tuple[str, Path | None, Callable[[Path], object]]] = [
        ("the report", settings.run.report, lambda path: _write_whole(path, json.dumps(report, indent=1))),
        ("the CSV files", csv_dir, lambda path: write_csv(report, path)),
        (
            "the JUnit XML",
            junit,
            lambda path: path.write_text(
                junit_xml(report, max_lost=thresholds.max_lost, max_error_rate=thresholds.max_error_rate)
            ),
        ),
        (
            "the HTML report",
            html,
            lambda path: write_html(
                report, path, max_lost=thresholds.max_lost, max_error_rate=thresholds.max_error_rate
            ),
        ),
    ]
    problems = []
    for what, path, write in writes:
        if path is None:
            continue
        try:
            write(path)
        except OSError as exc:
            problems.append(f"cannot write {what} to {path}: {exc.strerror or exc}")
    return "; ".join(problems) or None


def _write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` at once: through a hidden file beside it, renamed into place, so that a
    reader waiting for the file (the k8s merge Job) never reads half of it. Anything but a regular file
    (a pipe, a device such as /dev/stdout) is written to as it is, never replaced."""
    if path.exists() and not path.is_file():
        path.write_text(text)
        return
    staged = path.with_name(f".{path.name}.tmp")
    try:
        staged.write_text(text)
        staged.replace(path)
    finally:
        staged.unlink(missing_ok=True)


def _check_writable(path: Path, option: str = "--report") -> None:
    """Fail now, not after the run, when a file could not be written to ``path``."""
    import os  # noqa: PLC0415

    if path.is_dir():
        raise ConfigError(f"{option}: {path} is a directory; name a file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{option}: {path} is not writable")
        return
    parent = path.parent if str(path.parent) else Path()
    if not parent.is_dir():
        raise ConfigError(f"{option}: directory {parent} does not exist; create it or name another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}: cannot create files in {parent} (read-only or no permission)")


def _run(simulation: Simulation) -> dict[str, Any]:
    """Run with the live view (or one line on stderr once running); Ctrl-C stops it and it still reports."""
    import multiprocessing  # noqa: PLC0415

    from iotfleet.sim.live import LiveView  # noqa: PLC0415

    stop = multiprocessing.get_context("spawn").Event()
    with _until_signalled() as signalled, LiveView(simulation.config.shape.devices) as live:
        announced = live.enabled
        metrics_told = False

        def progress(p: Any) -> None:
            nonlocal announced, metrics_told
            if p.metrics_url is not None and not metrics_told:
                metrics_told = True
                click.echo(f"metrics: {p.metrics_url}", err=True)
            if signalled.is_set():
                stop.set()  # Ctrl-C: workers drain, then the report is written as usual
            if not announced and p.total("acked") > 0:
                announced = True
                click.echo("running: messages are being acknowledged; Ctrl-C stops the run and reports", err=True)
            live(p)

        return simulation.run(on_progress=progress, stop=stop)


def _thresholds(report: dict[str, Any], max_lost: int, max_error_rate: float | None) -> list[str]:
    from iotfleet.sim.report import threshold_breaches  # noqa: PLC0415

    breaches = threshold_breaches(report, max_lost=max_lost, max_error_rate=max_error_rate)
    report["thresholds"] = {"held": not breaches, "breaches": breaches}
    return breaches


@cli.group("report")
def report_group() -> None:
    """Simulator reports."""


@cli.group("k8s")
def k8s_group() -> None:
    """Kubernetes: run a fleet as the pods of an Indexed Job."""


@k8s_group.command("render")
@click.option("--shards", type=click.IntRange(min=1), required=True, help="Pods (the Indexed Job's completions).")
@click.option("--sites", type=click.IntRange(min=1), required=True, help="Sites of the whole fleet.")
@click.option("--image", required=True, help="Container image with iotfleet (build it from the Dockerfile).")
@click.option("--name", default="iotfleet", show_default=True, help="Prefix of the objects' names (a DNS label).")
@click.option("--namespace", help="Namespace of every object [kubectl's current one].")
@click.option("--duration", default="10m", show_default=True, help="Each shard's run (20s, 5m, 1h).")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--cpu", default="2", show_default=True, help="CPU requested per pod.")
@click.option("--memory", default="4Gi", show_default=True, help="Memory requested (and its limit) per pod.")
@click.option("--storage", default="1Gi", show_default=True, help="Size of the shared results volume.")
@click.option("--storage-class", help="StorageClass of the results volume; it must allow ReadWriteMany.")
@click.option(
    "--cloud",
    "cloud_file",
    type=_FILE,
    help="A running 'iotfleet cloud up --json --control HOST:PORT' line (reachable from the pods) to drive.",
)
@click.option(
    "--config", "config_file", type=_FILE, help="A fleet TOML (e.g. with a [target]: AWS IoT Core) for every shard."
)
@click.option("--start-at", type=click.FloatRange(min=0), metavar="EPOCH", help="Every shard's start barrier.")
@click.option("--arg", "simulate_args", multiple=True, help="Pass this argument on to every shard's simulate.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
def k8s_render(
    shards: int,
    sites: int,
    image: str,
    name: str,
    namespace: str | None,
    duration: str,
    speed: float,
    cpu: str,
    memory: str,
    storage: str,
    storage_class: str | None,
    cloud_file: Path | None,
    config_file: Path | None,
    start_at: float | None,
    simulate_args: tuple[str, ...],
    out: Path | None,
) -> None:
    """Print the manifests: an Indexed Job of --shards pods running 'iotfleet simulate --shard auto/N', a
    shared results volume, and a Job that merges the shards' reports (failing if one is missing).

    Apply with 'iotfleet k8s render ... | kubectl apply -f -'; the merged report, its HTML page and JUnit
    XML are written to the results volume under <name>/.
    """
    from iotfleet.sim.k8s import K8sPlan, render  # noqa: PLC0415
    from iotfleet.sim.simulate import parse_duration  # noqa: PLC0415

    with _errors():
        if cloud_file is not None and config_file is not None:
            raise ConfigError("--cloud and --config are two targets: name one")
        plan = K8sPlan(
            shards=shards,
            sites=sites,
            image=image,
            name=name,
            namespace=namespace,
            duration=duration,
            speed=speed,
            cpu=cpu,
            memory=memory,
            storage=storage,
            storage_class=storage_class,
            cloud_json=None if cloud_file is None else _read_text(cloud_file, "--cloud"),
            fleet_file=None if config_file is None else _read_text(config_file, "--config"),
            start_at=start_at,
            simulate_args=simulate_args,
            merge_deadline_s=int(parse_duration(duration) / speed) + 3600,  # the run, and an hour to schedule
        )
        text = render(plan)
    _emit(text, out, "the manifests")


def _emit(text: str, out: Path | None, what: str, *, nl: bool = False) -> None:
    """Write ``text`` to ``out``, or to stdout (with a newline if ``nl``) when there is none; a failed
    write exits 2 naming ``what``."""
    if out is None:
        click.echo(text, nl=nl)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        _fail(f"cannot write {what} to {out}: {exc.strerror or exc}")


@report_group.command("csv")
@click.argument("report_file", metavar="REPORT", type=_FILE)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="The directory.")
def report_csv(report_file: Path, out: Path) -> None:
    """Write a saved (or merged) report's timeseries.csv and summary.csv into --out."""
    from iotfleet.sim.ci_formats import write_csv  # noqa: PLC0415
    from iotfleet.sim.report import load_report  # noqa: PLC0415

    with _errors():
        report = load_report(report_file)
    try:
        for path in write_csv(report, out):
            click.echo(str(path))
    except OSError as exc:
        _fail(f"cannot write the CSV files to {out}: {exc.strerror or exc}")


@report_group.command("junit")
@click.argument("report_file", metavar="REPORT", type=_FILE)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the XML here (default: stdout).")
@click.option("--max-lost", type=click.IntRange(min=0), default=0, show_default=True, help="Threshold: lost messages.")
@click.option("--max-error-rate", type=click.FloatRange(min=0), help="Threshold: errors per message sent.")
def report_junit(report_file: Path, out: Path | None, max_lost: int, max_error_rate: float | None) -> None:
    """JUnit XML of a saved (or merged) report's thresholds: one test case each, failed when breached."""
    from iotfleet.sim.ci_formats import junit_xml  # noqa: PLC0415
    from iotfleet.sim.report import load_report  # noqa: PLC0415

    with _errors():
        text = junit_xml(load_report(report_file), max_lost=max_lost, max_error_rate=max_error_rate)
    _emit(text, out, "the JUnit XML")


@report_group.command("html")
@click.argument("report_file", metavar="REPORT", type=_FILE)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Write the page here.")
@click.option("--max-lost", type=click.IntRange(min=0), default=0, show_default=True, help="Threshold: lost messages.")
@click.option("--max-error-rate", type=click.FloatRange(min=0), help="Threshold: errors per message sent.")
def report_html(report_file: Path, out: Path, max_lost: int, max_error_rate: float | None) -> None:
    """Write a saved (or merged) report as one self-contained HTML page (charts and tables, no network)."""
    from iotfleet.sim.html_report import write_html  # noqa: PLC0415
    from iotfleet.sim.report import load_report  # noqa: PLC0415

    with _errors():
        report = load_report(report_file)
    try:
        click.echo(str(write_html(report, out, max_lost=max_lost, max_error_rate=max_error_rate)))
    except OSError as exc:
        _fail(f"cannot write the HTML report to {out}: {exc.strerror or exc}")


@report_group.command("merge")
@click.argument("reports", nargs=-1, required=True, type=_FILE)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the merged JSON here.")
@click.option(
    "--partial",
    is_flag=True,
    help="Merge even when shards are missing (they are listed in the merged report's config.missing_shards).",
)
def report_merge(reports: tuple[Path, ...], out: Path | None, partial: bool) -> None:
    """Merge shard reports (--shard i/n runs) into the report one run would have written.

    Fails (exit 2) when a shard is given twice, when the reports come from different splits, or when a
    shard of the split is missing (unless --partial), naming each by its index.
    """
    from iotfleet.sim.report import load_report, merge_reports, shard_problems  # noqa: PLC0415

    with _errors():
        loaded = [load_report(p) for p in reports]
        missing, problems = shard_problems(loaded, [str(p) for p in reports])
        if missing and not partial:
            problems.append(f"missing {', '.join(missing)} (merge what there is with --partial)")
        if problems:
            raise ConfigError("cannot merge: " + "; ".join(problems))
        try:
            merged = merge_reports(loaded)
            if missing:
                merged["config"]["missing_shards"] = missing
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"cannot merge {', '.join(map(str, reports))}: a report's raw section is damaged ({exc!r}); "
                "write the reports again with --report"
            ) from exc
    _emit(json.dumps(merged, indent=1), out, "the merged report", nl=True)


@cli.group("drill")
def drill() -> None:
    """Scripted outage drills against the local cloud."""


@drill.command("failover")
@click.option("--devices", type=click.IntRange(min=1), default=200, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Messages per second per device.",
)
@click.option("--mode", type=click.Choice(["kill", "blackhole"]), default="kill", show_default=True)
@click.option(
    "--warmup", type=click.FloatRange(min=0), default=5.0, show_default=True, help="Seconds before the fault."
)
@click.option("--observe", type=click.FloatRange(min=1), default=15.0, show_default=True, help="Seconds after it.")
@click.option("--transport", type=click.Choice(["crt", "paho"]), default="crt", show_default=True)
@click.option(
    "--standby", is_flag=True, help="Devices keep a standby session open to region 2, which takes over at once."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def drill_failover(
    devices: int, rate: float, mode: str, warmup: float, observe: float, transport: str, standby: bool, as_json: bool
) -> None:
    """Run a fleet on region 1, fail it, and report RTO (to first publish on region 2), loss, duplicates.

    Exit code 1 when anything was lost or a device never failed over.
    """
    from iotfleet.sim.drill import drill_config, run_drill  # noqa: PLC0415

    with _errors():
        config = drill_config(
            devices=devices,
            rate=rate,
            mode=mode,
            warmup_s=warmup,
            observe_s=observe,
            transport=transport,
            standby=standby,
        )
        result = run_drill(config)
    if as_json:
        click.echo(json.dumps(result))
    else:
        rto = result["rto_s"]
        click.echo(
            f"{mode} {result['devices']} devices: {result['failed_over']} failed over; "
            f"RTO p50 {rto['p50']} s, p95 {rto['p95']} s, max {rto['max']} s"
        )
        click.echo(
            f"sent {result['sent']}, acked {result['acked']}, ingested {result['ingested']}, "
            f"lost {result['lost']}, duplicates {result['duplicates']}; detection by {result['detection']}"
        )
        if result["shadow"] is not None:
            shadow = result["shadow"]
            click.echo(
                f"shadow: desired changed for {shadow['changed']} devices during the fault; "
                f"{shadow['reconciled']} reconciled, {shadow['pending']} pending; sync {shadow['sync_s']}"
            )
    ok = result["lost"] == 0 and result["failed_over"] == result["devices"]
    sys.exit(EXIT_OK if ok else EXIT_BREACHED)


# --------------------------------------------------------------------------- policy


@cli.group("policy")
def policy_group() -> None:
    """AWS IoT policies rendered from the topic scheme."""


@policy_group.command("render")
@click.option("--data", "data_template", default=TopicScheme().data, show_default=True, help="Data topic template.")
@click.option(
    "--command",
    "command_template",
    default=TopicScheme().command,
    show_default=True,
    help="Command topic template.",
)
@click.option("--region", default="*", show_default=True, help="Region in the ARNs.")
@click.option("--account", default="*", show_default=True, help="Account id in the ARNs.")
@click.option(
    "--claim",
    "claim_template",
    metavar="TEMPLATE",
    help="Render the claim-certificate policy for this provisioning template instead.",
)
def policy_render(
    data_template: str, command_template: str, region: str, account: str, claim_template: str | None
) -> None:
    """Print the least-privilege device policy (or the claim policy) as JSON."""
    with _errors():
        if claim_template:
            document = policy.render_claim(claim_template, region=region, account=account)
        else:
            scheme = TopicScheme(data=data_template, command=command_template)  # ConfigError names the problem
            document = policy.render(scheme, region=region, account=account)
        click.echo(json.dumps(document, indent=2))


def main() -> None:
    cli(prog_name="iotfleet")
