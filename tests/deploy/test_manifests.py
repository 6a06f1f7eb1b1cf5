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
from tff_lab.deploy.local import find
from tff_lab.distributed import EXIT_RETRIABLE, trainer

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
            argv = shlex.split(line[len("#   tff-lab ") :])
            assert argv[-2:] == ["--out", "DIR"]
            return argv[:-2]
    raise AssertionError("k8s/base/kustomization.yaml has no render command header")


def _strict(schema):
    """The API server's strict field validation: unknown fields are errors."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
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
    import argparse

    from tff_lab.deploy.command import _params, register

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
    expected = {
        "gpu": ["ConfigMap", "Job", "NetworkPolicy", "PersistentVolumeClaim", "Service"],
        "cpu": ["ConfigMap", "Job", "NetworkPolicy", "PersistentVolumeClaim", "Service"],
        "tfjob": ["ConfigMap", "NetworkPolicy", "PersistentVolumeClaim", "TFJob"],
        "sweep": ["ConfigMap", "ConfigMap", "Job", "NetworkPolicy", "PersistentVolumeClaim"],
        "federated": [
            "ConfigMap",
            "Job",
            "NetworkPolicy",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "Service",
            "StatefulSet",
        ],
        "predict": [
            "ConfigMap",
            "Job",
            "Job",
            "NetworkPolicy",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "PersistentVolumeClaim",
        ],
    }[overlay]
    assert kinds == expected
    assert {o["metadata"].get("namespace") for o in objs} == {"tff-lab"}


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

    p = render.RenderParams(
        experiment_name="x", experiment_yaml="name: x\n", workers=2, gpus_per_worker=1, image="r.example/tff:1"
    )
    job = find(render.render_overlay(p, "gpu"), "Job")
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
    job = find(render.render_overlay(params, "gpu"), "Job")
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
    svc = find(render.render_overlay(params, "gpu"), "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    cpu_job = find(render.render_overlay(params, "cpu"), "Job")
    assert "nvidia.com/gpu" not in cpu_job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    tf = find(render.render_overlay(params, "tfjob"), "TFJob")
    worker = tf["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == params.workers and worker["restartPolicy"] == "ExitCode"
    assert worker["template"]["spec"]["containers"][0]["name"] == "tensorflow"


BASE = ["k8s", "render", "experiments/dist_digits.yaml"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--workers", "0", "--image", "r.example/t:1"], "--workers: expected an integer >= 1"),
        (["--gpus-per-worker", "-1", "--image", "r.example/t:1"], "--gpus-per-worker: expected an integer >= 0"),
        ([], "--image: missing"),
        (["--image", "r.example/t:latest"], "pin a version tag"),
        (["--image", "r.example/t"], "has no tag"),
        (["--image", "r.example/t:1", "--overlay", "gpux"], "--overlay: unknown overlay 'gpux'"),
        (["--image", "r.example/t:1", "--overlay", "sweep"], "--sweep: the sweep overlay needs a sweep grid"),
        (["--image", "r.example/t:1", "--tff-workers", "0"], "--tff-workers: expected an integer >= 1"),
        (["--image", "r.example/t:1", "--tff-worker-gpus", "-1"], "--tff-worker-gpus: expected an integer >= 0"),
        (["--image", "r.example/t:1", "--namespace", "Tff_Lab"], "--namespace: expected a DNS label"),
        (["--image", "r.example/t@sha256:abc"], "--image: not a valid image reference"),
    ],
)
def test_render_bad_input_is_one_line_exit_2(extra, words, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    try:
        code = main(BASE + extra + ["--out", str(tmp_path / "k8s")])
    except SystemExit as e:  # a flag's value refused by its argparse type: usage line, then the error
        code = e.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), lines
    assert sum("error:" in line for line in lines) == 1 and "Traceback" not in "\n".join(lines), lines
    assert "error: " in lines[-1] and words in lines[-1], lines
    assert not (tmp_path / "k8s").exists()


def test_render_prints_one_overlay_without_out(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(BASE + ["--image", "r.example/t:1", "--workers", "3", "--overlay", "cpu"]) == 0
    objs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    job = next(o for o in objs if o["kind"] == "Job")
    assert job["spec"]["completions"] == 3
    assert "nvidia.com/gpu" not in job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "image, policy",
    [
        (f"r.example/t:1@{DIGEST}", "IfNotPresent"),
        (f"r.example/t@{DIGEST}", "IfNotPresent"),
        ("r.example/t:1", "Always"),
    ],
)
def test_digest_pinned_images_are_accepted_and_pulled_if_not_present(image, policy, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(BASE + ["--image", image, "--overlay", "federated"]) == 0
    out = capsys.readouterr()
    objs = [d for d in yaml.safe_load_all(out.out) if d]
    containers = [
        c
        for o in objs
        if o["kind"] in ("Job", "StatefulSet")
        for c in o["spec"]["template"]["spec"]["containers"] + o["spec"]["template"]["spec"].get("initContainers", [])
    ]
    assert len(containers) == 3 and {(c["image"], c["imagePullPolicy"]) for c in containers} == {(image, policy)}
    assert ("has no digest" in out.err) == (policy == "Always")


def _selects(policy: dict, labels: dict) -> bool:
    return policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("overlay", render.OVERLAYS)
def test_every_pod_is_isolated_by_a_network_policy_of_its_own_overlay(params, overlay):
    """Each pod: no service-account token, uid >= 10000, and a NetworkPolicy of the same overlay that
    denies both directions except the listed peers (checkov links policies across files by labels,
    so this is checked per overlay here)."""
    objs = render.render_overlay(params, overlay)
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    templates = [o["spec"]["template"] for o in objs if o["kind"] in ("Job", "StatefulSet")]
    templates += [r["template"] for o in objs if o["kind"] == "TFJob" for r in o["spec"]["tfReplicaSpecs"].values()]
    assert templates and policies
    for t in templates:
        mine = [p for p in policies if _selects(p, t["metadata"]["labels"])]
        assert len(mine) == 1, (overlay, t["metadata"]["labels"])
        assert mine[0]["spec"]["policyTypes"] == ["Ingress", "Egress"]
        pod = t["spec"]
        assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
        assert pod["securityContext"]["runAsUser"] >= 10000 and pod["securityContext"]["runAsGroup"] >= 10000
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
            assert sc["capabilities"]["drop"] == ["ALL"] and c["resources"]["limits"]["memory"]


def _rules(policy, direction):
    return [
        (
            {k: v for k, v in peer["podSelector"]["matchLabels"].items()} if "to" in r or "from" in r else None,
            sorted((p["protocol"], p["port"]) for p in r.get("ports", [])),
        )
        for r in policy["spec"].get(direction, [])
        for peer in (r.get("to") or r.get("from") or [{}])
    ]


def test_network_policies_admit_only_the_intended_peers(params):
    objs = render.render_overlay(params, "gpu")
    pol = find(objs, "NetworkPolicy")
    job = find(objs, "Job")
    trainer = render._selector(params, "trainer")
    assert _rules(pol, "ingress") == [(trainer, [("TCP", 2222)])]
    assert _rules(pol, "egress") == [(trainer, [("TCP", 2222)]), (None, [("TCP", 53), ("UDP", 53)])]
    assert trainer.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    sweep = find(render.render_overlay(params, "sweep"), "NetworkPolicy")
    assert sweep["spec"].get("ingress") == [] and sweep["spec"].get("egress") == []  # deny all
    fed = render.render_overlay(params, "federated")
    workers = find(fed, "NetworkPolicy", params.tff_worker_set)
    driver = find(fed, "NetworkPolicy", params.driver_job_name)
    driver_labels = find(fed, "Job")["spec"]["template"]["metadata"]["labels"]
    worker_labels = find(fed, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert _rules(workers, "ingress") == [(render._selector(params, "driver"), [("TCP", 8000)])]
    assert workers["spec"]["egress"] == []
    assert render._selector(params, "driver").items() <= driver_labels.items()
    assert not _selects(workers, driver_labels) and _selects(workers, worker_labels)
    assert driver["spec"]["ingress"] == []
    assert _rules(driver, "egress") == [
        (render._selector(params, "tff-worker"), [("TCP", 8000)]),
        (None, [("TCP", 53), ("UDP", 53)]),
    ]


def test_federated_overlay_shape(params):
    objs = render.render_overlay(params, "federated")
    sts, svc, job = find(objs, "StatefulSet"), find(objs, "Service"), find(objs, "Job")
    assert sts["spec"]["replicas"] == params.tff_workers == 2 and sts["spec"]["serviceName"] == svc["metadata"]["name"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"].items() <= pod_labels.items()
    assert [p["port"] for p in svc["spec"]["ports"]] == [8000]
    worker = sts["spec"]["template"]["spec"]["containers"][0]
    assert [worker["command"][0], *worker["args"]] == ["tff-lab", "tff-worker", "--port", "8000"]
    assert worker["ports"][0]["containerPort"] == 8000
    assert (
        worker["readinessProbe"]["tcpSocket"]["port"] == 8000 and worker["livenessProbe"]["tcpSocket"]["port"] == 8000
    )
    assert worker["resources"]["requests"] == {"cpu": params.cpu, "memory": params.memory}
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]
    # The driver: the workers' stable DNS names, in order, in its init container and in tff-lab run.
    names = [f"tff-lab-worker-{i}.tff-lab-workers:8000" for i in range(2)]
    pod = job["spec"]["template"]["spec"]
    wait, driver = pod["initContainers"][0], pod["containers"][0]
    assert wait["args"][:2] == ["k8s", "wait"] and wait["args"][2:4] == names
    assert driver["args"][:2] == ["run", "/etc/tff-lab/experiment.yaml"]
    assert f"training.worker_addresses=[{','.join(names)}]" in driver["args"] and "--resume" in driver["args"]
    assert driver["args"][driver["args"].index("--out") + 1] == "/artifacts/runs/dist_digits-federated"
    assert job["spec"]["completions"] == 1 and job["spec"]["backoffLimit"] >= 1
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert any(
        r["action"] == "FailJob" and r["onExitCodes"] == {"containerName": "driver", "operator": "In", "values": [2]}
        for r in rules
    )
    # The committed experiment with the driver's override is a valid config.
    from tff_lab.config import load_config

    cfg = load_config(REPO / "experiments" / "dist_digits.yaml", overrides=[driver["args"][-1]])
    assert list(cfg.training.worker_addresses) == names
    # GPUs for TFF workers on request.
    import dataclasses

    gpu = find(render.render_overlay(dataclasses.replace(params, tff_worker_gpus=1), "federated"), "StatefulSet")
    assert gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_render_checks_the_experiment_with_the_drivers_override(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    exp = tmp_path / "local_workers.yaml"
    exp.write_text((REPO / "experiments" / "dist_digits.yaml").read_text() + "training: {workers: 2}\n")
    assert main(["k8s", "render", str(exp), "--image", "r.example/t:1", "--out", str(tmp_path / "k8s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "training.worker_addresses" in err, err
    assert not (tmp_path / "k8s").exists()
    # Without the federated overlay the same experiment renders (MWMS ignores training.workers).
    assert (
        main(
            [
                "k8s",
                "render",
                str(exp),
                "--image",
                "r.example/t:1",
                "--overlay",
                "gpu",
                "--overlay",
                "cpu",
                "--out",
                str(tmp_path / "k8s"),
            ]
        )
        == 0
    )
