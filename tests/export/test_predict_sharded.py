"""Sharded batch prediction: the predict overlay's pods run locally as N processes, the merge Job after them,
and the merged predictions equal one process's bit for bit; the merge refuses what it must."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from tff_lab import cli
from tff_lab.deploy import render
from tff_lab.export.predict import merge_parts, part_name, predict_file, shard_range

REPO = Path(__file__).resolve().parents[2]
BATCH = 64  # the manifest's --batch-size; shards start at rows that are no multiple of it


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    if err.startswith("usage:"):  # a flag refused by its argparse type: usage, then one error line
        last = err.splitlines()[-1]
        assert ": error: argument " in last, err
        return last
    assert "\n" not in err and err.startswith("tff-lab: error: "), err
    return err


@pytest.mark.parametrize("seed", range(6))
def test_shards_tile_the_rows_exactly_once(seed):
    rng = random.Random(seed)
    for _ in range(200):
        n, shards = rng.randrange(0, 5000), rng.randrange(1, 40)
        ranges = [shard_range(n, i, shards) for i in range(shards)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous: no gap, no overlap
        sizes = [b - a for a, b in ranges]
        assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1 and sum(sizes) == n


@pytest.fixture(scope="module")
def inputs(reference, tmp_path_factory) -> dict:
    """Raw digits test inputs, 359 rows, and a variant with one row changed."""
    d = tmp_path_factory.mktemp("shard_inputs")
    raw = reference["raw_test"]
    np.save(d / "input.npy", raw)
    other = raw.copy()
    other[200, 10] += 1.0
    np.save(d / "other.npy", other)
    return {"dir": d, "input": d / "input.npy", "other": d / "other.npy", "rows": len(raw)}


def _kustomized(p: render.RenderParams, tmp: Path) -> list[dict]:
    """The overlay as kubectl kustomize builds it from the written tree (the renderer's objects without kubectl)."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return render.render_overlay(p, "predict")
    render.write_tree(p, tmp / "k8s", overlays=("predict",))
    out = subprocess.run(
        [kubectl, "kustomize", str(tmp / "k8s/overlays/predict")], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_overlay_pods_run_locally_and_the_merge_equals_one_process(trained_run, inputs, tmp_path):
    from tff_lab_tests_edge_run_fixture import copy_run

    from tff_lab.deploy.local import LocalIndexedJob, find

    shards = 3
    p = render.RenderParams(
        experiment_name="digits_run",
        experiment_yaml="name: digits_run\n",
        workers=1,
        gpus_per_worker=0,
        image="registry.example.com/tff-lab/tff-lab-gpu:0.1.0",
        predict_shards=shards,
        predict_batch_size=BATCH,
        predict_wait_seconds=30,
    )
    objs = _kustomized(p, tmp_path)
    job = find(objs, "Job", p.predict_job_name)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == shards
    pod = job["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/artifacts"]["readOnly"] is True and not mounts["/predictions"].get("readOnly")
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["artifacts"]["persistentVolumeClaim"]["readOnly"] is True
    # What the volumes hold before the Job starts: the run (model + config) and the input, on the artifacts PVC.
    root = tmp_path / "cluster"
    artifacts = root / "volumes" / "artifacts"
    copy_run(trained_run, artifacts / "runs" / "digits_run")
    (artifacts / "predict").mkdir(parents=True)
    shutil.copy2(inputs["input"], artifacts / "predict" / "input.npy")

    local = LocalIndexedJob(objs, p.predict_job_name, root, extra_env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    env0 = local.pod_env(2, tmp_path / "t")
    assert env0["JOB_COMPLETION_INDEX"] == "2" and "TFF_LAB_NUM_SHARDS" not in env0  # N is in the args
    local.start_all()
    assert local.run(timeout_s=240) == {i: "Succeeded" for i in range(shards)}, local.log_text(0)[-2000:]
    lines = [json.loads(local.log_text(i).strip().splitlines()[-1]) for i in range(shards)]
    assert [(r["shard_index"], r["start"], r["stop"]) for r in lines] == [
        (i, *shard_range(inputs["rows"], i, shards)) for i in range(shards)
    ]
    assert all(r["batch_size"] == BATCH and r["num_shards"] == shards for r in lines)
    parts = root / "volumes" / "predictions" / "digits_run" / "parts"
    assert sorted(f.name for f in parts.iterdir()) == sorted(
        f"{part_name(i, shards)}{s}" for i in range(shards) for s in (".json", ".npz")
    )

    merge = LocalIndexedJob(objs, p.predict_merge_job_name, root)
    assert merge.completions == 1 and merge.container["args"][0] == "predict-merge"
    merge.start_all()
    assert merge.run(timeout_s=60) == {0: "Succeeded"}, merge.log_text(0)[-2000:]
    merged_path = root / "volumes" / "predictions" / "digits_run" / "predictions.npz"

    # One process, same model, input and batch size.
    one = tmp_path / "one.npz"
    predict_file(
        artifacts / "runs" / "digits_run" / "model" / "model.keras", inputs["input"], one, batch_size=BATCH, quiet=True
    )
    with np.load(merged_path, allow_pickle=False) as m, np.load(one, allow_pickle=False) as o:
        assert m["probs"].shape == (inputs["rows"], 10)
        for k in ("probs", "pred", "label", "labels"):
            assert np.array_equal(m[k], o[k]), k  # bit for bit
    summary = json.loads(Path(f"{merged_path}.manifest.json").read_text())
    assert summary["rows"] == inputs["rows"] and [q["stop"] - q["start"] for q in summary["parts"]] == [119, 120, 120]


@pytest.fixture(scope="module")
def parts(trained_run, inputs, tmp_path_factory) -> dict:
    """4 parts of the input from the run's model (in-process), a part 2 from another input, a part 1 from
    another model (one weight changed), and one process's predictions."""
    import tensorflow as tf

    d = tmp_path_factory.mktemp("parts")
    model = trained_run / "model" / "model.keras"
    for i in range(4):
        predict_file(model, inputs["input"], d / "good", batch_size=BATCH, quiet=True, shard_index=i, num_shards=4)
    predict_file(model, inputs["other"], d / "other_input", batch_size=BATCH, quiet=True, shard_index=2, num_shards=4)
    from tff_lab_tests_edge_run_fixture import copy_run

    run2 = copy_run(trained_run, d / "run2")
    m = tf.keras.models.load_model(run2 / "model" / "model.keras", compile=False)
    w = m.get_weights()
    w[0][3, 5] += 0.25
    m.set_weights(w)
    m.save(run2 / "model" / "model.keras")
    predict_file(
        run2 / "model" / "model.keras",
        inputs["input"],
        d / "other_model",
        batch_size=BATCH,
        quiet=True,
        shard_index=1,
        num_shards=4,
    )
    predict_file(model, inputs["input"], d / "one.npz", batch_size=BATCH, quiet=True)
    return {"dir": d, "good": d / "good", "one": d / "one.npz"}


def test_merge_of_in_process_shards_equals_one_process_and_writes_csv(parts, tmp_path, capsys):
    out = tmp_path / "merged.npz"
    assert cli.main(["predict-merge", str(parts["good"]), "--num-shards", "4", "--out", str(out)]) == 0
    assert "merged 4 parts, 359 rows" in capsys.readouterr().err
    with np.load(out, allow_pickle=False) as m, np.load(parts["one"], allow_pickle=False) as o:
        assert all(np.array_equal(m[k], o[k]) for k in ("probs", "pred", "label", "labels"))
    res = merge_parts(parts["good"], 4, tmp_path / "merged.csv")
    rows = (tmp_path / "merged.csv").read_text().splitlines()
    assert len(rows) == 1 + 359 and res["rows"] == 359 and rows[1].startswith("0,")
    manifests = [json.loads((parts["good"] / f"{part_name(i, 4)}.json").read_text()) for i in range(4)]
    assert len({m["input"]["sha256"] for m in manifests}) == 1 and len({m["model"]["sha256"] for m in manifests}) == 1
    assert [m["rows"] for m in manifests] == [89, 90, 90, 90]


def _break(kind: str, d: Path, rng: random.Random, parts_root: Path) -> tuple[str, str]:
    """Damages the copy ``d`` of 4 good parts; returns (the part named in the error, words of the error)."""
    k = rng.randrange(4)
    name = part_name(k, 4)
    if kind == "missing_manifest":
        (d / f"{name}.json").unlink()
        return str(d), f"missing 1 of 4 parts: {name}"
    if kind == "missing_predictions":
        (d / f"{name}.npz").unlink()
        return str(d / f"{name}.npz"), "missing (its manifest is there)"
    if kind == "truncated_predictions":
        data = (d / f"{name}.npz").read_bytes()
        (d / f"{name}.npz").write_bytes(data[: rng.randrange(1, len(data) - 1)])
        return str(d / f"{name}.npz"), "does not match its manifest's sha256"
    if kind == "other_model":
        for s in (".json", ".npz"):
            shutil.copy2(parts_root / "other_model" / f"{part_name(1, 4)}{s}", d / f"{part_name(1, 4)}{s}")
        return str(d / f"{part_name(1, 4)}.json"), "predicted from another model than part-00000-of-00004"
    if kind == "other_input":
        for s in (".json", ".npz"):
            shutil.copy2(parts_root / "other_input" / f"{part_name(2, 4)}{s}", d / f"{part_name(2, 4)}{s}")
        return str(d / f"{part_name(2, 4)}.json"), "predicted from another input than part-00000-of-00004"
    m = json.loads((d / f"{name}.json").read_text())
    if kind == "overlap":
        k = rng.randrange(1, 4)
        name = part_name(k, 4)
        m = json.loads((d / f"{name}.json").read_text())
        shift = rng.randrange(1, 30)
        m["start"] -= shift
        m["rows"] += shift
        (d / f"{name}.json").write_text(json.dumps(m))
        a, b = shard_range(359, k - 1, 4)
        return str(
            d / f"{name}.json"
        ), f"rows [{m['start']}, {m['stop']}) overlap rows [{a}, {b}) of {part_name(k - 1, 4)}"
    if kind == "gap":
        k = rng.randrange(1, 4)
        name = part_name(k, 4)
        m = json.loads((d / f"{name}.json").read_text())
        shift = rng.randrange(1, 30)
        m["start"] += shift
        m["rows"] -= shift
        (d / f"{name}.json").write_text(json.dumps(m))
        return str(d / f"{name}.json"), f"rows [{m['start'] - shift}, {m['start']}) of the input are in no part"
    if kind == "rows_disagree":
        m["rows"] += rng.randrange(1, 5)
        (d / f"{name}.json").write_text(json.dumps(m))
        return str(d / f"{name}.json"), "do not hold the"
    if kind == "wrong_index":
        m["shard_index"] = (k + 1) % 4
        (d / f"{name}.json").write_text(json.dumps(m))
        return str(d / f"{name}.json"), f"its manifest says shard {(k + 1) % 4} of 4, not {k} of 4"
    if kind == "not_a_manifest":
        (d / f"{name}.json").write_text(rng.choice(["{", "[]", json.dumps({"format": "x"})]))
        return str(d / f"{name}.json"), "part manifest"
    raise AssertionError(kind)


KINDS = [
    "missing_manifest",
    "missing_predictions",
    "truncated_predictions",
    "other_model",
    "other_input",
    "overlap",
    "gap",
    "rows_disagree",
    "wrong_index",
    "not_a_manifest",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_merge_refuses_in_one_line_and_writes_nothing(parts, kind, seed, tmp_path, capsys):
    d = tmp_path / "parts"
    shutil.copytree(parts["good"], d)
    where, words = _break(kind, d, random.Random(f"{kind}-{seed}"), parts["dir"])
    out = tmp_path / "merged.npz"
    assert cli.main(["predict-merge", str(d), "--num-shards", "4", "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"tff-lab: error: {where}: ") and words in err, err
    assert not out.exists() and not Path(f"{out}.manifest.json").exists()


def test_merge_with_the_wrong_shard_count_names_the_right_one(parts, tmp_path, capsys):
    out = tmp_path / "m.npz"
    assert cli.main(["predict-merge", str(parts["good"]), "--num-shards", "3", "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "missing 3 of 3 parts: part-00000-of-00003" in err and "it holds parts of 4 shards" in err
    assert (
        cli.main(["predict-merge", str(tmp_path / "nowhere"), "--num-shards", "2", "--out", str(out), "--wait", "0.3"])
        == 2
    )
    assert "missing 2 of 2 parts after waiting 0.3 s" in _one_line_error(capsys)
    assert cli.main(["predict-merge", str(parts["good"]), "--num-shards", "0", "--out", str(out)]) == 2
    assert "--num-shards: expected an integer >= 1" in _one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, env, words",
    [
        (["--num-shards", "4", "--shard-index", "4"], {}, "--shard-index: 4 is out of range for 4 shards"),
        (["--num-shards", "4", "--shard-index", "-1"], {}, "--shard-index: expected an integer >= 0"),
        (["--num-shards", "4"], {"JOB_COMPLETION_INDEX": "7"}, "JOB_COMPLETION_INDEX: 7 is out of range for 4 shards"),
        (["--num-shards", "4"], {"JOB_COMPLETION_INDEX": "x1"}, "JOB_COMPLETION_INDEX: expected an integer >= 0"),
        (["--num-shards", "4"], {}, "--shard-index: not given and JOB_COMPLETION_INDEX is not set"),
        ([], {"TFF_LAB_NUM_SHARDS": "0", "JOB_COMPLETION_INDEX": "0"}, "TFF_LAB_NUM_SHARDS: expected an integer >= 1"),
        (["--num-shards", "0"], {}, "--num-shards: expected an integer >= 1"),
        (["--shard-index", "1"], {}, "--shard-index: needs --num-shards"),
        (
            ["--num-shards", "2", "--shard-index", "0", "--out-file"],
            {},
            "--out: with --num-shards, --out is the directory",
        ),
    ],
)
def test_bad_shard_arguments_are_one_line_exit_2(trained_run, inputs, argv, env, words, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    monkeypatch.delenv("TFF_LAB_NUM_SHARDS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / ("pred.npz" if "--out-file" in argv else "parts")
    argv = [a for a in argv if a != "--out-file"]
    assert (
        cli.main(
            ["predict", str(trained_run / "model" / "model.keras"), str(inputs["input"]), "--out", str(out), *argv]
        )
        == 2
    )
    assert words in _one_line_error(capsys)
    assert not out.exists()


def test_env_gives_the_shard_and_more_shards_than_rows_is_fine(trained_run, inputs, tmp_path, monkeypatch):
    """TFF_LAB_NUM_SHARDS + JOB_COMPLETION_INDEX alone make a shard; empty shards merge too."""
    tiny = tmp_path / "tiny.npy"
    np.save(tiny, np.load(inputs["input"])[:3])
    monkeypatch.setenv("TFF_LAB_NUM_SHARDS", "5")
    for i in range(5):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(i))
        assert (
            cli.main(
                [
                    "predict",
                    str(trained_run / "model" / "model.keras"),
                    str(tiny),
                    "--out",
                    str(tmp_path / "p"),
                    "--quiet",
                ]
            )
            == 0
        )
    rows = [json.loads((tmp_path / "p" / f"{part_name(i, 5)}.json").read_text())["rows"] for i in range(5)]
    assert rows == [0, 1, 0, 1, 1]
    res = merge_parts(tmp_path / "p", 5, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as m:
        assert res["rows"] == 3 and m["probs"].shape == (3, 10)
