"""experiments/own_model_dp.py: a user's model and data, DP-FedAvg, killed and resumed bit-identically,
exact epsilon, TFLite export with the parity report."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO, cli_env

SCRIPT = str(REPO / "experiments" / "own_model_dp.py")
ARGS = ["--rounds", "6", "--clients", "12"]


def _run(*args, timeout=600):
    proc = subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _weights(run):
    import tensorflow as tf

    return tf.keras.models.load_model(run / "model" / "model.keras", compile=False).get_weights()


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical_with_exact_epsilon_and_export(tmp_path):
    full = tmp_path / "full"
    out = _run("--out", full, *ARGS).stdout
    assert "epsilon: RDP" in out and "exported" in out

    # Exact epsilon: the ledger's value recomputed independently from dp_accounting.
    import dp_accounting

    priv = json.loads((full / "privacy.json").read_text())
    q, z, rounds, delta = 0.3, 0.8, 6, priv["delta"]
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    assert priv["epsilon"]["rdp"] == pytest.approx(acc.get_epsilon(delta), rel=1e-3)

    # The export's parity report holds for the user's model (logits -> probabilities).
    report = json.loads((full / "export" / "report.json").read_text())
    f32 = report["variants"]["float32"]["parity"]
    assert f32["max_abs_diff"] <= 1e-4 and f32["top1_agreement"] == 1.0

    # Kill -9 once a checkpoint exists, resume, compare with the uninterrupted run.
    split = tmp_path / "split"
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--out", str(split), *ARGS, "--no-export"],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while time.time() < deadline and not list((split / "checkpoints").glob("ckpt_000004.json")):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (split / "summary.json").exists()
    _run("--out", split, *ARGS, "--no-export", "--resume")
    for a, b in zip(_weights(full), _weights(split), strict=True):
        np.testing.assert_array_equal(a, b)
    assert json.loads((split / "privacy.json").read_text())["epsilon"] == priv["epsilon"]
