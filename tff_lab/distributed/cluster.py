"""Cluster discovery: where this process sits in a multi-worker job, parsed once.

Three ways a worker learns its cluster, tried in this order:

(a) ``TF_CONFIG`` is set (Kubeflow's TFJob operator sets it): it is validated and used as is.
(b) A Kubernetes Indexed Job: ``JOB_COMPLETION_INDEX`` (set by Kubernetes) plus
    ``TFF_LAB_NUM_WORKERS``, ``TFF_LAB_JOB_NAME`` and ``TFF_LAB_SERVICE`` (set by the manifest).
    Pod ``i`` of an Indexed Job whose pods name a headless Service as ``subdomain`` is reachable
    at the stable DNS name ``<job>-<i>.<service>``; tff_lab builds ``TF_CONFIG`` from those names.
(c) Neither: a single worker.

``TFF_LAB_HOST_MAP`` (``host=addr:port,host=addr:port``) rewrites worker addresses after
discovery. On a cluster it is unset; tests use it to run the pods' exact env as local
processes, with each pod hostname mapped to a localhost port.

Every malformed value raises :class:`~tff_lab.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Mapping, Optional

from tff_lab.errors import ConfigError

TF_CONFIG = "TF_CONFIG"
COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
NUM_WORKERS = "TFF_LAB_NUM_WORKERS"
JOB_NAME = "TFF_LAB_JOB_NAME"
SERVICE = "TFF_LAB_SERVICE"
WORKER_PORT = "TFF_LAB_WORKER_PORT"
HOST_MAP = "TFF_LAB_HOST_MAP"

DEFAULT_PORT = 2222  # the port TFJob and the tf.distribute docs use for workers
# Task types MultiWorkerMirroredStrategy trains with ("evaluator" would be a side-car we do not run).
_MWMS_JOBS = ("chief", "worker")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """This process's place in the training cluster.

    ``jobs`` maps a task type ("chief", "worker") to its addresses (``host:port``);
    ``source`` says how it was found: "tf_config", "indexed_job" or "single".
    """

    source: str
    jobs: Mapping[str, tuple[str, ...]]
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return sum(len(self.jobs.get(j, ())) for j in _MWMS_JOBS) or 1

    @property
    def is_chief(self) -> bool:
        """The chief writes the model; as in TF: task chief:0, else worker:0 when there is no chief."""
        if "chief" in self.jobs:
            return self.task_type == "chief" and self.task_index == 0
        return self.task_type == "worker" and self.task_index == 0

    @property
    def worker_id(self) -> int:
        """A 0-based id over chief + workers (the chief, when there is one, is 0)."""
        n_chief = len(self.jobs.get("chief", ()))
        return self.task_index if self.task_type == "chief" else n_chief + self.task_index

    @property
    def is_multi_worker(self) -> bool:
        return self.num_workers > 1

    def tf_config(self) -> Optional[dict]:
        if self.source == "single":
            return None
        return {
            "cluster": {k: list(v) for k, v in self.jobs.items()},
            "task": {"type": self.task_type, "index": self.task_index},
        }

    def describe(self) -> str:
        role = "chief" if self.is_chief else "worker"
        return f"{self.source}: {self.task_type}:{self.task_index} ({role}) of {self.num_workers} worker(s)"


def single_worker() -> ClusterSpec:
    return ClusterSpec(source="single", jobs={"worker": ("localhost:0",)}, task_type="worker", task_index=0)


def _parse_address(addr, where: str) -> str:
    if not isinstance(addr, str) or ":" not in addr:
        raise ConfigError(where, f"expected an address 'host:port', got {addr!r}")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(where, f"expected an address 'host:port' with a port in 1..65535, got {addr!r}")
    return addr


def parse_tf_config(raw: str) -> ClusterSpec:
    """Validates a ``TF_CONFIG`` JSON string for MultiWorkerMirroredStrategy."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(TF_CONFIG, f"malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(TF_CONFIG, f"expected a JSON object with 'cluster' and 'task', got {type(data).__name__}")
    cluster = data.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigError(
            f"{TF_CONFIG}.cluster", 'missing or empty; expected e.g. {"worker": ["host0:2222", "host1:2222"]}'
        )
    jobs: dict[str, tuple[str, ...]] = {}
    for job, addrs in cluster.items():
        where = f"{TF_CONFIG}.cluster.{job}"
        if job == "ps":
            raise ConfigError(
                where,
                "parameter servers are not used by MultiWorkerMirroredStrategy; give only 'chief' and 'worker' tasks",
            )
        if job not in _MWMS_JOBS and job != "evaluator":
            raise ConfigError(where, "unknown task type; expected chief or worker")
        if not isinstance(addrs, list) or not addrs:
            raise ConfigError(where, f"expected a non-empty list of 'host:port', got {addrs!r}")
        jobs[job] = tuple(_parse_address(a, f"{where}[{i}]") for i, a in enumerate(addrs))
    if len(jobs.get("chief", ())) > 1:
        raise ConfigError(f"{TF_CONFIG}.cluster.chief", f"expected at most one chief, got {len(jobs['chief'])}")
    if not any(j in jobs for j in _MWMS_JOBS):
        raise ConfigError(f"{TF_CONFIG}.cluster", "needs a 'worker' (or 'chief') task list")
    task = data.get("task")
    if not isinstance(task, dict):
        raise ConfigError(f"{TF_CONFIG}.task", 'missing; expected {"type": "worker", "index": 0}')
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in jobs:
        raise ConfigError(
            f"{TF_CONFIG}.task.type", f"{task_type!r} is not a task type of the cluster ({', '.join(sorted(jobs))})"
        )
    if task_type == "evaluator":
        raise ConfigError(
            f"{TF_CONFIG}.task.type",
            "a side-car evaluator is not supported by train-dist; the chief evaluates on the test set",
        )
    if isinstance(index, bool) or not isinstance(index, int):
        raise ConfigError(f"{TF_CONFIG}.task.index", f"expected an integer, got {index!r}")
    if not 0 <= index < len(jobs[task_type]):
        raise ConfigError(
            f"{TF_CONFIG}.task.index", f"{index} is out of range for {len(jobs[task_type])} '{task_type}' task(s)"
        )
    jobs.pop("evaluator", None)
    return ClusterSpec(source="tf_config", jobs=jobs, task_type=task_type, task_index=index)


def _int_env(env: Mapping[str, str], name: str, *, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw.lstrip("-").isdigit():
        raise ConfigError(name, f"expected an integer, got {raw!r}")
    value = int(raw)
    if value < minimum:
        raise ConfigError(name, f"expected an integer >= {minimum}, got {value}")
    return value


def _dns_label(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(
            name,
            f"not set; an Indexed Job needs {NUM_WORKERS}, {JOB_NAME} and {SERVICE} "
            "(the manifests from `tff-lab k8s render` set them)",
        )
    if not _DNS_LABEL.match(value) or len(value) > 63:
        raise ConfigError(name, f"expected a DNS label (lowercase letters, digits, '-'), got {value!r}")
    return value


def indexed_job_hosts(job_name: str, service: str, num_workers: int) -> list[str]:
    """The stable pod hostnames of an Indexed Job whose pods use ``subdomain: service``."""
    return [f"{job_name}-{i}.{service}" for i in range(num_workers)]


def parse_indexed_job(env: Mapping[str, str]) -> ClusterSpec:
    """Builds the cluster of a Kubernetes Indexed Job from the pod's environment."""
    index = _int_env(env, COMPLETION_INDEX, minimum=0)
    if NUM_WORKERS not in env:
        raise ConfigError(
            NUM_WORKERS,
            f"not set, but {COMPLETION_INDEX} is (an Indexed Job): the worker count is needed to build the cluster",
        )
    n = _int_env(env, NUM_WORKERS, minimum=1)
    if index >= n:
        raise ConfigError(COMPLETION_INDEX, f"{index} is not below the worker count {NUM_WORKERS}={n}")
    if n == 1:
        return ClusterSpec(source="indexed_job", jobs={"worker": ("localhost:0",)}, task_type="worker", task_index=0)
    job, service = _dns_label(env, JOB_NAME), _dns_label(env, SERVICE)
    port = _int_env(env, WORKER_PORT, minimum=1) if env.get(WORKER_PORT) else DEFAULT_PORT
    if port > 65535:
        raise ConfigError(WORKER_PORT, f"expected a port in 1..65535, got {port}")
    addrs = tuple(f"{h}:{port}" for h in indexed_job_hosts(job, service, n))
    return ClusterSpec(source="indexed_job", jobs={"worker": addrs}, task_type="worker", task_index=index)


def parse_host_map(raw: str) -> dict[str, str]:
    """``host=addr[:port],...`` -> {host: replacement}."""
    out = {}
    for item in filter(None, (s.strip() for s in raw.split(","))):
        host, sep, repl = item.partition("=")
        if not sep or not host.strip() or not repl.strip():
            raise ConfigError(HOST_MAP, f"expected comma-separated host=address[:port] entries, got {item!r}")
        out[host.strip()] = repl.strip()
    return out


def apply_host_map(spec: ClusterSpec, mapping: Mapping[str, str]) -> ClusterSpec:
    if not mapping or spec.source == "single":
        return spec

    def rewrite(addr: str) -> str:
        host, _, port = addr.rpartition(":")
        repl = mapping.get(addr) or mapping.get(host)
        if repl is None:
            return addr
        return repl if ":" in repl else f"{repl}:{port}"

    jobs = {k: tuple(_parse_address(rewrite(a), HOST_MAP) for a in v) for k, v in spec.jobs.items()}
    return dataclasses.replace(spec, jobs=jobs)


def discover(env: Optional[Mapping[str, str]] = None) -> ClusterSpec:
    """The cluster this process belongs to, from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    if env.get(TF_CONFIG, "").strip():
        spec = parse_tf_config(env[TF_CONFIG])
    elif env.get(COMPLETION_INDEX, "").strip():
        spec = parse_indexed_job(env)
    else:
        spec = single_worker()
    if env.get(HOST_MAP, "").strip():
        spec = apply_host_map(spec, parse_host_map(env[HOST_MAP]))
    return spec
