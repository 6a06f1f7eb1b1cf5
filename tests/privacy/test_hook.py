"""PrivacyHook against the loop's contract: what ran must be what is accounted."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tff_lab.config import load_config
from tff_lab.errors import PrivacyAccountingError
from tff_lab.privacy.accounting import MechanismSpec, default_delta, epsilon_for_rounds
from tff_lab.privacy.hook import PrivacyHook
from tff_lab.sampling import sample_clients
from tff_lab.training.hooks import RoundInfo, RunContext

POP = 30
IDS = [f"client_{i:02d}" for i in range(POP)]
EXAMPLES = {c: 10 + i for i, c in enumerate(IDS)}


def make_ctx(tmp_path, overrides, noise=1.0):
    cfg = load_config(None, ["algorithm.weighting=uniform", f"data.num_clients={POP}", "training.rounds=6", *overrides])
    return RunContext(
        cfg=cfg,
        run_dir=tmp_path,
        population=POP,
        noise_multiplier=noise,
        model_weight_shapes=[[4, 2]],
        model_weight_dtypes=["float32"],
        data=SimpleNamespace(client_ids=IDS),
    )


def round_info(ctx, r, *, drop=0, swap=False, examples_delta=0):
    chosen = [IDS[i] for i in sample_clients(ctx.cfg, POP, r)]
    if swap and chosen:
        chosen = chosen[:-1] + [next(c for c in IDS if c not in chosen)]
    expected = sum(EXAMPLES[c] for c in chosen)
    metrics = {"client_work": {"train": {"num_examples": expected + examples_delta}}} if chosen else {}
    return RoundInfo(r, chosen, len(chosen) - drop, bool(chosen), expected, metrics)


def run_rounds(hook, ctx, rounds, start=1):
    rows = []
    for r in range(start, start + rounds):
        assert hook.before_round(ctx, r) is None
        row = {}
        hook.after_round(ctx, round_info(ctx, r), row)
        rows.append(row)
    return rows


FIXED = ["privacy.mechanism=gaussian_fixed", "privacy.noise_multiplier=1.0", "training.clients_per_round=5"]
POISSON = [
    "privacy.mechanism=gaussian_fixed",
    "privacy.noise_multiplier=1.0",
    "training.sampling=poisson",
    "training.sampling_rate=0.1",
]


def test_rows_carry_rdp_every_round_and_pld_at_checkpoints(tmp_path):
    ctx = make_ctx(tmp_path, [*POISSON, "training.rounds_per_checkpoint=2", "training.rounds=5"])
    hook = PrivacyHook()
    hook.on_start(ctx)
    rows = run_rounds(hook, ctx, 5)
    spec = MechanismSpec("gaussian_fixed", 1.0, POP, "poisson", sampling_rate=0.1, clip=1.0)
    for r, row in enumerate(rows, start=1):
        eps = epsilon_for_rounds(spec, r, default_delta(POP))
        assert row["eps_rdp"] == pytest.approx(eps.rdp)
        if r in (2, 4, 5):  # checkpoint rounds and the last: the PLD too, exactly
            assert row["eps_pld"] == pytest.approx(eps.pld)
        else:  # deferred: the PLD costs more than a round
            assert row["eps_pld"] is None
    assert rows[0]["eps_rdp"] < rows[-1]["eps_rdp"]
    assert hook.progress_fields()["eps"] == f"{rows[-1]['eps_rdp']:.3g}"


def test_privacy_json_is_written_atomically_with_the_facts(tmp_path):
    ctx = make_ctx(tmp_path, FIXED + ["privacy.delta=1.0e-6"])
    hook = PrivacyHook()
    hook.on_start(ctx)
    run_rounds(hook, ctx, 3)
    summary = {}
    hook.on_end(ctx, summary)
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["mechanism"] == "gaussian_fixed" and report["noise_multiplier"] == 1.0
    assert report["sampling"]["scheme"] == "uniform_without_replacement"
    assert report["sampling"]["clients_per_round"] == 5 and report["population"] == POP
    assert report["rounds_run"] == 3 and report["delta"] == 1e-6
    assert report["epsilon"]["rdp"] == pytest.approx(summary["privacy"]["epsilon"]["rdp"])
    assert report["epsilon"]["pld"] is None and "without replacement" in report["epsilon"]["pld_note"]
    assert report["neighbouring_relation"] == "REPLACE_ONE"
    assert set(report["versions"]) >= {"dp-accounting", "tensorflow-privacy", "tensorflow-federated"}
    assert report["ledger"]["event"]["count"] == 3
    assert not list(tmp_path.glob(".privacy.json*"))  # no temp file left behind


def test_max_epsilon_stops_before_the_round_that_would_exceed(tmp_path):
    probe = make_ctx(tmp_path, POISSON)
    spec = MechanismSpec.from_config(probe.cfg, POP, 1.0)
    eps3 = epsilon_for_rounds(spec, 3, default_delta(POP)).rdp
    eps4 = epsilon_for_rounds(spec, 4, default_delta(POP)).rdp
    ctx = make_ctx(tmp_path, POISSON + [f"privacy.max_epsilon={(eps3 + eps4) / 2}"])
    hook = PrivacyHook()
    hook.on_start(ctx)
    run_rounds(hook, ctx, 3)
    reason = hook.before_round(ctx, 4)
    assert reason and "max_epsilon" in reason and "round 4" in reason
    assert hook.state_dict()["stop_reason"] == reason


def test_ledger_resume_and_unaccounted_rounds(tmp_path):
    ctx = make_ctx(tmp_path, FIXED)
    a = PrivacyHook()
    a.on_start(ctx)
    run_rounds(a, ctx, 2)
    state = json.loads(json.dumps(a.state_dict()))
    b = PrivacyHook()
    b.on_start(ctx)
    b.load_state_dict(state)
    rows_b = run_rounds(b, ctx, 2, start=3)
    full = PrivacyHook()
    full.on_start(ctx)
    rows_full = run_rounds(full, ctx, 4)
    assert rows_b[-1] == rows_full[-1]
    # A fresh ledger asked to go on at round 3: rounds 1-2 would be unaccounted.
    c = PrivacyHook()
    c.on_start(ctx)
    with pytest.raises(PrivacyAccountingError, match="unaccounted"):
        c.before_round(ctx, 3)


def test_changed_noise_multiplier_on_resume_fails_loudly(tmp_path):
    ctx = make_ctx(tmp_path, FIXED)
    a = PrivacyHook()
    a.on_start(ctx)
    run_rounds(a, ctx, 2)
    # e.g. a target_epsilon calibration that lands elsewhere (another population, another dp_accounting)
    other = make_ctx(
        tmp_path, [o for o in FIXED if "noise_multiplier" not in o] + ["privacy.target_epsilon=3.0"], noise=1.5
    )
    b = PrivacyHook()
    b.on_start(other)
    with pytest.raises(PrivacyAccountingError, match="noise_multiplier: checkpoint 1.0, now 1.5"):
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(drop=1), "aggregated but the sampler chose"),
        (dict(swap=True), "not the sampler's choice"),
        (dict(examples_delta=-3), "processed"),
    ],
)
def test_departures_from_the_accounted_round_fail_loudly(tmp_path, kwargs, match):
    ctx = make_ctx(tmp_path, FIXED)
    hook = PrivacyHook()
    hook.on_start(ctx)
    assert hook.before_round(ctx, 1) is None
    with pytest.raises(PrivacyAccountingError, match=match):
        hook.after_round(ctx, round_info(ctx, 1, **kwargs), {})


def test_tree_lookahead_uses_the_samplers_next_choice(tmp_path):
    ctx = make_ctx(
        tmp_path, ["privacy.mechanism=tree", "privacy.noise_multiplier=2.0", "training.clients_per_round=10"], noise=2.0
    )
    hook = PrivacyHook()
    hook.on_start(ctx)
    rows = run_rounds(hook, ctx, 5)
    leaves = [[IDS[i] for i in sample_clients(ctx.cfg, POP, r)] for r in range(1, 6)]
    spec = MechanismSpec.from_config(ctx.cfg, POP, 2.0)
    assert rows[-1]["eps_rdp"] == pytest.approx(epsilon_for_rounds(spec, 5, default_delta(POP), leaves).rdp)
    nxt = hook.ledger.epsilon_if_next([IDS[i] for i in sample_clients(ctx.cfg, POP, 6)])
    assert nxt.rdp == pytest.approx(
        epsilon_for_rounds(
            spec, 6, default_delta(POP), leaves + [[IDS[i] for i in sample_clients(ctx.cfg, POP, 6)]]
        ).rdp
    )


def test_noise_that_differs_from_the_config_fails_loudly(tmp_path):
    with pytest.raises(PrivacyAccountingError, match="noise multiplier"):
        PrivacyHook().on_start(make_ctx(tmp_path, FIXED, noise=0.9))
