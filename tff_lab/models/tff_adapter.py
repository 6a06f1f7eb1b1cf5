"""Wraps a model spec for TFF: ``model_fn`` (a fresh Keras model on every call) and input specs."""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf


def element_spec(input_shape, *, x_dtype=tf.float32, label_shape=(), y_dtype=tf.int32) -> collections.OrderedDict:
    """The spec of one *batch* of client data, as fed to TFF."""
    return collections.OrderedDict(
        x=tf.TensorSpec(shape=(None, *input_shape), dtype=tf.as_dtype(x_dtype)),
        y=tf.TensorSpec(shape=(None, *label_shape), dtype=tf.as_dtype(y_dtype)),
    )


def data_element_spec(data) -> collections.OrderedDict:
    """The batch spec of a :class:`~tff_lab.data.FederatedData` (dtypes and shapes of its arrays):
    float features and class ids by default, int token sequences for text models."""
    x, y = data.test
    return element_spec(
        tuple(x.shape[1:]), x_dtype=np.asarray(x).dtype, label_shape=tuple(y.shape[1:]), y_dtype=np.asarray(y).dtype
    )


def make_model_fn(spec, input_shape, num_classes: int, *, batch_spec=None):
    """``model_fn`` for TFF. ``spec`` is a :class:`~tff_lab.models.ModelSpec` or a ModelConfig."""
    import tensorflow_federated as tff

    from tff_lab.models.spec import ModelSpec, resolve_model

    if not isinstance(spec, ModelSpec):
        spec = resolve_model(spec)
    bspec = batch_spec if batch_spec is not None else element_spec(tuple(input_shape))

    def model_fn():
        keras_model = spec.build(input_shape, num_classes)
        return tff.learning.models.from_keras_model(
            keras_model, loss=spec.make_loss(), input_spec=bspec, metrics=spec.make_metrics()
        )

    return model_fn
