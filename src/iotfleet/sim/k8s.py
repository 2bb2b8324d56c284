"""``iotfleet k8s render``: the manifests that run a fleet as the pods of a Kubernetes Indexed Job.

One Job with ``completionMode: Indexed`` runs ``shards`` pods at once; each runs ``iotfleet simulate
--shard auto/N`` (its index from ``JOB_COMPLETION_INDEX``, which the Job controller sets) and writes
``/results/<name>-shard-<index>.json`` on a shared volume. A failed pod is replaced with the same index, so
the fixed, seeded fleet keeps its slices, and against a shared cloud or a real target its devices keep
their identities (their workdir is on the shared volume, per index). A second Job waits for every shard's
report, then ``iotfleet report merge`` (which fails when one is missing or given twice) writes the
merged JSON, the HTML report and JUnit XML next to them. The pods carry Prometheus' scrape annotations
for ``simulate --metrics-port``; ``deploy/grafana/iotfleet.json`` is a dashboard over them.

The target is, in this order: ``cloud_json`` (a running ``iotfleet cloud up --json --control ...``
line, reachable from the pods), ``fleet_file`` (a fleet TOML with a ``[target]``, e.g. AWS IoT Core;
its files must be in the image or mounted), or else each pod's own embedded local cloud.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from iotfleet.errors import ConfigError

__all__ = ["K8sPlan", "render"]

METRICS_PORT = 9464  # the Prometheus exporters' conventional range (OpenTelemetry's is 9464)
CONFIG_DIR = "/etc/iotfleet"
RESULTS = "/results"
INDEX = "$(SHARD_INDEX)"  # Kubernetes expands $(VAR) in args from the container's env


@dataclass(frozen=True)
class K8sPlan:
    """What to render: the fleet, its split, the image and the pods' size."""

    shards: int
    sites: int
    image: str
    name: str = "iotfleet"
    namespace: str | None = None
    duration: str = "10m"
    speed: float = 1.0
    cpu: str = "2"
    memory: str = "4Gi"
    storage: str = "1Gi"
    storage_class: str | None = None
    cloud_json: str | None = None  # the line's text
    fleet_file: str | None = None  # the TOML's text
    start_at: float | None = None
    simulate_args: Sequence[str] = field(default_factory=tuple)  # passed through to every shard
    merge_deadline_s: int = 86_400

    def __post_init__(self) -> None:
        if self.shards < 1 or self.sites < 1:
            raise ConfigError("--shards and --sites must be at least 1")
        if self.sites < self.shards:
            raise ConfigError(
                f"--sites {self.sites} < --shards {self.shards}: a shard holds whole sites, so some would be empty"
            )
        if not self.image:
            raise ConfigError("--image names the container image that has iotfleet (see the Dockerfile)")
        if not _is_dns_label(self.name):
            raise ConfigError(
                f"--name {self.name!r} must be a DNS label: lower-case letters, digits and '-', at most 40"
            )


def render(plan: K8sPlan) -> str:
    """The manifests as one YAML stream (``kubectl apply -f -``)."""
    documents: list[dict[str, Any]] = []
    if plan.cloud_json is not None or plan.fleet_file is not None:
        documents.append(_config_map(plan))
    documents += [_results_claim(plan), _shards_job(plan), _merge_job(plan)]
    return str(yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=120))


def _labels(plan: K8sPlan, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "iotfleet",
        "app.kubernetes.io/instance": plan.name,
        "app.kubernetes.io/component": component,
    }


def _object(plan: K8sPlan, api: str, kind: str, component: str, **body: Any) -> dict[str, Any]:
    """A Kubernetes object named ``<name>-<component>``, labelled, in the plan's namespace."""
    meta: dict[str, Any] = {"name": f"{plan.name}-{component}", "labels": _labels(plan, component)}
    if plan.namespace:
        meta["namespace"] = plan.namespace
    return {"apiVersion": api, "kind": kind, "metadata": meta, **body}


def _config_map(plan: K8sPlan) -> dict[str, Any]:
    data = {}
    if plan.cloud_json is not None:
        data["cloud.json"] = plan.cloud_json
    if plan.fleet_file is not None:
        data["fleet.toml"] = plan.fleet_file
    return _object(plan, "v1", "ConfigMap", "config", data=data)


def _results_claim(plan: K8sPlan) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": plan.storage}}}
    if plan.storage_class:
        spec["storageClassName"] = plan.storage_class
    return _object(plan, "v1", "PersistentVolumeClaim", "results", spec=spec)


def _volumes(plan: K8sPlan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "results", "persistentVolumeClaim": {"claimName": f"{plan.name}-results"}}
    ]
    mounts: list[dict[str, Any]] = [{"name": "results", "mountPath": RESULTS}]
    if plan.cloud_json is not None or plan.fleet_file is not None:
        volumes.append({"name": "config", "configMap": {"name": f"{plan.name}-config"}})
        mounts.append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    return volumes, mounts


def shard_args(plan: K8sPlan) -> list[str]:
    """``iotfleet simulate``'s arguments in each shard's pod."""
    runs = f"{RESULTS}/{plan.name}"  # the files <name>-shard-<i>.json ... on the shared volume
    args = [
        "simulate",
        "--sites", str(plan.sites),
        "--shard", f"auto/{plan.shards}",
        "--duration", plan.duration,
        "--speed", f"{plan.speed:g}",
        "--report", f"{runs}-shard-{INDEX}.json",
        "--metrics-port", str(METRICS_PORT),
    ]  # fmt: skip
    if plan.cloud_json is not None:
        args += ["--cloud", f"{CONFIG_DIR}/cloud.json", "--workdir", f"{runs}-work-{INDEX}"]
    elif plan.fleet_file is not None:
        args += ["--config", f"{CONFIG_DIR}/fleet.toml", "--workdir", f"{runs}-work-{INDEX}"]
    # else: each pod's own embedded cloud, in a temporary workdir on the pod's disk (SQLite is not for NFS)
    if plan.start_at is not None:
        args += ["--start-at", f"{plan.start_at:.3f}"]
    return [*args, *plan.simulate_args]


def _shards_job(plan: K8sPlan) -> dict[str, Any]:
    volumes, mounts = _volumes(plan)
    container = {
        "name": "shard",
        "image": plan.image,
        "command": ["iotfleet"],
        "args": shard_args(plan),
        "env": [
            {
                # the Job controller's index, as an env var of this container so that $(SHARD_INDEX)
                # expands in the args; iotfleet itself reads JOB_COMPLETION_INDEX
                "name": "SHARD_INDEX",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
                },
            }
        ],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "resources": {
            "requests": {"cpu": plan.cpu, "memory": plan.memory},
            "limits": {"memory": plan.memory},
        },
        "volumeMounts": mounts,
    }
    return {
        **_object(plan, "batch/v1", "Job", "shards"),
        "spec": {
            "completionMode": "Indexed",
            "completions": plan.shards,
            "parallelism": plan.shards,
            "backoffLimit": 2 * plan.shards,  # a failed pod is retried with its index, twice each on average
            "template": {
                "metadata": {
                    "labels": _labels(plan, "shard"),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes},
            },
        },
    }


def merge_script(plan: K8sPlan) -> str:
    """The merge pod's shell: wait for every shard's report, then merge, and write the HTML and JUnit."""
    runs = f"{RESULTS}/{plan.name}"
    reports = " ".join(f"{runs}-shard-{i}.json" for i in range(plan.shards))
    return "\n".join(
        [
            "set -eu",
            f'until [ "$(ls {runs}-shard-*.json 2>/dev/null | wc -l)" -ge {plan.shards} ]; do sleep 10; done',
            f"iotfleet report merge {reports} --out {runs}-merged.json",
            f"iotfleet report html {runs}-merged.json --out {runs}-report.html",
            f"iotfleet report junit {runs}-merged.json --out {runs}-junit.xml",
            f"echo merged {plan.shards} shards: {shlex.quote(runs)}-merged.json",
        ]
    )


def _merge_job(plan: K8sPlan) -> dict[str, Any]:
    volumes, mounts = _volumes(plan)
    return {
        **_object(plan, "batch/v1", "Job", "merge"),
        "spec": {
            "backoffLimit": 1,
            # a shard that never writes its report fails this Job after the deadline, as merge fails
            # on a missing or doubled shard
            "activeDeadlineSeconds": plan.merge_deadline_s,
            "template": {
                "metadata": {"labels": _labels(plan, "merge")},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "merge",
                            "image": plan.image,
                            "command": ["sh", "-c", merge_script(plan)],
                            "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}},
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }  # fmt: skip


def _is_dns_label(name: str) -> bool:
    return (
        0 < len(name) <= 40
        and name[0].isalnum()
        and name[-1].isalnum()
        and all(c.isdigit() or c == "-" or ("a" <= c <= "z") for c in name)
    )
