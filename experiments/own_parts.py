"""A researcher's own parts, used by experiments/own_model_dp.py and experiments/own_parts_dp.yaml.

Nothing here is tff_lab code: a Keras model builder (a small residual network with GroupNorm,
the usual choice for federated vision because BatchNorm's statistics do not average across
non-IID clients) and a client-data loader (digits, split by a feature-skew rule of our own:
each "writer" sees the images with its own stroke intensity and a Dirichlet label mix).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def resnet_gn(input_shape, num_classes: int, *, width: int = 16, blocks: int = 2, groups: int = 4):
    """A small ResNet with GroupNorm, returning logits (declare ``outputs: logits``)."""
    inputs = tf.keras.Input(shape=input_shape, name="x")
    x = inputs
    if len(input_shape) == 1:
        side = int(round(input_shape[0] ** 0.5))
        x = tf.keras.layers.Reshape((side, side, 1))(x)
    x = tf.keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
    for b in range(blocks):
        y = tf.keras.layers.GroupNormalization(groups=groups)(x)
        y = tf.keras.layers.Activation("relu")(y)
        y = tf.keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(y)
        y = tf.keras.layers.GroupNormalization(groups=groups)(y)
        y = tf.keras.layers.Activation("relu")(y)
        y = tf.keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(y)
        x = tf.keras.layers.Add(name=f"residual_{b}")([x, y])
    x = tf.keras.layers.GroupNormalization(groups=groups)(x)
    x = tf.keras.layers.Activation("relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    logits = tf.keras.layers.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, logits, name="resnet_gn")


def writer_clients(num_clients: int = 12, *, alpha: float = 1.0, seed: int = 0) -> dict:
    """Client id -> (x, y): scikit-learn's digits as 8x8x1 images in [0, 1], each client with a
    Dirichlet(alpha) label mix and its own stroke intensity (feature skew)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(10)]
    props = rng.dirichlet(np.full(num_clients, alpha), size=10)  # class -> client proportions
    clients: dict = {f"writer_{k:02d}": ([], []) for k in range(num_clients)}
    for c, idx in enumerate(by_class):
        cuts = (np.cumsum(props[c]) * len(idx)).astype(int)[:-1]
        for k, part in enumerate(np.split(idx, cuts)):
            clients[f"writer_{k:02d}"][0].append(part)
    out = {}
    for k, (cid, (parts, _)) in enumerate(clients.items()):
        idx = np.concatenate(parts)
        intensity = 0.6 + 0.8 * (k / max(1, num_clients - 1))
        out[cid] = (np.clip(x[idx] * intensity, 0.0, 1.0), y[idx])
    return out


def load_writer_clients(cfg, rng, *, num_clients: int = 12, alpha: float = 1.0):
    """The same data as a tff_lab source loader (``data.source: own_parts:load_writer_clients``)."""
    return writer_clients(num_clients, alpha=alpha, seed=cfg.seed)
