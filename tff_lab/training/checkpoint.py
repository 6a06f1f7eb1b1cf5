"""Round checkpoints: the TFF server state as NPZ plus a JSON manifest (no pickle).

A checkpoint is ``ckpt_<round>.npz`` (the flattened LearningProcess state, ``arr_0..``)
and ``ckpt_<round>.json`` (round, hook states, counters, config hash, and the NPZ's size
and sha256). Both are written to temp files and renamed; the JSON is written last, so a
checkpoint exists only once it is complete. A SIGKILL at any moment leaves the previous
one intact.

Faults: a write that fails (``ENOSPC``, ``EIO``) removes its temp files, keeps the previous
checkpoint and raises :class:`CheckpointError` naming the file. A checkpoint whose NPZ was
truncated or altered afterwards (its sha256 no longer matches) is skipped by :func:`latest`
with a warning naming the file, which then returns the previous one; with no intact
checkpoint left it raises :class:`CheckpointError` instead of silently starting over.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tff_lab.errors import ConfigError, DataError
from tff_lab.fileio import atomic_path, atomic_write_text

_NAME = re.compile(r"^ckpt_(\d+)\.json$")


class CheckpointError(DataError):
    """A checkpoint could not be written, or the one to resume from is unreadable (one line, exit 2)."""


def _paths(ckpt_dir: Path, round_num: int) -> tuple[Path, Path]:
    return ckpt_dir / f"ckpt_{round_num:06d}.npz", ckpt_dir / f"ckpt_{round_num:06d}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse; the renames are still atomic
        pass
    finally:
        os.close(fd)


def save(ckpt_dir: Path, round_num: int, state: Any, meta: dict, keep: int = 2) -> Path:
    """Writes the checkpoint of ``round_num`` and keeps the newest ``keep`` ones.

    Raises:
      CheckpointError: the disk refused the write (full, I/O error, read-only); nothing of the new
        checkpoint is left behind and the previous checkpoints are untouched."""
    import tensorflow as tf

    ckpt_dir = Path(ckpt_dir)
    npz, manifest = _paths(ckpt_dir, round_num)
    flat = [np.asarray(v) for v in tf.nest.flatten(state)]
    target = npz
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        # A checkpoint of this round from an earlier attempt stops existing before its NPZ is replaced,
        # so a crash in between can never pair the old manifest with the new arrays.
        manifest.unlink(missing_ok=True)
        with atomic_path(npz, suffix=".npz") as tmp:
            np.savez(tmp, *flat)
            digest, size = _sha256(tmp), tmp.stat().st_size
        target = manifest
        atomic_write_text(manifest, json.dumps({"round": round_num, "num_arrays": len(flat), "npz_bytes": size,
                                                "npz_sha256": digest, **meta}, indent=1))
        _fsync_dir(ckpt_dir)
    except OSError as e:
        if not manifest.exists():  # arrays without a manifest are not a checkpoint: do not leave them
            npz.unlink(missing_ok=True)
        kept = [r for r in _list(ckpt_dir) if r != round_num]
        why = os.strerror(e.errno) if e.errno else str(e)
        code = f" ({errno.errorcode.get(e.errno, e.errno)})" if e.errno else ""
        raise CheckpointError(str(target),
                              f"could not write the checkpoint of round {round_num}: {why}{code}; "
                              + (f"the previous checkpoint (round {kept[-1]}) is kept" if kept
                                 else "no earlier checkpoint exists")) from e
    for old in _list(ckpt_dir)[:-keep]:
        for path in _paths(ckpt_dir, old)[::-1]:  # manifest first: a half-deleted checkpoint does not exist
            try:
                path.unlink(missing_ok=True)
            except OSError:  # pragma: no cover - pruning is best effort; the new checkpoint is safe
                pass
    return npz


def _list(ckpt_dir: Path) -> list[int]:
    if not Path(ckpt_dir).is_dir():
        return []
    return sorted(int(m.group(1)) for p in Path(ckpt_dir).iterdir() if (m := _NAME.match(p.name)))


def verify(ckpt_dir: Path, round_num: int) -> Optional[tuple[Path, str]]:
    """None when the checkpoint of ``round_num`` is intact, else (the bad file, why)."""
    npz, manifest = _paths(Path(ckpt_dir), round_num)
    try:
        meta = json.loads(manifest.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return manifest, f"unreadable checkpoint manifest ({str(e).splitlines()[0][:120]})"
    if not npz.is_file():
        return npz, "checkpoint arrays are missing"
    size = npz.stat().st_size
    if "npz_bytes" in meta and size != meta["npz_bytes"]:
        return npz, f"checkpoint is truncated or altered ({size} bytes, {meta['npz_bytes']} written)"
    if "npz_sha256" in meta:
        if _sha256(npz) != meta["npz_sha256"]:
            return npz, "checkpoint is corrupt (its sha256 differs from the one written in its manifest)"
        return None
    try:  # a checkpoint from before manifests held a digest: read every array
        with np.load(npz, allow_pickle=False) as f:
            for name in f.files:
                f[name]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        return npz, f"checkpoint is truncated or corrupt ({str(e).splitlines()[0][:120]})"
    return None


def latest(ckpt_dir: Path) -> Optional[int]:
    """The newest intact checkpoint's round; None when there is none at all.

    A damaged newer checkpoint is skipped with a warning naming it. Raises CheckpointError when
    checkpoints exist but none is intact (resuming must not silently start over)."""
    ckpt_dir = Path(ckpt_dir)
    damaged = []
    for r in reversed(_list(ckpt_dir)):
        npz, manifest = _paths(ckpt_dir, r)
        if not npz.exists() and not manifest.exists():
            continue  # pruned meanwhile
        bad = verify(ckpt_dir, r)
        if bad is None:
            for path, why in damaged:
                print(f"tff-lab: warning: {path}: {why}; using the previous checkpoint (round {r})",
                      file=sys.stderr)
            return r
        damaged.append(bad)
    if damaged:
        path, why = damaged[0]
        raise CheckpointError(str(path), f"{why}, and no earlier intact checkpoint exists; "
                              "start again with --overwrite")
    return None


def _fits(array: np.ndarray, template: Any) -> bool:
    """Same shape; a template leaf whose shape starts with 0 is a table that grows (one row per
    client with state, e.g. SCAFFOLD's control variates) and takes any number of rows."""
    want = np.shape(template)
    if want and want[0] == 0:
        return np.ndim(array) == len(want) and np.shape(array)[1:] == want[1:]
    return np.shape(array) == want


def load(ckpt_dir: Path, round_num: int, template_state: Any) -> tuple[Any, dict]:
    """Restores a state with the structure of ``template_state`` (from ``process.initialize()``).

    Raises CheckpointError (naming the file) when the checkpoint is truncated or corrupt."""
    import tensorflow as tf

    ckpt_dir = Path(ckpt_dir)
    bad = verify(ckpt_dir, round_num)
    if bad is not None:
        raise CheckpointError(str(bad[0]), bad[1])
    npz, manifest = _paths(ckpt_dir, round_num)
    meta = json.loads(manifest.read_text())
    template = tf.nest.flatten(template_state)
    try:
        with np.load(npz, allow_pickle=False) as f:
            arrays = [f[f"arr_{i}"] for i in range(len(f.files))]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(str(npz), f"checkpoint is unreadable ({str(e).splitlines()[0][:120]})") from e
    if len(arrays) != len(template) or not all(_fits(a, t) for a, t in zip(arrays, template)):
        raise ConfigError(str(npz), "checkpoint does not match this experiment's model/aggregator state")
    restored = [a.astype(np.asarray(t).dtype) if hasattr(t, "dtype") or isinstance(t, (int, float)) else a
                for a, t in zip(arrays, template)]
    return tf.nest.pack_sequence_as(template_state, restored), meta
