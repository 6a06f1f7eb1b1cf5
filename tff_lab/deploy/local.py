"""Run a rendered Indexed Job's pods as local processes, the way Kubernetes would start them.

No cluster runs here, so this is how the manifests are exercised for real: each pod's exact
``command``/``args`` and ``env`` from the rendered Job, with what the control plane adds
(``JOB_COMPLETION_INDEX``, the downward-API label ``batch.kubernetes.io/job-name``, ``$(VAR)``
expansion), volumes mapped to local directories (the ConfigMap's keys written as files, the PVC
and the /tmp emptyDir as directories) and the pods' DNS names mapped to localhost ports through
``TFF_LAB_HOST_MAP``. :class:`LocalIndexedJob` also plays the Job controller: a failed pod is
replaced according to the Job's ``podFailurePolicy`` and ``backoffLimitPerIndex``; a pod's init
containers run to completion before its container starts.

:class:`LocalStatefulSet` runs a StatefulSet's pods (the federated overlay's TFF workers). Pods have
their own IPs and local processes share one, so each pod's container port becomes a free local port:
in its ``--port`` argument and in :attr:`LocalStatefulSet.address_map` (``<pod>.<service>:<port>`` ->
``localhost:<local port>``), with which a client Job's arguments are rewritten (``address_map=``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from tff_lab.distributed import cluster as cluster_lib

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def find(objs: list[dict], kind: str, name: Optional[str] = None) -> dict:
    for o in objs:
        if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name):
            return o
    raise KeyError(f"no {kind} {name or ''} in the rendered objects")


@dataclasses.dataclass
class PodOutcome:
    index: int
    exit_code: int
    action: str  # "Succeeded", "Ignore", "Count", "FailJob", "FailIndex"


class LocalIndexedJob:
    """An Indexed Job from rendered manifests (``objs``), its pods run as local processes."""

    def __init__(
        self,
        objs: list[dict],
        job_name: str,
        root: Path,
        *,
        configmap_overrides: Optional[dict] = None,
        python: str = sys.executable,
        extra_env: Optional[dict] = None,
        address_map: Optional[dict] = None,
    ):
        self.objs = objs
        self.address_map = dict(address_map or {})
        self.job = find(objs, "Job", job_name)
        self.spec = self.job["spec"]
        self.pod = self.spec["template"]["spec"]
        self.container = self.pod["containers"][0]
        self.root = Path(root)
        self.python = python
        self.extra_env = dict(extra_env or {})
        self.completions = int(self.spec["completions"])
        self.host_map = ""
        if self.pod.get("subdomain"):
            import portpicker

            ports = [portpicker.pick_unused_port() for _ in range(self.completions)]
            hosts = cluster_lib.indexed_job_hosts(self.job["metadata"]["name"], self.pod["subdomain"], self.completions)
            self.host_map = ",".join(f"{h}=localhost:{p}" for h, p in zip(hosts, ports))
        self.mounts = self._materialize_volumes(configmap_overrides or {})
        self.procs: dict[int, subprocess.Popen] = {}
        self.attempts: dict[int, int] = {i: 0 for i in range(self.completions)}
        self.failures_counted: dict[int, int] = {i: 0 for i in range(self.completions)}
        self.history: list[PodOutcome] = []

    # --- what the kubelet sets up --------------------------------------------------------------

    def _materialize_volumes(self, overrides: dict) -> dict[str, Path]:
        by_name = {v["name"]: v for v in self.pod.get("volumes", [])}
        mounts = {}
        for m in self.container.get("volumeMounts", []):
            vol = by_name[m["name"]]
            local = self.root / "volumes" / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol:
                cm = find(self.objs, "ConfigMap", vol["configMap"]["name"])
                for key, text in {**cm.get("data", {}), **overrides.get(cm["metadata"]["name"], {})}.items():
                    (local / key).write_text(text)
            mounts[m["mountPath"]] = local
        return mounts

    def _local_path(self, value: str, tmp_dir: Path) -> str:
        for mount, local in sorted(self.mounts.items(), key=lambda kv: -len(kv[0])):
            target = tmp_dir if mount == "/tmp" else local
            if value == mount or value.startswith(mount + "/"):
                return str(target) + value[len(mount) :]
        return value

    def pod_env(self, index: int, tmp_dir: Path) -> dict[str, str]:
        """The container env of pod ``index`` as the kubelet resolves it."""
        labels = {
            **self.spec["template"].get("metadata", {}).get("labels", {}),
            "batch.kubernetes.io/job-name": self.job["metadata"]["name"],
            "job-name": self.job["metadata"]["name"],
            "batch.kubernetes.io/job-completion-index": str(index),
        }
        env = {}
        if self.spec.get("completionMode") == "Indexed":
            env["JOB_COMPLETION_INDEX"] = str(index)  # set by the Job controller for Indexed Jobs
        for e in self.container.get("env", []):
            if "value" in e:
                env[e["name"]] = _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), e["value"])
            else:
                path = e["valueFrom"]["fieldRef"]["fieldPath"]
                m = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
                if not m:
                    raise ValueError(f"unsupported fieldRef {path}")
                env[e["name"]] = labels.get(m.group(1), "")
            env[e["name"]] = self._local_path(env[e["name"]], tmp_dir)
        if self.host_map:
            env[cluster_lib.HOST_MAP] = self.host_map
        return env

    def pod_argv(self, env: dict, tmp_dir: Path, container: Optional[dict] = None) -> list[str]:
        container = container or self.container
        argv = [*container.get("command", []), *container.get("args", [])]
        argv = [self._local_path(_VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), a), tmp_dir) for a in argv]
        argv = [_map_addresses(a, self.address_map) for a in argv]
        return _local_console_script(argv, self.python)

    # --- what the Job controller does ----------------------------------------------------------

    def tmp_dir(self, index: int) -> Path:
        return self.root / "pods" / f"{index}-{self.attempts[index]}" / "tmp"

    def start(self, index: int) -> subprocess.Popen:
        self.attempts[index] += 1
        tmp = self.tmp_dir(index)
        tmp.mkdir(parents=True, exist_ok=True)
        env = self.pod_env(index, tmp)
        full_env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "JOB_COMPLETION_INDEX")}
        full_env.update(env)
        full_env.update({"TMPDIR": str(tmp), **self.extra_env})
        for init in self.pod.get("initContainers", []):  # each to completion, in order, before the container
            with open(self.root / f"pod-{index}-{self.attempts[index]}-{init['name']}.log", "w") as init_log:
                code = subprocess.run(
                    self.pod_argv(env, tmp, init), env=full_env, stdout=init_log, stderr=subprocess.STDOUT
                ).returncode
            if code != 0:
                raise RuntimeError(f"init container {init['name']} of pod {index} exited with {code}")
        log = open(self.root / f"pod-{index}-{self.attempts[index]}.log", "w")
        self.procs[index] = subprocess.Popen(
            self.pod_argv(env, tmp), env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self.procs[index]

    def start_all(self) -> None:
        for i in range(min(self.completions, int(self.spec.get("parallelism", self.completions)))):
            self.start(i)

    def classify(self, exit_code: int) -> str:
        """The podFailurePolicy action for a container exit code (Count when no rule matches)."""
        if exit_code == 0:
            return "Succeeded"
        if exit_code < 0:  # killed by a signal: the kubelet reports 128 + signal number
            exit_code = 128 - exit_code
        for rule in (self.spec.get("podFailurePolicy") or {}).get("rules", []):
            req = rule.get("onExitCodes")
            if req and req.get("containerName", self.container["name"]) == self.container["name"]:
                hit = exit_code in req["values"]
                if (req["operator"] == "In") == hit:
                    return rule["action"]
        return "Count"

    def log_text(self, index: int, attempt: Optional[int] = None) -> str:
        return (self.root / f"pod-{index}-{attempt or self.attempts[index]}.log").read_text()

    def run(self, timeout_s: float, on_poll=None) -> dict[int, str]:
        """Drives the pods until each index succeeded or the job failed; returns index -> final state."""
        limit = int(self.spec.get("backoffLimitPerIndex", 6))
        done: dict[int, str] = {}
        pending = [i for i in range(self.completions) if i not in self.procs]
        t_end = time.monotonic() + timeout_s
        while len(done) < self.completions:
            if time.monotonic() > t_end:
                self.kill_all()
                raise TimeoutError(f"job did not finish in {timeout_s} s; states {done}")
            if on_poll is not None:
                on_poll(self)
            for i, proc in list(self.procs.items()):
                if i in done or proc.poll() is None:
                    continue
                code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
                action = self.classify(code)
                self.history.append(PodOutcome(i, code, action))
                if action == "Succeeded":
                    done[i] = "Succeeded"
                elif action in ("FailJob",) or (action == "FailIndex" and self.spec.get("maxFailedIndexes") == 0):
                    self.kill_all()
                    return {**done, i: "Failed"}
                elif action == "FailIndex":
                    done[i] = "Failed"
                else:
                    if action == "Count":
                        self.failures_counted[i] += 1
                        if self.failures_counted[i] > limit:
                            done[i] = "Failed"
                            if self.spec.get("maxFailedIndexes") == 0:
                                self.kill_all()
                                return done
                            continue
                    self.start(i)  # podReplacementPolicy Failed: the old pod is gone, start the new one
            running = sum(1 for i, p in self.procs.items() if i not in done and p.poll() is None)
            while pending and running < int(self.spec.get("parallelism", self.completions)):
                i = pending.pop(0)
                if i not in self.procs:
                    self.start(i)
                    running += 1
            time.sleep(0.2)
        return done

    def kill(self, index: int, sig=None) -> None:
        """Kills pod ``index``'s process group (the trainer and any helper it started)."""
        proc = self.procs[index]
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig or signal.SIGKILL)
            except ProcessLookupError:
                pass
            if sig is None:
                proc.wait()

    def kill_all(self) -> None:
        for i in list(self.procs):
            self.kill(i)


def _map_addresses(arg: str, address_map: dict) -> str:
    for cluster_addr, local_addr in address_map.items():
        arg = arg.replace(cluster_addr, local_addr)
    return arg


def _local_console_script(argv: list[str], python: str) -> list[str]:
    if argv and argv[0] == "tff-lab":  # the image's console script
        return [python, "-m", "tff_lab.cli", *argv[1:]]
    return argv


class LocalStatefulSet:
    """A StatefulSet's pods ``<name>-0 .. <name>-(replicas-1)`` as local processes."""

    def __init__(
        self, objs: list[dict], name: str, root: Path, *, python: str = sys.executable, extra_env: Optional[dict] = None
    ):
        import portpicker

        self.name = name
        self.sts = find(objs, "StatefulSet", name)
        spec = self.sts["spec"]
        self.pod = spec["template"]["spec"]
        self.container = self.pod["containers"][0]
        self.replicas = int(spec["replicas"])
        self.port = int(self.container["ports"][0]["containerPort"])
        self.local_ports = [portpicker.pick_unused_port() for _ in range(self.replicas)]
        self.address_map = {
            f"{name}-{i}.{spec['serviceName']}:{self.port}": f"localhost:{p}" for i, p in enumerate(self.local_ports)
        }
        self.root = Path(root)
        self.python = python
        self.extra_env = dict(extra_env or {})
        self.procs: dict[int, subprocess.Popen] = {}

    def pod_argv(self, ordinal: int) -> list[str]:
        """The container's command and args; only its own port changes (to the local one)."""
        argv = [*self.container.get("command", []), *self.container.get("args", [])]
        local = str(self.local_ports[ordinal])
        out = []
        for i, a in enumerate(argv):
            if a == str(self.port) and i > 0 and argv[i - 1] == "--port":
                a = local
            elif a == f"--port={self.port}":
                a = f"--port={local}"
            out.append(a)
        return _local_console_script(out, self.python)

    def pod_env(self, ordinal: int, tmp_dir: Path) -> dict[str, str]:
        env = {"HOSTNAME": f"{self.name}-{ordinal}"}
        for e in self.container.get("env", []):
            if "value" not in e:
                raise ValueError(f"unsupported env source for {e['name']}")
            value = _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), e["value"])
            env[e["name"]] = str(tmp_dir) + value[4:] if value == "/tmp" or value.startswith("/tmp/") else value
        return env

    def start_all(self) -> None:
        for i in range(self.replicas):
            tmp = self.root / "pods" / f"{self.name}-{i}" / "tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, **self.pod_env(i, tmp), "TMPDIR": str(tmp), **self.extra_env}
            with open(self.root / f"{self.name}-{i}.log", "w") as log:
                self.procs[i] = subprocess.Popen(
                    self.pod_argv(i),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def wait_ready(self, timeout_s: float) -> None:
        """What the readiness probe (tcpSocket on the container port) waits for, for every pod."""
        deadline = time.monotonic() + timeout_s
        for i, port in enumerate(self.local_ports):
            while True:
                if self.procs[i].poll() is not None:
                    raise RuntimeError(
                        f"pod {self.name}-{i} exited with {self.procs[i].returncode}: {self.log_text(i)[-500:]}"
                    )
                try:
                    socket.create_connection(("localhost", port), timeout=1.0).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"pod {self.name}-{i} not ready after {timeout_s} s") from None
                    time.sleep(0.2)

    def log_text(self, ordinal: int) -> str:
        return (self.root / f"{self.name}-{ordinal}.log").read_text()

    def alive(self) -> list[bool]:
        return [self.procs[i].poll() is None for i in range(self.replicas)]

    def stop(self, ordinal: Optional[int] = None) -> None:
        """SIGTERM (what the kubelet sends), then SIGKILL after 10 s."""
        for i in [ordinal] if ordinal is not None else list(self.procs):
            proc = self.procs[i]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                except ProcessLookupError:
                    pass
