"""Round checkpoints: the TFF server state as NPZ plus a JSON manifest (no pickle).

A checkpoint is ``ckpt_<round>.npz`` (the flattened LearningProcess state, ``arr_0..``)
and ``ckpt_<round>.json`` (round, hook states, counters, config hash, and the NPZ's size
and sha256, and its own sha256). Every field read back is checked against a schema and the
manifest against its recorded digest: a hand-edited manifest is a damaged checkpoint (skipped for
the previous one, or refused in one line), never trusted. Both files are written to temp files and
renamed; the JSON is written last, so a
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
from typing import Any, Callable, Optional

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


def save(ckpt_dir: Path, round_num: int, state: Any, meta: dict[str, Any], keep: int = 2) -> Path:
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
        record = {"round": round_num, "num_arrays": len(flat), "npz_bytes": size, "npz_sha256": digest, **meta}
        record["manifest_sha256"] = _manifest_digest(record)
        atomic_write_text(manifest, json.dumps(record, indent=1))
        _fsync_dir(ckpt_dir)
    except OSError as e:
        if not manifest.exists():  # arrays without a manifest are not a checkpoint: do not leave them
            npz.unlink(missing_ok=True)
        kept = [r for r in _list(ckpt_dir) if r != round_num]
        why = os.strerror(e.errno) if e.errno else str(e)
        code = f" ({errno.errorcode.get(e.errno, e.errno)})" if e.errno else ""
        raise CheckpointError(
            str(target),
            f"could not write the checkpoint of round {round_num}: {why}{code}; "
            + (f"the previous checkpoint (round {kept[-1]}) is kept" if kept else "no earlier checkpoint exists"),
        ) from e
    for old in _list(ckpt_dir)[:-keep]:
        for path in _paths(ckpt_dir, old)[::-1]:  # manifest first: a half-deleted checkpoint does not exist
            try:
                path.unlink(missing_ok=True)
            except OSError:  # pragma: no cover - pruning is best effort; the new checkpoint is safe
                pass
    return npz


def _manifest_digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_hex64(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v and abs(v) != float("inf")


# The manifest's schema: field -> (check, what is expected). Every field tff_lab reads back.
_SCHEMA: dict[str, tuple[Callable[[Any], bool], str]] = {
    "round": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "num_arrays": (lambda v: _is_int(v) and 0 <= v <= 1_000_000, "an integer array count"),
    "npz_bytes": (lambda v: _is_int(v) and v >= 0, "an integer byte count"),
    "npz_sha256": (_is_hex64, "a sha256 hex digest"),
    "manifest_sha256": (_is_hex64, "a sha256 hex digest"),
    "config_hash": (lambda v: isinstance(v, str) and len(v) <= 64, "a config hash string"),
    "extension_hash": (lambda v: isinstance(v, str) and len(v) <= 64, "a config hash string"),
    "counters": (
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_number(x) for k, x in v.items()),
        "an object of finite numbers",
    ),
    "stop_reason": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "hooks": (
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, dict) for k, x in v.items()),
        "an object of hook states (objects)",
    ),
    "parts": (
        lambda v: (
            isinstance(v, dict) and all(isinstance(k, str) and (x is None or isinstance(x, str)) for k, x in v.items())
        ),
        "an object of part digests",
    ),
    "engine": (lambda v: isinstance(v, str), "an engine name"),
}


def check_manifest(meta: Any, round_num: int) -> Optional[str]:
    """Why a manifest cannot be trusted (schema, its own digest, the round of its file name); None if it can."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    for key, (ok, expected) in _SCHEMA.items():
        if key in meta and not ok(meta[key]):
            return f"field '{key}' holds {json.dumps(meta[key])[:40]}, expected {expected}"
    for key in ("round", "num_arrays"):
        if key not in meta:
            return f"field '{key}' is missing"
    if "extension_hash" in meta and "manifest_sha256" not in meta:  # written by a version that records its digest
        return "field 'manifest_sha256' is missing"
    if meta["round"] != round_num:
        return f"field 'round' says {meta['round']} but the file is the checkpoint of round {round_num}"
    if "manifest_sha256" in meta and _manifest_digest(meta) != meta["manifest_sha256"]:
        return "it was changed after it was written (its sha256 differs from the one it recorded)"
    return None


def _list(ckpt_dir: Path) -> list[int]:
    if not Path(ckpt_dir).is_dir():
        return []
    return sorted(int(m.group(1)) for p in Path(ckpt_dir).iterdir() if (m := _NAME.match(p.name)))


def verify(ckpt_dir: Path, round_num: int) -> Optional[tuple[Path, str]]:
    """None when the checkpoint of ``round_num`` is intact, else (the bad file, why)."""
    npz, manifest = _paths(Path(ckpt_dir), round_num)
    try:
        if manifest.stat().st_size > 64 << 20:
            raise ValueError("larger than 64 MiB")
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError, RecursionError) as e:
        return manifest, f"unreadable checkpoint manifest ({str(e).splitlines()[0][:120]})"
    why = check_manifest(meta, round_num)
    if why is not None:
        return manifest, f"checkpoint manifest is not one tff-lab wrote: {why}"
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
    damaged: list[tuple[Path, str]] = []
    for r in reversed(_list(ckpt_dir)):
        npz, manifest = _paths(ckpt_dir, r)
        if not npz.exists() and not manifest.exists():
            continue  # pruned meanwhile
        bad = verify(ckpt_dir, r)
        if bad is None:
            for path, why in damaged:
                print(f"tff-lab: warning: {path}: {why}; using the previous checkpoint (round {r})", file=sys.stderr)
            return r
        damaged.append(bad)
    if damaged:
        path, why = damaged[0]
        raise CheckpointError(
            str(path), f"{why}, and no earlier intact checkpoint exists; start again with --overwrite"
        )
    return None


def _fits(array: np.ndarray[Any, Any], template: Any) -> bool:
    """Same shape; a template leaf whose shape starts with 0 is a table that grows (one row per
    client with state, e.g. SCAFFOLD's control variates) and takes any number of rows."""
    want = np.shape(template)
    if want and want[0] == 0:
        return bool(np.ndim(array) == len(want) and np.shape(array)[1:] == want[1:])
    return bool(np.shape(array) == want)


def load(ckpt_dir: Path, round_num: int, template_state: Any) -> tuple[Any, dict[str, Any]]:
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
    if meta.get("num_arrays", len(arrays)) != len(arrays):
        raise CheckpointError(
            str(npz), f"checkpoint holds {len(arrays)} arrays, its manifest says {meta['num_arrays']}"
        )
    if len(arrays) != len(template) or not all(_fits(a, t) for a, t in zip(arrays, template)):
        raise ConfigError(str(npz), "checkpoint does not match this experiment's model/aggregator state")
    restored = [
        a.astype(np.asarray(t).dtype) if hasattr(t, "dtype") or isinstance(t, (int, float)) else a
        for a, t in zip(arrays, template)
    ]
    return tf.nest.pack_sequence_as(template_state, restored), meta
