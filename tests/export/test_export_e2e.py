"""End to end on a real (tiny) federated run: run -> export all -> report -> predict."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tff_lab import cli

TINY_DEFAULT = [
    "training.rounds=12",
    "training.eval_every_rounds=6",
    "training.rounds_per_checkpoint=6",
    "centralized.enabled=false",
]


@pytest.mark.slow
def test_export_a_real_federated_run(tmp_path, capfd):
    from tff_lab import run_experiment
    from tff_lab.config import config_hash, load_config
    from tff_lab.data import load_federated_data

    run = tmp_path / "run"
    summary = run_experiment(None, run, overrides=TINY_DEFAULT, quiet=True)
    assert (run / "model" / "model.keras").is_file()

    assert cli.main(["export", str(run), "--quantize", "all", "--latency-runs", "20"]) == 0
    printed = capfd.readouterr().out
    for variant in ("float32", "dynamic", "float16", "int8"):
        assert (run / "export" / f"model_{variant}.tflite").is_file() and variant in printed
    rep = json.loads((run / "export" / "report.json").read_text())
    cfg = load_config(run / "config.yaml")
    assert rep["source"]["config_hash"] == config_hash(cfg) == summary["config_hash"]
    v = rep["variants"]
    # the bars, on the federated model
    assert v["float32"]["parity"]["max_abs_diff"] <= 1e-4 and v["float32"]["parity"]["top1_agreement"] == 1.0
    assert v["int8"]["size_vs_float32"] <= 0.35 and v["int8"]["parity"]["top1_agreement"] >= 0.98
    # the report's Keras accuracy is the run's own final test accuracy
    assert rep["keras"]["test_accuracy"] == pytest.approx(summary["final_test_accuracy"], abs=1e-6)
    spread = summary["per_client_eval_accuracy"]
    assert rep["keras"]["clients"]["evaluated"] == spread["clients"]
    assert rep["keras"]["clients"]["lowest_accuracy"]["accuracy"] == pytest.approx(spread["min"], abs=1e-6)
    assert (run / "export" / "report.md").read_text().count("\n| ") == 5  # header + 4 variants

    # batch prediction with the run's Keras model and its int8 export on raw pixels agree
    data = load_federated_data(cfg)
    np.save(tmp_path / "raw.npy", data.test[0] * 16)
    assert (
        cli.main(
            [
                "predict",
                str(run / "model" / "model.keras"),
                str(tmp_path / "raw.npy"),
                "--out",
                str(tmp_path / "k.npz"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "predict",
                str(run / "export" / "model_int8.tflite"),
                str(tmp_path / "raw.npy"),
                "--out",
                str(tmp_path / "q.npz"),
                "--quiet",
            ]
        )
        == 0
    )
    with np.load(tmp_path / "k.npz") as k, np.load(tmp_path / "q.npz") as q:
        assert np.mean(k["pred"] == data.test[1]) == pytest.approx(summary["final_test_accuracy"], abs=1e-6)
        assert np.mean(k["pred"] == q["pred"]) == pytest.approx(v["int8"]["parity"]["top1_agreement"])
