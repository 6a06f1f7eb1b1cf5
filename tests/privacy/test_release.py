"""The publication policy: under DP only what epsilon covers leaves the run, unless opted in."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tff_lab.config import load_config
from tff_lab.privacy.release import coverage_report, publication_policy

DP = ["algorithm.weighting=uniform", "privacy.mechanism=gaussian_fixed", "privacy.noise_multiplier=1.0"]
ROW = {
    "round": 3,
    "clients": 5,
    "train_examples": 140,
    "train_loss": 0.9,
    "train_accuracy": 0.7,
    "eval_loss": 1.1,
    "eval_accuracy": 0.6,
    "round_seconds": 0.2,
    "eps_rdp": 1.5,
    "eps_pld": 1.2,
    "uplink_bytes": 12345,
}


def _policy(overrides, data=None):
    return publication_policy(load_config(None, overrides), data=data)


def test_dp_row_keeps_only_covered_columns():
    pol = _policy(DP)  # digits: the test split is held out before partitioning
    assert pol.filter_row(ROW) == {
        "round": 3,
        "clients": 5,
        "eval_loss": 1.1,
        "eval_accuracy": 0.6,
        "eps_rdp": 1.5,
        "eps_pld": 1.2,
    }
    assert pol.progress_fields(ROW) == {"eps": "1.5", "test_acc": "0.600"}
    assert not pol.allow_client_stats() and not pol.allow_per_client_eval() and not pol.allow_centralized_baseline()
    assert pol.allow_global_eval()


def test_poisson_sample_size_and_client_test_sets_are_not_covered():
    pol = _policy(DP + ["training.sampling=poisson", "training.sampling_rate=0.2"])
    assert "clients" not in pol.filter_row(ROW)
    synth = _policy(DP + ["data.source=synthetic"])
    assert synth.test_set_is_client_data and not synth.allow_global_eval()
    assert synth.filter_row(ROW) == {"round": 3, "clients": 5, "eps_rdp": 1.5, "eps_pld": 1.2}
    assert synth.progress_fields(ROW) == {"eps": "1.5"}
    # the data's own record wins over the source-based default
    assert _policy(DP, data=SimpleNamespace(test_source="clients")).test_set_is_client_data
    separate = _policy(DP + ["data.source=synthetic"], data=SimpleNamespace(test_source="separate"))
    assert not separate.test_set_is_client_data


@pytest.mark.parametrize("overrides", [DP + ["privacy.release_unprotected=true"], []], ids=["opt-in", "no-dp"])
def test_opt_in_and_non_private_runs_release_everything(overrides):
    pol = _policy(overrides)
    assert pol.filter_row(ROW) == ROW
    assert pol.allow_client_stats() and pol.allow_per_client_eval() and pol.allow_global_eval()
    assert pol.progress_fields(ROW) == {"loss": "0.900", "acc": "0.700", "test_acc": "0.600"}


def test_summary_withholds_uncovered_entries():
    summary = {
        "final_test_accuracy": 0.8,
        "final_test_loss": 0.5,
        "per_client_eval_accuracy": {"min": 0.1},
        "centralized_accuracy": 0.9,
        "retention": 0.88,
        "example_passes": 999,
        "train_seconds": 3.0,
        "data": {"num_clients": 20, "num_classes": 10, "train_examples": 1500, "examples_per_client": {}},
        "rounds": 5,
    }
    out = _policy(DP + ["data.source=synthetic"]).filter_summary(summary)
    assert out["final_test_accuracy"] is None and out["centralized_accuracy"] is None
    assert out["per_client_eval_accuracy"] == {} and out["example_passes"] is None and out["rounds"] == 5
    assert out["data"] == {"num_clients": 20, "num_classes": 10}
    assert {"final_test_accuracy", "centralized_accuracy", "example_passes"} <= set(out["withheld_by_privacy_policy"])
    kept = _policy(DP).filter_summary(summary)
    assert kept["final_test_accuracy"] == 0.8  # a separate test set is evaluated on the covered model


def test_artifact_coverage_lists_every_artifact_with_a_reason(tmp_path):
    for name in ("config.yaml", "parts.json", "client_stats.json", "metrics.csv", "summary.json"):
        (tmp_path / name).write_text("x")
    for d in ("model", "checkpoints", "tb", "plots", "export"):
        (tmp_path / d).mkdir()
    for name in (
        "plots/loss.png",
        "plots/heterogeneity.png",
        "export/model_int8.tflite",
        "export/model_float32.tflite",
        "export/report.json",
    ):
        (tmp_path / name).write_text("x")
    cov = coverage_report(_policy(DP), tmp_path, final=True)
    table = {a["artifact"]: a for a in cov["artifacts"]}
    covered = {k for k, a in table.items() if a["covered_by_epsilon"]}
    assert covered == {
        "model",
        "export/model_float32.tflite",
        "parts.json",
        "metrics.csv",
        "tb",
        "plots/loss.png",
        "summary.json",
        "privacy.json",
    }
    assert set(table) - covered == {
        "config.yaml",
        "client_stats.json",
        "checkpoints",
        "plots/heterogeneity.png",
        "export/model_int8.tflite",
        "export/report.json",
    }
    assert all(a["reason"] for a in table.values())
    assert "seed" in table["config.yaml"]["reason"] and "noise" in table["checkpoints"]["reason"]
    opt = coverage_report(
        _policy(DP + ["privacy.release_unprotected=true", "privacy.reproducible_noise=false"]), tmp_path, final=True
    )
    t2 = {a["artifact"]: a for a in opt["artifacts"]}
    assert not t2["metrics.csv"]["covered_by_epsilon"]
    assert t2["client_stats.json"]["released_because"] == "privacy.release_unprotected: true"
    assert t2["config.yaml"]["covered_by_epsilon"]  # no noise seed in it


@pytest.mark.slow
@pytest.mark.parametrize("engine,mechanism", [("tff", "gaussian_fixed"), ("vectorized", "gaussian_adaptive")])
def test_private_run_publishes_only_what_epsilon_covers(tmp_path, engine, mechanism):
    import csv
    import json

    from tff_lab import run_experiment

    over = [
        "data.num_clients=8",
        "training.rounds=3",
        "training.eval_every_rounds=1",
        "centralized.enabled=false",
        f"training.engine={engine}",
        "model.name=logreg",
        "algorithm.weighting=uniform",
        f"privacy.mechanism={mechanism}",
        "privacy.noise_multiplier=0.7",
        "privacy.clip=0.5",
        "training.sampling=poisson",
        "training.sampling_rate=0.5",
    ]
    summary = run_experiment(None, tmp_path / "run", overrides=over)
    run = tmp_path / "run"
    with open(run / "metrics.csv") as f:
        cols = set(csv.DictReader(f).fieldnames)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(set(r) <= {"round", "eps_rdp", "eps_pld", "eval_loss", "eval_accuracy"} for r in rows)
    assert not ({"train_loss", "train_accuracy", "train_examples", "clients"} & set().union(*rows))
    assert not (run / "client_stats.json").exists() and not (run / "plots" / "heterogeneity.png").exists()
    assert summary["per_client_eval_accuracy"] == {}
    report = json.loads((run / "privacy.json").read_text())
    assert report["aggregator_state_check"]["checked_rounds"] == 3  # the engine passed its state every round
    if mechanism == "gaussian_adaptive":
        assert len(report["aggregator_state_check"]["adaptive_clip_after_round"]) == 3
    table = {a["artifact"]: a["covered_by_epsilon"] for a in report["coverage"]["artifacts"]}
    assert table["model"] and table["metrics.csv"] and not table["checkpoints"]
    assert "client_stats.json" not in table
    assert cols  # the CSV exists; its extra columns (if any) are empty
