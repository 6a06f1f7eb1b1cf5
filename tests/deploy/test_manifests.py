"""k8s/: built with the real kustomize, validated strictly against the Kubernetes and TFJob schemas,
equal to the renderer's output; and the render command's bad input."""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tff_lab.cli import main
from tff_lab.deploy import render
from tff_lab.distributed import EXIT_RETRIABLE
from tff_lab.distributed import trainer

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
TFJOB_CRD = REPO.parent / "shared" / "k8s-schemas" / "kubeflow.org_tfjobs.v1.9.0.yaml"
K8S_VERSION = "1.32"  # the kubectl/kustomize on this machine

kubectl = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(kubectl is None, reason="kubectl (with kustomize) is not installed")


def kustomize(path: Path) -> list[dict]:
    out = subprocess.run([kubectl, "kustomize", str(path)], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def committed_render_argv() -> list[str]:
    """The render command recorded in the committed tree's header."""
    for line in (K8S / "base" / "kustomization.yaml").read_text().splitlines():
        if line.startswith("#   tff-lab k8s render "):
            argv = shlex.split(line[len("#   tff-lab "):])
            assert argv[-2:] == ["--out", "DIR"]
            return argv[:-2]
    raise AssertionError("k8s/base/kustomization.yaml has no render command header")


def _strict(schema):
    """The API server's strict field validation: unknown fields are errors."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    return schema


@pytest.fixture(scope="module")
def tfjob_validator():
    if not TFJOB_CRD.is_file():
        pytest.skip(f"TFJob CRD schema not found at {TFJOB_CRD} (shared/k8s-schemas beside the repo)")
    import jsonschema

    crd = yaml.safe_load(TFJOB_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def validate_k8s(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def validate_any(obj: dict, tfjob_validator) -> None:
    if obj["kind"] == "TFJob":
        tfjob_validator.validate(obj)
        # The pod template inside the CRD is a plain object there; check it with the core schema.
        tmpl = obj["spec"]["tfReplicaSpecs"]["Worker"]["template"]
        validate_k8s({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": tmpl})
    else:
        validate_k8s(obj)


@pytest.fixture(scope="module")
def built():
    if kubectl is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    return {o: kustomize(K8S / "overlays" / o) for o in render.OVERLAYS}


@pytest.fixture(scope="module")
def params():
    """RenderParams of the committed tree (from its header command)."""
    from tff_lab.deploy.command import _params, register
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(committed_render_argv() + ["--out", "unused"])
    import os

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return _params(args, render.OVERLAYS)
    finally:
        os.chdir(cwd)


@needs_kubectl
@pytest.mark.parametrize("overlay", render.OVERLAYS)
def test_overlay_builds_and_every_object_validates(built, overlay, tfjob_validator):
    objs = built[overlay]
    assert objs, overlay
    for obj in objs:
        validate_any(obj, tfjob_validator)
    kinds = sorted(o["kind"] for o in objs)
    expected = {"gpu": ["ConfigMap", "Job", "PersistentVolumeClaim", "Service"],
                "cpu": ["ConfigMap", "Job", "PersistentVolumeClaim", "Service"],
                "tfjob": ["ConfigMap", "PersistentVolumeClaim", "TFJob"],
                "sweep": ["ConfigMap", "ConfigMap", "Job", "PersistentVolumeClaim"]}[overlay]
    assert kinds == expected


@needs_kubectl
@pytest.mark.parametrize("overlay", render.OVERLAYS)
def test_kustomize_output_equals_the_renderers_objects(built, params, overlay):
    """The overlays' patches do exactly what render_overlay computes."""
    def key(o):
        return (o["kind"], o["metadata"]["name"])

    got = sorted(built[overlay], key=key)
    want = sorted(render.render_overlay(params, overlay), key=key)
    assert got == want


def test_validators_reject_unknown_fields_and_bad_values(tfjob_validator):
    """The strict checks are not vacuous."""
    import jsonschema
    import kubernetes_validate

    p = render.RenderParams(experiment_name="x", experiment_yaml="name: x\n", workers=2, gpus_per_worker=1,
                            image="r.example/tff:1")
    job = render.render_overlay(p, "gpu")[-1]
    validate_k8s(job)
    bad = copy.deepcopy(job)
    bad["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(bad)
    bad = copy.deepcopy(job)
    bad["spec"]["completionMode"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(bad)
    tf = render.tfjob(p)
    tfjob_validator.validate(tf)
    bad = copy.deepcopy(tf)
    bad["spec"]["tfReplicaSpecs"]["Worker"]["replicaz"] = 2
    with pytest.raises(jsonschema.ValidationError):
        tfjob_validator.validate(bad)


def test_committed_tree_equals_renderer_output(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(committed_render_argv() + ["--out", str(tmp_path)]) == 0
    fresh = {p.relative_to(tmp_path).as_posix(): p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {p.relative_to(K8S).as_posix(): p.read_text() for p in K8S.rglob("*") if p.is_file()}
    assert sorted(fresh) == sorted(committed), "re-render k8s/ with the command in its headers"
    for rel in fresh:
        assert fresh[rel] == committed[rel], f"k8s/{rel} differs from the renderer's output; re-render it"


def test_job_shape(params):
    """What the cluster relies on, beyond schema validity."""
    job = render.render_overlay(params, "gpu")[-1]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == params.workers
    assert spec["backoffLimitPerIndex"] >= 1 and spec["maxFailedIndexes"] == 0 and spec["ttlSecondsAfterFinished"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    retriable = [r for r in rules if r.get("onExitCodes", {}).get("values") == [EXIT_RETRIABLE]]
    assert retriable and retriable[0]["action"] == "Ignore"
    assert EXIT_RETRIABLE == trainer.EXIT_RETRIABLE and 128 <= EXIT_RETRIABLE <= 255  # TFJob "ExitCode" retries
    assert any(r["action"] == "FailJob" and r["onExitCodes"]["values"] == [2] for r in rules)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["subdomain"] == params.service_name
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    c = pod["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(params.gpus_per_worker)
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert c["command"] == ["tff-lab"] and c["args"][0] == "train-dist"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/etc/tff-lab"] == "experiment" and mounts["/artifacts"] == "artifacts"
    svc = render.render_overlay(params, "gpu")[2]
    assert svc["kind"] == "Service" and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    cpu_job = render.render_overlay(params, "cpu")[-1]
    assert "nvidia.com/gpu" not in cpu_job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    tf = render.render_overlay(params, "tfjob")[-1]
    worker = tf["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == params.workers and worker["restartPolicy"] == "ExitCode"
    assert worker["template"]["spec"]["containers"][0]["name"] == "tensorflow"


BASE = ["k8s", "render", "experiments/dist_digits.yaml"]


@pytest.mark.parametrize("extra, words", [
    (["--workers", "0", "--image", "r.example/t:1"], "--workers: expected an integer >= 1"),
    (["--gpus-per-worker", "-1", "--image", "r.example/t:1"], "--gpus-per-worker: expected an integer >= 0"),
    ([], "--image: missing"),
    (["--image", "r.example/t:latest"], "pin a version tag"),
    (["--image", "r.example/t"], "has no tag"),
    (["--image", "r.example/t:1", "--overlay", "gpux"], "--overlay: unknown overlay 'gpux'"),
    (["--image", "r.example/t:1", "--overlay", "sweep"], "--sweep: the sweep overlay needs a sweep grid"),
])
def test_render_bad_input_is_one_line_exit_2(extra, words, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    assert main(BASE + extra + ["--out", str(tmp_path / "k8s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("tff-lab: error: ") and words in err, err
    assert not (tmp_path / "k8s").exists()


def test_render_prints_one_overlay_without_out(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(BASE + ["--image", "r.example/t:1", "--workers", "3", "--overlay", "cpu"]) == 0
    objs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    job = next(o for o in objs if o["kind"] == "Job")
    assert job["spec"]["completions"] == 3
    assert "nvidia.com/gpu" not in job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
