"""Model zoo: Keras (tf.keras, Keras 2) builders, registered like any user model.

Every builder returns a *fresh* model whose output is class probabilities (softmax), so the
same model serves training, TFLite export and batch prediction.

Each builder checks its keyword arguments, the input shape and its parameter count *before*
Keras sees them (``hidden_units: [-5]``, ``[2147483647]``, a ``cnn`` on 30 flat features are one
:class:`~tff_lab.errors.ConfigError` naming the field, not a Keras traceback or an out-of-memory
kill), and any ``ValueError`` Keras still raises while building becomes a ConfigError naming
``model.kwargs``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import tensorflow as tf

from tff_lab.config.schema import MAX_CNN_FILTERS, MAX_HIDDEN_UNITS
from tff_lab.errors import ConfigError, UserError
from tff_lab.models.spec import register_model

# A zoo model larger than this is refused before it is built (a 2**31-unit layer is not a model,
# it is an out-of-memory kill): 50 M float32 parameters are 200 MB per copy, and federated
# training keeps several copies per client.
MAX_PARAMS = 50_000_000
MAX_DENSE_LAYERS = 64
MAX_CONV_LAYERS = 16


def _int_list(value: Any, field: str, hi: int) -> tuple[int, ...]:
    where = f"model.kwargs.{field}"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(where, f"expected a list of integers, got {type(value).__name__} {value!r}")
    out = []
    for i, u in enumerate(value):
        if isinstance(u, bool) or not isinstance(u, int):
            try:
                import numpy as np

                ok = isinstance(u, np.integer)
            except ImportError:  # pragma: no cover
                ok = False
            if not ok:
                raise ConfigError(
                    f"{where}[{i}]", f"expected an integer >= 1 and <= {hi}, got {type(u).__name__} {u!r}"
                )
        if not 1 <= int(u) <= hi:
            raise ConfigError(f"{where}[{i}]", f"expected an integer >= 1 and <= {hi}, got {int(u)}")
        out.append(int(u))
    return tuple(out)


def _rate(value: Any, field: str = "dropout") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) < 1.0):
        raise ConfigError(f"model.kwargs.{field}", f"expected a rate in [0, 1), got {value!r}")
    return float(value)


def _shape(input_shape, num_classes, model: str) -> tuple[tuple[int, ...], int]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ConfigError("model.name", f"{model} needs a fixed input shape, got {input_shape!r}") from None
    if any(d < 1 for d in shape):
        raise ConfigError("model.name", f"{model} needs an input shape of positive sizes, got {shape}")
    if isinstance(num_classes, bool) or int(num_classes) < 1:
        raise ConfigError("model.name", f"{model} needs at least one class, got {num_classes!r}")
    return shape, int(num_classes)


def _check_params(count: int, model: str, detail: str, field: str) -> None:
    if count > MAX_PARAMS:
        raise ConfigError(
            "model",
            f"{model} with {detail} has {count:,} parameters; at most {MAX_PARAMS:,} are "
            f"built (reduce model.{field} or model.kwargs.{field})",
        )


@contextlib.contextmanager
def _keras_build(model: str):
    """Whatever Keras still refuses while building becomes one line naming model.kwargs."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, tf.errors.InvalidArgumentError, tf.errors.ResourceExhaustedError, MemoryError) as e:
        msg = " ".join(str(e).split())[:300]
        raise ConfigError("model.kwargs", f"Keras cannot build {model} with these arguments: {msg}") from None


def _flat_input(input_shape):
    inputs = tf.keras.Input(shape=input_shape, name="x")
    return inputs, (tf.keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs)


def build_logreg(input_shape, num_classes: int) -> tf.keras.Model:
    shape, k = _shape(input_shape, num_classes, "logreg")
    features = math.prod(shape)
    _check_params((features + 1) * k, "logreg", f"input shape {shape} and {k} classes", "name")
    with _keras_build("logreg"):
        inputs, x = _flat_input(shape)
        outputs = tf.keras.layers.Dense(k, activation="softmax", name="probs")(x)
        return tf.keras.Model(inputs, outputs, name="logreg")


def mlp_params(input_shape, num_classes: int, hidden_units) -> int:
    """The parameter count of :func:`build_mlp` (weights and biases)."""
    n, prev = 0, math.prod(input_shape)
    for u in (*hidden_units, num_classes):
        n += (prev + 1) * u
        prev = u
    return n


def build_mlp(input_shape, num_classes: int, *, hidden_units=(64, 64), dropout: float = 0.0) -> tf.keras.Model:
    shape, k = _shape(input_shape, num_classes, "mlp")
    units = _int_list(hidden_units, "hidden_units", MAX_HIDDEN_UNITS)
    if len(units) > MAX_DENSE_LAYERS:
        raise ConfigError("model.kwargs.hidden_units", f"expected at most {MAX_DENSE_LAYERS} layers, got {len(units)}")
    rate = _rate(dropout)
    _check_params(
        mlp_params(shape, k, units),
        "mlp",
        f"hidden_units {list(units)} on input shape {shape} and {k} classes",
        "hidden_units",
    )
    with _keras_build("mlp"):
        inputs, x = _flat_input(shape)
        for i, u in enumerate(units):
            x = tf.keras.layers.Dense(u, activation="relu", name=f"dense_{i}")(x)
            if rate > 0:
                x = tf.keras.layers.Dropout(rate)(x)
        outputs = tf.keras.layers.Dense(k, activation="softmax", name="probs")(x)
        return tf.keras.Model(inputs, outputs, name="mlp")


def _image_shape(input_shape) -> tuple[int, int, int]:
    if len(input_shape) == 3:
        return tuple(input_shape)
    if len(input_shape) == 2:
        return (*input_shape, 1)
    if len(input_shape) == 1:
        side = int(math.isqrt(int(input_shape[0])))
        if side * side == input_shape[0] and side >= 2:
            return (side, side, 1)
    raise ConfigError(
        "model.name",
        f"cnn needs image-shaped inputs ((height, width), (height, width, channels) "
        f"or a square number of features), got input shape {tuple(input_shape)}; "
        "use mlp or logreg for flat features",
    )


def cnn_params(input_shape, num_classes: int, cnn_filters) -> int:
    """The parameter count of :func:`build_cnn` (same layers, same pooling rule)."""
    h, w, c = _image_shape(input_shape)
    n = 0
    for f in cnn_filters:
        n += 9 * c * f + f
        c = f
        if min(h, w) >= 4:
            h, w = h // 2, w // 2
    return n + (h * w * c + 1) * 64 + (64 + 1) * num_classes


def build_cnn(input_shape, num_classes: int, *, cnn_filters=(16, 32), dropout: float = 0.0) -> tf.keras.Model:
    shape, k = _shape(input_shape, num_classes, "cnn")
    image = _image_shape(shape)
    filters = _int_list(cnn_filters, "cnn_filters", MAX_CNN_FILTERS)
    if len(filters) > MAX_CONV_LAYERS:
        raise ConfigError("model.kwargs.cnn_filters", f"expected at most {MAX_CONV_LAYERS} layers, got {len(filters)}")
    rate = _rate(dropout)
    _check_params(
        cnn_params(shape, k, filters),
        "cnn",
        f"cnn_filters {list(filters)} on input shape {shape} and {k} classes",
        "cnn_filters",
    )
    with _keras_build("cnn"):
        inputs = tf.keras.Input(shape=shape, name="x")
        x = tf.keras.layers.Reshape(image)(inputs) if shape != image else inputs
        for i, f in enumerate(filters):
            x = tf.keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv_{i}")(x)
            if min(x.shape[1], x.shape[2]) >= 4:
                x = tf.keras.layers.MaxPool2D(2)(x)
        x = tf.keras.layers.Flatten()(x)
        if rate > 0:
            x = tf.keras.layers.Dropout(rate)(x)
        x = tf.keras.layers.Dense(64, activation="relu", name="dense")(x)
        outputs = tf.keras.layers.Dense(k, activation="softmax", name="probs")(x)
        return tf.keras.Model(inputs, outputs, name="cnn")


register_model("logreg", build_logreg)
register_model("mlp", build_mlp)
register_model("cnn", build_cnn)
