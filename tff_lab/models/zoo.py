"""Model zoo: a registry of Keras (tf.keras, Keras 2) builders.

Every builder returns a *fresh* model whose output is class probabilities (softmax),
so the same model serves training, TFLite export and batch prediction.
"""

from __future__ import annotations

import math
from typing import Callable

import tensorflow as tf

from tff_lab.config.schema import ModelConfig

_REGISTRY: dict[str, Callable[..., tf.keras.Model]] = {}


def register(name: str):
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


@register("logreg")
def build_logreg(cfg: ModelConfig, input_shape, num_classes: int) -> tf.keras.Model:
    inputs = tf.keras.Input(shape=input_shape, name="x")
    x = tf.keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    outputs = tf.keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return tf.keras.Model(inputs, outputs, name="logreg")


@register("mlp")
def build_mlp(cfg: ModelConfig, input_shape, num_classes: int) -> tf.keras.Model:
    inputs = tf.keras.Input(shape=input_shape, name="x")
    x = tf.keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    for i, units in enumerate(cfg.hidden_units):
        x = tf.keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
        if cfg.dropout > 0:
            x = tf.keras.layers.Dropout(cfg.dropout)(x)
    outputs = tf.keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return tf.keras.Model(inputs, outputs, name="mlp")


def _image_shape(input_shape) -> tuple[int, int, int]:
    if len(input_shape) == 3:
        return tuple(input_shape)
    if len(input_shape) == 2:
        return (*input_shape, 1)
    side = int(math.isqrt(int(input_shape[0])))
    if side * side != input_shape[0]:
        raise ValueError(f"cnn needs image inputs or a square number of features, got shape {input_shape}")
    return (side, side, 1)


@register("cnn")
def build_cnn(cfg: ModelConfig, input_shape, num_classes: int) -> tf.keras.Model:
    inputs = tf.keras.Input(shape=input_shape, name="x")
    shape = _image_shape(input_shape)
    x = tf.keras.layers.Reshape(shape)(inputs) if tuple(input_shape) != shape else inputs
    for i, filters in enumerate(cfg.cnn_filters):
        x = tf.keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv_{i}")(x)
        if min(x.shape[1], x.shape[2]) >= 4:
            x = tf.keras.layers.MaxPool2D(2)(x)
    x = tf.keras.layers.Flatten()(x)
    if cfg.dropout > 0:
        x = tf.keras.layers.Dropout(cfg.dropout)(x)
    x = tf.keras.layers.Dense(64, activation="relu", name="dense")(x)
    outputs = tf.keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return tf.keras.Model(inputs, outputs, name="cnn")


def build_model(cfg: ModelConfig, input_shape, num_classes: int) -> tf.keras.Model:
    """Builds a fresh, uncompiled model (weights from Keras' initializers and the TF seed)."""
    if cfg.name not in _REGISTRY:
        raise ValueError(f"unknown model '{cfg.name}'; available: {', '.join(available())}")
    return _REGISTRY[cfg.name](cfg, tuple(input_shape), num_classes)


def initial_weights(cfg: ModelConfig, input_shape, num_classes: int, seed: int) -> list:
    """The deterministic initial weights for ``seed`` (shared by federated and centralized runs)."""
    tf.keras.utils.set_random_seed(seed)
    return build_model(cfg, input_shape, num_classes).get_weights()
