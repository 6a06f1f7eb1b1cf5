"""k8s/overlays/predict: what the cluster relies on beyond schema validity (test_manifests.py validates and
builds it with the other overlays; tests/export/test_predict_sharded.py runs its pods locally)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tff_lab.cli import main
from tff_lab.deploy import render
from tff_lab.deploy.local import find

REPO = Path(__file__).resolve().parents[2]
BASE = ["k8s", "render", "experiments/dist_digits.yaml", "--image", "r.example/t:1", "--overlay", "predict"]


def _render(argv, capsys) -> list[dict]:
    assert main(BASE + argv) == 0
    return [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]


def test_predict_overlay_shape(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    objs = _render(
        [
            "--predict-shards",
            "8",
            "--predict-parallelism",
            "3",
            "--predict-batch-size",
            "512",
            "--predict-model",
            "/artifacts/runs/dist_digits/export/model_int8.tflite",
        ],
        capsys,
    )
    job, merge = find(objs, "Job", "tff-lab-predict"), find(objs, "Job", "tff-lab-predict-merge")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 8 and spec["parallelism"] == 3
    assert spec["maxFailedIndexes"] == 0 and spec["backoffLimitPerIndex"] >= 1
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "predict", "operator": "In", "values": [2]}} in rules
    c = spec["template"]["spec"]["containers"][0]
    assert c["command"] == ["tff-lab"] and c["args"] == [
        "predict",
        "/artifacts/runs/dist_digits/export/model_int8.tflite",
        "/artifacts/predict/input.npy",
        "--out",
        "/predictions/dist_digits/parts",
        "--num-shards",
        "8",
        "--batch-size",
        "512",
        "--quiet",
    ]
    assert not any(e["name"] == "JOB_COMPLETION_INDEX" for e in c["env"])  # the Job controller sets it
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/artifacts"].get("readOnly") is True and not mounts["/predictions"].get("readOnly")
    vols = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert vols["artifacts"]["persistentVolumeClaim"] == {"claimName": "tff-lab-artifacts", "readOnly": True}
    assert vols["predictions"]["persistentVolumeClaim"]["claimName"] == "tff-lab-predictions"
    pvc = find(objs, "PersistentVolumeClaim", "tff-lab-predictions")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # The merge Job: the same parts directory and shard count, waits for the parts, never sees /artifacts.
    m = merge["spec"]
    mc = m["template"]["spec"]["containers"][0]
    assert "completionMode" not in m and m["completions"] == 1 and m["backoffLimit"] >= 1
    assert mc["args"][:4] == ["predict-merge", "/predictions/dist_digits/parts", "--num-shards", "8"]
    assert mc["args"][mc["args"].index("--out") + 1] == "/predictions/dist_digits/predictions.npz"
    assert int(mc["args"][mc["args"].index("--wait") + 1]) > 0
    assert {v["name"] for v in m["template"]["spec"]["volumes"]} == {"predictions", "tmp"}
    assert {"action": "FailJob", "onExitCodes": {"containerName": "merge", "operator": "In", "values": [2]}} in m[
        "podFailurePolicy"
    ]["rules"]
    # Deny-all policies, one per pod kind; nothing of the MWMS trainer is left.
    pols = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert sorted(p["metadata"]["name"] for p in pols) == ["tff-lab-predict", "tff-lab-predict-merge"]
    assert all(p["spec"]["ingress"] == [] and p["spec"]["egress"] == [] for p in pols)
    assert not any(o["kind"] == "Service" for o in objs) and len([o for o in objs if o["kind"] == "Job"]) == 2


def test_predict_overlay_defaults_to_the_mwms_runs_model(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    objs = _render([], capsys)
    args = find(objs, "Job", "tff-lab-predict")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[1] == "/artifacts/runs/dist_digits/model/model.keras" and args[args.index("--num-shards") + 1] == "4"


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--predict-shards", "0"], "--predict-shards: expected an integer >= 1"),
        (["--predict-parallelism", "0"], "--predict-parallelism: expected an integer >= 1"),
        (["--predict-batch-size", "-3"], "--predict-batch-size: expected an integer >= 1"),
        (["--predict-model", "/etc/passwd"], "--predict-model: expected a path under /artifacts/"),
        (["--predict-input", "/artifacts/../etc/x.npy"], "--predict-input: expected a path under /artifacts/"),
        (["--predict-input", "relative.npy"], "--predict-input: expected a path under /artifacts/"),
    ],
)
def test_render_predict_bad_input_is_one_line_exit_2(extra, words, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    assert main(BASE + extra + ["--out", str(tmp_path / "k8s")]) == 2
    err = capsys.readouterr().err.strip()
    if err.startswith("usage:"):  # a flag refused by its argparse type: usage, then one error line
        err = err.splitlines()[-1]
        assert ": error: argument " in err, err
    assert "\n" not in err and ("tff-lab: error: " in err or ": error: argument " in err) and words in err, err
    assert not (tmp_path / "k8s").exists()


def test_the_committed_overlay_is_the_default_render():
    text = (REPO / "k8s" / "overlays" / "predict" / "predict.yaml").read_text()
    objs = [d for d in yaml.safe_load_all(text) if d]
    assert render.OVERLAYS[-1] == "predict"
    job = find(objs, "Job", "tff-lab-predict")
    assert (
        job["spec"]["completions"] == 4 and "--batch-size" in job["spec"]["template"]["spec"]["containers"][0]["args"]
    )
