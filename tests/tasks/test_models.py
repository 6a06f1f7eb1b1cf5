"""The tasks' models are TFF's (same architecture and parameter count); the masked accuracy is TFF's."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tff_lab.config import ModelConfig
from tff_lab.models import resolve_model
from tff_lab.tasks import vocab as V
from tff_lab.tasks.metrics import MaskedAccuracy, masked_accuracy


def _shapes(model):
    return [tuple(w.shape) for w in model.get_weights()]


def test_emnist_cnn_is_the_fedavg_papers_cnn():
    from tensorflow_federated.python.simulation.baselines.emnist import emnist_models

    spec = resolve_model(ModelConfig(name="emnist_cnn"))
    ours = spec.build((28, 28), 62)
    tffs = emnist_models.create_original_fedavg_cnn_model(only_digits=False)
    assert _shapes(ours) == _shapes(tffs) and ours.count_params() == tffs.count_params() == 1_690_046
    assert spec.outputs == "probabilities" and ours.output_shape == (None, 62)


def test_char_rnn_default_is_tffs_recurrent_model():
    from tensorflow_federated.python.simulation.baselines.shakespeare import char_prediction_models

    spec = resolve_model(ModelConfig(name="char_rnn"))
    ours = spec.build((80,), V.VOCAB_SIZE)
    tffs = char_prediction_models.create_recurrent_model(vocab_size=V.VOCAB_SIZE, sequence_length=80)
    assert _shapes(ours) == _shapes(tffs) and ours.count_params() == tffs.count_params()
    assert spec.outputs == "logits" and ours.output_shape == (None, 80, V.VOCAB_SIZE)
    tiny = resolve_model(ModelConfig(name="char_rnn", kwargs={"units": 8, "num_layers": 1, "cell": "gru"}))
    assert [l.__class__.__name__ for l in tiny.build((12,), 90).layers][-2] == "GRU"
    assert type(spec.make_metrics()[0]) is MaskedAccuracy and spec.make_metrics()[0].name == "accuracy"


def test_masked_accuracy_is_tffs_and_round_trips():
    from tensorflow_federated.python.simulation.baselines import keras_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, V.VOCAB_SIZE, (6, 10)).astype(np.int32)
    y[:, -3:] = V.PAD
    y[0, 0], y[1, 0], y[2, 4] = V.BOS, V.EOS, V.OOV
    logits = rng.normal(size=(6, 10, V.VOCAB_SIZE)).astype(np.float32)
    logits[np.arange(6)[:, None], np.arange(10), y] += 2.0 * (rng.random((6, 10)) < 0.5)  # ~half right
    ours = MaskedAccuracy(masked_tokens=V.MASKED_TOKENS)
    ours.update_state(y, logits)
    tffs = keras_metrics.MaskedCategoricalAccuracy(masked_tokens=list(V.MASKED_TOKENS))
    tffs.update_state(y, logits)
    want = masked_accuracy(logits.argmax(-1), y, V.MASKED_TOKENS)
    assert 0.2 < want < 0.9
    assert np.isclose(float(ours.result()), float(tffs.result())) and np.isclose(float(ours.result()), want)
    again = MaskedAccuracy.from_config(ours.get_config())  # what tff.learning's metric finalizers do
    again.update_state(y, logits)
    assert again.name == "accuracy" and np.isclose(float(again.result()), want)
    assert tf.keras.metrics.deserialize(tf.keras.metrics.serialize(ours)).get_config() == ours.get_config()
