"""The tasks run end to end on tiny TFF-format files: training, evaluation, export, batch prediction, CLI."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from helpers import assert_user_error, run_cli

fx = sys.modules["tff_lab_tests_text_run_fixture"]  # loaded by tests/tasks/conftest.py


def test_emnist62_one_round_through_run_experiment(tmp_path, tff_cache):
    from tff_lab import run_experiment
    from tff_lab.tasks import task_config

    cfg = task_config(
        "emnist62_cnn",
        **{
            "data.cache_dir": str(tff_cache),
            "training.rounds": 1,
            "training.clients_per_round": 2,
            "training.eval_every_rounds": 1,
            "model.kwargs": {"conv_filters": [4, 8], "dense_units": 16},
            "centralized.enabled": False,
        },
    )
    s = run_experiment(cfg, tmp_path / "run")
    assert s["rounds"] == 1 and s["population"] == 5 and s["data"]["num_classes"] == 62
    assert 0.0 <= s["final_test_accuracy"] <= 1.0 and math.isfinite(s["final_test_loss"])
    parts = {p["kind"]: p for p in s["parts"]} if isinstance(s["parts"], list) else {}
    if parts:
        assert parts["model"]["name"] == "emnist_cnn" and parts["data"]["name"] == "emnist"


@pytest.mark.slow
def test_text_run_trains_evaluates_exports_and_predicts(text_run, tmp_path):
    """2 rounds of a tiny char LSTM (with the centralized baseline), then export and predict."""
    from tff_lab.export import export_run, predict_file
    from tff_lab.export.convert import keras_probabilities, load_run
    from tff_lab.tasks import vocab as V

    s = json.loads((text_run / "summary.json").read_text())
    assert s["rounds"] == 2 and s["data"]["num_classes"] == V.VOCAB_SIZE
    assert 0.0 <= s["final_test_accuracy"] <= 1.0 and s["centralized_accuracy"] is not None
    assert s["per_client_eval_accuracy"]["clients"] >= 1

    res = export_run(text_run, "all", latency_runs=5)
    rep = res["report"]
    assert set(rep["variants"]) == {"float32", "dynamic", "int8"}
    assert "float16" in res["skipped"] and "LSTM" in res["skipped"]["float16"]
    assert rep["data"]["kind"] == "sequence" and rep["data"]["positions_compared"] > 0
    f32 = rep["variants"]["float32"]
    assert f32["parity"]["top1_agreement"] == 1.0 and f32["parity"]["max_abs_diff"] < 1e-5
    assert f32["io"] == {"input": "int32", "output": "float32"}
    # the report's accuracy is the masked metric that training reported
    assert math.isclose(rep["keras"]["test_accuracy"], s["final_test_accuracy"], abs_tol=1e-6)
    assert math.isclose(f32["accuracy"]["test"], s["final_test_accuracy"], abs_tol=1e-6)
    assert rep["variants"]["int8"]["parity"]["top1_agreement"] >= 0.9
    side = json.loads((text_run / "export" / "model_float32.json").read_text())
    assert side["model_kind"] == "sequence" and side["preprocessing"]["chars"] == V.CHAR_VOCAB
    assert side["input"]["dtype"] == "int32" and side["output"]["shape"][1:] == [fx.SEQ_LEN, V.VOCAB_SIZE]
    assert "Text model" in (text_run / "export" / "report.md").read_text()

    art = load_run(text_run)
    x = art.data.test[0]
    np.save(tmp_path / "tokens.npy", x)
    ref = keras_probabilities(art.model, x, art.outputs)
    for model in (text_run / "export" / "model_float32.tflite", text_run / "model" / "model.keras"):
        out = tmp_path / f"{model.stem}.npz"
        predict_file(model, tmp_path / "tokens.npy", out, quiet=True)
        with np.load(out, allow_pickle=False) as f:
            assert f["probs"].shape == ref.shape and np.abs(f["probs"] - ref).max() < 1e-5
            assert np.array_equal(f["pred"], ref.argmax(-1)) and f["label"].shape == x.shape
    proc = run_cli(
        "predict",
        text_run / "export" / "model_int8.tflite",
        tmp_path / "tokens.npy",
        "--out",
        tmp_path / "p.csv",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "index,pred,label,prob" and len(rows) == len(x) + 1

    bad = x.copy()
    bad[1, 2] = V.VOCAB_SIZE
    np.save(tmp_path / "bad.npy", bad)
    assert_user_error(
        run_cli(
            "predict", text_run / "export" / "model_float32.tflite", tmp_path / "bad.npy", "--out", tmp_path / "q.npz"
        ),
        "example 1",
        "token id outside 0..89",
    )
    assert_user_error(run_cli("export", text_run, "--quantize", "float16"), "--quantize", "LSTM", "gru")


def test_cli_missing_cache_file_exits_2_naming_it(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "run",
        "experiments/emnist62_cnn.yaml",
        "--out",
        run_dir,
        "--set",
        f"data.cache_dir={tmp_path}",
        "--quiet",
        timeout=300,
    )
    assert_user_error(proc, str(tmp_path / "emnist_all.sqlite"), "never downloads")
    assert not run_dir.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
