"""metrics.jsonl and TensorBoard after a resume: the rounds re-run appear once, with the re-run's values."""

from __future__ import annotations

import json

import pytest

from tff_lab.training.metrics import MetricsWriter, truncate_tensorboard


def tb_scalars(run_dir) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in every event file of RUN_DIR/tb, in file order."""
    import tensorflow as tf

    out = []
    for f in sorted((run_dir / "tb").glob("*tfevents*")):
        for ev in tf.compat.v1.train.summary_iterator(str(f)):
            for v in ev.summary.value:
                out.append((int(ev.step), v.tag, float(v.simple_value)))
    return out


def _steps(run_dir, tag="train_loss") -> list[int]:
    return [s for s, t, _ in tb_scalars(run_dir) if t == tag]


def _rows(w, rounds, base):
    for r in rounds:
        w.append({"round": r, "train_loss": base + r, "eval_accuracy": None})


def test_resume_drops_tensorboard_steps_after_the_checkpoint(tmp_path):
    w = MetricsWriter(tmp_path)
    _rows(w, range(1, 6), 0.0)  # rounds 1..5, then "killed": the writer is never closed
    assert _steps(tmp_path) == [1, 2, 3, 4, 5]  # flushed every round, as metrics.jsonl
    w = MetricsWriter(tmp_path, resume_round=3)  # the checkpoint was at round 3
    _rows(w, range(4, 8), 100.0)
    w.close()
    scalars = [(s, v) for s, t, v in tb_scalars(tmp_path) if t == "train_loss"]
    assert scalars == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 104.0), (5, 105.0), (6, 106.0), (7, 107.0)]
    assert [json.loads(l)["round"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == list(range(1, 8))
    assert len(list((tmp_path / "tb").glob("*tfevents*"))) == 2  # the rewritten one, and the resumed writer's


def test_two_resumes_and_a_cut_record(tmp_path):
    w = MetricsWriter(tmp_path)
    _rows(w, range(1, 5), 0.0)
    w = MetricsWriter(tmp_path, resume_round=2)
    _rows(w, range(3, 7), 10.0)
    f = sorted((tmp_path / "tb").glob("*tfevents*"))[-1]
    with open(f, "ab") as fh:  # a record cut by SIGKILL in the middle of a write
        fh.write(b"\x40\x00\x00\x00\x00\x00\x00\x00\x01\x02")
    w = MetricsWriter(tmp_path, resume_round=5)
    _rows(w, range(6, 9), 20.0)
    w.close()
    scalars = [(s, v) for s, t, v in tb_scalars(tmp_path) if t == "train_loss"]
    assert scalars == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0), (6, 26.0), (7, 27.0), (8, 28.0)]


def test_an_interrupted_rewrite_is_finished_by_the_next_resume(tmp_path):
    """Killed after the merged file replaced the oldest one but before the others were removed:
    they hold byte-identical copies of events the merged file has; the next rewrite drops them."""
    import shutil

    w = MetricsWriter(tmp_path)
    _rows(w, range(1, 4), 0.0)
    w.close()
    w = MetricsWriter(tmp_path, resume_round=3)
    _rows(w, range(4, 6), 0.0)
    w.close()
    files = sorted((tmp_path / "tb").glob("*tfevents*"))
    assert len(files) == 2
    shutil.copy(files[1], tmp_path / "tb" / (files[1].name + ".copy.tfevents"))  # as if not yet removed
    truncate_tensorboard(tmp_path / "tb", 5)
    assert _steps(tmp_path) == [1, 2, 3, 4, 5]


def test_resume_from_round_zero_empties_tensorboard(tmp_path):
    w = MetricsWriter(tmp_path)
    _rows(w, range(1, 3), 0.0)
    MetricsWriter(tmp_path, resume_round=0).close()  # --resume without a checkpoint starts again
    assert _steps(tmp_path) == []


@pytest.mark.parametrize("missing", ["no tb dir", "empty tb dir"])
def test_nothing_to_truncate(tmp_path, missing):
    if missing == "empty tb dir":
        (tmp_path / "tb").mkdir()
    truncate_tensorboard(tmp_path / "tb", 3)
    assert not list(tmp_path.glob("tb/*"))
