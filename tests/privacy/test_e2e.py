"""Private and secure/compressed runs end to end through tff_lab.run_experiment (tiny)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from tff_lab import run_experiment
from tff_lab.errors import PrivacyAccountingError
from tff_lab.training.hooks import RoundHook

TINY = [
    "data.num_clients=8",
    "training.clients_per_round=4",
    "training.rounds=3",
    "training.eval_every_rounds=2",
    "training.rounds_per_checkpoint=2",
    "centralized.enabled=false",
]
DP = TINY + [
    "algorithm.weighting=uniform",
    "privacy.mechanism=gaussian_adaptive",
    "privacy.noise_multiplier=0.7",
    "privacy.clip=0.5",
    "training.sampling=poisson",
    "training.sampling_rate=0.5",
]


class Crash(RoundHook):
    name = "crash"

    def __init__(self, at: int):
        self.at = at

    def after_round(self, ctx, info, row):
        if info.round_num == self.at:
            raise RuntimeError("simulated crash")


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _weights(run_dir):
    import tensorflow as tf

    return tf.keras.models.load_model(run_dir / "model" / "model.keras", compile=False).get_weights()


@pytest.mark.slow
def test_private_run_resumes_exactly_and_refuses_a_changed_ledger(tmp_path):
    full = run_experiment(None, tmp_path / "full", overrides=DP)
    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(None, part, overrides=DP, hooks=[Crash(3)])

    # A checkpoint whose ledger was accounted at another noise multiplier is refused.
    tampered = tmp_path / "tampered"
    shutil.copytree(part, tampered)
    ckpt = sorted((tampered / "checkpoints").glob("ckpt_*.json"))[-1]
    meta = json.loads(ckpt.read_text())
    meta["hooks"]["privacy"]["ledger"]["spec"]["noise_multiplier"] = 0.9
    ckpt.write_text(json.dumps(meta))
    # Edited by hand: the manifest's own digest refuses it before anything reads the ledger.
    from tff_lab.training import checkpoint as ckpt_lib

    with pytest.raises(ckpt_lib.CheckpointError, match="changed after it was written"):
        run_experiment(None, tampered, overrides=DP, resume=True)
    # A checkpoint tff-lab wrote under other privacy settings (digest intact): the ledger refuses it.
    meta["manifest_sha256"] = ckpt_lib._manifest_digest(meta)
    ckpt.write_text(json.dumps(meta))
    with pytest.raises(PrivacyAccountingError, match="noise_multiplier: checkpoint 0.9, now 0.7"):
        run_experiment(None, tampered, overrides=DP, resume=True)

    resumed = run_experiment(None, part, overrides=DP, resume=True)
    # Every round accounted exactly once, the same epsilons, the same model: the seed fixed the
    # client sampling and the DP noise, and the noise state came back from the checkpoint.
    assert resumed["privacy"] == full["privacy"]
    assert resumed["privacy"]["rounds"] == 3
    rows_full, rows_res = _rows(tmp_path / "full"), _rows(part)
    assert [r["eps_rdp"] for r in rows_res] == [r["eps_rdp"] for r in rows_full]
    assert [r["eps_pld"] for r in rows_res] == [r["eps_pld"] for r in rows_full]
    assert float(rows_full[-1]["eps_rdp"]) > float(rows_full[0]["eps_rdp"]) > 0
    for a, b in zip(_weights(tmp_path / "full"), _weights(part), strict=True):
        np.testing.assert_array_equal(a, b)
    report = json.loads((part / "privacy.json").read_text())
    assert report["rounds_run"] == 3 and report["ledger"]["event"]["count"] == 3
    assert report["epsilon"]["rdp"] == pytest.approx(full["privacy"]["epsilon"]["rdp"])
    assert report["sampling"]["scheme"] == "poisson" and report["noise"]["value_noise_multiplier"] > 0.7


@pytest.mark.slow
def test_secure_and_compressed_runs_reach_the_plain_accuracy(tmp_path):
    """Needs the loop to run secure aggregation in TFF's test runtime (secure sums as plain sums):
    ``runtime.ensure_context(..., secure=needs_secure_intrinsics(cfg))``."""
    over = TINY + ["training.rounds=5", "algorithm.client_optimizer.learning_rate=0.1"]
    plain = run_experiment(None, tmp_path / "plain", overrides=over)
    assert plain["final_test_accuracy"] > 0.5
    comp = run_experiment(
        None, tmp_path / "q8", overrides=over + ["aggregation.kind=compression", "aggregation.rotation=hadamard"]
    )
    secure = run_experiment(None, tmp_path / "secure", overrides=over + ["aggregation.kind=secure"])
    for s in (comp, secure):
        assert abs(s["final_test_accuracy"] - plain["final_test_accuracy"]) < 0.05
    assert comp["communication"]["uplink_total_bytes"] < plain["communication"]["uplink_total_bytes"] / 3
    # SecAgg of floats: 32-bit integers per element, as many as the float32 update.
    assert (
        secure["communication"]["uplink_update_bytes_per_client"]
        == plain["communication"]["uplink_update_bytes_per_client"]
    )
