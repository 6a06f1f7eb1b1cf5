"""The edge runner in a venv with only tflite/requirements.txt (numpy, ai-edge-litert, onnxruntime; no TensorFlow)."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest

from tff_lab.export.tflite_model import TFLiteModel


def _one_error_line(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("runner: error: ")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def raw_npy(reference, tmp_path_factory):
    p = tmp_path_factory.mktemp("edge_inputs") / "raw.npy"
    np.save(p, reference["raw_test"])
    return p


def test_the_edge_env_has_no_tensorflow(edge_python, tmp_path):
    for module in ("tensorflow", "tff_lab", "keras"):
        proc = subprocess.run(
            [str(edge_python), "-c", f"import {module}"], capture_output=True, text=True, cwd=tmp_path
        )
        assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr, (module, proc.stderr)
    proc = subprocess.run([str(edge_python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
    names = {l.split("==")[0].lower().replace("_", "-") for l in proc.stdout.split()}
    assert {"ai-edge-litert", "onnxruntime", "numpy"} <= names
    assert not {n for n in names if n.startswith(("tensorflow", "keras", "tf-", "jax"))}, names


@pytest.mark.parametrize("variant", ["float32", "dynamic", "float16", "int8"])
def test_runner_predictions_match_keras(edge_runner, exported_run, reference, raw_npy, tmp_path, variant):
    out = tmp_path / "pred.npz"
    proc = edge_runner(exported_run["paths"][variant], raw_npy, "--out", out, "--batch", 100)
    assert proc.returncode == 0, proc.stderr
    assert "359 predictions" in proc.stderr and "ai_edge_litert 2.3.0" in proc.stderr
    with np.load(out, allow_pickle=False) as f:
        probs, pred, label = f["probs"], f["pred"], f["label"]
    keras = reference["keras_test"]
    agree = np.mean(pred == keras.argmax(1))
    assert np.array_equal(label, pred.astype(str))
    if variant == "float32":
        assert np.abs(probs - keras).max() <= 1e-4 and agree == 1.0
    else:
        assert agree >= 0.98, agree
        assert np.abs(probs - keras).max() <= 0.1
    # LiteRT on the device and TensorFlow's interpreter in tff_lab agree on the same file: exactly up to
    # float rounding, within one output step (1/256) for int8. Dynamic-range kernels differ between the
    # runtimes (activations are quantized at run time; LiteRT 2.3 and TF 2.14 do it differently).
    tf_probs = TFLiteModel(exported_run["paths"][variant]).predict(reference["raw_test"])
    tol = {"float32": 1e-5, "float16": 1e-5, "int8": 1 / 256 + 1e-6, "dynamic": 0.05}[variant]
    assert np.abs(probs - tf_probs).max() <= tol
    assert np.mean(probs.argmax(1) == tf_probs.argmax(1)) >= 0.99


def test_runner_stdout_csv_and_npz_inputs(edge_runner, exported_run, reference, tmp_path):
    np.savez(tmp_path / "in.npz", x=reference["raw_test"][:20], y=reference["y_test"][:20])
    proc = edge_runner(exported_run["paths"]["int8"], tmp_path / "in.npz")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(proc.stdout.splitlines()))
    assert rows[0] == ["index", "pred", "label", "prob"] and len(rows) == 21
    keras = reference["keras_test"][:20]
    assert [int(r[1]) for r in rows[1:]] == list(keras.argmax(1))
    assert all(0 < float(r[3]) <= 1 for r in rows[1:])
    # .csv in (with a header), .csv out, single-example batches
    with open(tmp_path / "in.csv", "w") as f:
        f.write(",".join(f"f{i}" for i in range(64)) + "\n")
        np.savetxt(f, reference["raw_test"][:20], delimiter=",", fmt="%g")
    proc = edge_runner(exported_run["paths"]["float32"], tmp_path / "in.csv", "--out", tmp_path / "p.csv", "--batch", 1)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[0][:3] == ["index", "pred", "label"] and len(rows) == 21
    probs = np.array([[float(v) for v in r[3:]] for r in rows[1:]])
    assert np.abs(probs - keras).max() <= 1e-4


def test_runner_no_preprocess(edge_runner, exported_run, reference, tmp_path):
    np.save(tmp_path / "pre.npy", reference["x_test"])
    proc = edge_runner(
        exported_run["paths"]["float32"], tmp_path / "pre.npy", "--no-preprocess", "--out", tmp_path / "p.npz"
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "p.npz") as f:
        assert np.abs(f["probs"] - reference["keras_test"]).max() <= 1e-4


def test_runner_bench(edge_runner, exported_run, raw_npy):
    proc = edge_runner(
        exported_run["paths"]["int8"], raw_npy, "--bench", "--runs", 50, "--bench-batch", 32, "--threads", 1, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    assert s["backend"].startswith("ai_edge_litert") and s["input_dtype"] == "int8"
    b1, bb = s["bench"]
    assert (b1["batch_size"], b1["runs"], bb["batch_size"]) == (1, 50, 32)
    for b in (b1, bb):
        assert 0 < b["p50_ms"] <= b["p95_ms"] and b["throughput_per_s"] == pytest.approx(
            b["batch_size"] / (b["p50_ms"] / 1e3)
        )
    proc = edge_runner(exported_run["paths"]["float32"], raw_npy, "--bench", "--runs", 20)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("model_float32.tflite: 37.0 KiB, float32 in / float32 out, ai_edge_litert")
    assert lines[1].split() == ["batch", "p50", "ms/call", "p95", "ms/call", "throughput", "ex/s"]
    assert [l.split()[0] for l in lines[2:]] == ["1", "64"]


def test_runner_bad_input(edge_runner, exported_run, reference, tmp_path):
    good = exported_run["paths"]["int8"].read_bytes()
    np.save(tmp_path / "x.npy", reference["raw_test"][:5])
    (tmp_path / "trunc.tflite").write_bytes(good[: len(good) // 2])  # no sidecar: LiteRT's verifier
    _one_error_line(
        edge_runner(tmp_path / "trunc.tflite", tmp_path / "x.npy"), "trunc.tflite", "corrupt or truncated TFLite model"
    )
    (tmp_path / "sided.tflite").write_bytes(good[:-64])
    (tmp_path / "sided.json").write_text(exported_run["paths"]["int8"].with_suffix(".json").read_text())
    _one_error_line(
        edge_runner(tmp_path / "sided.tflite", tmp_path / "x.npy"),
        "does not match its sidecar",
        f"truncated: {len(good) - 64} of {len(good)} bytes",
    )
    (tmp_path / "junk.tflite").write_bytes(b"\x00" * 100)
    _one_error_line(edge_runner(tmp_path / "junk.tflite", tmp_path / "x.npy"), "not a TFLite model", "TFL3")
    m = exported_run["paths"]["int8"]
    np.save(tmp_path / "short.npy", reference["raw_test"][:, :60])
    _one_error_line(edge_runner(m, tmp_path / "short.npy"), "wrong input shape: expected (n, 64)", "(359, 60)")
    np.save(tmp_path / "s.npy", np.array([["x"] * 64]))
    _one_error_line(edge_runner(m, tmp_path / "s.npy"), "expected a numeric array", "<U1")
    np.save(tmp_path / "o.npy", np.array([None], dtype=object), allow_pickle=True)
    _one_error_line(edge_runner(m, tmp_path / "o.npy"), "pickled")
    _one_error_line(edge_runner(m, tmp_path / "x.npy", "--out", tmp_path / "p.txt"), "unsupported output type")
    _one_error_line(edge_runner(m, tmp_path / "x.npy", "--batch", 0), "--batch")
    _one_error_line(edge_runner(m, tmp_path / "missing.npy"), "input file not found")
    inf = reference["raw_test"][:10].copy()
    inf[7, 0] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    _one_error_line(edge_runner(m, tmp_path / "inf.npy", "--batch", 4), "inf.npy", "example 7 holds NaN or inf")


def test_runner_per_feature_preprocessing(edge_runner, bc_exported, tmp_path):
    """Breast cancer's standardization (30 offsets and scales) applied on the device."""
    np.save(tmp_path / "raw.npy", bc_exported["raw_test"])
    keras = bc_exported["keras_test"]
    for variant in ("float32", "int8"):
        proc = edge_runner(bc_exported["paths"][variant], tmp_path / "raw.npy", "--out", tmp_path / f"{variant}.npz")
        assert proc.returncode == 0, proc.stderr
        with np.load(tmp_path / f"{variant}.npz") as f:
            if variant == "float32":
                assert np.abs(f["probs"] - keras).max() <= 1e-4
            assert np.mean(f["pred"] == keras.argmax(1)) >= 0.97
            assert list(f["labels"]) == ["malignant", "benign"]
