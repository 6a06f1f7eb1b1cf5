"""Smoke runs of each bench script's core with a few rounds, so the scripts cannot rot.

The measured parts run for real (TFF, tff_lab's runner, Flower where its environment exists);
only the sizes are tiny. Timings are not asserted; equal work is: tff_lab and the bare TFF
script must end with bit-identical weights.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

import _common  # noqa: E402
import _flower  # noqa: E402
import bare_tff  # noqa: E402
import cost_curves  # noqa: E402
import round_time  # noqa: E402
import soak  # noqa: E402

TINY = ["data.num_clients=6", "training.clients_per_round=3"]


@pytest.fixture(scope="module")
def digits_pair():
    """tff_lab and the bare TFF script at equal settings, 4 rounds, in this process."""
    bare = bare_tff._worker({"task": "digits", "rounds": 4, "loop": "dataset_iterator", "overrides": TINY})
    lab = _common.measure_tff_lab({"task": "digits", "rounds": 4, "overrides": TINY})
    return lab, bare


@pytest.mark.slow  # four measured runs, one in its own process
def test_round_time_core_compares_identical_work(digits_pair):
    lab, bare_iter = digits_pair
    # Every system of the comparison measured for real (none stands in for another): TFF's default
    # loop, and tff_lab with a performance knob that must not change the result.
    knob = _common.measure_tff_lab(
        {"task": "digits", "rounds": 4, "overrides": TINY + ["training.client_concurrency=1"]}
    )
    # In its own process, as round_time.py runs it (a bare run stops TFF's import-time worker at its end,
    # so a second one in this process would find it gone).
    bare = _common.run_isolated(
        REPO / "bench" / "bare_tff.py",
        {"kind": "bare_tff", "task": "digits", "rounds": 4, "loop": "tff_default", "overrides": TINY},
        timeout=300,
    )
    for r in (lab, bare_iter, bare, knob):
        assert len(r["round_seconds"]) == 4 and all(s > 0 for s in r["round_seconds"])
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["cpu_median_s"] is not None and r["cpu_median_s"] > 0  # process + TFF worker, round 3
        assert [m["round"] for m in r["memory"]] == [0, 1, 2, 3, 4] and r["memory"][-1]["worker"] > 0
    # Same data, sampling, batches, math: bit-identical (BENCHMARKS.md), measured in four separate runs.
    assert lab["weights"] == bare_iter["weights"] == bare["weights"] == knob["weights"]
    assert lab["accuracy"] == bare["accuracy"] == knob["accuracy"]

    runs = {
        name: [dict(r, load=[1.0, 1.0, 1.0], peak_rss_mb=100.0)]
        for name, r in (
            ("tff_lab", lab),
            ("bare_tff", bare),
            ("bare_tff_iter", bare_iter),
            ("knob:concurrency=1", knob),
        )
    }
    summary = {k: round_time.summarize(v) for k, v in runs.items()}
    ratios = round_time.ratios(summary)
    assert ratios["tff_lab/bare_tff"] == pytest.approx(lab["median_s"] / bare["median_s"])
    assert ratios["tff_lab/bare_tff_iter"] == pytest.approx(lab["median_s"] / bare_iter["median_s"])
    assert ratios["tff_lab_settings_bit_identical"] and ratios["tff_lab_vs_bare_tff_bit_identical"]
    assert ratios["bare_tff_iter_vs_bare_tff_bit_identical"]
    # The comparison can say "different": a knob or a reference that ended elsewhere is reported.
    for name, flag in (
        ("knob:concurrency=1", "tff_lab_settings_bit_identical"),
        ("bare_tff", "tff_lab_vs_bare_tff_bit_identical"),
    ):
        other = dict(summary, **{name: dict(summary[name], weights=["0" * 16])})
        assert round_time.ratios(other)[flag] is False, flag
    two_results = dict(summary, **{"tff_lab": dict(summary["tff_lab"], weights=[lab["weights"], "0" * 16])})
    assert round_time.ratios(two_results)["tff_lab_settings_bit_identical"] is False  # reps that disagree
    text = round_time.report(
        {"task": "digits", "rounds": 4, "reps": 1, "systems": summary, "ratios": ratios, "privacy_available": True}
    )
    assert "tff_lab/bare_tff" in text and lab["weights"] in text


def test_round_time_plan_covers_the_systems():
    labels = [label for label, _ in round_time.plan("digits", flower=True, knobs=True)]
    assert labels[:4] == ["tff_lab", "bare_tff", "bare_tff_iter", "flower"] and "flower_per_call" not in labels
    assert "flower_per_call" in [
        label for label, _ in round_time.plan("digits", flower=True, knobs=False, flower_per_call=True)
    ]
    assert {"knob:loop=dataset_reduce", "knob:concurrency=1"} <= set(labels)
    dp = [label for label, _ in round_time.plan("digits_dp", flower=False, knobs=False)]
    assert ("tff_lab" in dp) == _common.privacy_available() and "bare_tff" in dp


def test_cost_curves_core_point_table_plot_and_eval_check(tmp_path):
    res = _common.measure_tff_lab(
        {"task": "synthetic", "rounds": 3, "overrides": cost_curves.point_overrides(20, 4, 3)}
    )
    mem = [dict(m) for m in res["memory"]]
    assert [m["round"] for m in mem] == [0, 1, 2, 3]
    totals = [m["total"] for m in mem]
    # peak_rss_mb comes from the parent's sampler in a real run; here, the highest sample (a real bound).
    p = cost_curves.summarize_point(dict(res, peak_rss_mb=max(totals)), 20, 4)
    # The phases are the samples at round 0 and at the end of the warm-up, and the growth after it.
    assert p["rss_before_rounds_mb"] == round(totals[0], 1)
    assert p["rss_after_warmup_mb"] == round(totals[_common.WARMUP_ROUNDS], 1)
    assert p["rss_growth_after_warmup_mb"] == round(
        max(totals[_common.WARMUP_ROUNDS :]) - totals[_common.WARMUP_ROUNDS], 1
    )
    assert p["rss_before_rounds_mb"] < p["rss_after_warmup_mb"] <= p["peak_rss_mb"]  # + TFF's C++ worker
    assert mem[_common.WARMUP_ROUNDS]["worker"] > 0  # TFF's C++ worker is counted
    q = dict(p, clients=8, median_s=2 * p["median_s"])
    r = dict(p, population=80, median_s=3 * p["median_s"], rss_before_rounds_mb=p["rss_before_rounds_mb"] + 50)
    ev = cost_curves.per_client_eval_cost(30, sample_clients=5)
    assert ev["clients_with_eval"] > 0 and ev["same_accuracies"]
    text = cost_curves.report([p, q, r], [ev])
    # s/round doubles from 4 to 8 clients: the line through both points has no intercept and a slope of
    # median/4 per client; population x4 triples s/round and adds 50 MB before round 1.
    import re

    fit = re.search(r"population 20: s/round = (-?[\d.]+) \+ ([\d.]+) ms x clients/round", text)
    assert fit, text
    assert abs(float(fit.group(1))) < 1e-3 and float(fit.group(2)) == pytest.approx(p["median_s"] / 4 * 1000, abs=0.01)
    assert "4/round: population x4 changes s/round x3.00; RSS before round 1 +50 MB" in text and "batched" in text
    png = cost_curves.plot([p, q, r], tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batched_client_accuracy_matches_one_evaluate_per_client():
    import tensorflow as tf

    from tff_lab.centralized.baseline import compile_for_eval, evaluate

    tf.keras.utils.set_random_seed(0)
    model = compile_for_eval(tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3, "softmax")]))
    rng = np.random.default_rng(0)
    splits = [(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)) for n in (5, 1, 9)]
    assert np.allclose(cost_curves.batched_client_accuracy(model, splits), [evaluate(model, *s)[1] for s in splits])


def test_soak_core_summarizes_a_run(digits_pair, tmp_path):
    lab, _ = digits_pair
    res = dict(soak.summarize(lab, rounds=4, every=1), variant="as is")
    assert [m["round"] for m in res["samples"]] == [0, 1, 2, 3, 4]
    assert set(res["slope_mb_per_100_rounds"]) == {"total", "main", "worker"}
    assert "slope over rounds" in soak.report(res)
    assert soak.plot([res, dict(res, variant="fixed")], tmp_path / "s.png").exists()


def _assert_nothing_outlives(res):
    import psutil

    alive = [
        pid
        for pid in res["tree_pids"]
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert len(res["tree_pids"]) >= 2 and not alive  # it saw the child's helpers; none outlives the run


@pytest.mark.skipif(
    _flower.flower_env_ready(), reason="the Flower smoke test covers run_isolated (keeps this file < 60 s)"
)
def test_run_isolated_reports_a_fresh_process_and_leaves_no_worker():
    res = _common.run_isolated(
        REPO / "bench" / "soak.py",
        {"kind": "soak", "task": "digits", "rounds": 2, "fixed": True, "memory_every": 1, "overrides": TINY},
        timeout=300,
    )
    assert res["peak_rss_mb"] > max(m["total"] for m in res["memory"]) * 0.8  # the whole tree was sampled
    _assert_nothing_outlives(res)  # TFF's worker_binary included


def test_slope_and_steady_statistics():
    assert _common.slope_per_100([0, 50, 100], [10.0, 10.5, 11.0]) == pytest.approx(1.0)
    assert _common.round_stats([9.0, 5.0, 1.0, 2.0, 3.0]) == {"median_s": 2.0, "mean_s": 2.0, "rounds_timed": 3}
    assert _common.weights_digest([np.ones(3)]) != _common.weights_digest([np.ones(3) + 1e-7])


@pytest.mark.skipif(
    not _flower.flower_env_ready(),
    reason="Flower's environment (.venv-flower) is not built; bench/round_time.py builds it",
)
def test_flower_app_trains_the_same_task():
    res = _flower.measure_flower("digits", 2, overrides=TINY, timeout=300)  # through run_isolated
    assert res["system"] == "flower" and len(res["round_seconds"]) == 2
    assert 0.0 <= res["accuracy"] <= 1.0 and res["peak_rss_mb"] > 500  # the Ray processes were sampled too
    _assert_nothing_outlives(res)  # no Ray or Python helper left behind
