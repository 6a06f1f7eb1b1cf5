"""bench/engine_speed.py's core on tiny sizes, so the script cannot rot (timings are not asserted)."""

from __future__ import annotations

import sys

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

import engine_speed  # noqa: E402


@pytest.mark.slow
def test_engine_speed_core():
    tiny = ["data.num_clients=6", "training.clients_per_round=3"]
    out = engine_speed.side_by_side("digits", 4, tiny, log=lambda *_: None)
    assert out["tff"]["rounds_timed"] == out["vectorized"]["rounds_timed"] == 2
    assert out["max_abs_weight_diff"] <= 1e-5 and out["tff_over_vectorized"] > 0
    mem = engine_speed.memory_slope(200, log=lambda *_: None)
    assert [r for r, _ in mem["rss_mb"]] == [100, 200]
    flower = engine_speed.flower_figures(out["vectorized"]["median_ms"], False, 0, log=lambda *_: None)
    assert "recorded" in flower["source"] and all(v > 0 for v in flower["vectorized_over_flower"].values())
