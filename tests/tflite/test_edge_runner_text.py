"""The Shakespeare text model's .tflite in the edge runner, in the venv without TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["float32", "dynamic", "int8"])
def test_text_model_runs_without_tensorflow_like_keras(edge_runner, text_exported, tmp_path, variant):
    out = tmp_path / "pred.npz"
    model = text_exported["run"] / "export" / f"model_{variant}.tflite"
    proc = edge_runner(model, text_exported["tokens"], "--out", out, "--batch", 3)
    assert proc.returncode == 0, proc.stderr
    assert "ai_edge_litert" in proc.stderr
    keras, x = text_exported["keras"], text_exported["x"]
    with np.load(out, allow_pickle=False) as f:
        probs, pred, label = f["probs"], f["pred"], f["label"]
    assert probs.shape == keras.shape == (*x.shape, 90) and pred.shape == x.shape == label.shape
    positions = x != 0
    agree = np.mean(pred[positions] == keras.argmax(-1)[positions])
    if variant == "float32":  # every call starts from a zero LSTM state, as Keras does
        assert np.abs(probs - keras).max() < 1e-5 and agree == 1.0
    else:
        assert agree >= 0.9 and np.abs(probs - keras).max() < 0.05
    csv = edge_runner(model, text_exported["tokens"], "--out", tmp_path / "pred.csv")
    assert csv.returncode == 0, csv.stderr
    rows = (tmp_path / "pred.csv").read_text().splitlines()
    assert rows[0] == "index,pred,label,prob" and len(rows) == len(x) + 1


@pytest.mark.slow
def test_text_model_rejects_tokens_outside_the_vocabulary(edge_runner, text_exported, tmp_path):
    bad = text_exported["x"].copy()
    bad[0, 1] = -1
    np.save(tmp_path / "bad.npy", bad)
    proc = edge_runner(text_exported["run"] / "export" / "model_float32.tflite", tmp_path / "bad.npy")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("runner: error: ")]
    assert len(lines) == 1 and "example 0" in lines[0] and "token id outside 0..89" in lines[0], proc.stderr
