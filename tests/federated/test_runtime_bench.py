"""Smoke run of bench/workers.py's core (tiny sizes), so the script cannot rot; and its cost fit."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

import workers as bench_workers  # noqa: E402


def test_fit_recovers_per_round_and_per_client_cost():
    a, b = bench_workers.fit([(10, 20.0 + 10 * 8.0), (50, 20.0 + 50 * 8.0)])
    assert a == pytest.approx(20.0) and b == pytest.approx(8.0)


@pytest.mark.slow
def test_measure_times_rounds_on_zero_and_two_workers(capsys):
    bench_workers.CASES["tiny"] = ("digits", ("data.num_clients=6", "training.clients_per_round=3"), 3)
    try:
        runs = {w: bench_workers.measure("tiny", w, rounds=4) for w in (0, 2)}
    finally:
        del bench_workers.CASES["tiny"]
    for w, r in runs.items():
        assert r["workers"] == w and r["worker_processes"] == max(1, w)
        assert r["ms_round"] > 0 and r["cpu_ms_round"] > 0
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(runs[0]["weights"], runs[2]["weights"], strict=True))
    assert diff < 1e-6  # the same work on one and on two workers
