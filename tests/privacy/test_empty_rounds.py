"""DP-FTRL with Poisson sampling: one rule for empty rounds in the ledger, the calibration and the look-ahead."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tff_lab.config import load_config
from tff_lab.errors import PrivacyAccountingError
from tff_lab.privacy.accounting import MechanismSpec, PrivacyLedger, tree_leaf, tree_sensitivity_squared
from tff_lab.privacy.calibration import planned_tree_leaves, resolve_noise_multiplier
from tff_lab.privacy.hook import PrivacyHook
from tff_lab.sampling import sample_clients
from tff_lab.training.hooks import RoundInfo, RunContext

POP, ROUNDS = 30, 12
IDS = [f"c{i:02d}" for i in range(POP)]
# Seed 0 samples nobody in 3 of the 12 rounds; leaving those leaves out of the tree gives a
# sensitivity^2 of 12 instead of 14: an epsilon below the one of the tree TFF runs.
TREE = [
    "algorithm.weighting=uniform",
    f"data.num_clients={POP}",
    f"training.rounds={ROUNDS}",
    "seed=0",
    "privacy.mechanism=tree",
    "training.sampling=poisson",
    "training.sampling_rate=0.05",
]


def _ctx(tmp_path, cfg, noise):
    return RunContext(
        cfg=cfg,
        run_dir=tmp_path,
        population=POP,
        noise_multiplier=noise,
        model_weight_shapes=[[4, 2]],
        model_weight_dtypes=["float32"],
        data=SimpleNamespace(client_ids=IDS),
    )


def _loop_round(cfg, r):
    """What the loop reports under DP: an empty round still runs the aggregator (trained)."""
    chosen = [IDS[i] for i in sample_clients(cfg, POP, r)]
    return RoundInfo(
        r, chosen, len(chosen), True, 10 * len(chosen), {"client_work": {"train": {"num_examples": 10 * len(chosen)}}}
    )


def test_the_seed_has_empty_rounds_that_change_the_tree():
    cfg = load_config(None, TREE + ["privacy.noise_multiplier=2.0"])
    leaves = planned_tree_leaves(cfg, POP)
    assert len(leaves) == ROUNDS and sum(1 for leaf in leaves if not leaf) == 3
    assert tree_sensitivity_squared(leaves) == 14
    assert tree_sensitivity_squared([leaf for leaf in leaves if leaf]) == 12  # the old, skipping rule


def test_ledger_calibration_and_lookahead_agree_with_empty_rounds(tmp_path):
    target = 8.0
    cfg = load_config(None, TREE + [f"privacy.target_epsilon={target}", f"privacy.max_epsilon={target}"])
    z = resolve_noise_multiplier(cfg, POP)  # calibrated on planned_tree_leaves
    ctx = _ctx(tmp_path, cfg, z)
    hook = PrivacyHook()
    hook.on_start(ctx)
    for r in range(1, ROUNDS + 1):
        ahead = hook.ledger.epsilon_if_next([IDS[i] for i in sample_clients(cfg, POP, r)])
        assert hook.before_round(ctx, r) is None  # the look-ahead never stops the calibrated run
        row = {}
        hook.after_round(ctx, _loop_round(cfg, r), row)
        assert row["eps_rdp"] == pytest.approx(ahead.rdp, rel=1e-12)  # look-ahead == ledger, every round
    # ledger == calibration's plan, leaf for leaf (empty leaves in place)
    assert hook.ledger.leaves == planned_tree_leaves(cfg, POP, client_ids=IDS)
    assert tree_sensitivity_squared(hook.ledger.leaves) == 14
    final = hook.ledger.epsilon().rdp
    assert final <= target and final == pytest.approx(target, rel=1e-4)  # calibration saw the same tree
    assert hook.before_round(ctx, ROUNDS + 1) is not None  # one more round would pass max_epsilon


def test_tree_round_without_the_aggregator_fails_loudly():
    spec = MechanismSpec("tree", 2.0, POP, "poisson", sampling_rate=0.05, clip=1.0)
    ledger = PrivacyLedger(spec, 1e-5)
    ledger.record_round([], trained=True)
    assert ledger.leaves == [[]] and ledger.rounds == 1
    with pytest.raises(PrivacyAccountingError, match="did not run"):
        ledger.record_round([], trained=False)
    assert tree_leaf(["b", 3, "a"]) == ["3", "a", "b"]


def test_checkpoint_of_the_old_rule_is_refused():
    spec = MechanismSpec("tree", 2.0, POP, "poisson", sampling_rate=0.05, clip=1.0)
    state = {"spec": spec.to_json(), "delta": 1e-5, "rounds": 3, "leaves": [["a"], ["b"]]}
    with pytest.raises(PrivacyAccountingError, match="2 leaves for 3 rounds"):
        PrivacyLedger.from_state_dict(state)
