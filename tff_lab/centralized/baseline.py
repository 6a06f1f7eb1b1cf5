"""The centralized baseline: the same model trained on the union of the clients' training data."""

from __future__ import annotations

import math

import numpy as np

from tff_lab.config.schema import ExperimentConfig
from tff_lab.data.sources import FederatedData


def compile_for_eval(model):
    import tensorflow as tf

    model.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model


def evaluate(model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(loss, accuracy) of a compiled model; (nan, nan) for an empty split."""
    if len(y) == 0:
        return math.nan, math.nan
    loss, acc = model.evaluate(x, y, batch_size=1024, verbose=0)
    return float(loss), float(acc)


def matched_epochs(example_passes: int, num_train_examples: int) -> int:
    """Epochs over the union that process as many examples as the federated run did."""
    return max(1, int(round(example_passes / max(num_train_examples, 1))))


def train_centralized(cfg: ExperimentConfig, data: FederatedData, *, epochs: int, initial_weights) -> dict:
    """Trains the experiment's model with the clients' SGD settings; returns test loss/accuracy."""
    import tensorflow as tf

    from tff_lab.models import build_model

    tf.keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    model.set_weights(initial_weights)
    model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=cfg.algorithm.client_optimizer.learning_rate),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    x, y = data.union_train()
    model.fit(x, y, batch_size=cfg.training.batch_size, epochs=epochs, shuffle=True, verbose=0)
    loss, acc = evaluate(model, *data.test)
    return {"accuracy": acc, "loss": loss, "epochs": epochs, "train_examples": int(len(y))}
