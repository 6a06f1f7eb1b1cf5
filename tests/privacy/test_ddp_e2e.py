"""ddp_secure end to end: a real TFF ddp_secure_aggregator run gets the Skellam epsilon its ledger
composed from the aggregator's own per-round parameters; with adaptive zeroing on, no epsilon is claimed."""

from __future__ import annotations

import json
import math

from tff_lab import load_config, run_experiment

TINY = ["training.rounds=2", "training.clients_per_round=4", "data.num_clients=8", "training.eval_every_rounds=2"]


def test_ddp_secure_run_reports_an_epsilon_that_grows_with_rounds(tmp_path):
    cfg = load_config("experiments/privacy_ddp_secure.yaml", TINY)
    s = run_experiment(cfg, tmp_path / "r")
    eps = s["privacy"]["epsilon"]
    assert eps["rdp"] is not None and math.isfinite(eps["rdp"]) and eps["rdp"] > 0, eps
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    per_round = [r["eps_rdp"] for r in rows if r.get("eps_rdp") is not None]
    assert len(per_round) == 2 and per_round[0] < per_round[1], per_round
    report = json.loads((tmp_path / "r" / "privacy.json").read_text())
    assert "skellam" in json.dumps(report).lower()


def test_ddp_secure_with_adaptive_zeroing_claims_no_epsilon(tmp_path):
    cfg = load_config("experiments/privacy_ddp_secure.yaml", [*TINY, "aggregation.zeroing=true"])
    s = run_experiment(cfg, tmp_path / "r")
    report = json.loads((tmp_path / "r" / "privacy.json").read_text())
    eps = s["privacy"].get("epsilon") or {}
    assert not isinstance(eps.get("rdp"), (int, float)), eps
    assert "zeroing" in json.dumps(report)
