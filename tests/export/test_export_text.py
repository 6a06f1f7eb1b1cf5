"""Text models (int32 token ids in, a distribution per position out) convert and run like Keras."""

from __future__ import annotations

import numpy as np
import pytest

from tff_lab.errors import ConfigError
from tff_lab.export.convert import convert_keras_model, keras_probabilities
from tff_lab.export.tflite_model import TFLiteModel


def _model(cell):
    import tensorflow as tf

    from tff_lab.tasks.shakespeare import build_char_rnn

    tf.keras.utils.set_random_seed(3)
    return build_char_rnn((10,), 90, embedding_dim=4, units=8, num_layers=2, cell=cell)


@pytest.mark.parametrize("cell,quantization", [("lstm", "float32"), ("gru", "float16")])
def test_token_model_matches_keras_example_after_example(tmp_path, cell, quantization):
    model = _model(cell)
    x = np.random.default_rng(0).integers(0, 90, (5, 10)).astype(np.int32)
    path = tmp_path / "m.tflite"
    path.write_bytes(convert_keras_model(model, quantization, outputs="logits"))
    m = TFLiteModel(path)
    assert m.tokens and m.fixed_batch == 1 and m.output_shape == (10, 90) and m.input_dtype == np.int32
    got = m.predict(x, batch_size=4)
    ref = keras_probabilities(model, x, "logits")  # the .tflite adds the softmax
    # LSTM state is reset before every call: example 5 does not start from example 4's final state
    assert np.abs(got - ref).max() < (1e-5 if quantization == "float32" else 1e-3)
    assert np.array_equal(got.argmax(-1), ref.argmax(-1))


def test_lstm_float16_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="float16 of an LSTM hangs"):
        convert_keras_model(_model("lstm"), "float16", outputs="logits")
