"""`tff-lab train-dist` bad input: one line on stderr, exit 2, before any training starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tff_lab.cli import main

REPO = Path(__file__).resolve().parents[2]
EXP = str(REPO / "experiments" / "dist_digits.yaml")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in (
        "TF_CONFIG",
        "JOB_COMPLETION_INDEX",
        "TFF_LAB_NUM_WORKERS",
        "TFF_LAB_JOB_NAME",
        "TFF_LAB_SERVICE",
        "TFF_LAB_HOST_MAP",
        "TFF_LAB_WORKER_PORT",
    ):
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize(
    "env, words",
    [
        (
            {"JOB_COMPLETION_INDEX": "2", "TFF_LAB_NUM_WORKERS": "2", "TFF_LAB_JOB_NAME": "j", "TFF_LAB_SERVICE": "s"},
            "JOB_COMPLETION_INDEX: 2 is not below the worker count TFF_LAB_NUM_WORKERS=2",
        ),
        ({"JOB_COMPLETION_INDEX": "0", "TFF_LAB_NUM_WORKERS": "0"}, "TFF_LAB_NUM_WORKERS: expected an integer >= 1"),
        ({"TF_CONFIG": '{"cluster": {"worker": ["a:1"]'}, "TF_CONFIG: malformed JSON"),
        (
            {"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}'},
            "TF_CONFIG.task.index: 3 is out of range",
        ),
    ],
)
def test_bad_cluster_env(env, words, monkeypatch, tmp_path, capsys):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["train-dist", EXP, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("tff-lab: error: ") and words in err, err
    assert not (tmp_path / "run").exists()


def test_bad_dist_config(tmp_path, capsys):
    assert main(["train-dist", EXP, "--out", str(tmp_path / "run"), "--set", "dist.epochs=0"]) == 2
    assert "dist.epochs: expected an integer >= 1" in capsys.readouterr().err


def test_single_worker_mixed_precision_and_a_batch_too_large(tmp_path):
    """Single worker (no cluster env), mixed_float16 with a float32 output; then a global batch
    larger than the data is a one-line error. Subprocesses: the Keras dtype policy is global."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "JOB_COMPLETION_INDEX")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    exp = tmp_path / "e.yaml"
    exp.write_text(
        "name: mp\ndata: {source: digits, num_clients: 4}\nmodel: {name: mlp, hidden_units: [8]}\n"
        "training: {clients_per_round: 2}\n"
        "dist: {epochs: 1, per_replica_batch_size: 128, mixed_precision: true}\n"
    )
    cmd = [sys.executable, "-m", "tff_lab.cli", "train-dist", str(exp), "--out", str(tmp_path / "run")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["cluster_source"] == "single" and summary["num_workers"] == 1 and summary["mixed_precision"]
    assert summary["global_batch_size"] == 128 and summary["steps_per_epoch"] == summary["train_examples"] // 128
    r = subprocess.run(cmd + ["--set", "dist.per_replica_batch_size=100000"], capture_output=True, text=True, env=env)
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("tff-lab:")]
    assert r.returncode == 2 and len(err) == 1 and "dist.per_replica_batch_size: global batch 100000" in err[0]
