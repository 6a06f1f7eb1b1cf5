"""``tff-lab run --resume`` over damaged checkpoints: the previous one is used, or a one-line error names the file."""

import json

import pytest
from helpers import assert_user_error, run_cli

pytestmark = pytest.mark.slow

SETS = [
    "data.num_clients=8",
    "training.clients_per_round=4",
    "training.rounds=4",
    "training.rounds_per_checkpoint=2",
    "training.eval_every_rounds=4",
    "centralized.enabled=false",
]


def _run(out, *extra):
    args = ["run", "--out", out, "--quiet", *extra]
    for s in SETS:
        args += ["--set", s]
    return run_cli(*args)


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("round_seconds")
    return rows


def _weights(run_dir):
    import tensorflow as tf

    return tf.keras.models.load_model(run_dir / "model/model.keras").get_weights()


def test_resume_skips_a_truncated_checkpoint_and_refuses_when_none_is_intact(tmp_path):
    out = tmp_path / "run"
    first = _run(out)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.npz")) == ["ckpt_000002.npz", "ckpt_000004.npz"]
    reference = _weights(out)
    rows_before = _rows(out)

    newest = ckpts / "ckpt_000004.npz"
    newest.write_bytes(newest.read_bytes()[:200])  # e.g. the disk filled up under another writer
    resumed = _run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "ckpt_000004.npz" in resumed.stderr and "previous checkpoint (round 2)" in resumed.stderr
    # Rounds 3 and 4 ran again from round 2's checkpoint: the same model, the same rows.
    for a, b in zip(_weights(out), reference, strict=True):
        assert (a == b).all()
    assert _rows(out) == rows_before and [r["round"] for r in rows_before] == [1, 2, 3, 4]

    for p in ckpts.glob("*.npz"):
        p.write_bytes(p.read_bytes()[:200])
    refused = _run(out, "--resume")
    assert_user_error(refused, "ckpt_000004.npz", "no earlier intact checkpoint")
