"""The python experiment scripts run (tiny settings) and write their table and plot."""

import csv
import subprocess
import sys

from helpers import REPO, cli_env


def _run(script, *args):
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / script), *map(str, args)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_alpha_sweep(tmp_path):
    _run("alpha_sweep.py", "--out", tmp_path, "--rounds", 2, "--alphas", 0.3, 5)
    rows = list(csv.DictReader(open(tmp_path / "alpha_sweep.csv")))
    assert [(r["alpha"], r["algorithm"]) for r in rows] == [
        ("0.3", "fedavg"),
        ("0.3", "fedprox"),
        ("5.0", "fedavg"),
        ("5.0", "fedprox"),
    ]
    # More skew (smaller alpha) means a larger distance from the population's label mix.
    assert float(rows[0]["mean_tv_distance"]) > float(rows[2]["mean_tv_distance"])
    assert (tmp_path / "alpha_sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "| alpha |" in (tmp_path / "alpha_sweep.md").read_text()


def test_server_optimizers(tmp_path):
    _run("server_optimizers.py", "--out", tmp_path, "--rounds", 2, "--only", "fedavg", "fedadam")
    rows = list(csv.DictReader(open(tmp_path / "server_optimizers.csv")))
    assert [r["server_optimizer"] for r in rows] == ["fedavg", "fedadam"]
    assert rows[0]["test_accuracy"] != rows[1]["test_accuracy"]
    assert (tmp_path / "server_optimizers.png").read_bytes()[:4] == b"\x89PNG"


def test_scaffold_vs_fedavg(tmp_path):
    _run(
        "scaffold_vs_fedavg.py",
        "--out",
        tmp_path,
        "--rounds",
        2,
        "--seeds",
        0,
        "--clients",
        6,
        "--clients-per-round",
        3,
        "--local-epochs",
        1,
    )
    rows = list(csv.DictReader(open(tmp_path / "scaffold_vs_fedavg.csv")))
    assert [(r["algorithm"], r["seed"]) for r in rows] == [
        ("fedavg", "0"),
        ("scaffold", "0"),
        ("fedavg", "mean"),
        ("scaffold", "mean"),
    ]
    # Round 1 of SCAFFOLD is FedAvg's (all variates 0); round 2 is corrected, so the models differ.
    assert rows[0]["final_test_loss"] != rows[1]["final_test_loss"]
    assert (tmp_path / "scaffold_vs_fedavg.png").read_bytes()[:4] == b"\x89PNG"
