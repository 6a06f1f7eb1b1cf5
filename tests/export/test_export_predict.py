"""`tff-lab predict`: Keras (.keras, SavedModel) and .tflite models on .npy/.npz/.csv inputs."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tff_lab import cli
from tff_lab.errors import ConfigError, DataError
from tff_lab.export.predict import load_input, predict_file, write_predictions


@pytest.fixture(scope="module")
def raw_inputs(reference, tmp_path_factory):
    d = tmp_path_factory.mktemp("predict_inputs")
    raw = reference["raw_test"]
    np.save(d / "raw.npy", raw)
    np.savez(d / "raw.npz", x=raw, y=reference["y_test"])
    np.savez(d / "two.npz", a=raw, b=raw)
    with open(d / "raw.csv", "w") as f:
        f.write(",".join(f"pixel_{i}" for i in range(64)) + "\n")  # a header row
        np.savetxt(f, raw, delimiter=",", fmt="%g")
    return d


def _read_csv(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_predict_tflite_matches_keras(exported_run, reference, raw_inputs, tmp_path, capsys):
    out = tmp_path / "pred.npz"
    assert (
        cli.main(["predict", str(exported_run["paths"]["float32"]), str(raw_inputs / "raw.npy"), "--out", str(out)])
        == 0
    )
    err = capsys.readouterr().err
    assert "predict" in err and "examples/s" in err and "359/359" in err  # progress bar and throughput
    with np.load(out, allow_pickle=False) as f:
        probs, pred, label, labels = f["probs"], f["pred"], f["label"], f["labels"]
    assert probs.shape == (359, 10) and probs.dtype == np.float32
    assert np.abs(probs - reference["keras_test"]).max() <= 1e-4
    assert np.array_equal(pred, reference["keras_test"].argmax(1))
    assert list(labels) == [str(i) for i in range(10)] and np.array_equal(label, labels[pred])


def test_predict_keras_model_uses_the_runs_preprocessing(trained_run, reference, raw_inputs, tmp_path, capsys):
    out = tmp_path / "pred.npz"
    res = predict_file(trained_run / "model" / "model.keras", raw_inputs / "raw.npz", out, batch_size=100, quiet=True)
    assert res["examples"] == 359 and res["backend"] == "keras" and res["notes"] == []
    assert capsys.readouterr().err == ""  # --quiet: no bar
    with np.load(out, allow_pickle=False) as f:
        assert np.abs(f["probs"] - reference["keras_test"]).max() <= 1e-5


def test_predict_savedmodel_directory(trained_run, reference, raw_inputs, tmp_path):
    """RUN_DIR/model/saved_model as the runner writes it (tf.saved_model.save of the Keras model)."""
    import shutil

    import tensorflow as tf
    from tff_lab_tests_edge_run_fixture import copy_run

    run = copy_run(trained_run, tmp_path / "run")
    model = tf.keras.models.load_model(run / "model" / "model.keras", compile=False)
    tf.saved_model.save(model, str(run / "model" / "saved_model"))
    out = tmp_path / "pred.csv"
    predict_file(run / "model" / "saved_model", raw_inputs / "raw.npy", out, quiet=True)
    header, rows = _read_csv(out)
    assert header == ["index", "pred", "label"] + [f"p_{i}" for i in range(10)]
    probs = np.array([[float(v) for v in r[3:]] for r in rows], np.float32)
    assert np.abs(probs - reference["keras_test"]).max() <= 1e-5
    assert [int(r[1]) for r in rows] == list(reference["keras_test"].argmax(1))
    shutil.rmtree(run)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_predict_int8_batches_and_csv(exported_run, reference, raw_inputs, tmp_path, batch_size):
    """Any batch size gives the same predictions (resize_tensor_input per batch)."""
    out = tmp_path / "pred.csv"
    predict_file(exported_run["paths"]["int8"], raw_inputs / "raw.csv", out, batch_size=batch_size, quiet=True)
    header, rows = _read_csv(out)
    assert len(rows) == 359
    from tff_lab.export.tflite_model import TFLiteModel

    want = TFLiteModel(exported_run["paths"]["int8"]).predict(reference["x_test"], preprocess=False)
    got = np.array([[float(v) for v in r[3:]] for r in rows], np.float32)
    assert np.abs(got - want).max() <= 1e-6
    assert [r[2] for r in rows] == [str(k) for k in want.argmax(1)]


def test_no_preprocess_takes_model_inputs(exported_run, reference, tmp_path):
    np.save(tmp_path / "pre.npy", reference["x_test"])
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert (
        cli.main(
            [
                "predict",
                str(exported_run["paths"]["float16"]),
                str(tmp_path / "pre.npy"),
                "--out",
                str(a),
                "--no-preprocess",
                "--quiet",
            ]
        )
        == 0
    )
    np.save(tmp_path / "raw.npy", reference["raw_test"])
    assert (
        cli.main(
            ["predict", str(exported_run["paths"]["float16"]), str(tmp_path / "raw.npy"), "--out", str(b), "--quiet"]
        )
        == 0
    )
    with np.load(a) as fa, np.load(b) as fb:
        assert np.allclose(fa["probs"], fb["probs"], atol=1e-6)


def test_load_input_variants(raw_inputs, reference, tmp_path):
    raw = reference["raw_test"]
    assert np.array_equal(load_input(raw_inputs / "raw.npz"), raw)  # 'x' among several arrays
    assert np.array_equal(load_input(raw_inputs / "two.npz", key="b"), raw)
    assert np.allclose(load_input(raw_inputs / "raw.csv"), raw)  # header row skipped
    with pytest.raises(DataError, match="expected an array 'x'.*a, b"):
        load_input(raw_inputs / "two.npz")
    with pytest.raises(DataError, match="no array 'z'"):
        load_input(raw_inputs / "two.npz", key="z")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled"):
        load_input(tmp_path / "obj.npy")
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported input type"):
        load_input(tmp_path / "x.txt")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_input(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="not found"):
        load_input(tmp_path / "missing.npy")


def test_write_predictions_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ConfigError, match="unsupported output type"):
        write_predictions(tmp_path / "p.json", np.eye(3, dtype=np.float32), ["a", "b", "c"])


def test_large_input_streams_through_a_memmap(exported_run, reference, tmp_path):
    """A 20k-example .npy is read memory-mapped and predicted batch by batch."""
    big = np.tile(reference["raw_test"], (56, 1))
    np.save(tmp_path / "big.npy", big)
    res = predict_file(
        exported_run["paths"]["int8"], tmp_path / "big.npy", tmp_path / "big.npz", batch_size=512, quiet=True
    )
    assert res["examples"] == len(big) == 20104 and res["examples_per_s"] > 0
    with np.load(tmp_path / "big.npz") as f:
        assert np.array_equal(f["pred"][:359], f["pred"][359:718])


def test_per_feature_preprocessing(bc_exported, tmp_path):
    """Breast cancer: standardized features; the sidecar holds one offset and scale per feature."""
    side = bc_exported["sidecars"]["float32"]
    pre = side["preprocessing"]
    assert len(pre["offset"]) == len(pre["scale"]) == 30 and side["labels"] == ["malignant", "benign"]
    raw = bc_exported["raw_test"]
    assert raw.std(axis=0).max() > 100  # really raw (unstandardized) features
    np.save(tmp_path / "raw.npy", raw)
    keras = bc_exported["keras_test"]
    predict_file(bc_exported["paths"]["float32"], tmp_path / "raw.npy", tmp_path / "f.npz", quiet=True)
    predict_file(bc_exported["run_dir"] / "model" / "model.keras", tmp_path / "raw.npy", tmp_path / "k.npz", quiet=True)
    predict_file(bc_exported["paths"]["int8"], tmp_path / "raw.npy", tmp_path / "q.npz", quiet=True)
    with np.load(tmp_path / "f.npz") as f, np.load(tmp_path / "k.npz") as k, np.load(tmp_path / "q.npz") as q:
        assert np.abs(f["probs"] - keras).max() <= 1e-4
        assert np.abs(k["probs"] - keras).max() <= 1e-4
        assert np.mean(q["pred"] == keras.argmax(1)) >= 0.97
        assert set(f["label"]) <= {"malignant", "benign"}


def test_models_without_sidecar_or_run_say_so(exported_run, trained_run, reference, tmp_path, capsys):
    """No sidecar (or a Keras model outside a RUN_DIR): inputs go in as they are, and a note says so."""
    import shutil

    shutil.copy(exported_run["paths"]["int8"], tmp_path / "bare.tflite")
    shutil.copy(trained_run / "model" / "model.keras", tmp_path / "bare.keras")
    np.save(tmp_path / "pre.npy", reference["x_test"])
    for name in ("bare.tflite", "bare.keras"):
        assert (
            cli.main(["predict", str(tmp_path / name), str(tmp_path / "pre.npy"), "--out", str(tmp_path / "p.npz")])
            == 0
        )
        err = capsys.readouterr().err
        assert "tff-lab predict: note: no " in err and ("sidecar" in err)
        with np.load(tmp_path / "p.npz") as f:
            assert np.mean(f["pred"] == reference["keras_test"].argmax(1)) >= 0.98
            assert list(f["labels"]) == [str(i) for i in range(10)]
    # the sidecar can be given explicitly: raw pixels then work for the bare Keras model too
    np.save(tmp_path / "raw.npy", reference["raw_test"])
    assert (
        cli.main(
            [
                "predict",
                str(tmp_path / "bare.keras"),
                str(tmp_path / "raw.npy"),
                "--out",
                str(tmp_path / "q.npz"),
                "--quiet",
                "--sidecar",
                str(exported_run["paths"]["float32"].with_suffix(".json")),
            ]
        )
        == 0
    )
    with np.load(tmp_path / "q.npz") as f:
        assert np.abs(f["probs"] - reference["keras_test"]).max() <= 1e-5
