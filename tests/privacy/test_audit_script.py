"""`tff-lab privacy audit --simulate` and experiments/privacy_audit.py (tiny settings)."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
from helpers import REPO

from tff_lab.cli import main

TINY = ["--set", "training.rounds=8", "--set", "privacy.audit.canaries=20", "--set", "privacy.audit.unseen=20"]


def test_cli_audit_simulate_reports_empirical_beside_theory(capsys):
    assert (
        main(
            [
                "privacy",
                "audit",
                str(REPO / "experiments" / "privacy_audit.yaml"),
                "--simulate",
                "--dim",
                "3000",
                *TINY,
                "--json",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    emp = info["epsilon_empirical"]
    assert emp["canaries"] == {"seen": 20, "unseen": 20} and emp["delta"] == 1e-5
    assert info["theoretical_epsilon"] > 0 and emp["interval"][0] <= emp["epsilon"] <= emp["interval"][1]


def test_cli_audit_refuses_adaptive_clipping(capsys):
    assert (
        main(
            [
                "privacy",
                "audit",
                str(REPO / "experiments" / "privacy_audit.yaml"),
                "--simulate",
                "--set",
                "privacy.mechanism=gaussian_adaptive",
            ]
        )
        == 2
    )
    assert "needs gaussian_fixed" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_script_writes_table_and_plot(tmp_path):
    spec = importlib.util.spec_from_file_location("privacy_audit_script", REPO / "experiments" / "privacy_audit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (
        mod.main(["--out", str(tmp_path), "--noise", "0", "1", "--dim", "3000", "--rounds", "8", "--bootstrap", "100"])
        == 0
    )
    rows = list(csv.DictReader(open(tmp_path / "privacy_audit.csv")))
    assert [float(r["noise_multiplier"]) for r in rows] == [0.0, 1.0]
    assert rows[0]["eps_theory_pld"] == "inf" and float(rows[1]["eps_theory_pld"]) > 0
    assert float(rows[0]["eps_empirical"]) > float(rows[1]["eps_empirical"])  # no noise shows more
    for name in ("privacy_audit.png", "cosines_0.png", "cosines_1.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "| noise_multiplier |" in (tmp_path / "privacy_audit.md").read_text()
