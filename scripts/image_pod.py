"""Turns one container of a rendered manifest in k8s/ into `podman run` arguments (scripts/image_test.sh).

Run inside the built image (it has Python and PyYAML), as root, with the repository's k8s/ mounted at
/k8s and the results directory at /out. Prints the arguments NUL-separated: podman run options, the
image, then the container's args (its `command` becomes --entrypoint). What the kubelet and the
control plane add is added here the same way:
  - env: the container's env, $(VAR) expanded, downward-API labels (job-name) resolved,
    JOB_COMPLETION_INDEX for an Indexed Job; the pod's hostname (<job>-<i>, <statefulset>-<i>);
  - securityContext (pod, then container): runAsUser/runAsGroup -> --user, fsGroup -> --group-add
    and the group owning the PVC directory, readOnlyRootFilesystem -> --read-only, capabilities.drop
    -> --cap-drop, allowPrivilegeEscalation false -> no-new-privileges, runAsNonRoot checked;
  - volumes: ConfigMap keys written to files (mounted read-only, as Kubernetes does), the PVC as a
    host directory shared by the pods, emptyDir as tmpfs (medium Memory at /dev/shm: --shm-size);
  - resources.limits: memory -> --memory, cpu -> --cpus (capped at this machine's CPU count);
  - networking: pods of the Indexed Job (subdomain) and of the StatefulSet (serviceName) get fixed
    addresses on one podman network and every pod resolves their DNS names <pod>.<service> (--add-host),
    as the headless Service makes them resolve in a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import yaml

VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# Fixed addresses on the test network: pods of the same object get consecutive ones.
IP_BASE = {"Job": 10, "StatefulSet": 20}


def load_objects(dirs: list[str]) -> dict[tuple[str, str], dict]:
    objs = {}
    for d in dirs:
        for f in sorted(Path(d).glob("*.yaml")):
            if f.name == "kustomization.yaml" or f.name.startswith("delete-"):
                continue
            for doc in yaml.safe_load_all(f.read_text()):
                if doc and "kind" in doc:
                    objs[(doc["kind"], doc["metadata"]["name"])] = doc
    return objs


def pods(obj: dict) -> tuple[list[str], str]:
    """The pod DNS hostnames of a Job with a subdomain or of a StatefulSet, and their service."""
    name, spec = obj["metadata"]["name"], obj["spec"]
    if obj["kind"] == "StatefulSet":
        return [f"{name}-{i}" for i in range(int(spec.get("replicas", 1)))], spec["serviceName"]
    if obj["kind"] == "Job" and spec["template"]["spec"].get("subdomain"):
        return [f"{name}-{i}" for i in range(int(spec.get("completions", 1)))], spec["template"]["spec"]["subdomain"]
    return [], ""


def ip_of(obj: dict, index: int, prefix: str) -> str:
    return f"{prefix}.{IP_BASE.get(obj['kind'], 30) + index}"


def set_dotted(doc: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        doc = doc.setdefault(p, {})
    doc[leaf] = value


def quantity_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for u, f in units.items():
        if q.endswith(u):
            return int(float(q[: -len(u)]) * f)
    return int(q)


def quantity_cpus(q: str) -> float:
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", required=True, help="comma-separated manifest directories")
    ap.add_argument("kind")
    ap.add_argument("name")
    ap.add_argument("container", help="container name (or init container name)")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--image", required=True)
    ap.add_argument("--out-host", required=True, help="the results directory, as the host sees it")
    ap.add_argument("--out-mnt", default="/out", help="the same directory, as this process sees it")
    ap.add_argument("--pod-dir", required=True, help="this pod's directory, relative to the results directory")
    ap.add_argument("--network", required=True)
    ap.add_argument("--ip-prefix", required=True, help="e.g. 10.213.77 (a /24 network)")
    ap.add_argument(
        "--hosts", action="append", default=[], help="Kind/name whose pods' DNS names this pod resolves (repeatable)"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        dest="sets",
        help="CONFIGMAP_KEY:dotted.path=YAML_VALUE, applied to that ConfigMap file (repeatable)",
    )
    ap.add_argument(
        "--volume",
        action="append",
        default=[],
        help="VOLUME_NAME=HOST_DIR: mount a host directory instead of that pod volume",
    )
    ap.add_argument("--args", default=None, help="JSON list replacing the container's args")
    ap.add_argument("--podman-name", required=True, help="the podman container name")
    a = ap.parse_args()

    objs = load_objects(a.objects.split(","))
    obj = objs[(a.kind, a.name)]
    spec = obj["spec"]
    pod = spec["template"]["spec"]
    container = next(
        (c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == a.container), None
    )
    if container is None:
        raise SystemExit(f"no container {a.container} in {a.kind}/{a.name}")
    out_host, out_mnt = Path(a.out_host), Path(a.out_mnt)
    pod_mnt = out_mnt / a.pod_dir
    pod_mnt.mkdir(parents=True, exist_ok=True)

    opts: list[str] = ["--name", a.podman_name, "--label", "tff-lab-image-test=1"]

    # Identity and hardening.
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup", uid))
    if (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")) and not uid:
        raise SystemExit("runAsNonRoot without a non-zero runAsUser: the image's USER would have to be checked")
    if uid is not None:
        opts += ["--user", f"{uid}:{gid}"]
    fs_group = psc.get("fsGroup")
    if fs_group is not None:
        opts += ["--group-add", str(fs_group)]
    if csc.get("readOnlyRootFilesystem"):
        opts += ["--read-only"]
    for cap in csc.get("capabilities", {}).get("drop", []):
        opts += ["--cap-drop", cap]
    if csc.get("allowPrivilegeEscalation") is False:
        opts += ["--security-opt", "no-new-privileges"]
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        opts += ["--memory", str(quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        opts += ["--cpus", f"{min(quantity_cpus(limits['cpu']), os.cpu_count() or 1):g}"]

    # Network identity.
    own_hosts, service = pods(obj)
    hostname = own_hosts[a.index] if own_hosts else f"{a.name}-{a.index}"
    opts += ["--hostname", hostname, "--network", a.network]
    if own_hosts:
        opts += ["--ip", ip_of(obj, a.index, a.ip_prefix)]
    for ref in a.hosts:
        kind, _, name = ref.partition("/")
        other = objs[(kind, name)]
        names, svc = pods(other)
        for i, h in enumerate(names):
            opts += ["--add-host", f"{h}.{svc}:{ip_of(other, i, a.ip_prefix)}"]

    # Env, as the kubelet resolves it.
    labels = {**spec["template"].get("metadata", {}).get("labels", {})}
    env: dict[str, str] = {}
    if a.kind == "Job":
        labels["batch.kubernetes.io/job-name"] = labels["job-name"] = a.name
        if spec.get("completionMode") == "Indexed":
            env["JOB_COMPLETION_INDEX"] = str(a.index)
            labels["batch.kubernetes.io/job-completion-index"] = str(a.index)
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), str(e["value"]))
        else:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            m = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
            if path == "metadata.name":
                env[e["name"]] = hostname
            elif m:
                env[e["name"]] = labels.get(m.group(1), "")
            else:
                raise SystemExit(f"unsupported fieldRef {path}")
    for k, v in env.items():
        opts += ["--env", f"{k}={v}"]

    # Volumes.
    overrides = dict(v.split("=", 1) for v in a.volume)
    sets: dict[str, list[tuple[str, object]]] = {}
    for s in a.sets:
        key, _, rest = s.partition(":")
        dotted, _, value = rest.partition("=")
        sets.setdefault(key, []).append((dotted, yaml.safe_load(value)))
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        vol, path = volumes[m["name"]], m["mountPath"]
        ro = ":ro" if m.get("readOnly") else ""
        if m["name"] in overrides:
            ro = ":ro" if m.get("readOnly") or "configMap" in vol else ""
            opts += ["-v", f"{overrides[m['name']]}:{path}{ro}"]
        elif "configMap" in vol:
            cm = objs[("ConfigMap", vol["configMap"]["name"])]
            d = pod_mnt / f"configmap-{m['name']}"
            d.mkdir(parents=True, exist_ok=True)
            for key, text in cm.get("data", {}).items():
                if key in sets:
                    doc = yaml.safe_load(text)
                    for dotted, value in sets[key]:
                        set_dotted(doc, dotted, value)
                    text = yaml.safe_dump(doc, sort_keys=False)
                (d / key).write_text(text)
                (d / key).chmod(0o644)
            opts += ["-v", f"{out_host / a.pod_dir / d.name}:{path}:ro"]  # ConfigMap volumes are read-only
        elif "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            d = out_mnt / f"pvc-{claim}"
            d.mkdir(parents=True, exist_ok=True)
            if fs_group is not None:  # what fsGroup does to a volume: group-owned, group-writable, setgid
                os.chown(d, 0, int(fs_group))
                d.chmod(0o2775)
            opts += ["-v", f"{out_host / d.name}:{path}{ro}"]
        elif "emptyDir" in vol:
            if vol["emptyDir"].get("medium") == "Memory" and path == "/dev/shm":
                opts += ["--shm-size", str(quantity_bytes(vol["emptyDir"].get("sizeLimit", "64Mi")))]
            else:
                opts += ["--mount", f"type=tmpfs,destination={path},tmpfs-mode=1777"]
        else:
            raise SystemExit(f"unsupported volume {vol}")

    command = container.get("command")
    if command:
        opts += ["--entrypoint", json.dumps(command)]
    args = (
        json.loads(a.args)
        if a.args is not None
        else [VAR_REF.sub(lambda mm: env.get(mm.group(1), mm.group(0)), x) for x in container.get("args", [])]
    )
    sys.stdout.write("\0".join([*opts, a.image, *args]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
