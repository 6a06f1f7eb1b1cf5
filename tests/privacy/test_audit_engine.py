"""Canaries inside the real DP aggregator (TFF engine), driven the way the loop must drive an audit."""

from __future__ import annotations

import collections
import json
from types import SimpleNamespace

import numpy as np
import pytest

from tff_lab.config import load_config
from tff_lab.errors import PrivacyAccountingError
from tff_lab.privacy.audit import canaries_for, participation_mask, round_clients
from tff_lab.privacy.hook import PrivacyHook
from tff_lab.sampling import sample_clients
from tff_lab.training.hooks import RoundInfo, RunContext

POP, K, K2, IN, OUT = 6, 8, 8, 40, 20
IDS = [f"c{i}" for i in range(POP)]
SHAPES = [(IN, OUT), (OUT,)]
BASE = [
    "algorithm.weighting=uniform",
    f"data.num_clients={POP}",
    "seed=2",
    "training.sampling=poisson",
    "training.sampling_rate=0.5",
    "privacy.mechanism=gaussian_fixed",
    "privacy.clip=0.5",
    "privacy.noise_multiplier=1.0",
    "training.rounds=6",
]
AUDIT = [f"privacy.audit.canaries={K}", f"privacy.audit.unseen={K2}"]


def _process(cfg, noise, population=POP):
    import tensorflow as tf
    import tensorflow_federated as tff

    from tff_lab.federated import runtime
    from tff_lab.federated.aggregators import make_aggregator

    runtime.ensure_context(1)
    spec = collections.OrderedDict(x=tf.TensorSpec([None, IN], tf.float32), y=tf.TensorSpec([None], tf.int32))

    def model_fn():
        keras = tf.keras.Sequential([tf.keras.layers.Dense(OUT, input_shape=(IN,), kernel_initializer="zeros")])
        return tff.learning.models.from_keras_model(
            keras, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), input_spec=spec
        )

    specs = [tf.TensorSpec(s, tf.float32) for s in SHAPES]
    agg = make_aggregator(cfg, population=population, noise_multiplier=noise, record_specs=specs)
    return tff.learning.algorithms.build_unweighted_fed_avg(
        model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1), model_aggregator=agg
    )


def _data(i):
    import tensorflow as tf

    rng = np.random.default_rng(i)
    return tf.data.Dataset.from_tensor_slices(
        collections.OrderedDict(
            x=rng.normal(size=(6, IN)).astype(np.float32), y=rng.integers(0, OUT, 6).astype(np.int32)
        )
    ).batch(3)


def test_canary_updates_enter_the_clipped_sum_exactly():
    """The audited aggregator's round minus the same round without canaries (same seeded noise,
    same real clients, same population) is the sampled canaries' sum over the expected clients."""
    audit = load_config(None, BASE + AUDIT)
    plain = load_config(None, BASE)
    canaries = canaries_for(audit, POP, SHAPES)
    mask = participation_mask(audit, canaries)
    r1 = mask[0]
    assert r1.sum() >= 1  # this seed samples canaries in round 1
    pa, pp = _process(audit, 1.0), _process(plain, 1.0, population=POP + K)
    real = [_data(i) for i in range(3)]
    wa = pa.get_model_weights(pa.next(pa.initialize(), real).state).trainable
    wp = pp.get_model_weights(pp.next(pp.initialize(), real).state).trainable
    expected = 0.5 * (POP + K)
    for w, (a, p) in enumerate(zip(wa, wp)):
        shift = sum(r1[k] * canaries.update_for(POP + k)[w] for k in range(K)) / expected
        np.testing.assert_allclose(p - a, shift, atol=2e-6)  # final = initial - aggregate


def test_round_clients_samples_canaries_like_everyone():
    from tff_lab.privacy.audit import audit_population, round_clients

    cfg = load_config(None, BASE + AUDIT)
    assert audit_population(cfg, POP) == POP + K and audit_population(load_config(None, BASE), POP) == POP
    idx, real, names = round_clients(cfg, IDS, 1)
    np.testing.assert_array_equal(idx, sample_clients(cfg, POP + K, 1))
    assert list(real) == [i for i in idx if i < POP]
    assert names == [IDS[i] if i < POP else f"canary_{i - POP}" for i in idx]
    mask = participation_mask(cfg, canaries_for(cfg, POP, SHAPES))
    assert [f"canary_{k}" for k in np.flatnonzero(mask[0])] == [n for n in names if n.startswith("canary_")]


def test_audit_needs_the_canaries_in_the_population(tmp_path):
    cfg = load_config(None, BASE + AUDIT)
    ctx = RunContext(
        cfg=cfg,
        run_dir=tmp_path,
        population=POP,
        noise_multiplier=1.0,
        model_weight_shapes=[list(s) for s in SHAPES],
        model_weight_dtypes=["float32"] * 2,
        data=SimpleNamespace(client_ids=IDS),
    )
    with pytest.raises(PrivacyAccountingError, match="population = clients \\+ canaries"):
        PrivacyHook().on_start(ctx)
    with pytest.raises(Exception, match="gaussian_fixed"):
        canaries_for(load_config(None, BASE + AUDIT + ["privacy.mechanism=gaussian_adaptive"]), POP, SHAPES)


@pytest.mark.slow
def test_audit_run_as_the_loop_drives_it(tmp_path):
    cfg = load_config(None, BASE + AUDIT)
    total = POP + K
    process = _process(cfg, 1.0)
    state = process.initialize()
    initial = [np.array(w) for w in process.get_model_weights(state).trainable]
    ctx = RunContext(
        cfg=cfg,
        run_dir=tmp_path,
        population=total,
        noise_multiplier=1.0,
        model_weight_shapes=[list(s) for s in SHAPES],
        model_weight_dtypes=["float32"] * 2,
        data=SimpleNamespace(client_ids=IDS),
    )
    ctx.initial_weights = initial
    hook = PrivacyHook()
    hook.on_start(ctx)
    for r in range(1, cfg.training.rounds + 1):
        assert hook.before_round(ctx, r) is None
        idx, real, names = round_clients(cfg, IDS, r)
        out = process.next(state, [_data(int(i)) for i in real])
        state = out.state
        info = RoundInfo(r, names, len(idx), True, 6 * len(real), out.metrics)
        info.state = state
        hook.after_round(ctx, info, {})
    summary = {}
    hook.on_end(ctx, summary)
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert summary["privacy"]["epsilon_empirical"] == report["epsilon_empirical"]["epsilon"]
    emp = report["epsilon_empirical"]
    assert emp["canaries"] == {"seen": K, "unseen": K2} and emp["theoretical_epsilon"] == report["epsilon"]["pld"]
    assert emp["epsilon"] is not None and emp["interval"][0] <= emp["epsilon"] <= emp["interval"][1]
    assert (tmp_path / "plots" / "privacy_audit.png").stat().st_size > 5000
    cos = json.loads((tmp_path / "privacy_audit.json").read_text())
    assert len(cos["seen_cosines"]) == K and len(cos["unseen_cosines"]) == K2
    assert report["aggregator_state_check"]["checked_rounds"] == cfg.training.rounds
    assert report["population"] == total
