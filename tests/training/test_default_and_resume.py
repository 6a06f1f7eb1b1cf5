"""The main job (the default experiment) and SIGKILL + --resume determinism."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO, cli_env

pytestmark = pytest.mark.slow


def _start(out, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "tff_lab.cli", "run", "--out", str(out), "--quiet", *extra],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # its own process group: SIGKILL takes TFF's worker too


def _weights(run_dir):
    import tensorflow as tf

    return tf.keras.models.load_model(run_dir / "model/model.keras").get_weights()


def _rows(run_dir):
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    for r in rows:
        r.pop("round_seconds")
    return rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "run"
    t0 = time.time()
    p = _start(out)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    return out, time.time() - t0


def test_default_experiment_meets_its_bars(reference):
    out, wall = reference
    s = json.loads((out / "summary.json").read_text())
    assert s["experiment"] == "default" and s["population"] == 20 and s["rounds"] == 100
    assert s["final_test_accuracy"] >= 0.92, s["final_test_accuracy"]
    assert s["retention"] >= 0.95, s["retention"]
    assert wall < 180, wall


def test_sigkill_anywhere_then_resume_ends_where_an_uninterrupted_run_does(reference, tmp_path):
    ref_dir, ref_wall = reference
    out = tmp_path / "killed"
    rounds_seen_at_kill = []
    # Two kills during training (the second one into an already resumed run), then finish. The kill
    # waits for metrics rows, not a fraction of the wall time: on the vectorised engine (training.engine
    # auto) the 100 rounds are a small slice of the run, after imports and compilation.
    for rows_before_kill in (25, 55):
        p = _start(out, "--resume")
        jl = out / "metrics.jsonl"
        deadline = time.time() + ref_wall * 3
        while (
            time.time() < deadline
            and p.poll() is None
            and (not jl.exists() or len(jl.read_text().splitlines()) < rows_before_kill)
        ):
            time.sleep(0.005)
        assert p.poll() is None, "the run finished before it could be killed; kill earlier"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        jl = out / "metrics.jsonl"
        rounds_seen_at_kill.append(len(jl.read_text().splitlines()) if jl.exists() else 0)
    assert max(rounds_seen_at_kill) > 0, "no kill landed during training"
    p = _start(out, "--resume")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]

    ref_w, w = _weights(ref_dir), _weights(out)
    assert len(ref_w) == len(w) > 0
    for a, b in zip(ref_w, w, strict=True):
        np.testing.assert_array_equal(a, b)
    assert _rows(out) == _rows(ref_dir)
    # TensorBoard: every round once (the rounds re-run after each kill replaced, not duplicated),
    # with the uninterrupted run's values.
    from training.test_metrics import tb_scalars

    ref_tb, tb = tb_scalars(ref_dir), tb_scalars(out)
    keys = [(step, tag) for step, tag, _ in tb]
    assert len(keys) == len(set(keys)), "a TensorBoard step appears twice"
    assert sorted({step for step, _ in keys}) == list(range(1, 101))
    assert sorted(keys) == sorted((step, tag) for step, tag, _ in ref_tb)
    timing = ("seconds",)
    assert sorted(x for x in tb if not any(t in x[1] for t in timing)) == sorted(
        x for x in ref_tb if not any(t in x[1] for t in timing)
    )
    s_ref = json.loads((ref_dir / "summary.json").read_text())
    s = json.loads((out / "summary.json").read_text())
    for key in (
        "final_test_accuracy",
        "final_test_loss",
        "centralized_accuracy",
        "rounds",
        "example_passes",
        "per_client_eval_accuracy",
    ):
        assert s[key] == s_ref[key], key


def test_sigterm_checkpoints_and_exits_retriable(tmp_path):
    out = tmp_path / "term"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tff_lab.cli",
            "run",
            "--out",
            str(out),
            "--quiet",
            "--set",
            "training.rounds=100000",
            "--set",
            "training.rounds_per_checkpoint=100000",
            "--set",
            "centralized.enabled=false",
        ],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    jl = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (jl.exists() and len(jl.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-2000:]
    assert "preempted" in err and "--resume" in err
    from tff_lab.training import checkpoint

    last = checkpoint.latest(out / "checkpoints")
    assert last is not None and last >= 3
    assert len(jl.read_text().splitlines()) == last  # metrics end exactly at the checkpoint
