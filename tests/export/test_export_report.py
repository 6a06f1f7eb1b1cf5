"""The parity report: numbers recomputed independently, files, merging, the metric definitions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tff_lab.export.report import client_summary, parity, to_markdown
from tff_lab.export.tflite_model import TFLiteModel


def test_parity_definitions():
    ref = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]], np.float32)
    got = np.array([[0.6, 0.3, 0.1], [0.1, 0.4, 0.5]], np.float32)
    p = parity(got, ref)
    assert p["max_abs_diff"] == pytest.approx(0.1, abs=1e-6)
    # per example max|diff| / max|ref|: 0.1/0.7 and 0.1/0.5 -> 0.2
    assert p["max_rel_diff"] == pytest.approx(0.2, abs=1e-6)
    assert p["top1_agreement"] == 0.5 and p["top1_disagreements"] == 1 and p["examples"] == 2


def test_client_summary_worst_drop_and_lowest():
    ids = ["a", "b", "c", "d"]
    counts = [10, 4, 0, 5]
    ref = [0.9, 1.0, None, 0.6]
    got = [0.9, 0.75, None, 0.6]
    s = client_summary(ids, counts, got, ref)
    assert s["evaluated"] == 3 and s["examples"] == 19
    assert s["mean_drop"] == pytest.approx(0.25 / 3)
    assert s["worst_drop"] == {"client": "b", "drop": 0.25, "accuracy": 0.75, "keras_accuracy": 1.0, "examples": 4}
    assert s["lowest_accuracy"]["client"] == "d" and s["lowest_accuracy"]["accuracy"] == 0.6
    assert s["accuracy_weighted"] == pytest.approx((9 + 3 + 3) / 19)
    assert s["clients_with_drop"] == 1
    assert client_summary(["a"], [0], [None]) == {"evaluated": 0}


def test_report_files(exported_run, trained_run):
    export_dir = trained_run / "export"
    rep = json.loads((export_dir / "report.json").read_text())
    assert rep == json.loads(json.dumps(exported_run["report"]))
    assert list(rep["variants"]) == ["float32", "dynamic", "float16", "int8"]
    md = (export_dir / "report.md").read_text()
    assert md.startswith("# Export report: default")
    rows = [l for l in md.splitlines() if l.startswith("| ") and not l.startswith("| variant")]
    assert [r.split("|")[1].strip() for r in rows] == ["float32", "dynamic", "float16", "int8"]
    assert rep["source"]["config_hash"] == exported_run["sidecars"]["int8"]["source"]["config_hash"]
    assert rep["interpreter"]["backend"].startswith("tensorflow.lite 2.14") and rep["interpreter"]["num_threads"] == 1
    # atomic writes leave no temporary files behind
    assert not [p.name for p in export_dir.iterdir() if p.name.startswith(".")]


def test_report_numbers_match_an_independent_evaluation(exported_run, reference):
    rep = exported_run["report"]
    art = reference["art"]
    data = art.data
    k_acc = np.mean(reference["keras_test"].argmax(1) == reference["y_test"])
    assert rep["keras"]["test_accuracy"] == pytest.approx(k_acc)
    assert rep["data"] == {
        "test_examples": 359,
        "clients": 20,
        "clients_evaluated": 20,
        "client_eval_examples": sum(len(data.eval[c][1]) for c in data.client_ids),
        "num_classes": 10,
    }
    for variant, v in rep["variants"].items():
        m = TFLiteModel(exported_run["paths"][variant])
        probs = m.predict(reference["x_test"], preprocess=False)
        diff = np.abs(probs - reference["keras_test"])
        assert v["parity"]["max_abs_diff"] == pytest.approx(diff.max(), rel=1e-5, abs=1e-9)
        assert v["parity"]["top1_agreement"] == pytest.approx(
            np.mean(probs.argmax(1) == reference["keras_test"].argmax(1))
        )
        acc = np.mean(probs.argmax(1) == reference["y_test"])
        assert v["accuracy"]["test"] == pytest.approx(acc)
        assert v["accuracy"]["test_drop"] == pytest.approx(k_acc - acc)
        # federated evaluation, client by client
        drops, accs = {}, {}
        for c in data.client_ids:
            ex, ey = data.eval[c]
            kp = art.model.predict(ex, verbose=0).argmax(1)
            tp = m.predict(ex, preprocess=False).argmax(1)
            accs[c] = np.mean(tp == ey)
            drops[c] = np.mean(kp == ey) - accs[c]
        clients = v["accuracy"]["clients"]
        assert clients["evaluated"] == 20
        assert clients["mean_drop"] == pytest.approx(np.mean(list(drops.values())))
        assert clients["worst_drop"]["drop"] == pytest.approx(max(drops.values()))
        assert drops[clients["worst_drop"]["client"]] == pytest.approx(max(drops.values()))
        assert clients["lowest_accuracy"]["accuracy"] == pytest.approx(min(accs.values()))
        assert v["size_bytes"] == exported_run["paths"][variant].stat().st_size
        assert v["size_vs_float32"] == pytest.approx(v["size_bytes"] / rep["variants"]["float32"]["size_bytes"])
        for lat in v["latency"].values():
            assert 0 < lat["p50_ms"] <= lat["p95_ms"] and lat["throughput_per_s"] > 0
        assert v["latency"]["batch_1"]["batch_size"] == 1 and v["latency"]["batch_64"]["batch_size"] == 64
    assert rep["variants"]["float32"]["parity"]["max_abs_diff"] <= 1e-4
    assert rep["variants"]["float32"]["parity"]["top1_agreement"] == 1.0
    assert rep["variants"]["int8"]["size_vs_float32"] <= 0.35
    assert rep["variants"]["int8"]["parity"]["top1_agreement"] >= 0.98


def test_markdown_formats_drops_and_worst_client():
    v = {
        "size_bytes": 2048,
        "size_vs_float32": 0.5,
        "parity": {"max_abs_diff": 0.01, "max_rel_diff": 0.02, "top1_agreement": 0.99},
        "accuracy": {
            "test": 0.95,
            "test_drop": 0.01,
            "clients": {
                "mean_drop": 0.004,
                "worst_drop": {"client": "client_07", "drop": 0.0667},
                "lowest_accuracy": {"client": "client_03", "accuracy": 0.8},
            },
        },
        "latency": {
            "batch_1": {"p50_ms": 0.002, "p95_ms": 0.003},
            "batch_64": {"p50_ms": 0.015, "throughput_per_s": 4.2e6},
        },
    }
    rep = {
        "source": {
            "experiment": "e",
            "run_dir": "/r",
            "config_hash": "h",
            "model": "model/model.keras",
            "model_sha256": "0" * 64,
        },
        "data": {"test_examples": 10, "clients_evaluated": 2, "client_eval_examples": 8},
        "keras": {"test_accuracy": 0.96},
        "interpreter": {"backend": "x", "num_threads": 1, "latency_batch": 64, "machine": "m"},
        "variants": {"int8": v},
    }
    row = [l for l in to_markdown(rep).splitlines() if l.startswith("| int8")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["int8", "2.0 KiB", "0.500", "1.00e-02", "2.00e-02"]
    assert cells[5:11] == ["99.00%", "95.00%", "+1.00 pp", "+0.40 pp", "+6.67 pp (client_07)", "80.00% (client_03)"]
    assert cells[11:] == ["2.0 µs", "3.0 µs", "0.015 ms", "4,200,000/s"]
    v["accuracy"]["clients"]["worst_drop"]["drop"] = 0.0
    assert "(no client drops)" in to_markdown(rep)


def test_report_merges_separate_exports(trained_run, tmp_path):
    """`--quantize float32` then `--quantize int8`: one report with both; a changed model resets it."""
    import shutil

    from tff_lab_tests_edge_run_fixture import copy_run

    from tff_lab.export import export_run

    run = copy_run(trained_run, tmp_path / "run")
    export_run(run, "float32", latency_runs=5)
    rep = export_run(run, "int8", latency_runs=5)["report"]
    assert list(rep["variants"]) == ["float32", "int8"]
    assert rep["variants"]["int8"]["size_vs_float32"] == pytest.approx(
        (run / "export/model_int8.tflite").stat().st_size / (run / "export/model_float32.tflite").stat().st_size
    )
    on_disk = json.loads((run / "export/report.json").read_text())
    assert list(on_disk["variants"]) == ["float32", "int8"]
    # a file changed after export is not carried over
    (run / "export/model_float32.tflite").write_bytes(b"changed")
    rep = export_run(run, "float16", latency_runs=5)["report"]
    assert list(rep["variants"]) == ["float16", "int8"]
    # a different model (another run's) starts a fresh report
    import tensorflow as tf

    m = tf.keras.models.load_model(run / "model/model.keras", compile=False)
    m.set_weights([w * 0.5 for w in m.get_weights()])
    m.save(run / "model/model.keras")
    rep = export_run(run, "dynamic", latency_runs=5)["report"]
    assert list(rep["variants"]) == ["dynamic"]
    shutil.rmtree(run)
