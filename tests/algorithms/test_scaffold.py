"""SCAFFOLD on the vectorised engine: a small case computed by hand, the control variates through a
checkpoint, the TFF engine's refusal, and a short run through the loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from tff_lab.config.io import from_dict
from tff_lab.data.sources import FederatedData
from tff_lab.engines.vectorized import VectorizedEngine
from tff_lab.errors import ConfigError
from tff_lab.training import checkpoint as ckpt_lib

LR, SERVER_LR, K = 0.5, 0.8, 2  # K local steps: local_epochs 2 with one batch per epoch


def _hand_case():
    rng = np.random.default_rng(7)
    sizes = (5, 3, 6)
    train = {
        f"c{i}": (rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, size=n).astype(np.int32))
        for i, n in enumerate(sizes)
    }
    data = FederatedData(
        client_ids=list(train),
        train=train,
        eval={c: (v[0][:0], v[1][:0]) for c, v in train.items()},
        test=(train["c0"][0], train["c0"][1]),
        num_classes=3,
        labels=["0", "1", "2"],
        preprocessing={},
    )
    cfg = from_dict(
        {
            "data": {"source": "digits", "num_clients": 3},
            "centralized": {"enabled": False},
            "algorithm": {
                "name": "scaffold",
                "weighting": "uniform",
                "client_optimizer": {"learning_rate": LR},
                "server_optimizer": {"name": "sgd", "learning_rate": SERVER_LR},
            },
            "training": {"engine": "vectorized", "clients_per_round": 2, "local_epochs": K, "batch_size": 8},
        }
    )
    w0 = [rng.normal(scale=0.3, size=(4, 3)).astype(np.float32), rng.normal(scale=0.1, size=3).astype(np.float32)]
    return cfg, data, w0


def _linear_model():
    inputs = tf.keras.Input(shape=(4,))
    return tf.keras.Model(inputs, tf.keras.layers.Dense(3, activation="softmax")(inputs))


def _grad(w, x, y):
    """Softmax regression's mean cross-entropy gradient (the batch is the client's whole data)."""
    logits = x @ w[0] + w[1]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = (p - np.eye(3)[y]) / len(y)
    return [x.T @ d, d.sum(0)]


def _hand_round(x_global, c, ci, data, clients, population):
    """Karimireddy et al. 2020, Algorithm 1, option II; uniform mean of the model updates."""
    updates, new_ci, dcs = {}, {}, []
    for i in clients:
        x, yl = (a.astype(np.float64) for a in data.train[f"c{i}"])
        yl = yl.astype(int)
        y = [w.copy() for w in x_global]
        for _ in range(K):
            g = _grad(y, x, yl)
            y = [yw - LR * (gw - cw_i + cw) for yw, gw, cw_i, cw in zip(y, g, ci[i], c)]
        new_ci[i] = [cw_i - cw + (xw - yw) / (K * LR) for cw_i, cw, xw, yw in zip(ci[i], c, x_global, y)]
        dcs.append([a - b for a, b in zip(new_ci[i], ci[i])])
        updates[i] = [xw - yw for xw, yw in zip(x_global, y)]
    mean = [np.mean([updates[i][j] for i in clients], 0) for j in range(2)]
    x_new = [xw - SERVER_LR * m for xw, m in zip(x_global, mean)]
    c_new = [cw + sum(d[j] for d in dcs) / population for j, cw in enumerate(c)]
    ci = {**ci, **new_ci}
    return x_new, c_new, ci


def test_one_round_matches_the_hand_computation():
    cfg, data, w0 = _hand_case()
    engine = VectorizedEngine(cfg, data, model_builder=_linear_model)  # XLA, as runs use it
    state = engine.set_model_weights(engine.initialize(), w0)
    x = [w.astype(np.float64) for w in w0]
    c = [np.zeros_like(w) for w in x]
    ci = {i: [np.zeros_like(w) for w in x] for i in range(3)}
    # Round 1 starts with every variate 0 (FedAvg's step); round 2 is corrected by them.
    for r, clients in ((1, [0, 2]), (2, [0, 1])):
        state = engine.next(state, r, np.array(clients)).state
        x, c, ci = _hand_round(x, c, ci, data, clients, population=3)
        got = [np.asarray(w) for w in engine.get_model_weights(state).trainable]
        for a, b in zip(got, x):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
        work = state.client_work
        for a, b in zip(work["control"], c):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
        seen = sorted({0, 2} | set(clients))
        assert list(work["clients"]) == seen  # a client never sampled has no row (c_i = 0)
        for row, i in enumerate(seen):
            for table, want in zip(work["client_controls"], ci[i]):
                np.testing.assert_allclose(table[row], want, atol=1e-6, rtol=0)
        assert max(float(np.max(np.abs(w))) for w in c) > 1e-3  # the variates moved
    # c stays the mean of all clients' variates (the paper's invariant)
    for j, cw in enumerate(work["control"]):
        np.testing.assert_allclose(cw, sum(ci[i][j] for i in range(3)) / 3, atol=1e-6)


def _digits_cfg(**training):
    return from_dict(
        {
            "data": {"source": "digits", "num_clients": 8},
            "model": {"name": "logreg"},
            "partition": {"scheme": "dirichlet", "alpha": 0.3},
            "centralized": {"enabled": False},
            "algorithm": {"name": "scaffold", "weighting": "uniform"},
            "training": {"engine": "vectorized", "clients_per_round": 3, "batch_size": 16, **training},
        }
    )


def _engine(cfg, data):
    from tff_lab import models

    spec = models.resolve_model(cfg.model)
    return VectorizedEngine(
        cfg,
        data,
        model_builder=lambda: spec.build(data.input_shape, data.num_classes),
        loss_builder=spec.make_loss,
        metrics_builder=spec.make_metrics,
        jit_compile=False,
    )


def _run(engine, cfg, data, state, rounds):
    from tff_lab.sampling import sample_clients

    for r in rounds:
        state = engine.next(state, r, sample_clients(cfg, data.num_clients, r)).state
    return state


def test_control_variates_resume_bit_identically(tmp_path):
    from tff_lab import models
    from tff_lab.data import load_federated_data

    cfg = _digits_cfg()
    data = load_federated_data(cfg)
    engine = _engine(cfg, data)
    init = models.initial_weights(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    start = engine.set_model_weights(engine.initialize(), init)
    straight = _run(engine, cfg, data, start, range(1, 5))

    first = _run(engine, cfg, data, start, range(1, 3))
    assert 0 < len(first.client_work["clients"]) < data.num_clients  # a sparse table: only sampled clients
    ckpt_lib.save(tmp_path, 2, first, {"round": 2})
    fresh = _engine(cfg, data)
    restored, _ = ckpt_lib.load(tmp_path, 2, fresh.initialize())
    resumed = _run(fresh, cfg, data, restored, range(3, 5))

    a, b = tf.nest.flatten(straight), tf.nest.flatten(resumed)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
    assert np.any(np.asarray(straight.client_work["client_controls"][0]) != 0)


def test_tff_engine_and_dp_refuse_in_one_line():
    from tff_lab.training.loop import build

    with pytest.raises(ConfigError) as e:
        build(_digits_cfg(engine="tff"))
    assert (e.value.where, str(e.value).split(": ", 1)[-1]) == (
        "algorithm.name",
        "scaffold runs on the vectorised engine (TFF has no stateful-client process)",
    )
    with pytest.raises(ConfigError) as e:
        from_dict(
            {
                "algorithm": {"name": "scaffold", "weighting": "uniform"},
                "privacy": {"mechanism": "gaussian_fixed", "noise_multiplier": 1.0},
            }
        )
    assert e.value.where == "algorithm.name" and "\n" not in str(e.value)


def test_short_run_through_the_loop(tmp_path):
    from tff_lab.training.loop import run_experiment

    summary = run_experiment(_digits_cfg(rounds=4, eval_every_rounds=2, rounds_per_checkpoint=2), tmp_path)
    assert summary["engine"] == "vectorized" and summary["rounds"] == 4
    assert summary["final_test_accuracy"] > 0.3  # 10 classes: well above chance after 4 rounds
    ckpt = json.loads((tmp_path / "checkpoints" / "ckpt_000004.json").read_text())
    assert ckpt["engine"] == "vectorized"


def test_communication_counts_the_control_variates():
    from tff_lab.federated.communication import model_bytes, per_client_bytes

    shapes, dtypes = [(64, 10), (10,)], ["float32", "float32"]
    scaffold = per_client_bytes(_digits_cfg(), shapes, dtypes)
    fedavg = per_client_bytes(from_dict({"algorithm": {"weighting": "uniform"}}), shapes, dtypes)
    m = model_bytes(shapes, dtypes)
    assert scaffold["uplink"] - fedavg["uplink"] == m and scaffold["downlink"] - fedavg["downlink"] == m
