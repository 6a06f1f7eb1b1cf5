"""EMNIST-62 (or -10) on TFF's federated EMNIST, and the FedAvg paper's CNN.

Data: ``tff.simulation.datasets.emnist.load_data(only_digits, cache_dir)`` read from
``data.cache_dir/emnist_all.sqlite`` (never downloaded). The natural partition is TFF's: one
client per writer; each writer's examples in TFF's *test* split form the global test set
(TFF holds them out per writer, so the test set is client data: ``test_source: clients``).
``data.max_clients`` caps the population (a seeded sample of writers). Pixels are TFF's:
float32 in [0, 1], 1.0 = background; ``x`` has shape (28, 28).
"""

from __future__ import annotations

import dataclasses
import string

import numpy as np

from tff_lab.errors import ConfigError, DataError

EMNIST_LABELS = [*string.digits, *string.ascii_uppercase, *string.ascii_lowercase]  # TFF's label order


def client_arrays(client_data, client_id: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One EMNIST client's (pixels, label) arrays, read through TFF's ClientData."""
    import tensorflow as tf

    xs, ys = [], []
    try:
        for b in client_data.create_tf_dataset_for_client(client_id).batch(4096).as_numpy_iterator():
            xs.append(b["pixels"])
            ys.append(b["label"])
    except tf.errors.OpError as e:
        raise DataError(
            where,
            f"client {client_id!r}: unreadable examples ({type(e).__name__}: {' '.join(str(e.message).split())[:160]})",
        ) from None
    if not xs:
        return np.zeros((0, 28, 28), np.float32), np.zeros((0,), np.int32)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int32).reshape(-1)


def choose_clients(ids: list[str], max_clients, rng) -> list[str]:
    """All client ids (sorted), or a seeded sample of ``max_clients`` of them (kept sorted)."""
    ids = sorted(ids)
    if max_clients is None or max_clients >= len(ids):
        return ids
    if max_clients < 1:
        raise ConfigError("data.max_clients", f"expected an integer >= 1, got {max_clients}")
    pick = rng.choice(len(ids), size=int(max_clients), replace=False)
    return [ids[i] for i in sorted(pick)]


def load_emnist(cfg, rng, *, only_digits: bool = False):
    """``data.source: emnist`` -> FederatedData (62 classes; 10 with ``only_digits: true``)."""
    from tff_lab.data.sources import _natural_or_repartition
    from tff_lab.tasks.cache import open_client_data, require_cache_file

    if not isinstance(only_digits, bool):
        raise ConfigError("data.kwargs.only_digits", f"expected true or false, got {only_digits!r}")
    path = str(require_cache_file("emnist", cfg.data.cache_dir))
    train, test = open_client_data("emnist", cfg.data.cache_dir, only_digits=only_digits)
    if not train.client_ids:
        split = "digits_only_train" if only_digits else "all_train"
        raise DataError(path, f"holds no clients in TFF's split {split!r}")
    ids = choose_clients(list(train.client_ids), cfg.data.max_clients, rng)
    clients = [client_arrays(train, c, path) for c in ids]
    test_ids = set(test.client_ids)
    parts = [client_arrays(test, c, path) for c in ids if c in test_ids]
    if parts:
        test_arr = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    else:
        test_arr = (np.zeros((0, 28, 28), np.float32), np.zeros((0,), np.int32))
    labels = EMNIST_LABELS[:10] if only_digits else EMNIST_LABELS
    top = max([int(c[1].max()) for c in clients if len(c[1])] + [int(test_arr[1].max()) if len(test_arr[1]) else 0])
    if top >= len(labels):
        raise DataError(
            path,
            f"holds label {top}, expected labels 0..{len(labels) - 1} "
            f"({'only_digits' if only_digits else 'EMNIST-62'})",
        )
    data = _natural_or_repartition(clients, test_arr, cfg, rng, labels, {"offset": 0.0, "scale": 1.0}, list(ids))
    return dataclasses.replace(data, test_source="clients")


def build_emnist_cnn(
    input_shape, num_classes: int, *, conv_filters=(32, 64), dense_units: int = 512, kernel_size: int = 5
):
    """The FedAvg paper's CNN (McMahan et al. 2017; TFF's ``create_original_fedavg_cnn_model``):
    conv 5x5 32 -> max-pool 2x2 -> conv 5x5 64 -> max-pool 2x2 -> dense 512 -> softmax.
    Smaller ``conv_filters``/``dense_units`` make tiny test models."""
    import tensorflow as tf

    from tff_lab.models.zoo import _image_shape

    inputs = tf.keras.Input(shape=tuple(input_shape), name="x")
    shape = _image_shape(tuple(input_shape))
    x = tf.keras.layers.Reshape(shape)(inputs) if tuple(input_shape) != shape else inputs
    for i, filters in enumerate(conv_filters):
        x = tf.keras.layers.Conv2D(int(filters), int(kernel_size), padding="same", activation="relu", name=f"conv_{i}")(
            x
        )
        x = tf.keras.layers.MaxPool2D(2, padding="same", name=f"pool_{i}")(x)
    x = tf.keras.layers.Flatten()(x)
    x = tf.keras.layers.Dense(int(dense_units), activation="relu", name="dense")(x)
    outputs = tf.keras.layers.Dense(int(num_classes), activation="softmax", name="probs")(x)
    return tf.keras.Model(inputs, outputs, name="emnist_cnn")
