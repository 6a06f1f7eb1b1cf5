"""Parity of the vectorised engine with TFF's runtime (the TFF engine built as the loop builds it).

Same seed, same sampled clients, same batches: after N rounds the final weights agree to 1e-5 (max
abs), the test accuracy of the final model is the same, every round reports the same
``num_examples`` (what the privacy hook checks), and the losses agree closely. DP runs use the
seeded queries (``privacy.reproducible_noise``), so both engines draw the same noise.
"""

from __future__ import annotations

import numpy as np
import pytest
from engines.engine_pair import build_tff, build_vectorized, config, eval_accuracy, load, run, trainable

ROUNDS = 20
CASES = {
    "fedavg_weighted": {},
    "fedavg_uniform_local_epochs_2": {
        "algorithm": {"weighting": "uniform"},
        "training": {"local_epochs": 2, "batch_size": 12},
    },
    "fedprox": {"algorithm": {"name": "fedprox", "proximal_strength": 0.1}},
    "fedadam": {"algorithm": {"server_optimizer": {"name": "adam", "learning_rate": 0.01}}},
    "fedsgd_yogi": {"algorithm": {"name": "fedsgd", "server_optimizer": {"name": "yogi", "learning_rate": 0.05}}},
    "dp_fixed_poisson": {
        "algorithm": {"weighting": "uniform"},
        "training": {"sampling": "poisson", "sampling_rate": 0.4},
        "privacy": {"mechanism": "gaussian_fixed", "noise_multiplier": 0.5, "clip": 0.5},
    },
    "dp_adaptive": {
        "algorithm": {"weighting": "uniform"},
        "privacy": {"mechanism": "gaussian_adaptive", "noise_multiplier": 0.5, "clip": 0.1},
    },
    # A loss on logits (SparseCategoricalCrossentropy(from_logits=True)); the zoo's softmax output
    # is taken as logits by both engines alike.
    "logits_loss_sgdm": {
        "model": {"outputs": "logits"},
        "algorithm": {"server_optimizer": {"name": "sgdm", "learning_rate": 0.5}},
    },
    "cnn_adagrad": {
        "model": {"name": "cnn", "cnn_filters": [4, 8]},
        "training": {"clients_per_round": 4},
        "algorithm": {"server_optimizer": {"name": "adagrad", "learning_rate": 0.05}},
    },
}
ROUNDS_OF = {"cnn_adagrad": 8}  # the CNN is the slow one on 2 CPU cores


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_final_weights_match_tff(case):
    cfg = config(CASES[case])
    data = load(cfg)
    tff_engine, vec_engine = build_tff(cfg, data), build_vectorized(cfg, data)
    # The same state layout as TFF's process: same leaves (count, shapes, dtypes), so checkpoints
    # have one format whichever engine wrote them.
    layout = [[(np.shape(v), np.asarray(v).dtype) for v in _flat(e.initialize())] for e in (tff_engine, vec_engine)]
    assert layout[0] == layout[1], [(i, a, b) for i, (a, b) in enumerate(zip(*layout)) if a != b]
    rounds = ROUNDS_OF.get(case, ROUNDS)
    s_tff, h_tff = run(tff_engine, cfg, data, rounds)
    s_vec, h_vec = run(vec_engine, cfg, data, rounds)

    w_tff, w_vec = trainable(tff_engine, s_tff), trainable(vec_engine, s_vec)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(w_tff, w_vec))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(w_tff, trainable(vec_engine, vec_engine.initialize())))
    assert moved > 1e-2, moved  # training did something
    print(f"{case}: max abs weight difference {diff:.3g} after {rounds} rounds")
    assert diff <= 1e-5, f"{case}: max abs weight difference {diff:.3g} after {rounds} rounds"
    assert eval_accuracy(cfg, data, w_tff) == eval_accuracy(cfg, data, w_vec)

    assert len(h_tff) == len(h_vec) == rounds
    for r, (a, b) in enumerate(zip(h_tff, h_vec), start=1):
        assert (a is None) == (b is None), r
        if a is None:
            continue
        ta, tb = a["client_work"]["train"], b["client_work"]["train"]
        assert list(ta) == list(tb)
        assert ta["num_examples"] == tb["num_examples"] and ta["num_batches"] == tb["num_batches"], (r, ta, tb)
        assert tb["loss"] == pytest.approx(ta["loss"], rel=1e-4, abs=1e-5), (r, ta, tb)
        assert tb["accuracy"] == pytest.approx(ta["accuracy"], abs=2.0 / max(1, ta["num_examples"])), (r, ta, tb)
        assert a["finalizer"] == b["finalizer"]
        assert list(a["aggregator"]) == list(b["aggregator"])
        if "dp_query_metrics" in a["aggregator"]:
            for k, v in a["aggregator"]["dp_query_metrics"].items():
                assert b["aggregator"]["dp_query_metrics"][k] == pytest.approx(v, rel=1e-5), (r, k)
    if cfg.privacy.enabled:  # the aggregator state the privacy hook checks: same query state, same event
        qa, qb = s_tff.aggregator, s_vec.aggregator
        flat_a, flat_b = _flat(qa), _flat(qb)
        assert len(flat_a) == len(flat_b)
        for x, y in zip(flat_a, flat_b):
            if x.dtype.kind in "fc":
                np.testing.assert_allclose(y, x, rtol=1e-5)
            else:
                assert np.array_equal(x, y), (x, y)


def _flat(nest):
    import tensorflow as tf

    return [np.asarray(v) for v in tf.nest.flatten(nest)]


@pytest.mark.slow
def test_non_finite_client_updates_as_tff():
    """A client learning rate that overflows: TFF zeroes each non-finite client update with weight 0,
    drops its metrics (FedAvg), and its finalizer rejects the NaN mean; the engines agree on all of it."""
    cfg = config(
        {
            "data": {"num_clients": 6},
            "training": {"clients_per_round": 3},
            "algorithm": {"client_optimizer": {"name": "sgd", "learning_rate": 1e30}},
        }
    )
    data = load(cfg)
    tff_engine, vec_engine = build_tff(cfg, data), build_vectorized(cfg, data)
    s_tff, h_tff = run(tff_engine, cfg, data, 2)
    s_vec, h_vec = run(vec_engine, cfg, data, 2)
    for a, b in zip(h_tff, h_vec):
        assert a["finalizer"] == b["finalizer"] == {"update_non_finite": 1}
        ta, tb = a["client_work"]["train"], b["client_work"]["train"]
        assert ta["num_examples"] == tb["num_examples"] == 0 and ta["num_batches"] == tb["num_batches"], (ta, tb)
    for x, y in zip(trainable(tff_engine, s_tff), trainable(vec_engine, s_vec)):
        assert np.array_equal(x, y)  # both kept the initial weights
