"""privacy.json: the sampling-secrecy caveat with its own epsilon, checked independently."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from scipy.stats import norm

from tff_lab.config import load_config
from tff_lab.privacy.hook import PrivacyHook
from tff_lab.sampling import sample_clients
from tff_lab.training.hooks import RoundInfo, RunContext

POP = 30
IDS = [f"c{i:02d}" for i in range(POP)]


def _run(tmp_path, overrides, rounds=8):
    cfg = load_config(
        None,
        [
            "algorithm.weighting=uniform",
            f"data.num_clients={POP}",
            f"training.rounds={rounds}",
            "privacy.noise_multiplier=1.0",
            *overrides,
        ],
    )
    ctx = RunContext(
        cfg=cfg,
        run_dir=tmp_path,
        population=POP,
        noise_multiplier=1.0,
        model_weight_shapes=[[4, 2]],
        model_weight_dtypes=["float32"],
        data=SimpleNamespace(client_ids=IDS),
    )
    hook = PrivacyHook()
    hook.on_start(ctx)
    for r in range(1, rounds + 1):
        chosen = [IDS[i] for i in sample_clients(cfg, POP, r)]
        hook.before_round(ctx, r)
        hook.after_round(
            ctx,
            RoundInfo(
                r,
                chosen,
                len(chosen),
                True,
                5 * len(chosen),
                {"client_work": {"train": {"num_examples": 5 * len(chosen)}}},
            ),
            {},
        )
    hook.on_end(ctx, {})
    return cfg, json.loads((tmp_path / "privacy.json").read_text())


def _gaussian_delta(eps: float, mu: float) -> float:
    """delta(eps) of a Gaussian mechanism with sensitivity/sigma = mu (Balle & Wang 2018, Thm 8)."""
    return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)


def test_sampling_known_epsilon_is_the_unamplified_gaussian(tmp_path):
    cfg, report = _run(
        tmp_path, ["privacy.mechanism=gaussian_fixed", "training.sampling=poisson", "training.sampling_rate=0.2"]
    )
    counts = {}
    for r in range(1, 9):
        for i in sample_clients(cfg, POP, r):
            counts[i] = counts.get(i, 0) + 1
    k = max(counts.values())
    known = report["epsilon_if_sampling_known"]
    assert known["max_participations"] == k >= 2
    # k Gaussians of multiplier 1 (add/remove one): one Gaussian with mu = sqrt(k); check the PLD
    # epsilon against the analytic delta(eps) of the Gaussian mechanism (scipy).
    eps = known["epsilon"]["pld"]
    assert _gaussian_delta(eps, math.sqrt(k)) == pytest.approx(report["delta"], rel=0.02)
    assert eps > report["epsilon"]["pld"]  # amplification is worth something only while the sample is secret
    assert any("config.yaml" in n and "secret" in n for n in report["notes"])


def test_tree_needs_no_secret_sampling(tmp_path):
    _, report = _run(tmp_path, ["privacy.mechanism=tree", "training.clients_per_round=5"], rounds=4)
    assert report["epsilon_if_sampling_known"] is None
    assert not any("config.yaml" in n for n in report["notes"])
    assert report["aggregator_state_check"]["unchecked_rounds"] == 4  # no engine state passed here
