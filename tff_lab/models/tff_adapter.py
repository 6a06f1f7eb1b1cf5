"""Wraps zoo models for TFF: ``model_fn`` (a fresh Keras model on every call) and input specs."""

from __future__ import annotations

import collections

import tensorflow as tf

from tff_lab.config.schema import ModelConfig
from tff_lab.models.zoo import build_model


def element_spec(input_shape) -> collections.OrderedDict:
    """The spec of one *batch* of client data, as fed to TFF."""
    return collections.OrderedDict(
        x=tf.TensorSpec(shape=(None, *input_shape), dtype=tf.float32),
        y=tf.TensorSpec(shape=(None,), dtype=tf.int32),
    )


def make_model_fn(cfg: ModelConfig, input_shape, num_classes: int):
    import tensorflow_federated as tff

    spec = element_spec(input_shape)

    def model_fn():
        keras_model = build_model(cfg, input_shape, num_classes)
        return tff.learning.models.from_keras_model(
            keras_model,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(),
            input_spec=spec,
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )

    return model_fn
