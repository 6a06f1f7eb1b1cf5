"""TFF's masked next-token accuracy as a Keras metric, and the same number in numpy.

``MaskedAccuracy`` counts a position as correct when the top-1 prediction equals the target,
over the positions whose target is not one of ``masked_tokens`` (for Shakespeare: pad, OOV,
BOS, EOS). It is the math of ``tff.simulation.baselines.keras_metrics.MaskedCategoricalAccuracy``
without importing TFF; ``get_config`` round-trips, as ``tff.learning`` needs for its metric
finalizers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="tff_lab")
class MaskedAccuracy(tf.keras.metrics.SparseCategoricalAccuracy):
    """Top-1 accuracy over the positions whose target is not in ``masked_tokens``."""

    def __init__(self, masked_tokens: Sequence[int] = (), name: str = "accuracy", dtype=None):
        self._masked_tokens = tuple(int(t) for t in masked_tokens)
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.convert_to_tensor(y_true)
        weight = tf.ones_like(y_true, self._dtype) if sample_weight is None else tf.cast(sample_weight, self._dtype)
        for token in self._masked_tokens:
            weight = weight * tf.cast(tf.not_equal(y_true, tf.cast(token, y_true.dtype)), self._dtype)
        num_classes = tf.shape(y_pred)[-1]
        return super().update_state(
            tf.reshape(y_true, [-1]), tf.reshape(y_pred, [-1, num_classes]), tf.reshape(weight, [-1])
        )

    def get_config(self):
        config = super().get_config()
        config["masked_tokens"] = list(self._masked_tokens)
        return config


def masked_accuracy(pred: np.ndarray, y: np.ndarray, masked_tokens: Sequence[int]) -> float:
    """The same accuracy from top-1 predictions (ints, shape of ``y``); nan when nothing counts."""
    keep = ~np.isin(y, np.asarray(list(masked_tokens), dtype=y.dtype))
    n = int(keep.sum())
    return float(np.sum((pred == y) & keep) / n) if n else float("nan")
