"""`tff-lab export --format onnx`: model.onnx (tf2onnx) with the TFLite sidecar, parity with Keras in ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tff_lab import cli
from tff_lab.errors import ConfigError, DataError
from tff_lab.export.onnx_model import ONNXModel, convert_keras_to_onnx


@pytest.fixture(scope="module")
def onnx_run(trained_run, tmp_path_factory):
    """A copy of the digits MLP run, exported to TFLite float32 and then to ONNX: one report with both."""
    from tff_lab_tests_edge_run_fixture import copy_run

    from tff_lab.export import export_run

    run = copy_run(trained_run, tmp_path_factory.mktemp("onnx") / "run")
    export_run(run, "float32", latency_runs=5)
    res = export_run(run, "all", format="onnx", latency_runs=20)
    return {"run": run, "res": res, "report": res["report"]}


def _user_error(capsys, argv, *needles):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if l]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("tff-lab: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_digits_mlp_float32_parity_and_report(onnx_run, reference):
    import onnxruntime

    rep = onnx_run["report"]
    (r,) = onnx_run["res"]["exports"]
    assert r.variant == "onnx" and r.path == onnx_run["run"] / "export" / "model.onnx" and r.path.is_file()
    assert list(rep["variants"]) == ["float32", "onnx"]  # the TFLite export before is kept
    v = rep["variants"]["onnx"]
    assert v["format"] == "onnx" and v["backend"] == f"onnxruntime {onnxruntime.__version__}"
    assert rep["variants"]["float32"]["format"] == "tflite"
    assert v["parity"]["examples"] == len(reference["y_test"]) == 359
    assert v["parity"]["max_abs_diff"] <= 1e-5 and v["parity"]["top1_agreement"] == 1.0
    assert v["parity"]["top1_disagreements"] == 0
    # same top-1 everywhere -> the same accuracy on the test set and on every client
    assert v["accuracy"]["test"] == rep["keras"]["test_accuracy"] and v["accuracy"]["test_drop"] == 0
    c = v["accuracy"]["clients"]
    assert c["evaluated"] == 20 and c["mean_drop"] == 0 and c["worst_drop"]["drop"] == 0
    assert c["clients_with_drop"] == 0
    assert v["size_bytes"] == r.path.stat().st_size
    assert v["size_vs_float32"] == pytest.approx(v["size_bytes"] / rep["variants"]["float32"]["size_bytes"])
    for key, batch in (("batch_1", 1), ("batch_64", 64)):
        lat = v["latency"][key]
        assert lat["batch_size"] == batch and 0 < lat["p50_ms"] <= lat["p95_ms"]
        assert lat["throughput_per_s"] == pytest.approx(batch / (lat["p50_ms"] / 1e3))
    assert v["latency"]["batch_1"]["runs"] == 20
    assert "onnxruntime" in rep["interpreter"]["backend"] and "tensorflow.lite" in rep["interpreter"]["backend"]
    md = (onnx_run["run"] / "export" / "report.md").read_text()
    row = next(l for l in md.splitlines() if l.startswith("| onnx |"))
    assert "100.00%" in row


def test_sidecar_is_the_tflite_sidecar(onnx_run):
    export = onnx_run["run"] / "export"
    side = json.loads((export / "model.json").read_text())
    tfl = json.loads((export / "model_float32.json").read_text())
    assert set(tfl) - set(side) == set()  # every field a .tflite's sidecar has
    for key in (
        "format",
        "labels",
        "num_classes",
        "preprocessing",
        "source",
        "signature",
        "model_kind",
        "keras_outputs",
        "quantization",
    ):
        assert side[key] == tfl[key], key
    assert side["model_file"] == "model.onnx" and side["variant"] == "onnx" and side["model_format"] == "onnx"
    assert side["input"] == {"name": "x", "shape": [None, 64], "dtype": "float32", "quantization": None}
    assert side["output"] == {"name": "probs", "shape": [None, 10], "dtype": "float32", "quantization": None}
    import hashlib

    data = (export / "model.onnx").read_bytes()
    assert side["sha256"] == hashlib.sha256(data).hexdigest() and side["size_bytes"] == len(data)
    import onnx

    proto = onnx.load_model_from_string(data)
    assert side["onnx"]["opset"] == 15 == next(o.version for o in proto.opset_import if o.domain == "")
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_the_same_model_gives_the_same_file(onnx_run):
    from tff_lab.export.convert import load_keras_model

    model = load_keras_model(onnx_run["run"] / "model" / "model.keras")
    first, second = convert_keras_to_onnx(model), convert_keras_to_onnx(model)
    assert first == second == (onnx_run["run"] / "export" / "model.onnx").read_bytes()


def test_onnx_model_on_raw_inputs_matches_keras_at_any_batch(onnx_run, reference):
    m = ONNXModel(onnx_run["run"] / "export" / "model.onnx", num_threads=1)
    assert m.fixed_batch is None and m.input_shape == (64,) and m.labels == [str(i) for i in range(10)]
    p100 = m.predict(reference["raw_test"], batch_size=100)  # the sidecar's preprocessing: raw / 16
    p1 = m.predict(reference["raw_test"][:37], batch_size=1)
    assert np.abs(p100 - reference["keras_test"]).max() <= 1e-5
    assert np.array_equal(p100.argmax(1), reference["keras_test"].argmax(1))
    assert np.abs(p1 - p100[:37]).max() <= 1e-6
    assert np.abs(m.predict(reference["x_test"], preprocess=False) - p100).max() <= 1e-6


def test_cli_export_onnx_to_a_file(onnx_run, tmp_path, capsys):
    out = tmp_path / "edge" / "digits.onnx"
    assert cli.main(["export", str(onnx_run["run"]), "--format", "onnx", "--out", str(out), "--latency-runs", "5"]) == 0
    printed = capsys.readouterr().out
    row = next(l for l in printed.splitlines() if l.startswith("onnx "))
    assert str(out) in row and "100.00%" in row
    side = json.loads((tmp_path / "edge" / "digits.json").read_text())
    assert side["model_file"] == "digits.onnx" and side["variant"] == "onnx"
    rep = json.loads((onnx_run["run"] / "export" / "report.json").read_text())
    assert rep["variants"]["onnx"]["file"] == str(out.resolve())


def test_cli_bad_format_flags(onnx_run, capsys):
    run = onnx_run["run"]
    _user_error(capsys, ["export", run, "--format", "coreml"], "--format", "unknown format 'coreml'", "tflite, onnx")
    _user_error(
        capsys,
        ["export", run, "--format", "onnx", "--quantize", "int8"],
        "--quantize",
        "'int8' is not available with --format onnx",
        "float32 only",
    )
    _user_error(
        capsys,
        ["export", run, "--format", "onnx", "--out", run / "m.tflite"],
        "--out",
        "--format onnx writes an .onnx file",
    )


def _fit(model, epochs=3):
    import tensorflow as tf

    from tff_lab.config import load_config
    from tff_lab.data import load_federated_data

    data = load_federated_data(load_config(None))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    x, y = data.union_train()
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return data


def test_cnn_converts_with_parity(tmp_path):
    import tensorflow as tf

    from tff_lab.models.zoo import build_cnn

    tf.keras.utils.set_random_seed(1)
    model = build_cnn((64,), 10, cnn_filters=(8, 16))
    data = _fit(model)
    path = tmp_path / "cnn.onnx"
    path.write_bytes(convert_keras_to_onnx(model))
    m = ONNXModel(path)
    tx = data.test[0]
    got, ref = m.predict(tx, preprocess=False, batch_size=128), model.predict(tx, verbose=0)
    assert np.abs(got - ref).max() <= 1e-5
    assert np.array_equal(got.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_char_rnn_converts_with_parity_at_any_batch(tmp_path, cell):
    """The Shakespeare model (embedding -> 2 LSTM/GRU -> logits per position) becomes ONNX's own LSTM/GRU ops,
    which start every call from a zero state: no fixed batch of 1 as in TFLite."""
    import onnx
    import tensorflow as tf

    from tff_lab.export.convert import keras_probabilities
    from tff_lab.tasks.shakespeare import build_char_rnn

    tf.keras.utils.set_random_seed(3)
    model = build_char_rnn((10,), 90, embedding_dim=4, units=8, num_layers=2, cell=cell)
    data = convert_keras_to_onnx(model, outputs="logits")
    ops = {n.op_type for n in onnx.load_model_from_string(data).graph.node}
    assert cell.upper() in ops
    (tmp_path / "m.onnx").write_bytes(data)
    m = ONNXModel(tmp_path / "m.onnx")
    assert m.tokens and m.fixed_batch is None and m.output_shape == (10, 90) and m.input_dtype == np.int32
    x = np.random.default_rng(0).integers(0, 90, (7, 10)).astype(np.int32)
    ref = keras_probabilities(model, x, "logits")  # the .onnx adds the softmax
    for batch in (1, 4, 7):
        got = m.predict(x, batch_size=batch)
        assert np.abs(got - ref).max() < 1e-5 and np.array_equal(got.argmax(-1), ref.argmax(-1))
    with pytest.raises(DataError, match="example 1 holds a token id outside 0..89"):
        m.predict(np.where(np.arange(7)[:, None] == 1, 90, x), batch_size=4)


def test_a_model_tf2onnx_cannot_convert_is_refused_in_one_line():
    import tensorflow as tf

    inp = tf.keras.Input((4,), name="x")
    out = tf.keras.layers.Lambda(lambda t: tf.nn.softmax(tf.math.igamma(t + 1.0, t + 2.0)))(inp)
    with pytest.raises(ConfigError, match=r"TensorFlow op\(s\) Igamma have no ONNX equivalent") as e:
        convert_keras_to_onnx(tf.keras.Model(inp, out))
    assert e.value.where == "--format" and "\n" not in e.value.message


def test_a_graph_frozen_to_one_batch_is_exported_with_batch_1(tmp_path):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((16,), name="x")
    h = tf.keras.layers.Lambda(lambda t: tf.reshape(t, [1, 16]))(inp)  # only runs at the traced batch
    model = tf.keras.Model(inp, tf.keras.layers.Dense(3, activation="softmax")(h))
    (tmp_path / "m.onnx").write_bytes(convert_keras_to_onnx(model))
    m = ONNXModel(tmp_path / "m.onnx")
    assert m.fixed_batch == 1
    x = np.random.default_rng(0).random((5, 16)).astype(np.float32)
    ref = np.concatenate([model.predict(x[i : i + 1], verbose=0) for i in range(5)])
    assert np.abs(m.predict(x, batch_size=4, preprocess=False) - ref).max() <= 1e-6


def test_bad_onnx_files_are_one_line_data_errors(onnx_run, tmp_path):
    good = (onnx_run["run"] / "export" / "model.onnx").read_bytes()
    side = (onnx_run["run"] / "export" / "model.json").read_text()
    (tmp_path / "sided.onnx").write_bytes(good[:-100])
    (tmp_path / "sided.json").write_text(side)
    with pytest.raises(DataError, match=f"sidecar's sha256 \\(truncated: {len(good) - 100} of {len(good)} bytes\\)"):
        ONNXModel(tmp_path / "sided.onnx")
    (tmp_path / "half.onnx").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="corrupt or truncated ONNX model"):
        ONNXModel(tmp_path / "half.onnx")
    (tmp_path / "tfl.onnx").write_bytes((onnx_run["run"] / "export" / "model_float32.tflite").read_bytes())
    with pytest.raises(DataError, match="not an ONNX model"):
        ONNXModel(tmp_path / "tfl.onnx")
    with pytest.raises(DataError, match="ONNX model file not found"):
        ONNXModel(tmp_path / "missing.onnx")
    m = ONNXModel(onnx_run["run"] / "export" / "model.onnx")
    with pytest.raises(DataError, match=r"wrong input shape: expected \(n, 64\)"):
        m.predict(np.zeros((3, 60), np.float32))
