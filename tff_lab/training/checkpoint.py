"""Round checkpoints: the TFF server state as NPZ plus a JSON manifest (no pickle).

A checkpoint is ``ckpt_<round>.npz`` (the flattened LearningProcess state, ``arr_0..``)
and ``ckpt_<round>.json`` (round, hook states, counters, config hash). Both are
written to temp files and renamed; the JSON is written last, so a checkpoint exists
only once it is complete. A SIGKILL at any moment leaves the previous one intact.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tff_lab.errors import ConfigError
from tff_lab.fileio import atomic_path, atomic_write_text

_NAME = re.compile(r"^ckpt_(\d+)\.json$")


def save(ckpt_dir: Path, round_num: int, state: Any, meta: dict, keep: int = 2) -> Path:
    import tensorflow as tf

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    flat = [np.asarray(v) for v in tf.nest.flatten(state)]
    npz = ckpt_dir / f"ckpt_{round_num:06d}.npz"
    with atomic_path(npz, suffix=".npz") as tmp:
        np.savez(tmp, *flat)
    atomic_write_text(ckpt_dir / f"ckpt_{round_num:06d}.json",
                      json.dumps({"round": round_num, "num_arrays": len(flat), **meta}, indent=1))
    for old in sorted(_list(ckpt_dir))[:-keep]:
        for suffix in (".json", ".npz"):
            (ckpt_dir / f"ckpt_{old:06d}{suffix}").unlink(missing_ok=True)
    return npz


def _list(ckpt_dir: Path) -> list[int]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name)))


def latest(ckpt_dir: Path) -> Optional[int]:
    rounds = [r for r in _list(ckpt_dir) if (ckpt_dir / f"ckpt_{r:06d}.npz").exists()]
    return rounds[-1] if rounds else None


def load(ckpt_dir: Path, round_num: int, template_state: Any) -> tuple[Any, dict]:
    """Restores a state with the structure of ``template_state`` (from ``process.initialize()``)."""
    import tensorflow as tf

    meta = json.loads((ckpt_dir / f"ckpt_{round_num:06d}.json").read_text())
    npz = ckpt_dir / f"ckpt_{round_num:06d}.npz"
    template = tf.nest.flatten(template_state)
    with np.load(npz, allow_pickle=False) as f:
        arrays = [f[f"arr_{i}"] for i in range(len(f.files))]
    if len(arrays) != len(template) or any(np.shape(a) != np.shape(t) for a, t in zip(arrays, template)):
        raise ConfigError(str(npz), "checkpoint does not match this experiment's model/aggregator state")
    restored = [a.astype(np.asarray(t).dtype) if hasattr(t, "dtype") or isinstance(t, (int, float)) else a
                for a, t in zip(arrays, template)]
    return tf.nest.pack_sequence_as(template_state, restored), meta
