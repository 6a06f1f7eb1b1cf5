"""Kubernetes manifests for tff_lab, built from the kubernetes client's models.

Every object is a ``kubernetes.client`` model (``V1Job``, ``V1Service``, ...) serialized with
``ApiClient().sanitize_for_serialization``; the client's models check field names and types, so
a typo fails here instead of at ``kubectl apply``. The TFJob (a CRD) reuses the same pod
template model inside a plain mapping.

Layout written by :func:`write_tree` (kustomize)::

    base/                      ConfigMap (experiment), PVC, headless Service, Indexed Job (MWMS),
                               NetworkPolicy (only the job's own pods, on the worker port); namespace
    overlays/gpu/              the default: base + GPU node toleration
    overlays/cpu/              base without GPUs, ReadWriteOnce volume (a laptop cluster)
    overlays/tfjob/            Kubeflow kubeflow.org/v1 TFJob instead of Job + Service
    overlays/sweep/            an Indexed Job running one federated experiment per index
    overlays/federated/        a StatefulSet of TFF workers (worker_binary), their headless Service and a
                               driver Job running ``tff-lab run`` against them; NetworkPolicies that
                               admit only the driver on the workers' port
    overlays/predict/          batch prediction: an Indexed Job predicting shard JOB_COMPLETION_INDEX of N
                               (model and input read-only from the artifacts volume, parts to a
                               predictions volume) and a merge Job that waits for every part, checks
                               and joins them; NetworkPolicies that deny all traffic

Security (checkov 3 clean with the skips in ``.checkov.yaml``): every pod runs as uid/gid 10001 with
no service-account token, no privilege escalation, no capabilities, a read-only root filesystem and
the RuntimeDefault seccomp profile, and is selected by a NetworkPolicy. An image pinned by digest
(``REPO:TAG@sha256:...``) is pulled ``IfNotPresent`` (its content cannot change); a tag-only image is
pulled ``Always``, so every pod runs what the tag names now and the registry checks the pull secret.

:func:`render_overlay` computes each overlay's final objects directly; a test checks that
``kubectl kustomize`` of the written tree produces exactly those objects.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Optional

import yaml
from kubernetes import client as k8s

from tff_lab.distributed import EXIT_RETRIABLE
from tff_lab.distributed import cluster as cluster_lib
from tff_lab.errors import ConfigError

OVERLAYS = ("gpu", "cpu", "tfjob", "sweep", "federated", "predict")
APP = "tff-lab"
CONTAINER = "trainer"
TFJOB_CONTAINER = "tensorflow"  # the training operator finds the TF container by this name
EXPERIMENT_MOUNT = "/etc/tff-lab"
ARTIFACTS_MOUNT = "/artifacts"
EXIT_BAD_INPUT = 2
EXIT_WORKER_LOST = 75  # tff_lab.errors.WorkerLost: a TFF worker stayed unreachable after the retries
UID = 10001  # the non-root user of Dockerfile.gpu; >= 10000, above any host account
TFF_WORKER_PORT = 8000  # worker_binary's gRPC port in the federated overlay
TFF_WORKER_CONTAINER = "tff-worker"
DRIVER_CONTAINER = "driver"
DNS_PORT = 53
PREDICTIONS_MOUNT = "/predictions"  # the predict overlay's output volume
PREDICT_CONTAINER = "predict"
MERGE_CONTAINER = "merge"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IMAGE_RE = re.compile(r"^[a-z0-9]+([._/:-][a-zA-Z0-9]+)*(@sha256:[a-f0-9]{64})?$")


# Kubernetes' own quantity syntax (apimachinery's resource.Quantity): a signed decimal, then a
# binary (Ki..Ei) or decimal (m, k..E) suffix or a decimal exponent. parse_quantity of the kubernetes
# client computes the value but also accepts spaces, underscores, NaN and inf, which the API refuses.
_QUANTITY_RE = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]{1,3})?$")
QUANTITY_EXAMPLES = {"cpu": "4, 500m", "memory": "16Gi, 512Mi", "storage": "20Gi", "gpu": "1"}
# Beyond any node (and beyond int64 bytes for memory/storage: the API server refuses them).
QUANTITY_MAX = {"cpu": 100_000, "memory": 2**62, "storage": 2**62}


def check_quantity(value: str, flag: str, kind: str) -> str:
    """A Kubernetes resource quantity (``--cpu``, ``--memory``, ``--storage``) as Kubernetes parses
    it (``kubernetes.utils.parse_quantity``), refused in one line naming ``flag`` when malformed,
    not finite, <= 0, or beyond any node; returns it unchanged (manifests keep the user's text)."""
    from kubernetes.utils import parse_quantity

    text = value if isinstance(value, str) else str(value)
    expected = f"a Kubernetes quantity > 0 (e.g. {QUANTITY_EXAMPLES.get(kind, '1')})"
    if not _QUANTITY_RE.fullmatch(text):
        raise ConfigError(flag, f"expected {expected}, got {text!r}")
    try:
        q = parse_quantity(text)
    except (ValueError, ArithmeticError) as e:
        raise ConfigError(flag, f"expected {expected}, got {text!r} ({e})") from None
    if not q.is_finite() or q <= 0:
        raise ConfigError(flag, f"expected {expected}, got {text!r}")
    if kind in ("memory", "storage") and q < 1:
        raise ConfigError(flag, f"expected at least 1 byte (e.g. {QUANTITY_EXAMPLES[kind]}), got {text!r}")
    if kind == "cpu" and q < parse_quantity("1m"):
        raise ConfigError(flag, f"expected at least 1m (one millicore), got {text!r}")
    hi = QUANTITY_MAX.get(kind)
    if hi is not None and q > hi:
        raise ConfigError(flag, f"expected {expected} and at most {hi:,}, got {text!r}")
    return text


@dataclasses.dataclass(frozen=True)
class RenderParams:
    """What ``tff-lab k8s render`` was asked for; validated by :meth:`validate`."""

    experiment_name: str
    experiment_yaml: str  # the resolved experiment, as stored in the ConfigMap
    workers: int
    gpus_per_worker: int
    image: str
    sweep_yaml: Optional[str] = None  # the resolved sweep grid (with its base experiment inlined)
    sweep_points: int = 0
    name: str = APP
    cpu: str = "4"  # per worker
    memory: str = "16Gi"
    storage: str = "20Gi"
    sweep_parallelism: int = 4
    backoff_limit_per_index: int = 3
    ttl_seconds_after_finished: int = 7 * 24 * 3600
    termination_grace_seconds: int = 120
    namespace: str = APP
    tff_workers: int = 2  # the federated overlay's TFF worker pods
    tff_worker_gpus: int = 0  # nvidia.com/gpu limit per TFF worker (0: none)
    workers_wait_seconds: int = 900  # how long the driver's init container waits for every worker
    predict_shards: int = 4  # the predict overlay's Indexed Job completions (= shards of the input)
    predict_parallelism: int = 4
    predict_model: str = ""  # under /artifacts (read-only); default: the MWMS run's model/model.keras
    predict_input: str = f"{ARTIFACTS_MOUNT}/predict/input.npy"
    predict_batch_size: int = 1024  # fixed: every shard batches alike (measure it with --max-latency-ms first)
    predict_wait_seconds: int = 6 * 3600  # how long the merge Job waits for the parts

    def validate(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError("--workers", f"expected an integer >= 1, got {self.workers}")
        if (
            isinstance(self.gpus_per_worker, bool)
            or not isinstance(self.gpus_per_worker, int)
            or self.gpus_per_worker < 0
        ):
            raise ConfigError("--gpus-per-worker", f"expected an integer >= 0, got {self.gpus_per_worker}")
        if not self.image:
            raise ConfigError(
                "--image",
                "missing: the trainer image to run, e.g. "
                "registry.example.com/tff-lab/tff-lab-gpu:0.1.0 (built from Dockerfile.gpu)",
            )
        check_image(self.image)
        if not _DNS_LABEL.match(self.name) or len(self.name) > 40:
            raise ConfigError(
                "--name", f"expected a short DNS label (lowercase letters, digits, '-'), got {self.name!r}"
            )
        if not _DNS_LABEL.match(self.namespace) or len(self.namespace) > 63:
            raise ConfigError(
                "--namespace", f"expected a DNS label (lowercase letters, digits, '-'), got {self.namespace!r}"
            )
        for flag, value, low in (
            ("--tff-workers", self.tff_workers, 1),
            ("--tff-worker-gpus", self.tff_worker_gpus, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(flag, f"expected an integer >= {low}, got {value}")
        for flag, value, kind in (
            ("--cpu", self.cpu, "cpu"),
            ("--memory", self.memory, "memory"),
            ("--storage", self.storage, "storage"),
        ):
            check_quantity(value, flag, kind)
        if self.sweep_parallelism < 1:
            raise ConfigError("--sweep-parallelism", "expected an integer >= 1")
        for flag, value in (
            ("--predict-shards", self.predict_shards),
            ("--predict-parallelism", self.predict_parallelism),
            ("--predict-batch-size", self.predict_batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(flag, f"expected an integer >= 1, got {value}")
        for flag, path in (("--predict-model", self.predict_model_path), ("--predict-input", self.predict_input)):
            if not path.startswith(ARTIFACTS_MOUNT + "/") or "/../" in path + "/" or any(c.isspace() for c in path):
                raise ConfigError(
                    flag,
                    f"expected a path under {ARTIFACTS_MOUNT}/ (the artifacts volume, mounted "
                    f"read-only in the predict pods), got {path!r}",
                )

    @property
    def job_name(self) -> str:
        return f"{self.name}-train"

    @property
    def service_name(self) -> str:
        return f"{self.name}-workers"

    @property
    def sweep_job_name(self) -> str:
        return f"{self.name}-sweep"

    @property
    def run_dir(self) -> str:
        return f"{ARTIFACTS_MOUNT}/runs/{self.experiment_name}"

    @property
    def tff_worker_set(self) -> str:
        return f"{self.name}-worker"

    @property
    def driver_job_name(self) -> str:
        return f"{self.name}-driver"

    @property
    def federated_run_dir(self) -> str:
        return f"{ARTIFACTS_MOUNT}/runs/{self.experiment_name}-federated"

    @property
    def predict_model_path(self) -> str:
        return self.predict_model or f"{self.run_dir}/model/model.keras"

    @property
    def predict_job_name(self) -> str:
        return f"{self.name}-predict"

    @property
    def predict_merge_job_name(self) -> str:
        return f"{self.name}-predict-merge"

    @property
    def predict_parts_dir(self) -> str:
        return f"{PREDICTIONS_MOUNT}/{self.experiment_name}/parts"

    @property
    def predict_output(self) -> str:
        return f"{PREDICTIONS_MOUNT}/{self.experiment_name}/predictions.npz"

    @property
    def tff_worker_addresses(self) -> list[str]:
        """The StatefulSet pods' stable DNS names ``<set>-<i>.<service>:<port>`` (same namespace)."""
        return [f"{self.tff_worker_set}-{i}.{self.service_name}:{TFF_WORKER_PORT}" for i in range(self.tff_workers)]

    @property
    def image_pull_policy(self) -> str:
        # A digest names immutable content: a cached copy is the same image. A tag can be re-pushed:
        # pull it every time, so every pod runs the same image and the pull secret is checked.
        return "IfNotPresent" if has_digest(self.image) else "Always"


def has_digest(image: str) -> bool:
    return "@sha256:" in image


def check_image(image: str) -> None:
    if not _IMAGE_RE.match(image):
        raise ConfigError("--image", f"not a valid image reference: {image!r}")
    last = image.rsplit("/", 1)[-1]
    if "@sha256:" not in image and ":" not in last:
        raise ConfigError("--image", f"{image!r} has no tag; pin a version tag or a digest")
    if "@sha256:" not in image and last.endswith(":latest"):
        raise ConfigError("--image", f"{image!r} uses ':latest'; pin a version tag or a digest")


def to_plain(obj: Any) -> Any:
    """A client model (or a mapping holding models) -> plain JSON-able data."""
    return k8s.ApiClient().sanitize_for_serialization(obj)


# --- shared pieces ---------------------------------------------------------------------------


def _labels(p: RenderParams, component: str) -> dict:
    return {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/instance": p.name,
        "app.kubernetes.io/component": component,
    }


def _meta(name: str, labels: dict) -> k8s.V1ObjectMeta:
    # No namespace here: kustomize's ``namespace:`` sets it (see tree_files), render_overlay mirrors it.
    return k8s.V1ObjectMeta(name=name, labels=labels)


def _selector(p: RenderParams, component: str) -> dict:
    return {"app.kubernetes.io/instance": p.name, "app.kubernetes.io/component": component}


def configmap_name(p: RenderParams) -> str:
    return f"{p.name}-experiment"


def pvc_name(p: RenderParams) -> str:
    return f"{p.name}-artifacts"


def experiment_configmap(p: RenderParams) -> k8s.V1ConfigMap:
    data = {"experiment.yaml": p.experiment_yaml}
    return k8s.V1ConfigMap(
        api_version="v1", kind="ConfigMap", metadata=_meta(configmap_name(p), _labels(p, "config")), data=data
    )


def sweep_configmap(p: RenderParams) -> k8s.V1ConfigMap:
    return k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=_meta(f"{p.name}-sweep", _labels(p, "config")),
        data={"sweep.yaml": p.sweep_yaml or ""},
    )


def artifacts_pvc(p: RenderParams, access_mode: str = "ReadWriteMany") -> k8s.V1PersistentVolumeClaim:
    # ReadWriteMany: every worker reads the chief's backup after a restart, on any node.
    return k8s.V1PersistentVolumeClaim(
        api_version="v1",
        kind="PersistentVolumeClaim",
        metadata=_meta(pvc_name(p), _labels(p, "storage")),
        spec=k8s.V1PersistentVolumeClaimSpec(
            access_modes=[access_mode], resources=k8s.V1VolumeResourceRequirements(requests={"storage": p.storage})
        ),
    )


def headless_service(p: RenderParams) -> k8s.V1Service:
    return k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=_meta(p.service_name, _labels(p, "trainer")),
        spec=k8s.V1ServiceSpec(
            cluster_ip="None",  # headless: DNS names <pod hostname>.<service> for the Job's pods
            publish_not_ready_addresses=True,  # workers must resolve each other before they are Ready
            selector=_selector(p, "trainer"),
            ports=[
                k8s.V1ServicePort(
                    name="grpc", port=cluster_lib.DEFAULT_PORT, target_port=cluster_lib.DEFAULT_PORT, protocol="TCP"
                )
            ],
        ),
    )


def _peer(p: RenderParams, component: str) -> k8s.V1NetworkPolicyPeer:
    return k8s.V1NetworkPolicyPeer(pod_selector=k8s.V1LabelSelector(match_labels=_selector(p, component)))


def _tcp(port: int) -> list:
    return [k8s.V1NetworkPolicyPort(protocol="TCP", port=port)]


# Egress to any resolver on port 53: cluster DNS may be a Service, a node-local cache or a host IP.
_DNS_EGRESS = k8s.V1NetworkPolicyEgressRule(
    ports=[
        k8s.V1NetworkPolicyPort(protocol="UDP", port=DNS_PORT),
        k8s.V1NetworkPolicyPort(protocol="TCP", port=DNS_PORT),
    ]
)


def network_policy(
    p: RenderParams, name: str, component: str, *, ingress: Optional[list] = None, egress: Optional[list] = None
) -> k8s.V1NetworkPolicy:
    """Selects ``component``'s pods; both directions are denied except the rules given.

    Traffic from the node (kubelet probes) is always allowed by NetworkPolicy semantics."""
    return k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=_meta(name, _labels(p, component)),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(match_labels=_selector(p, component)),
            policy_types=["Ingress", "Egress"],
            ingress=ingress or [],
            egress=egress or [],
        ),
    )


def trainer_network_policy(p: RenderParams) -> k8s.V1NetworkPolicy:
    """MWMS (Job or TFJob): the workers reach each other on the worker port, and DNS; nothing else."""
    return network_policy(
        p,
        p.job_name,
        "trainer",
        ingress=[k8s.V1NetworkPolicyIngressRule(_from=[_peer(p, "trainer")], ports=_tcp(cluster_lib.DEFAULT_PORT))],
        egress=[
            k8s.V1NetworkPolicyEgressRule(to=[_peer(p, "trainer")], ports=_tcp(cluster_lib.DEFAULT_PORT)),
            _DNS_EGRESS,
        ],
    )


def _resources(p: RenderParams, gpus: int) -> k8s.V1ResourceRequirements:
    limits = {"cpu": p.cpu, "memory": p.memory}
    if gpus > 0:
        limits["nvidia.com/gpu"] = str(gpus)
    return k8s.V1ResourceRequirements(requests={"cpu": p.cpu, "memory": p.memory}, limits=limits)


def _container_security() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
    )


def _pod_security() -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=UID,
        run_as_group=UID,
        fs_group=UID,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def _volumes(p: RenderParams, configmap: str, *, shm: bool) -> tuple[list, list]:
    volumes = [
        k8s.V1Volume(name="experiment", config_map=k8s.V1ConfigMapVolumeSource(name=configmap)),
        k8s.V1Volume(
            name="artifacts", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=pvc_name(p))
        ),
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()),
    ]
    mounts = [
        k8s.V1VolumeMount(name="experiment", mount_path=EXPERIMENT_MOUNT, read_only=True),
        k8s.V1VolumeMount(name="artifacts", mount_path=ARTIFACTS_MOUNT),
        k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
    ]
    if shm:
        # NCCL moves data through /dev/shm; the container default (64 MiB) is too small.
        volumes.append(
            k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit="2Gi"))
        )
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    return volumes, mounts


def _common_env() -> list:
    return [
        k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
        k8s.V1EnvVar(name="TF_CPP_MIN_LOG_LEVEL", value="1"),
        k8s.V1EnvVar(name="HOME", value="/tmp"),  # read-only root filesystem: caches go to /tmp
    ]


def _failure_policy(on_bad_input: str, container: str = CONTAINER) -> k8s.V1PodFailurePolicy:
    return k8s.V1PodFailurePolicy(
        rules=[
            # Bad input fails the same way on every retry.
            k8s.V1PodFailurePolicyRule(
                action=on_bad_input,
                on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
                    container_name=container, operator="In", values=[EXIT_BAD_INPUT]
                ),
            ),
            # SIGTERM checkpointed / a peer was lost: retry without counting against the backoff limit.
            k8s.V1PodFailurePolicyRule(
                action="Ignore",
                on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
                    container_name=container, operator="In", values=[EXIT_RETRIABLE]
                ),
            ),
            # Preemption, eviction, node drain.
            k8s.V1PodFailurePolicyRule(
                action="Ignore",
                on_pod_conditions=[
                    k8s.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")
                ],
            ),
        ]
    )


# --- the MWMS trainer --------------------------------------------------------------------------


def trainer_env(p: RenderParams) -> list:
    """The env that turns an Indexed Job pod into MWMS worker ``JOB_COMPLETION_INDEX``."""
    return [
        k8s.V1EnvVar(name=cluster_lib.NUM_WORKERS, value=str(p.workers)),
        # The Job's own name, from the label the Job controller sets (survives kustomize renames).
        k8s.V1EnvVar(
            name=cluster_lib.JOB_NAME,
            value_from=k8s.V1EnvVarSource(
                field_ref=k8s.V1ObjectFieldSelector(field_path="metadata.labels['batch.kubernetes.io/job-name']")
            ),
        ),
        k8s.V1EnvVar(name=cluster_lib.SERVICE, value=p.service_name),
        k8s.V1EnvVar(name=cluster_lib.WORKER_PORT, value=str(cluster_lib.DEFAULT_PORT)),
        *_common_env(),
    ]


def trainer_command(p: RenderParams) -> tuple[list, list]:
    return ["tff-lab"], ["train-dist", f"{EXPERIMENT_MOUNT}/experiment.yaml", "--out", p.run_dir, "--verbose"]


def _trainer_pod_spec(
    p: RenderParams,
    gpus: int,
    *,
    container_name: str = CONTAINER,
    restart_policy: Optional[str] = "Never",
    subdomain: Optional[str] = None,
) -> k8s.V1PodSpec:
    volumes, mounts = _volumes(p, configmap_name(p), shm=gpus > 0)
    command, args = trainer_command(p)
    container = k8s.V1Container(
        name=container_name,
        image=p.image,
        image_pull_policy=p.image_pull_policy,
        command=command,
        args=args,
        env=trainer_env(p) if subdomain else _common_env(),
        ports=[
            k8s.V1ContainerPort(
                name="tfjob-port" if container_name == TFJOB_CONTAINER else "grpc",
                container_port=cluster_lib.DEFAULT_PORT,
                protocol="TCP",
            )
        ],
        resources=_resources(p, gpus),
        security_context=_container_security(),
        volume_mounts=mounts,
    )
    return k8s.V1PodSpec(
        containers=[container],
        volumes=volumes,
        restart_policy=restart_policy,
        subdomain=subdomain,
        security_context=_pod_security(),
        termination_grace_period_seconds=p.termination_grace_seconds,
        enable_service_links=False,
        automount_service_account_token=False,
    )


def trainer_job(p: RenderParams) -> k8s.V1Job:
    labels = _labels(p, "trainer")
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=_meta(p.job_name, labels),
        spec=k8s.V1JobSpec(
            completion_mode="Indexed",
            completions=p.workers,
            parallelism=p.workers,
            backoff_limit_per_index=p.backoff_limit_per_index,
            max_failed_indexes=0,  # MWMS needs every worker: one index out of retries fails the job
            pod_failure_policy=_failure_policy("FailJob"),
            pod_replacement_policy="Failed",  # a replacement starts after the old pod is gone (same hostname)
            ttl_seconds_after_finished=p.ttl_seconds_after_finished,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=_trainer_pod_spec(p, p.gpus_per_worker, subdomain=p.service_name),
            ),
        ),
    )


def tfjob(p: RenderParams) -> dict:
    """A Kubeflow ``kubeflow.org/v1`` TFJob: the operator sets TF_CONFIG; worker 0 is the chief."""
    pod = _trainer_pod_spec(p, p.gpus_per_worker, container_name=TFJOB_CONTAINER, restart_policy=None)
    labels = _labels(p, "trainer")
    template = k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": to_plain(_meta(p.job_name, labels)),
        "spec": {
            "runPolicy": {
                "backoffLimit": p.backoff_limit_per_index * p.workers,
                "cleanPodPolicy": "Running",
                "ttlSecondsAfterFinished": p.ttl_seconds_after_finished,
            },
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": p.workers,
                    # ExitCode: 1-127 are permanent (exit 2: bad input), 128-255 are retried (143).
                    "restartPolicy": "ExitCode",
                    "template": to_plain(template),
                }
            },
        },
    }


# --- the sweep -----------------------------------------------------------------------------------


def sweep_job(p: RenderParams) -> k8s.V1Job:
    labels = _labels(p, "sweep")
    volumes, mounts = _volumes(p, f"{p.name}-sweep", shm=False)
    container = k8s.V1Container(
        name=CONTAINER,
        image=p.image,
        image_pull_policy=p.image_pull_policy,
        command=["tff-lab"],
        args=["sweep", f"{EXPERIMENT_MOUNT}/sweep.yaml", "--out", f"{ARTIFACTS_MOUNT}/sweeps"],
        env=_common_env(),
        resources=_resources(dataclasses.replace(p, cpu="2", memory="8Gi"), 0),
        security_context=_container_security(),
        volume_mounts=mounts,
    )
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=_meta(p.sweep_job_name, labels),
        spec=k8s.V1JobSpec(
            completion_mode="Indexed",
            completions=p.sweep_points,
            parallelism=min(p.sweep_points, p.sweep_parallelism),
            backoff_limit_per_index=p.backoff_limit_per_index,  # one experiment's failure spares the others
            pod_failure_policy=_failure_policy("FailIndex"),
            pod_replacement_policy="Failed",
            ttl_seconds_after_finished=p.ttl_seconds_after_finished,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(
                    containers=[container],
                    volumes=volumes,
                    restart_policy="Never",
                    security_context=_pod_security(),
                    termination_grace_period_seconds=p.termination_grace_seconds,
                    enable_service_links=False,
                    automount_service_account_token=False,
                ),
            ),
        ),
    )


def sweep_network_policy(p: RenderParams) -> k8s.V1NetworkPolicy:
    """Each sweep pod trains alone (its TFF worker is on loopback): no traffic in or out."""
    return network_policy(p, p.sweep_job_name, "sweep")


# --- the federated overlay: TFF workers + a driver -------------------------------------------------


def tff_workers_service(p: RenderParams) -> k8s.V1Service:
    return k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=_meta(p.service_name, _labels(p, "tff-worker")),
        spec=k8s.V1ServiceSpec(
            cluster_ip="None",  # headless: <set>-<i>.<service> resolves to worker i
            # Only Ready workers get DNS records; the driver's init container waits for all of them.
            publish_not_ready_addresses=False,
            selector=_selector(p, "tff-worker"),
            ports=[
                k8s.V1ServicePort(name="tff-grpc", port=TFF_WORKER_PORT, target_port=TFF_WORKER_PORT, protocol="TCP")
            ],
        ),
    )


def tff_worker_command() -> tuple[list, list]:
    return ["tff-lab"], ["tff-worker", "--port", str(TFF_WORKER_PORT)]


def tff_worker_statefulset(p: RenderParams) -> k8s.V1StatefulSet:
    """TFF's C++ executor service (worker_binary), one per pod, with stable names for the driver."""
    labels = _labels(p, "tff-worker")
    command, args = tff_worker_command()
    probe = dict(tcp_socket=k8s.V1TCPSocketAction(port=TFF_WORKER_PORT), timeout_seconds=5)
    container = k8s.V1Container(
        name=TFF_WORKER_CONTAINER,
        image=p.image,
        image_pull_policy=p.image_pull_policy,
        command=command,
        args=args,
        env=_common_env(),
        ports=[k8s.V1ContainerPort(name="tff-grpc", container_port=TFF_WORKER_PORT, protocol="TCP")],
        readiness_probe=k8s.V1Probe(**probe, period_seconds=5, failure_threshold=3),
        # A worker busy with a round still accepts connections; only a dead listener restarts it.
        liveness_probe=k8s.V1Probe(**probe, initial_delay_seconds=30, period_seconds=20, failure_threshold=6),
        resources=_resources(p, p.tff_worker_gpus),
        security_context=_container_security(),
        volume_mounts=[k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
    )
    pod = k8s.V1PodSpec(
        containers=[container],
        volumes=[k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource())],
        security_context=_pod_security(),
        termination_grace_period_seconds=30,
        enable_service_links=False,
        automount_service_account_token=False,
        tolerations=[_GPU_TOLERATION] if p.tff_worker_gpus > 0 else None,
    )
    return k8s.V1StatefulSet(
        api_version="apps/v1",
        kind="StatefulSet",
        metadata=_meta(p.tff_worker_set, labels),
        spec=k8s.V1StatefulSetSpec(
            service_name=p.service_name,
            replicas=p.tff_workers,
            pod_management_policy="Parallel",  # workers are independent: start them all at once
            selector=k8s.V1LabelSelector(match_labels=_selector(p, "tff-worker")),
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod),
        ),
    )


def driver_command(p: RenderParams) -> tuple[list, list]:
    addresses = ",".join(p.tff_worker_addresses)
    # --resume: a retried pod continues from the last checkpoint on the volume (fresh if there is none).
    return ["tff-lab"], [
        "run",
        f"{EXPERIMENT_MOUNT}/experiment.yaml",
        "--out",
        p.federated_run_dir,
        "--resume",
        "--set",
        f"training.worker_addresses=[{addresses}]",
    ]


def driver_job(p: RenderParams) -> k8s.V1Job:
    """``tff-lab run`` with the workers' DNS names; an init container waits until every worker listens."""
    labels = _labels(p, "driver")
    volumes, mounts = _volumes(p, configmap_name(p), shm=False)
    command, args = driver_command(p)
    wait = k8s.V1Container(
        name="wait-for-workers",
        image=p.image,
        image_pull_policy=p.image_pull_policy,
        command=["tff-lab"],
        args=["k8s", "wait", *p.tff_worker_addresses, "--timeout", str(p.workers_wait_seconds)],
        env=_common_env(),
        security_context=_container_security(),
        # ~90 MB and ~1 CPU-second to start (Python, numpy); then it polls once a second.
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": "250m", "memory": "256Mi"}, limits={"cpu": "250m", "memory": "256Mi"}
        ),
    )
    driver = k8s.V1Container(
        name=DRIVER_CONTAINER,
        image=p.image,
        image_pull_policy=p.image_pull_policy,
        command=command,
        args=args,
        env=_common_env(),
        resources=_resources(dataclasses.replace(p, cpu="2", memory="8Gi"), 0),
        security_context=_container_security(),
        volume_mounts=mounts,
    )
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=_meta(p.driver_job_name, labels),
        spec=k8s.V1JobSpec(
            completions=1,
            parallelism=1,
            backoff_limit=p.backoff_limit_per_index,
            pod_failure_policy=_failure_policy("FailJob", DRIVER_CONTAINER),
            pod_replacement_policy="Failed",
            ttl_seconds_after_finished=p.ttl_seconds_after_finished,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(
                    init_containers=[wait],
                    containers=[driver],
                    volumes=volumes,
                    restart_policy="Never",
                    security_context=_pod_security(),
                    termination_grace_period_seconds=p.termination_grace_seconds,
                    enable_service_links=False,
                    automount_service_account_token=False,
                ),
            ),
        ),
    )


def tff_worker_network_policy(p: RenderParams) -> k8s.V1NetworkPolicy:
    """Only the driver reaches a worker, on its port; workers open no connections."""
    return network_policy(
        p,
        p.tff_worker_set,
        "tff-worker",
        ingress=[k8s.V1NetworkPolicyIngressRule(_from=[_peer(p, "driver")], ports=_tcp(TFF_WORKER_PORT))],
    )


def driver_network_policy(p: RenderParams) -> k8s.V1NetworkPolicy:
    """The driver reaches the workers' port and DNS; nothing reaches the driver."""
    return network_policy(
        p,
        p.driver_job_name,
        "driver",
        egress=[k8s.V1NetworkPolicyEgressRule(to=[_peer(p, "tff-worker")], ports=_tcp(TFF_WORKER_PORT)), _DNS_EGRESS],
    )


def federated_objects(p: RenderParams) -> list[dict]:
    """What the federated overlay adds to the base (the Service replaces the base's)."""
    return [
        to_plain(o)
        for o in (tff_worker_statefulset(p), driver_job(p), tff_worker_network_policy(p), driver_network_policy(p))
    ]


# --- the predict overlay: an Indexed Job of shards + a merge Job ------------------------------------


def predictions_pvc(p: RenderParams) -> k8s.V1PersistentVolumeClaim:
    # ReadWriteMany: the shards' pods write their parts from any node, the merge pod reads them all.
    return k8s.V1PersistentVolumeClaim(
        api_version="v1",
        kind="PersistentVolumeClaim",
        metadata=_meta(f"{p.name}-predictions", _labels(p, "storage")),
        spec=k8s.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteMany"], resources=k8s.V1VolumeResourceRequirements(requests={"storage": p.storage})
        ),
    )


def _predict_volumes(p: RenderParams, *, artifacts: bool) -> tuple[list, list]:
    volumes = [
        k8s.V1Volume(
            name="predictions",
            persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=f"{p.name}-predictions"),
        ),
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()),
    ]
    mounts = [
        k8s.V1VolumeMount(name="predictions", mount_path=PREDICTIONS_MOUNT),
        k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
    ]
    if artifacts:  # the model and the input: read-only, in the volume source and in the mount
        volumes.insert(
            0,
            k8s.V1Volume(
                name="artifacts",
                persistent_volume_claim=(
                    k8s.V1PersistentVolumeClaimVolumeSource(claim_name=pvc_name(p), read_only=True)
                ),
            ),
        )
        mounts.insert(0, k8s.V1VolumeMount(name="artifacts", mount_path=ARTIFACTS_MOUNT, read_only=True))
    return volumes, mounts


def predict_command(p: RenderParams) -> tuple[list, list]:
    """Shard ``$JOB_COMPLETION_INDEX`` of ``predict_shards`` (the index comes from the Job controller)."""
    return ["tff-lab"], [
        "predict",
        p.predict_model_path,
        p.predict_input,
        "--out",
        p.predict_parts_dir,
        "--num-shards",
        str(p.predict_shards),
        "--batch-size",
        str(p.predict_batch_size),
        "--quiet",
    ]


def predict_merge_command(p: RenderParams) -> tuple[list, list]:
    return ["tff-lab"], [
        "predict-merge",
        p.predict_parts_dir,
        "--num-shards",
        str(p.predict_shards),
        "--out",
        p.predict_output,
        "--wait",
        str(p.predict_wait_seconds),
    ]


def _batch_pod(p: RenderParams, container: k8s.V1Container, volumes: list) -> k8s.V1PodSpec:
    return k8s.V1PodSpec(
        containers=[container],
        volumes=volumes,
        restart_policy="Never",
        security_context=_pod_security(),
        termination_grace_period_seconds=30,
        enable_service_links=False,
        automount_service_account_token=False,
    )


def predict_job(p: RenderParams) -> k8s.V1Job:
    labels = _labels(p, "predict")
    volumes, mounts = _predict_volumes(p, artifacts=True)
    command, args = predict_command(p)
    container = k8s.V1Container(
        name=PREDICT_CONTAINER,
        image=p.image,
        image_pull_policy=p.image_pull_policy,
        command=command,
        args=args,
        env=_common_env(),
        resources=_resources(dataclasses.replace(p, cpu="2", memory="4Gi"), 0),
        security_context=_container_security(),
        volume_mounts=mounts,
    )
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=_meta(p.predict_job_name, labels),
        spec=k8s.V1JobSpec(
            completion_mode="Indexed",
            completions=p.predict_shards,
            parallelism=min(p.predict_shards, p.predict_parallelism),
            backoff_limit_per_index=p.backoff_limit_per_index,
            max_failed_indexes=0,  # a shard out of retries leaves the merge nothing to merge: fail the job
            pod_failure_policy=_failure_policy("FailJob", PREDICT_CONTAINER),
            pod_replacement_policy="Failed",
            ttl_seconds_after_finished=p.ttl_seconds_after_finished,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels), spec=_batch_pod(p, container, volumes)
            ),
        ),
    )


def predict_merge_job(p: RenderParams) -> k8s.V1Job:
    """A second Job, applied with the first: it waits (``--wait``) until every part's manifest is on the
    volume, then checks and joins them. Kubernetes has no Job-after-Job ordering and the shards' pods
    cannot know they are the last one (their peers may be retried), so the merge polls the volume."""
    labels = _labels(p, "predict-merge")
    volumes, mounts = _predict_volumes(p, artifacts=False)
    command, args = predict_merge_command(p)
    container = k8s.V1Container(
        name=MERGE_CONTAINER,
        image=p.image,
        image_pull_policy=p.image_pull_policy,
        command=command,
        args=args,
        env=_common_env(),
        security_context=_container_security(),
        volume_mounts=mounts,
        # It holds every prediction once (rows x classes x 4 bytes); no TensorFlow is imported.
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": "500m", "memory": "2Gi"}, limits={"cpu": "1", "memory": "2Gi"}
        ),
    )
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=_meta(p.predict_merge_job_name, labels),
        spec=k8s.V1JobSpec(
            completions=1,
            parallelism=1,
            backoff_limit=p.backoff_limit_per_index,
            pod_failure_policy=_failure_policy("FailJob", MERGE_CONTAINER),  # exit 2: a refusal is final
            pod_replacement_policy="Failed",
            ttl_seconds_after_finished=p.ttl_seconds_after_finished,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels), spec=_batch_pod(p, container, volumes)
            ),
        ),
    )


def predict_objects(p: RenderParams) -> list[dict]:
    """What the predict overlay adds to the base; its pods talk to nobody (deny-all NetworkPolicies)."""
    return [
        to_plain(o)
        for o in (
            predictions_pvc(p),
            predict_job(p),
            predict_merge_job(p),
            network_policy(p, p.predict_job_name, "predict"),
            network_policy(p, p.predict_merge_job_name, "predict-merge"),
        )
    ]


# --- overlays --------------------------------------------------------------------------------


BASE_FILES = ("configmap.yaml", "pvc.yaml", "service.yaml", "job.yaml", "networkpolicy.yaml")


def base_objects(p: RenderParams) -> list[dict]:
    """The base's objects, in BASE_FILES order, without a namespace (kustomize adds it)."""
    return [
        to_plain(o)
        for o in (
            experiment_configmap(p),
            artifacts_pvc(p),
            headless_service(p),
            trainer_job(p),
            trainer_network_policy(p),
        )
    ]


_GPU_TOLERATION = k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")


def _cpu_resources(p: RenderParams) -> dict:
    return to_plain(
        k8s.V1ResourceRequirements(requests={"cpu": "1", "memory": "2Gi"}, limits={"cpu": "2", "memory": "4Gi"})
    )


def _find(objs: list[dict], kind: str) -> dict:
    return next(o for o in objs if o["kind"] == kind)


def _without(objs: list[dict], *kinds: str) -> list[dict]:
    return [o for o in objs if o["kind"] not in kinds]


def render_overlay(p: RenderParams, overlay: str) -> list[dict]:
    """The objects ``kubectl apply -k k8s/overlays/<overlay>`` creates (computed in Python)."""
    p.validate()
    if overlay not in OVERLAYS:
        raise ConfigError("--overlay", f"unknown overlay {overlay!r}; expected one of: {', '.join(OVERLAYS)}")
    objs = base_objects(p)
    if overlay == "gpu":
        if p.gpus_per_worker > 0:
            pod = _find(objs, "Job")["spec"]["template"]["spec"]
            pod["tolerations"] = [to_plain(_GPU_TOLERATION)]
    elif overlay == "cpu":
        _find(objs, "PersistentVolumeClaim")["spec"]["accessModes"] = ["ReadWriteOnce"]
        pod = _find(objs, "Job")["spec"]["template"]["spec"]
        pod["containers"][0]["resources"] = _cpu_resources(p)
        pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "dshm"]
        pod["containers"][0]["volumeMounts"] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] != "dshm"]
    elif overlay == "tfjob":
        # The trainer NetworkPolicy stays: the TFJob's pods carry the same labels and port.
        objs = _without(objs, "Job", "Service") + [tfjob(p)]
        if p.gpus_per_worker > 0:
            objs[-1]["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["tolerations"] = [
                to_plain(_GPU_TOLERATION)
            ]
    elif overlay == "sweep":
        if not p.sweep_yaml:
            raise ConfigError("--sweep", "the sweep overlay needs a sweep grid (--sweep GRID.yaml)")
        objs = _without(objs, "Job", "Service", "NetworkPolicy")
        objs += [to_plain(sweep_configmap(p)), to_plain(sweep_job(p)), to_plain(sweep_network_policy(p))]
    elif overlay == "federated":
        objs = _without(objs, "Job", "Service", "NetworkPolicy") + [to_plain(tff_workers_service(p))]
        objs += federated_objects(p)
    elif overlay == "predict":
        objs = _without(objs, "Job", "Service", "NetworkPolicy") + predict_objects(p)
    for o in objs:
        o["metadata"]["namespace"] = p.namespace
    return objs


def _delete_patch(obj: dict) -> dict:
    return {
        "$patch": "delete",
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {"name": obj["metadata"]["name"]},
    }


def _target(obj: dict) -> dict:
    group, _, version = obj["apiVersion"].rpartition("/")
    return {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the experiment files in ConfigMaps) as readable ``|`` blocks."""


def _str_representer(dumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def _dump(objs) -> str:
    """One YAML document per object."""
    if isinstance(objs, dict):
        objs = [objs]
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def _dump_one(data) -> str:
    """A single YAML document (e.g. a JSON 6902 patch: a list of operations)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


HEADER = (
    "# Generated by `tff-lab k8s render` (tff_lab/deploy/render.py); do not edit by hand:\n"
    "# re-render instead (a test keeps this tree equal to the renderer's output).\n"
)


def tree_files(p: RenderParams, overlays=OVERLAYS, command: str = "") -> dict[str, str]:
    """Relative path -> file text of the kustomize tree."""
    p.validate()
    for o in overlays:
        if o not in OVERLAYS:
            raise ConfigError("--overlay", f"unknown overlay {o!r}; expected one of: {', '.join(OVERLAYS)}")
    header = HEADER + (f"#   {command}\n" if command else "")
    base = base_objects(p)
    files = {}
    for obj, fname in zip(base, BASE_FILES):
        files[f"base/{fname}"] = header + _dump(obj)
    files["base/kustomization.yaml"] = header + _dump(
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": p.namespace,
            "resources": list(BASE_FILES),
        }
    )
    job, pvc, svc = _find(base, "Job"), _find(base, "PersistentVolumeClaim"), _find(base, "Service")
    for overlay in overlays:
        # The namespace again: kustomize applies it to this level's own resources too.
        kust: dict = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": p.namespace,
            "resources": ["../../base"],
        }
        extra: dict[str, str] = {}  # file name -> YAML text
        if overlay == "gpu":
            if p.gpus_per_worker > 0:
                kust["patches"] = [{"path": "gpu-tolerations.yaml", "target": _target(job)}]
                extra["gpu-tolerations.yaml"] = _dump_one(
                    [{"op": "add", "path": "/spec/template/spec/tolerations", "value": [to_plain(_GPU_TOLERATION)]}]
                )
        elif overlay == "cpu":
            pod = job["spec"]["template"]["spec"]
            ops = [{"op": "replace", "path": "/spec/template/spec/containers/0/resources", "value": _cpu_resources(p)}]
            # Drop the shared-memory volume (NCCL only); highest index first so indices stay valid.
            mounts = pod["containers"][0]["volumeMounts"]
            ops += [
                {"op": "remove", "path": f"/spec/template/spec/containers/0/volumeMounts/{i}"}
                for i in reversed(range(len(mounts)))
                if mounts[i]["name"] == "dshm"
            ]
            ops += [
                {"op": "remove", "path": f"/spec/template/spec/volumes/{i}"}
                for i in reversed(range(len(pod["volumes"])))
                if pod["volumes"][i]["name"] == "dshm"
            ]
            extra["cpu-job.yaml"] = _dump_one(ops)
            extra["cpu-pvc.yaml"] = _dump_one(
                [{"op": "replace", "path": "/spec/accessModes", "value": ["ReadWriteOnce"]}]
            )
            kust["patches"] = [
                {"path": "cpu-job.yaml", "target": _target(job)},
                {"path": "cpu-pvc.yaml", "target": _target(pvc)},
            ]
        else:  # tfjob, sweep, federated, predict: replace the MWMS Job (and its Service / NetworkPolicy)
            if overlay == "sweep" and not p.sweep_yaml:
                raise ConfigError("--sweep", "the sweep overlay needs a sweep grid (--sweep GRID.yaml)")
            keys = {(o["kind"], o["metadata"]["name"]) for o in base}
            wanted = render_overlay(p, overlay)
            added = [o for o in wanted if (o["kind"], o["metadata"]["name"]) not in keys]
            for o in added:
                del o["metadata"]["namespace"]  # kustomize sets it
            extra[f"{overlay}.yaml"] = _dump(added)
            kust["resources"].append(f"{overlay}.yaml")
            kust["patches"] = []
            wanted_keys = {(o["kind"], o["metadata"]["name"]) for o in wanted}
            for obj in base:
                kind, name = obj["kind"], obj["metadata"]["name"]
                if (kind, name) in wanted_keys:
                    continue
                # One delete patch per file: kustomize 5.5 panics on several in one file.
                fname = f"delete-{kind.lower()}.yaml"
                extra[fname] = _dump_one(_delete_patch(obj))
                kust["patches"].append({"path": fname})
            if overlay == "federated":
                # Same name, other pods: the headless Service now fronts the TFF workers.
                new_svc = _find(wanted, "Service")
                extra["service-tff-workers.yaml"] = _dump_one(
                    [
                        {"op": "replace", "path": "/metadata/labels", "value": new_svc["metadata"]["labels"]},
                        {"op": "replace", "path": "/spec", "value": new_svc["spec"]},
                    ]
                )
                kust["patches"].append({"path": "service-tff-workers.yaml", "target": _target(svc)})
        for fname, text in extra.items():
            files[f"overlays/{overlay}/{fname}"] = header + text
        files[f"overlays/{overlay}/kustomization.yaml"] = header + _dump(kust)
    return files


def write_tree(p: RenderParams, out_dir, overlays=OVERLAYS, command: str = "") -> list[Path]:
    """Writes the kustomize tree under ``out_dir`` (atomically per file); returns the paths."""
    from tff_lab.fileio import atomic_write_text

    out = Path(out_dir)
    written = []
    for rel, text in tree_files(p, overlays, command).items():
        atomic_write_text(out / rel, text)
        written.append(out / rel)
    return written
