"""Sweeps: grid -> override sets; `tff-lab sweep`; the sweep overlay's pods run locally for two indices."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tff_lab.cli import main
from tff_lab.deploy import render
from tff_lab.deploy.sweep import load_sweep, parse_sweep
from tff_lab.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

TINY_GRID = """\
name: tiny_sweep
base:
  seed: 2
  data: {source: digits, num_clients: 4}
  model: {name: mlp, hidden_units: [8]}
  training: {rounds: 2, clients_per_round: 2, eval_every_rounds: 1, rounds_per_checkpoint: 1}
  centralized: {enabled: false}
grid:
  algorithm.client_optimizer.learning_rate: [0.02, 0.3]
"""


def test_grid_is_the_cartesian_product_in_file_order():
    s = parse_sweep({"name": "g", "base": {}, "grid": {"seed": [0, 1, 2], "partition.alpha": [0.1, 1.0]}})
    assert len(s) == 6
    assert [s.point(i) for i in (0, 1, 5)] == [
        {"seed": 0, "partition.alpha": 0.1},
        {"seed": 0, "partition.alpha": 1.0},
        {"seed": 2, "partition.alpha": 1.0},
    ]
    assert s.overrides(1) == ["seed=0", "partition.alpha=1.0"]
    assert s.config(5).seed == 2 and s.config(5).partition.alpha == 1.0 and s.config(5).name == "g-005"
    assert len({s.run_name(i) for i in range(6)}) == 6


def test_committed_grid_is_valid_and_matches_the_sweep_overlay():
    s = load_sweep(REPO / "experiments" / "sweep_digits_dp.yaml")
    assert len(s) == 6
    cfgs = [s.config(i) for i in range(len(s))]
    assert len({(c.privacy.noise_multiplier, c.partition.alpha) for c in cfgs}) == 6
    job = yaml.safe_load_all((REPO / "k8s/overlays/sweep/sweep.yaml").read_text())
    job = [d for d in job if d and d["kind"] == "Job"][0]
    assert job["spec"]["completions"] == len(s)


@pytest.mark.parametrize(
    "data, where, words",
    [
        ({"name": "g", "base": {}, "grid": {"training.roundz": [1]}}, "training.roundz", "unknown key"),
        ({"name": "g", "base": {}, "grid": {"training.rounds": [0]}}, "training.rounds", ">= 1"),
        ({"name": "g", "base": {}, "grid": {"seed": []}}, "grid.seed", "non-empty list"),
        ({"name": "g", "grid": {"seed": [1]}}, "sweep", "base experiment"),
        ({"name": "g g", "base": {}, "grid": {"seed": [1]}}, "name", "expected a name"),
        ({"name": "g", "base": {}, "grid": {"seed": [1]}, "extra": 1}, "extra", "unknown key"),
    ],
)
def test_bad_grids(data, where, words):
    with pytest.raises(ConfigError) as e:
        parse_sweep(data)
    assert where in e.value.where and words in e.value.message


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("tff-lab: error: "), err
    return err


def test_sweep_cli_lists_points(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text(TINY_GRID)
    assert main(["sweep", str(grid), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "0\t000-learning_rate=0.02\talgorithm.client_optimizer.learning_rate=0.02",
        "1\t001-learning_rate=0.3\talgorithm.client_optimizer.learning_rate=0.3",
    ]


def test_sweep_cli_bad_index(tmp_path, capsys, monkeypatch):
    grid = tmp_path / "g.yaml"
    grid.write_text(TINY_GRID)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert main(["sweep", str(grid), "--out", str(tmp_path / "o")]) == 2
    assert "JOB_COMPLETION_INDEX is not set" in _one_line_error(capsys)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    assert main(["sweep", str(grid), "--out", str(tmp_path / "o")]) == 2
    assert "JOB_COMPLETION_INDEX: 2 is out of range for the 2 experiments" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_sweep_overlay_runs_two_different_complete_experiments(tmp_path):
    from tff_lab.deploy.local import LocalIndexedJob

    grid = tmp_path / "grid.yaml"
    grid.write_text(TINY_GRID)
    sweep = load_sweep(grid)
    p = render.RenderParams(
        experiment_name="tiny",
        experiment_yaml="name: tiny\n",
        workers=1,
        gpus_per_worker=0,
        image="registry.example.com/tff-lab/tff-lab-gpu:0.1.0",
        sweep_yaml=sweep.dump(),
        sweep_points=len(sweep),
    )
    kubectl = shutil.which("kubectl")
    if kubectl:
        render.write_tree(p, tmp_path / "k8s", overlays=("sweep",))
        out = subprocess.run(
            [kubectl, "kustomize", str(tmp_path / "k8s/overlays/sweep")], check=True, capture_output=True, text=True
        ).stdout
        objs = [d for d in yaml.safe_load_all(out) if d]
    else:
        objs = render.render_overlay(p, "sweep")
    job = LocalIndexedJob(objs, "tff-lab-sweep", tmp_path / "cluster", extra_env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert job.completions == 2
    job.start_all()
    assert job.run(timeout_s=240) == {0: "Succeeded", 1: "Succeeded"}, job.log_text(0)[-2000:]
    root = job.root / "volumes" / "artifacts" / "sweeps" / "tiny_sweep"
    runs = sorted(root.iterdir())
    assert [r.name for r in runs] == ["000-learning_rate=0.02", "001-learning_rate=0.3"]
    summaries, lrs = [], []
    for i, run in enumerate(runs):
        for f in ("config.yaml", "metrics.csv", "summary.json", "sweep_point.json"):
            assert (run / f).is_file(), (run, f)
        assert json.loads((run / "sweep_point.json").read_text())["index"] == i
        s = json.loads((run / "summary.json").read_text())
        assert s["rounds"] == 2
        summaries.append(s)
        lrs.append(yaml.safe_load((run / "config.yaml").read_text())["algorithm"]["client_optimizer"]["learning_rate"])
    assert lrs == [0.02, 0.3]
    assert summaries[0]["config_hash"] != summaries[1]["config_hash"]
    assert summaries[0]["final_test_loss"] != summaries[1]["final_test_loss"]  # really different runs
