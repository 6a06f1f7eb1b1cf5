"""Model zoo: Keras (tf.keras, Keras 2) builders, registered like any user model.

Every builder returns a *fresh* model whose output is class probabilities (softmax), so the
same model serves training, TFLite export and batch prediction.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tff_lab.models.spec import register_model


def _flat_input(input_shape):
    inputs = tf.keras.Input(shape=input_shape, name="x")
    return inputs, (tf.keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs)


def build_logreg(input_shape, num_classes: int) -> tf.keras.Model:
    inputs, x = _flat_input(input_shape)
    outputs = tf.keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return tf.keras.Model(inputs, outputs, name="logreg")


def build_mlp(input_shape, num_classes: int, *, hidden_units=(64, 64), dropout: float = 0.0) -> tf.keras.Model:
    inputs, x = _flat_input(input_shape)
    for i, units in enumerate(hidden_units):
        x = tf.keras.layers.Dense(int(units), activation="relu", name=f"dense_{i}")(x)
        if dropout > 0:
            x = tf.keras.layers.Dropout(dropout)(x)
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


def build_cnn(input_shape, num_classes: int, *, cnn_filters=(16, 32), dropout: float = 0.0) -> tf.keras.Model:
    inputs = tf.keras.Input(shape=input_shape, name="x")
    shape = _image_shape(input_shape)
    x = tf.keras.layers.Reshape(shape)(inputs) if tuple(input_shape) != shape else inputs
    for i, filters in enumerate(cnn_filters):
        x = tf.keras.layers.Conv2D(int(filters), 3, padding="same", activation="relu", name=f"conv_{i}")(x)
        if min(x.shape[1], x.shape[2]) >= 4:
            x = tf.keras.layers.MaxPool2D(2)(x)
    x = tf.keras.layers.Flatten()(x)
    if dropout > 0:
        x = tf.keras.layers.Dropout(dropout)(x)
    x = tf.keras.layers.Dense(64, activation="relu", name="dense")(x)
    outputs = tf.keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return tf.keras.Model(inputs, outputs, name="cnn")


register_model("logreg", build_logreg)
register_model("mlp", build_mlp)
register_model("cnn", build_cnn)
