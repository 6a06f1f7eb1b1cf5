"""Conversion of each quantization: the issue's bars, signature, sidecar, representative data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from tff_lab.errors import ConfigError, DataError
from tff_lab.export.convert import (
    QUANTIZATIONS,
    convert_keras_model,
    export_artifacts,
    parse_quantize,
    representative_examples,
)
from tff_lab.export.tflite_model import TFLiteModel


def _tflite_probs(path, x):
    return TFLiteModel(path).predict(x, preprocess=False)


def test_parse_quantize():
    assert parse_quantize("all") == list(QUANTIZATIONS)
    assert parse_quantize("int8,float32") == ["float32", "int8"]
    assert parse_quantize(["float16", "float16"]) == ["float16"]
    with pytest.raises(ConfigError, match=r"unknown quantization 'int4'.*float32, dynamic, float16, int8, all"):
        parse_quantize("int4")
    with pytest.raises(ConfigError):
        parse_quantize(" , ")


def test_float32_bar(exported_run, reference):
    """float32: max abs difference <= 1e-4 and 100 % top-1 agreement with Keras (computed here, not read)."""
    probs = _tflite_probs(exported_run["paths"]["float32"], reference["x_test"])
    k = reference["keras_test"]
    assert np.abs(probs - k).max() <= 1e-4
    assert np.array_equal(probs.argmax(1), k.argmax(1))
    assert len(k) == 359  # the whole global test set of digits (20 %)


def test_int8_bar(exported_run, reference):
    """int8: size <= 0.35 x float32 and top-1 agreement >= 98 %; the model is fully integer."""
    paths = exported_run["paths"]
    size32, size8 = paths["float32"].stat().st_size, paths["int8"].stat().st_size
    assert size8 <= 0.35 * size32, (size8, size32)
    m = TFLiteModel(paths["int8"])
    assert m.input_dtype == np.int8 and m.output_dtype == np.int8
    probs = m.predict(reference["x_test"], preprocess=False)
    agree = np.mean(probs.argmax(1) == reference["keras_test"].argmax(1))
    assert agree >= 0.98, agree
    # int8 outputs are multiples of the output scale (1/256 for softmax): really quantized.
    scale, zp = m.output_quant
    assert scale == pytest.approx(1 / 256)
    q = probs / scale
    assert np.allclose(q, np.round(q), atol=1e-3)
    # every weight tensor of the fully-integer model is int8/int32 (biases), none float32
    kinds = {np.dtype(t["dtype"]).name for t in m.interpreter.get_tensor_details()}
    assert "float32" not in kinds, kinds


@pytest.mark.parametrize("variant, max_abs, min_agree", [("dynamic", 0.1, 0.98), ("float16", 1e-2, 0.99)])
def test_dynamic_and_float16(exported_run, reference, variant, max_abs, min_agree):
    path = exported_run["paths"][variant]
    m = TFLiteModel(path)
    assert m.input_dtype == np.float32 and m.output_dtype == np.float32  # float I/O, smaller weights
    assert path.stat().st_size < 0.6 * exported_run["paths"]["float32"].stat().st_size
    probs = m.predict(reference["x_test"], preprocess=False)
    assert np.abs(probs - reference["keras_test"]).max() <= max_abs
    assert np.mean(probs.argmax(1) == reference["keras_test"].argmax(1)) >= min_agree


@pytest.mark.parametrize("variant", QUANTIZATIONS)
def test_named_signature(exported_run, variant):
    m = TFLiteModel(exported_run["paths"][variant])
    assert m.signatures == {"serving_default": {"inputs": ["x"], "outputs": ["probs"]}}
    runner = m.interpreter.get_signature_runner("serving_default")
    out = runner(x=np.zeros((3, 64), m.input_dtype))
    assert set(out) == {"probs"} and out["probs"].shape == (3, 10)


def test_sidecar_contents(exported_run, trained_run):
    from tff_lab.config import config_hash, load_config

    want_hash = config_hash(load_config(trained_run / "config.yaml"))
    model_sha = hashlib.sha256((trained_run / "model" / "model.keras").read_bytes()).hexdigest()
    for variant, path in exported_run["paths"].items():
        side = json.loads(path.with_suffix(".json").read_text())
        assert side["format"] == "tff_lab.tflite-sidecar/1"
        assert side["model_file"] == path.name
        assert side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert side["size_bytes"] == path.stat().st_size
        assert side["labels"] == [str(i) for i in range(10)] and side["num_classes"] == 10
        assert side["signature"] == {"key": "serving_default", "inputs": ["x"], "outputs": ["probs"]}
        assert side["input"]["shape"] == [None, 64] and side["output"]["shape"] == [None, 10]
        assert side["preprocessing"]["offset"] == 0.0 and side["preprocessing"]["scale"] == 1 / 16
        assert side["source"]["config_hash"] == want_hash
        assert side["source"]["run_dir"] == str(trained_run.resolve())
        assert side["source"]["model_sha256"] == model_sha
        m = TFLiteModel(path)
        if variant == "int8":
            assert side["input"]["dtype"] == "int8" and side["output"]["dtype"] == "int8"
            assert (
                side["input"]["quantization"]["scale"],
                side["input"]["quantization"]["zero_point"],
            ) == pytest.approx(m.input_quant)
            assert (
                side["output"]["quantization"]["scale"],
                side["output"]["quantization"]["zero_point"],
            ) == pytest.approx(m.output_quant)
            rep = side["representative_data"]
            assert rep["examples"] == 500 and rep["clients"] == 20 and rep["seed"] == 0
            assert sum(rep["per_client"].values()) == 500
        else:
            assert side["input"]["dtype"] == "float32" and side["input"]["quantization"] is None
            assert "representative_data" not in side


def test_representative_examples_round_robin_and_seeded(reference):
    data = reference["art"].data
    x, counts = representative_examples(data, 100, seed=0)
    assert x.shape == (100, 64) and x.dtype == np.float32
    assert sum(counts.values()) == 100 and len(counts) == 20 and set(counts.values()) == {5}
    x2, _ = representative_examples(data, 100, seed=0)
    x3, _ = representative_examples(data, 100, seed=1)
    assert np.array_equal(x, x2) and not np.array_equal(x, x3)
    # every drawn row is a clients' training example (never eval or test data)
    pool = {r.tobytes() for c in data.client_ids for r in data.train[c][0]}
    assert all(r.tobytes() in pool for r in x)
    # more than there is: every training example once; small clients are exhausted first
    total = sum(len(data.train[c][1]) for c in data.client_ids)
    xa, ca = representative_examples(data, 10**6, seed=0)
    assert len(xa) == total and ca == {c: len(data.train[c][1]) for c in data.client_ids}


def test_int8_without_representative_data(reference):
    art = reference["art"]
    with pytest.raises(DataError, match="needs representative data"):
        convert_keras_model(art.model, "int8", representative=None)
    with pytest.raises(DataError, match="needs representative data"):
        convert_keras_model(art.model, "int8", representative=np.zeros((0, 64), np.float32))
    import dataclasses

    empty = dataclasses.replace(art.data, train={c: (v[0][:0], v[1][:0]) for c, v in art.data.train.items()})
    with pytest.raises(DataError, match="clients hold no training examples"):
        representative_examples(empty, 10)
    with pytest.raises(ConfigError, match="unknown quantization"):
        convert_keras_model(art.model, "int4")


def test_int8_float_io(reference, tmp_path):
    """--int8-io float: int8 weights and kernels, float32 input/output (quantize/dequantize inside)."""
    art = reference["art"]
    (res,) = export_artifacts(art, ["int8"], out=tmp_path, int8_io="float")
    assert res.path == tmp_path / "model_int8_float_io.tflite" and res.variant == "int8_float_io"
    m = TFLiteModel(res.path)
    assert m.input_dtype == np.float32 and m.output_dtype == np.float32
    assert res.sidecar["input"]["quantization"] is None and res.sidecar["quantization"] == "int8"
    kinds = {np.dtype(t["dtype"]).name for t in m.interpreter.get_tensor_details()}
    assert "int8" in kinds
    probs = m.predict(reference["x_test"], preprocess=False)
    assert np.mean(probs.argmax(1) == reference["keras_test"].argmax(1)) >= 0.98


def test_conversion_is_deterministic(exported_run, reference):
    """Same model and seed -> byte-identical files (int8 calibration included)."""
    art = reference["art"]
    rep, _ = representative_examples(art.data, 500, art.cfg.seed)
    for variant in ("float32", "int8"):
        data = convert_keras_model(art.model, variant, representative=rep if variant == "int8" else None)
        assert data == exported_run["paths"][variant].read_bytes(), variant


def test_raw_inputs_apply_the_sidecar_preprocessing(exported_run, reference):
    """Raw pixels (0..16) through the sidecar's (raw - offset) * scale == preprocessed inputs."""
    m = TFLiteModel(exported_run["paths"]["int8"])
    a = m.predict(reference["raw_test"])  # preprocess=True
    b = m.predict(reference["x_test"], preprocess=False)
    assert np.array_equal(a, b)
    c = m.predict(reference["raw_test"], preprocess=False)  # raw fed as model input: wrong, and visibly so
    assert np.mean(c.argmax(1) == b.argmax(1)) < 0.9
