"""The centralized baseline: the same model trained on the union of the clients' training data."""

from __future__ import annotations

import math

import numpy as np

from tff_lab.config.schema import ExperimentConfig
from tff_lab.data.sources import FederatedData


def compile_for_eval(model, spec=None):
    """Compiles with the model spec's declared loss and metrics (default: the zoo's)."""
    if spec is None:
        from tff_lab.models.spec import ModelSpec

        spec = ModelSpec(builder=lambda: model)
    return spec.compile(model)


def evaluate(model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(loss, accuracy) of a compiled model; (nan, nan) for an empty split."""
    if len(y) == 0:
        return math.nan, math.nan
    loss, acc = model.evaluate(x, y, batch_size=1024, verbose=0)
    return float(loss), float(acc)


def matched_epochs(example_passes: int, num_train_examples: int) -> int:
    """Epochs over the union that process as many examples as the federated run did."""
    return max(1, int(round(example_passes / max(num_train_examples, 1))))


def train_centralized(cfg: ExperimentConfig, data: FederatedData, *, epochs: int, initial_weights, model=None) -> dict:
    """Trains the experiment's model (``model``: its ModelSpec; default resolved from ``cfg.model``)
    with the clients' SGD settings and the spec's loss; returns test loss/accuracy."""
    import tensorflow as tf

    from tff_lab.models import resolve_model

    spec = model if model is not None else resolve_model(cfg.model)
    tf.keras.utils.set_random_seed(cfg.seed)
    model = spec.build(data.input_shape, data.num_classes)
    model.set_weights(initial_weights)
    spec.compile(model, optimizer=tf.keras.optimizers.SGD(learning_rate=cfg.algorithm.client_optimizer.learning_rate))
    x, y = data.union_train()
    model.fit(x, y, batch_size=cfg.training.batch_size, epochs=epochs, shuffle=True, verbose=0)
    loss, acc = evaluate(model, *data.test)
    return {"accuracy": acc, "loss": loss, "epochs": epochs, "train_examples": int(len(y))}
