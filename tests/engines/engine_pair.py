"""Builds the TFF engine exactly as the training loop does, and the vectorised engine beside it."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tff_lab import models
from tff_lab.config.io import from_dict
from tff_lab.data import load_federated_data
from tff_lab.engines import TFFEngine
from tff_lab.engines.vectorized import VectorizedEngine
from tff_lab.federated import aggregators, algorithms, runtime
from tff_lab.models.tff_adapter import data_element_spec, make_model_fn
from tff_lab.sampling import sample_clients


def config(overrides: dict):
    base = {
        "data": {"source": "digits", "num_clients": 20},
        "partition": {"scheme": "dirichlet", "alpha": 0.5},
        "training": {"clients_per_round": 10, "rounds": 20, "batch_size": 16},
        "centralized": {"enabled": False},
    }
    for k, v in overrides.items():
        if isinstance(v, dict):
            base.setdefault(k, {}).update(v)
        else:
            base[k] = v
    return from_dict(base)


def build_vectorized(cfg, data, **kwargs):
    spec = models.resolve_model(cfg.model)
    return VectorizedEngine(
        cfg,
        data,
        model_builder=lambda: spec.build(data.input_shape, data.num_classes),
        loss_builder=spec.make_loss,
        metrics_builder=spec.make_metrics,
        noise_multiplier=cfg.privacy.noise_multiplier,
        **kwargs,
    )


def build_tff(cfg, data):
    runtime.ensure_context(cfg.training)
    init = models.initial_weights(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    specs = [tf.TensorSpec(w.shape, tf.as_dtype(w.dtype)) for w in init]
    agg = aggregators.make_aggregator(
        cfg, population=data.num_clients, noise_multiplier=cfg.privacy.noise_multiplier, record_specs=specs
    )
    model_fn = make_model_fn(
        models.resolve_model(cfg.model), data.input_shape, data.num_classes, batch_spec=data_element_spec(data)
    )
    return TFFEngine(cfg, algorithms.build_learning_process(cfg, model_fn, agg), data)


def run(engine, cfg, data, rounds: int, state=None, start: int = 1):
    """Runs ``rounds`` rounds as the loop does (an empty round only under DP); returns the state and
    the per-round metrics."""
    if state is None:
        init = models.initial_weights(cfg.model, data.input_shape, data.num_classes, cfg.seed)
        state = engine.set_model_weights(engine.initialize(), init)
    history = []
    for r in range(start, start + rounds):
        idx = sample_clients(cfg, data.num_clients, r)
        if len(idx) or cfg.privacy.enabled:
            out = engine.next(state, r, idx)
            state = out.state
            history.append(out.metrics)
        else:
            history.append(None)
    return state, history


def trainable(engine, state) -> list[np.ndarray]:
    return [np.asarray(w) for w in engine.get_model_weights(state).trainable]


def eval_accuracy(cfg, data, weights) -> float:
    spec = models.resolve_model(cfg.model)
    model = spec.compile(spec.build(data.input_shape, data.num_classes))
    model.set_weights(weights)
    x, y = data.test
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=512), axis=-1) == y))


def load(cfg):
    return load_federated_data(cfg)
