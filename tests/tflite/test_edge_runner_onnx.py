"""The edge runner on model.onnx (`tff-lab export --format onnx`) with ONNX Runtime, in the venv without TensorFlow."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest


def _one_error_line(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("runner: error: ")]
    assert len(lines) == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def raw_npy(reference, tmp_path_factory):
    p = tmp_path_factory.mktemp("onnx_inputs") / "raw.npy"
    np.save(p, reference["raw_test"])
    return p


def test_runner_on_onnx_matches_keras(edge_runner, onnx_exported, reference, raw_npy, tmp_path):
    import onnxruntime

    from tff_lab.export.onnx_model import ONNXModel

    probs = {}
    for batch in (100, 1):
        out = tmp_path / f"pred{batch}.npz"
        proc = edge_runner(onnx_exported["path"], raw_npy, "--out", out, "--batch", batch)
        assert proc.returncode == 0, proc.stderr
        assert "359 predictions" in proc.stderr and f"onnxruntime {onnxruntime.__version__}" in proc.stderr
        with np.load(out, allow_pickle=False) as f:
            probs[batch], pred, label = f["probs"], f["pred"], f["label"]
            assert np.array_equal(label, pred.astype(str)) and list(f["labels"]) == [str(i) for i in range(10)]
    keras = reference["keras_test"]
    assert np.abs(probs[100] - keras).max() <= 1e-5 and np.mean(probs[100].argmax(1) == keras.argmax(1)) == 1.0
    assert np.abs(probs[1] - probs[100]).max() <= 1e-6  # any batch size, the same predictions
    # the same ONNX Runtime version on the device (numpy 2) and inside tff_lab (numpy 1.25, TensorFlow loaded)
    main = ONNXModel(onnx_exported["path"]).predict(reference["raw_test"])
    assert np.abs(probs[100] - main).max() <= 1e-6


def test_runner_on_onnx_stdout_csv_and_no_preprocess(edge_runner, onnx_exported, reference, tmp_path):
    keras = reference["keras_test"][:20]
    np.savez(tmp_path / "in.npz", x=reference["raw_test"][:20])
    proc = edge_runner(onnx_exported["path"], tmp_path / "in.npz")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(proc.stdout.splitlines()))
    assert rows[0] == ["index", "pred", "label", "prob"] and len(rows) == 21
    assert [int(r[1]) for r in rows[1:]] == list(keras.argmax(1))
    with open(tmp_path / "in.csv", "w") as f:
        f.write(",".join(f"f{i}" for i in range(64)) + "\n")
        np.savetxt(f, reference["raw_test"][:20], delimiter=",", fmt="%g")
    proc = edge_runner(onnx_exported["path"], tmp_path / "in.csv", "--out", tmp_path / "p.csv", "--batch", 3)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    probs = np.array([[float(v) for v in r[3:]] for r in rows[1:]])
    assert rows[0][:3] == ["index", "pred", "label"] and np.abs(probs - keras).max() <= 1e-5
    np.save(tmp_path / "pre.npy", reference["x_test"])
    proc = edge_runner(onnx_exported["path"], tmp_path / "pre.npy", "--no-preprocess", "--out", tmp_path / "q.npz")
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "q.npz") as f:
        assert np.abs(f["probs"] - reference["keras_test"]).max() <= 1e-5


def test_runner_bench_on_onnx(edge_runner, onnx_exported, raw_npy):
    proc = edge_runner(
        onnx_exported["path"], raw_npy, "--bench", "--runs", 30, "--bench-batch", 16, "--threads", 1, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    assert s["backend"].startswith("onnxruntime ") and (s["input_dtype"], s["output_dtype"]) == ("float32", "float32")
    b1, bb = s["bench"]
    assert (b1["batch_size"], b1["runs"], bb["batch_size"]) == (1, 30, 16)
    for b in (b1, bb):
        assert 0 < b["p50_ms"] <= b["p95_ms"]
        assert b["throughput_per_s"] == pytest.approx(b["batch_size"] / (b["p50_ms"] / 1e3))
    proc = edge_runner(onnx_exported["path"], raw_npy, "--bench", "--runs", 20)
    assert proc.returncode == 0, proc.stderr
    size = onnx_exported["path"].stat().st_size / 1024
    assert proc.stdout.splitlines()[0].startswith(f"model.onnx: {size:.1f} KiB, float32 in / float32 out, onnxruntime")


def test_runner_bad_onnx_input(edge_runner, onnx_exported, reference, tmp_path):
    m = onnx_exported["path"]
    good = m.read_bytes()
    np.save(tmp_path / "x.npy", reference["raw_test"][:5])
    (tmp_path / "half.onnx").write_bytes(good[: len(good) // 2])  # no sidecar: ONNX Runtime's parser
    _one_error_line(
        edge_runner(tmp_path / "half.onnx", tmp_path / "x.npy"),
        "half.onnx",
        "corrupt or truncated ONNX model; ONNX Runtime says",
    )
    (tmp_path / "sided.onnx").write_bytes(good[:-64])
    (tmp_path / "sided.json").write_text(m.with_suffix(".json").read_text())
    _one_error_line(
        edge_runner(tmp_path / "sided.onnx", tmp_path / "x.npy"),
        "does not match its sidecar",
        f"truncated: {len(good) - 64} of {len(good)} bytes",
    )
    (tmp_path / "junk.onnx").write_bytes(b"\x00" * 100)
    _one_error_line(edge_runner(tmp_path / "junk.onnx", tmp_path / "x.npy"), "not an ONNX model")
    np.save(tmp_path / "short.npy", reference["raw_test"][:, :60])
    _one_error_line(edge_runner(m, tmp_path / "short.npy"), "wrong input shape: expected (n, 64)", "(359, 60)")
    np.save(tmp_path / "o.npy", np.array([None], dtype=object), allow_pickle=True)
    _one_error_line(edge_runner(m, tmp_path / "o.npy"), "pickled")
    inf = reference["raw_test"][:10].copy()
    inf[7, 3] = np.nan
    np.save(tmp_path / "nan.npy", inf)
    _one_error_line(edge_runner(m, tmp_path / "nan.npy", "--batch", 4), "nan.npy", "example 7 holds NaN or inf")
    _one_error_line(edge_runner(m, tmp_path / "x.npy", "--sidecar", tmp_path / "none.json"), "sidecar JSON not found")
    _one_error_line(edge_runner(m, tmp_path / "x.npy", "--runs", 0, "--bench"), "--runs")


@pytest.mark.slow
def test_text_model_onnx_runs_without_tensorflow_like_keras(edge_runner, text_onnx, tmp_path):
    out = tmp_path / "pred.npz"
    proc = edge_runner(text_onnx["path"], text_onnx["tokens"], "--out", out, "--batch", 3)
    assert proc.returncode == 0, proc.stderr
    keras, x = text_onnx["keras"], text_onnx["x"]
    with np.load(out, allow_pickle=False) as f:
        probs, pred = f["probs"], f["pred"]
    assert probs.shape == keras.shape == (*x.shape, 90) and pred.shape == x.shape
    assert np.abs(probs - keras).max() < 1e-5 and np.array_equal(pred, keras.argmax(-1))
    rep = json.loads((text_onnx["run"] / "export" / "report.json").read_text())
    v = rep["variants"]["onnx"]
    assert v["parity"]["max_abs_diff"] < 1e-5 and v["parity"]["top1_agreement"] == 1.0
    assert v["parity"]["examples"] == rep["data"]["positions_compared"]
    bad = x.copy()
    bad[0, 1] = 90
    np.save(tmp_path / "bad.npy", bad)
    _one_error_line(edge_runner(text_onnx["path"], tmp_path / "bad.npy"), "example 0", "token id outside 0..89")
