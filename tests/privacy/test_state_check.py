"""The per-round check reads TFF's real aggregator state and fails when it departs from the ledger."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import numpy as np
import pytest

from tff_lab.config import load_config
from tff_lab.errors import PrivacyAccountingError
from tff_lab.privacy.hook import PrivacyHook
from tff_lab.sampling import sample_clients
from tff_lab.training.hooks import RoundInfo, RunContext

POP, N = 4, 6  # clients, examples per client
IDS = [f"c{i}" for i in range(POP)]
# Seed 6 with Poisson rate 0.4 samples [], [1, 3], [0] in rounds 1-3: an empty round first.
BASE = [
    "algorithm.weighting=uniform",
    f"data.num_clients={POP}",
    "seed=6",
    "training.sampling=poisson",
    "training.sampling_rate=0.4",
    "privacy.clip=0.5",
    "privacy.noise_multiplier=0.7",
]


def _process(cfg, noise):
    import tensorflow as tf
    import tensorflow_federated as tff

    from tff_lab.federated import runtime
    from tff_lab.federated.aggregators import make_aggregator

    runtime.ensure_context(1)
    spec = collections.OrderedDict(x=tf.TensorSpec([None, 3], tf.float32), y=tf.TensorSpec([None], tf.int32))

    def model_fn():
        keras = tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(3,))])
        return tff.learning.models.from_keras_model(
            keras, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), input_spec=spec
        )

    record_specs = [tf.TensorSpec([3, 2], tf.float32), tf.TensorSpec([2], tf.float32)]
    agg = make_aggregator(cfg, population=POP, noise_multiplier=noise, record_specs=record_specs)
    return tff.learning.algorithms.build_unweighted_fed_avg(
        model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1), model_aggregator=agg
    )


def _data(i):
    import tensorflow as tf

    rng = np.random.default_rng(i)
    return tf.data.Dataset.from_tensor_slices(
        collections.OrderedDict(x=rng.normal(size=(N, 3)).astype(np.float32), y=rng.integers(0, 2, N).astype(np.int32))
    ).batch(3)


def _run(tmp_path, overrides, *, agg_noise=0.7, rounds=3, skip_empty=False, twice=0):
    """The ledger accounts noise 0.7 (the config); the aggregator is built with ``agg_noise``."""
    cfg = load_config(None, BASE + overrides)
    ctx = RunContext(
        cfg=cfg,
        run_dir=tmp_path,
        population=POP,
        noise_multiplier=0.7,
        model_weight_shapes=[[3, 2], [2]],
        model_weight_dtypes=["float32"] * 2,
        data=SimpleNamespace(client_ids=IDS),
    )
    process = _process(cfg, agg_noise)
    state = process.initialize()
    hook = PrivacyHook()
    hook.on_start(ctx)
    for r in range(1, rounds + 1):
        idx = sample_clients(cfg, POP, r)
        metrics = {"client_work": {"train": {"num_examples": 0}}}
        if len(idx) or not skip_empty:
            for _ in range(2 if r == twice else 1):
                out = process.next(state, [_data(int(i)) for i in idx])
                state, metrics = out.state, out.metrics
        info = RoundInfo(r, [IDS[i] for i in idx], len(idx), True, N * len(idx), metrics)
        info.state = state  # what the loop passes after every round
        hook.after_round(ctx, info, {})
    return hook


def test_fixed_noise_of_the_aggregator_differs_from_the_ledger(tmp_path):
    with pytest.raises(
        PrivacyAccountingError,
        match=r"round 1: the DP aggregator's state records the event "
        r"GaussianDpEvent\(noise_multiplier=0.89999.*ledger accounts "
        r"GaussianDpEvent\(noise_multiplier=0.7\)",
    ):
        _run(tmp_path, ["privacy.mechanism=gaussian_fixed"], agg_noise=0.9)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["privacy.mechanism=gaussian_fixed"],
        ["privacy.mechanism=gaussian_fixed", "privacy.reproducible_noise=false"],
        ["privacy.mechanism=gaussian_adaptive"],
        ["privacy.mechanism=tree"],
    ],
    ids=["fixed", "fixed-unseeded", "adaptive", "tree"],
)
def test_real_state_matches_the_ledger_and_a_noise_change_fires(tmp_path, overrides):
    hook = _run(tmp_path, overrides)
    assert hook.checked_rounds == 3 and hook.unchecked_rounds == 0
    report = hook._state_check_report()
    assert report["checked_rounds"] == 3
    if "gaussian_adaptive" in overrides[0]:
        clips = report["adaptive_clip_after_round"]
        assert len(clips) == 3 and clips[0] != 0.5  # the clip moved and was followed
    with pytest.raises(PrivacyAccountingError, match="noise.multiplier"):
        _run(tmp_path, overrides, agg_noise=1.4, rounds=1)


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["tree", "gaussian_fixed"])
def test_a_skipped_or_repeated_aggregation_is_caught_from_the_state(tmp_path, mechanism):
    # Round 1 samples nobody: an engine that skips it leaves TFF's aggregator in its initial state.
    with pytest.raises(PrivacyAccountingError, match="round 1: .*still the initial state"):
        _run(tmp_path, [f"privacy.mechanism={mechanism}"], skip_empty=True)
    # An engine that aggregates round 2 twice (e.g. a retry that reuses the new state): the
    # aggregator's own count (the tree's leaves, the seeded query's calls) is one ahead of the ledger.
    match = "tree of 3 leaves, the ledger 2" if mechanism == "tree" else "3 calls of the seeded query, the ledger 2"
    with pytest.raises(PrivacyAccountingError, match=f"round 2: .*{match}"):
        _run(tmp_path, [f"privacy.mechanism={mechanism}"], twice=2)


def test_state_without_dp_query_fails(tmp_path):
    from tff_lab.privacy.accounting import MechanismSpec
    from tff_lab.privacy.state_check import check_aggregator_state

    spec = MechanismSpec("gaussian_fixed", 0.7, POP, "poisson", sampling_rate=0.4, clip=0.5)
    state = SimpleNamespace(aggregator=collections.OrderedDict(value_sum_process=(), weight_sum_process=()))
    with pytest.raises(PrivacyAccountingError, match="0 Gaussian sum queries"):
        check_aggregator_state(spec, 1, state)
