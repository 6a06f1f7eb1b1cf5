"""The vectorised engine on its own: refusals, resume through a real checkpoint, empty DP rounds,
tracing. (Parity with TFF's runtime: test_vectorized_parity.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from engines.engine_pair import build_vectorized, config, load, run, trainable
from helpers import assert_user_error, run_cli

from tff_lab.engines.vectorized import VectorizedEngine, check_supported
from tff_lab.errors import ConfigError, PrivacyAccountingError
from tff_lab.privacy.accounting import MechanismSpec
from tff_lab.privacy.state_check import check_aggregator_state
from tff_lab.training import checkpoint as ckpt_lib

DP = {"algorithm": {"weighting": "uniform"}}
REFUSED = {
    "aggregation.kind": [{"aggregation": {"kind": k}} for k in ("secure", "compression", "robust")],
    "aggregation.builder": [{"aggregation": {"builder": "my_pkg.aggs:make"}}],
    "algorithm.builder": [{"algorithm": {"builder": "my_pkg.algos:build"}}],
    "privacy.mechanism": [{**DP, "privacy": {"mechanism": m, "noise_multiplier": 1.0}} for m in ("tree", "ddp_secure")],
    "training.workers": [{"training": {"workers": 2}}, {"training": {"worker_addresses": ["localhost:8000"]}}],
    "model.dropout": [{"model": {"dropout": 0.2}}],
}


@pytest.mark.parametrize("field,overrides", [(f, o) for f, os_ in REFUSED.items() for o in os_])
def test_refuses_what_it_cannot_run(field, overrides):
    cfg = config({**overrides, "training": {**overrides.get("training", {}), "engine": "vectorized"}})
    with pytest.raises(ConfigError) as e:
        check_supported(cfg)
    msg = str(e.value)
    assert e.value.where == field and "vectorized engine" in msg and "\n" not in msg, msg


def test_supported_configs_pass():
    for o in (
        {},
        {"algorithm": {"name": "fedprox", "proximal_strength": 0.1}},
        {"algorithm": {"name": "fedsgd"}},
        {**DP, "privacy": {"mechanism": "gaussian_adaptive", "noise_multiplier": 1.0}},
    ):
        check_supported(config(o))


def test_refuses_models_it_cannot_vectorise():
    cfg = config({"data": {"num_clients": 4}, "training": {"clients_per_round": 2}})
    data = load(cfg)

    def batchnorm_model():
        inputs = tf.keras.Input(shape=data.input_shape)
        x = tf.keras.layers.BatchNormalization()(inputs)
        return tf.keras.Model(inputs, tf.keras.layers.Dense(data.num_classes, activation="softmax")(x))

    with pytest.raises(ConfigError) as e:
        VectorizedEngine(cfg, data, model_builder=batchnorm_model)
    assert e.value.where == "model.name" and "non-trainable" in str(e.value)

    def lstm_model():  # the while loop of an RNN's gradient does not vectorise over clients
        inputs = tf.keras.Input(shape=data.input_shape)
        x = tf.keras.layers.LSTM(4)(tf.keras.layers.Reshape((8, 8))(inputs))
        return tf.keras.Model(inputs, tf.keras.layers.Dense(data.num_classes, activation="softmax")(x))

    with pytest.raises(ConfigError) as e:
        VectorizedEngine(cfg, data, model_builder=lstm_model)
    assert e.value.where == "model.name" and "recurrent layers" in str(e.value)


def test_cli_refusal_is_one_line():
    proc = run_cli(
        "run",
        "experiments/default.yaml",
        "--out",
        "/tmp/tff_lab_vec_refused",
        "--overwrite",
        "--set",
        "training.engine=vectorized",
        "--set",
        "aggregation.kind=secure",
    )
    assert_user_error(proc, "aggregation.kind", "vectorized engine")


DP_POISSON = {
    "data": {"num_clients": 12},
    "model": {"name": "logreg"},
    "algorithm": {"weighting": "uniform"},
    "training": {"sampling": "poisson", "sampling_rate": 0.3, "batch_size": 10, "local_epochs": 2},
    "privacy": {"mechanism": "gaussian_adaptive", "noise_multiplier": 0.7, "clip": 0.2},
}


@pytest.mark.slow
def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    """Rounds 1-6 in one go == rounds 1-3, an NPZ checkpoint, a fresh engine, rounds 4-6; the state
    passes the privacy hook's check of the DP aggregator state against the ledger."""
    cfg = config(DP_POISSON)
    data = load(cfg)
    engine = build_vectorized(cfg, data)
    straight, h_straight = run(engine, cfg, data, 6)

    first, _ = run(engine, cfg, data, 3)
    ckpt_lib.save(tmp_path, 3, first, {"round": 3})
    fresh = build_vectorized(cfg, data)
    restored, _ = ckpt_lib.load(tmp_path, 3, fresh.initialize())
    resumed, h_resumed = run(fresh, cfg, data, 3, state=restored, start=4)

    a, b = tf.nest.flatten(straight), tf.nest.flatten(resumed)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x), np.asarray(y)), (x, y)
    assert h_straight[3:] == h_resumed
    assert int(np.asarray(straight.aggregator.query_state.round)) == 6  # every round ran the DP query once

    spec = MechanismSpec.from_config(cfg, data.num_clients, cfg.privacy.noise_multiplier)
    observed = check_aggregator_state(spec, 6, resumed)
    assert observed["aggregator_calls"] == 6 and observed["dp_event"] == "ComposedDpEvent", observed
    with pytest.raises(PrivacyAccountingError):
        check_aggregator_state(spec, 5, resumed)


def test_empty_poisson_round_releases_noise_only():
    cfg = config(DP_POISSON)
    data = load(cfg)
    engine = build_vectorized(cfg, data)
    init = engine.initialize()
    out = engine.next(init, 1, np.array([], dtype=np.int64))
    train = out.metrics["client_work"]["train"]
    assert train["num_examples"] == 0 and train["num_batches"] == 0
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(trainable(engine, out.state), trainable(engine, init)))
    assert moved > 0  # the noise was added
    assert int(np.asarray(out.state.aggregator.query_state.round)) == 1
    assert not bool(out.state.aggregator.is_init_state)


def test_traces_once_per_cohort_bucket():
    """Poisson cohorts are padded to powers of two; step counts never retrace."""
    cfg = config(
        {
            "data": {"num_clients": 20},
            "model": {"name": "logreg"},
            "training": {"sampling": "poisson", "sampling_rate": 0.3},
        }
    )
    data = load(cfg)
    engine = build_vectorized(cfg, data)
    sizes = set()
    state = None
    from tff_lab.sampling import sample_clients

    for r in range(1, 9):
        n = len(sample_clients(cfg, data.num_clients, r))
        if n:  # (an empty round without DP is skipped by the loop)
            sizes.add(1 << max(0, (n - 1).bit_length()))
    state, _ = run(engine, cfg, data, 8, state=state)
    assert sorted(engine._functions) == sorted(sizes)  # pylint: disable=protected-access


@pytest.mark.slow
def test_loop_end_to_end_dp_same_epsilon_and_model_as_tff(tmp_path):
    """``tff-lab run`` with each engine (DP-FedAvg, Poisson, synthetic): the same epsilon every round,
    the privacy hook checked the vectorised engine's aggregator state every round, same model."""
    import csv
    import json

    rounds = 6
    common = [
        "--set",
        f"training.rounds={rounds}",
        "--set",
        "centralized.enabled=false",
        "--set",
        "data.num_clients=200",
        "--set",
        "training.sampling_rate=0.1",
    ]
    for engine in ("tff", "vectorized"):
        run_cli(
            "run",
            "experiments/privacy_dp_fedavg.yaml",
            "--out",
            tmp_path / engine,
            "--set",
            f"training.engine={engine}",
            *common,
            check=True,
        )
    rows = {e: list(csv.DictReader(open(tmp_path / e / "metrics.csv"))) for e in ("tff", "vectorized")}
    assert len(rows["tff"]) == len(rows["vectorized"]) == rounds
    for a, b in zip(rows["tff"], rows["vectorized"]):
        assert (a["eps_rdp"], a["eps_pld"], a["clients"]) == (b["eps_rdp"], b["eps_pld"], b["clients"])
    check = json.loads((tmp_path / "vectorized" / "privacy.json").read_text())["aggregator_state_check"]
    assert check["checked_rounds"] == rounds and check["unchecked_rounds"] == 0
    models = [
        tf.keras.models.load_model(tmp_path / e / "model" / "model.keras", compile=False).get_weights()
        for e in ("tff", "vectorized")
    ]
    assert max(float(np.max(np.abs(x - y))) for x, y in zip(*models)) <= 1e-5


def test_model_xla_cannot_compile_falls_back_to_the_plain_graph():
    """A layer XLA cannot compile (a numpy_function): the engine runs the same graph uncompiled and
    ends where an engine built without XLA ends, bit for bit."""
    cfg = config({"data": {"num_clients": 6}, "training": {"clients_per_round": 3}})
    data = load(cfg)

    def model_with_py_op():
        inputs = tf.keras.Input(shape=data.input_shape)

        def numpy_zero(x):
            z = tf.numpy_function(lambda a: np.zeros_like(a), [x], tf.float32, stateful=False)
            return x + tf.stop_gradient(tf.reshape(z, tf.shape(x)))

        x = tf.keras.layers.Lambda(numpy_zero)(inputs)
        return tf.keras.Model(inputs, tf.keras.layers.Dense(data.num_classes, activation="softmax")(x))

    tf.keras.utils.set_random_seed(0)
    init = [w.numpy() for w in model_with_py_op().trainable_weights]
    results = []
    for jit in (True, False):
        engine = VectorizedEngine(cfg, data, model_builder=model_with_py_op, jit_compile=jit)
        state = engine.set_model_weights(engine.initialize(), init)
        from tff_lab.sampling import sample_clients

        for r in (1, 2):
            state = engine.next(state, r, sample_clients(cfg, data.num_clients, r)).state
        assert not engine._compiled  # pylint: disable=protected-access
        results.append(trainable(engine, state))
    for a, b in zip(*results):
        assert np.array_equal(a, b)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(results[0], init)) > 0
