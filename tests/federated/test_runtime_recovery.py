"""A TFF worker killed mid-run: the loop resumes from its last checkpoint and ends as an uninterrupted run.

Real parts: ``run_experiment`` on two local worker_binary processes, one of them SIGKILLed from a
thread while a round runs. The privacy ledger comes back with the checkpoint, so ε is the same as
the uninterrupted run's (no round accounted twice) and every round appears once in the metrics.
"""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from tff_lab import run_experiment
from tff_lab.federated import runtime
from tff_lab.training.hooks import RoundHook

pytestmark = pytest.mark.slow

SETTINGS = [
    "data.num_clients=8",
    "training.clients_per_round=4",
    "training.rounds=6",
    "training.rounds_per_checkpoint=2",
    "training.eval_every_rounds=6",
    "centralized.enabled=false",
    "training.workers=2",
    "training.worker_retries=1",
    "algorithm.weighting=uniform",
    "privacy.mechanism=gaussian_fixed",
    "privacy.noise_multiplier=0.5",
    "privacy.clip=1.0",
]


class KillAWorker(RoundHook):
    """SIGKILLs the second worker shortly after round ``at`` starts (once); records the worker pids."""

    name = "kill_a_worker"

    def __init__(self, at: int):
        self.at = at
        self.victim = None
        self.completed: list[tuple[int, list[int]]] = []  # (round, worker pids), in the order run

    def before_round(self, ctx, round_num):
        if round_num == self.at and self.victim is None:
            self.victim = runtime.worker_pids()[1]
            threading.Timer(0.05, os.kill, (self.victim, signal.SIGKILL)).start()
            time.sleep(0.01)
        return None

    def after_round(self, ctx, info, row):
        self.completed.append((info.round_num, runtime.worker_pids()))


def _final(run_dir):
    import tensorflow as tf

    weights = tf.keras.models.load_model(run_dir / "model/model.keras").get_weights()
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    privacy = json.loads((run_dir / "privacy.json").read_text())
    return weights, summary, rounds, privacy


def test_killed_worker_mid_run_resumes_and_ends_as_an_uninterrupted_run(tmp_path):
    if not hasattr(runtime, "classify_failure"):  # pragma: no cover
        pytest.skip("runtime without failure classification")
    ref = run_experiment(None, tmp_path / "ref", overrides=SETTINGS)
    hook = KillAWorker(at=4)
    got = run_experiment(None, tmp_path / "killed", overrides=SETTINGS, hooks=[hook])
    assert hook.victim is not None
    rounds_run = [r for r, _ in hook.completed]
    # Back to the checkpoint of round 2 and on from there, on a restarted worker.
    assert rounds_run[:3] == [1, 2, 3] and rounds_run[-4:] == [3, 4, 5, 6] and len(rounds_run) in (7, 8), rounds_run
    assert hook.victim in hook.completed[0][1] and hook.victim not in hook.completed[-1][1]
    assert len(hook.completed[-1][1]) == 2
    assert runtime.worker_pids() == []  # stopped at the end of the run

    ref_w, ref_s, ref_rounds, ref_p = _final(tmp_path / "ref")
    got_w, got_s, got_rounds, got_p = _final(tmp_path / "killed")
    assert got_rounds == ref_rounds == [1, 2, 3, 4, 5, 6]  # every round once, none lost or doubled
    assert len(got_w) == len(ref_w)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(got_w, ref_w))
    assert diff <= 1e-6, diff  # the same worker count merges in the same order: in practice 0
    # The ledger came back with the checkpoint: six rounds accounted, not eight.
    assert got_s["privacy"]["rounds"] == ref_s["privacy"]["rounds"] == 6
    assert got_p["rounds_run"] == ref_p["rounds_run"] == 6
    assert got_p["ledger"] == ref_p["ledger"]
    assert got_s["privacy"]["epsilon"]["rdp"] == ref_s["privacy"]["epsilon"]["rdp"] > 0
    assert got["final_test_accuracy"] == ref["final_test_accuracy"]
