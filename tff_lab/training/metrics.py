"""Per-round metrics: metrics.jsonl (appended each round), metrics.csv and TensorBoard."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from tff_lab.fileio import atomic_write_text

BASE_COLUMNS = [
    "round",
    "clients",
    "train_examples",
    "train_loss",
    "train_accuracy",
    "eval_loss",
    "eval_accuracy",
    "round_seconds",
]


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if hasattr(v, "item"):
        return _clean(v.item())
    return v


class MetricsWriter:
    def __init__(self, run_dir: Path, *, resume_round: int = 0):
        self.run_dir = Path(run_dir)
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.csv = self.run_dir / "metrics.csv"
        self.rows: list[dict] = []
        if resume_round > 0 and self.jsonl.exists():
            last = 0
            for n, line in enumerate(self.jsonl.read_text().splitlines(), 1):
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError):  # a line cut by a kill: the rest goes
                    break
                r = row.get("round") if isinstance(row, dict) else None
                if not isinstance(r, int) or isinstance(r, bool) or r <= last:
                    from tff_lab.errors import DataError

                    raise DataError(
                        str(self.jsonl),
                        f"line {n} is not a row tff-lab wrote (expected an object with "
                        f"an integer 'round' after {last}); it was edited: restore it or pass --overwrite",
                    )
                last = r
                if r <= resume_round:
                    self.rows.append(row)
        # Rounds after the checkpoint will be run again: drop them from the files now.
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows))
        truncate_tensorboard(self.run_dir / "tb", resume_round)
        self._tb = None

    def _writer(self):
        if self._tb is None:
            import tensorflow as tf

            self._tb = tf.summary.create_file_writer(str(self.run_dir / "tb"))
        return self._tb

    def append(self, row: dict) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        self.rows.append(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        import tensorflow as tf

        # One Summary proto per round: a tf.summary.scalar call per value costs ~6 ms a round and
        # grows memory over long runs (BENCHMARKS.md, soak).
        values = [
            tf.compat.v1.Summary.Value(tag=k, simple_value=float(v))
            for k, v in row.items()
            if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        with self._writer().as_default(step=int(row["round"])):
            tf.summary.experimental.write_raw_pb(
                tf.compat.v1.Summary(value=values).SerializeToString(), step=int(row["round"])
            )
        # Leaving as_default() flushes (eager): TensorBoard holds every round metrics.jsonl holds, so a
        # run killed later and resumed from its checkpoint has every round up to it.

    def write_csv(self) -> None:
        columns = list(BASE_COLUMNS)
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
        atomic_write_text(self.csv, buf.getvalue())

    def close(self) -> None:
        self.write_csv()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def _event_files(tb_dir: Path) -> list[Path]:
    return sorted(p for p in tb_dir.glob("*tfevents*") if p.is_file())


def _read_records(path: Path) -> list[bytes]:
    """The TFRecords of one event file; a record cut by a kill (and anything after it) is dropped."""
    import tensorflow as tf

    out = []
    try:
        for rec in tf.compat.v1.io.tf_record_iterator(str(path)):
            out.append(rec)
    except tf.errors.DataLossError:
        pass
    return out


def truncate_tensorboard(tb_dir: Path, last_round: int) -> None:
    """Drops TensorBoard events of rounds after ``last_round`` (they will run again after a resume).

    TensorBoard has no purge for a writer (``create_file_writer`` has no ``purge_step``), and a
    reader shows both copies of a step. So the event files are rewritten: every event of step <=
    ``last_round`` from every file, once (byte-identical duplicates left by an interrupted earlier
    rewrite are dropped), with the first file's version header, into one file that takes the oldest
    file's name (it sorts before the new writer's file). The rewrite goes to a temporary name
    TensorBoard ignores and replaces the oldest file atomically; the other files are removed after.
    A kill in between leaves only byte-identical duplicates, which the next resume merges away.
    """
    files = _event_files(tb_dir) if tb_dir.is_dir() else []
    if not files:
        return
    from tensorflow.core.util import event_pb2

    kept, seen, dropped, header = [], set(), False, False
    for f in files:
        for rec in _read_records(f):
            ev = event_pb2.Event.FromString(rec)
            if ev.HasField("file_version"):
                if header:
                    continue
                header = True
            elif ev.step > last_round or rec in seen:
                dropped = True
                continue
            seen.add(rec)
            kept.append(rec)
    if not dropped and len(files) == 1:
        return
    import tensorflow as tf

    tmp = tb_dir / "rewrite.tmp"  # no "tfevents" in the name: TensorBoard does not read it
    with tf.io.TFRecordWriter(str(tmp)) as w:
        for rec in kept:
            w.write(rec)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, files[0])
    for f in files[1:]:
        f.unlink()
