"""Batch prediction: a Keras model (``.keras``/SavedModel) or a ``.tflite`` on a large input file.

Inputs are *raw* features, as the data came before the run's preprocessing (e.g. digit pixels
0..16); the preprocessing comes from the ``.tflite`` sidecar, from ``--sidecar``, or, for a Keras
model inside a RUN_DIR, from the run (an export's sidecar, else the rebuilt data). Pass
``preprocess=False`` (``--no-preprocess``) for inputs that are already model inputs.

Input files: ``.npy`` (memory-mapped, so inputs larger than memory stream through), ``.npz``
(array ``x``, the only array, or ``key``), ``.csv`` (numeric rows, an optional header row).
Outputs: ``.npz`` (``probs`` float32 (n, C), ``pred`` int32, ``label`` str, ``labels``) or ``.csv``
(``index,pred,label,p_<label>...``). No pickle: ``np.load(..., allow_pickle=False)``.

Batch size by measurement (:func:`search_batch_size`): candidates 1, 2, 4, ... (and the row count) are
timed on the actual model and the first rows of the actual input, in increasing order, until one breaks a
bound (``max_latency_ms``: median wall time of one batch; ``max_memory_mb``: the process's peak resident
memory while predicting that batch, plus the output array this process will hold); the choice is the
largest candidate measured before that, and ``batch_size=N`` reproduces it without measuring.

Sharded prediction: shard ``i`` of ``N`` predicts the contiguous rows ``[i*n//N, (i+1)*n//N)`` and writes
``OUT/part-0000i-of-0000N.npz`` (exact float32 probabilities) and its manifest ``.json`` (rows, input and
model digests), both atomically. :func:`merge_parts` checks that every part is there, from the same
input and model, that the row ranges tile ``[0, n)`` with no gap or overlap and that the counts add up,
then writes the merged predictions atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np

from tff_lab.errors import ConfigError, DataError

INPUT_SUFFIXES = (".npy", ".npz", ".csv")
OUTPUT_SUFFIXES = (".npz", ".csv")


def load_input(path: Union[str, os.PathLike], key: Optional[str] = None) -> np.ndarray:
    """Reads an ``.npy``/``.npz``/``.csv`` input file without unpickling anything."""
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise DataError(where, "input file not found")
    suffix = p.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise DataError(where, f"unsupported input type '{p.suffix}'; expected one of: {', '.join(INPUT_SUFFIXES)}")
    try:
        if suffix == ".npy":
            x = np.load(p, mmap_mode="r", allow_pickle=False)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as f:
                names = list(f.files)
                if key is not None:
                    if key not in names:
                        raise DataError(where, f"no array {key!r}; the file holds: {', '.join(names) or 'nothing'}")
                    name = key
                elif "x" in names:
                    name = "x"
                elif len(names) == 1:
                    name = names[0]
                else:
                    raise DataError(
                        where, f"expected an array 'x' (or pass --key), the file holds: {', '.join(names) or 'nothing'}"
                    )
                x = f[name]
        else:
            x = _load_csv(p)
    except DataError:
        raise
    except ValueError as e:
        msg = str(e)
        if "allow_pickle" in msg or "Object arrays" in msg or "Python objects" in msg:
            raise DataError(
                where, "holds Python objects (pickled data), which are never loaded; expected a numeric array"
            ) from None
        raise DataError(where, f"not a readable {suffix} file ({msg[:160]})") from None
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError of a corrupt file
        raise DataError(where, f"not a readable {suffix} file ({type(e).__name__}: {str(e)[:160]})") from None
    return x


def _load_csv(p: Path) -> np.ndarray:
    with open(p, newline="") as f:
        first = f.readline()
    skip = 0
    try:
        [float(t) for t in first.strip().split(",") if t.strip()]
    except ValueError:
        skip = 1  # a header row
    try:
        return np.loadtxt(p, delimiter=",", dtype=np.float32, ndmin=2, skiprows=skip, comments="#")
    except ValueError as e:
        raise DataError(str(p), f"expected numeric CSV rows, one example per row ({str(e)[:160]})") from None


def write_predictions(path: Union[str, os.PathLike], probs: np.ndarray, labels: list) -> Path:
    """Writes ``.npz`` or ``.csv`` predictions atomically."""
    from tff_lab.fileio import atomic_write

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(
            "--out", f"unsupported output type '{p.suffix}'; expected one of: {', '.join(OUTPUT_SUFFIXES)}"
        )
    pred = probs.argmax(axis=-1).astype(np.int32)
    names = np.asarray([str(v) for v in labels])
    if probs.ndim > 2:  # text model: a class per position; CSV rows hold one example each
        if suffix == ".npz":
            buf = io.BytesIO()
            np.savez(buf, probs=probs.astype(np.float32), pred=pred, label=names[pred], labels=names)
            atomic_write(p, buf.getvalue())
        else:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["index", "pred", "label", "prob"])
            top = probs.max(axis=-1)
            for i in range(len(pred)):
                w.writerow(
                    [
                        i,
                        " ".join(str(int(t)) for t in pred[i]),
                        "".join(names[pred[i]]),
                        " ".join(f"{v:.5g}" for v in top[i]),
                    ]
                )
            atomic_write(p, buf.getvalue())
        return p
    if suffix == ".npz":
        buf = io.BytesIO()
        np.savez(buf, probs=probs.astype(np.float32), pred=pred, label=names[pred], labels=names)
        atomic_write(p, buf.getvalue())
    else:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["index", "pred", "label", *[f"p_{n}" for n in names]])
        for i in range(len(pred)):
            w.writerow([i, int(pred[i]), names[pred[i]], *[f"{v:.7g}" for v in probs[i]]])
        atomic_write(p, buf.getvalue())
    return p


class KerasPredictor:
    """A Keras model (``.keras`` file or SavedModel directory) with the preprocessing of its run."""

    def __init__(self, path: Path, *, sidecar: Optional[dict] = None):
        from tff_lab.export.convert import load_keras_model

        self.path = Path(path)
        self.backend = "keras"
        self._fn = None
        if self.path.is_dir() and not (self.path / "keras_metadata.pb").is_file():
            # A SavedModel written with tf.saved_model.save (as `tff-lab run` does): its signature.
            self.model = None
            self._load_signature()
        else:
            self.model = load_keras_model(self.path)
            self.input_shape = tuple(int(s) for s in self.model.input_shape[1:])
            self.output_shape = tuple(int(s) for s in self.model.output_shape[1:])
            self.num_classes = int(self.model.output_shape[-1])
            import tensorflow as tf

            self.tokens = tf.as_dtype(self.model.inputs[0].dtype).is_integer
        side = sidecar if sidecar is not None else _run_sidecar(self.path)
        self.outputs = (side or {}).get("keras_outputs", "probabilities")
        self.labels = [str(v) for v in (side or {}).get("labels", range(self.num_classes))]
        self.preprocessing = (side or {}).get("preprocessing", {})
        from tff_lab.export.tflite_model import preprocessing_arrays

        self._offset, self._scale = preprocessing_arrays(self.preprocessing, self.input_shape)
        self.has_preprocessing = side is not None

    def _load_signature(self):
        """A plain SavedModel (not Keras): its ``serving_default`` signature."""
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(self.path))
            fn = loaded.signatures["serving_default"]
        except Exception as e:
            raise DataError(
                str(self.path),
                f"not a SavedModel with a serving_default signature "
                f"({type(e).__name__}: {' '.join(str(e).split())[:120]})",
            ) from None
        inputs, outputs = fn.structured_input_signature[1], fn.structured_outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise DataError(
                str(self.path),
                f"expected a SavedModel signature with one input and one output, got {len(inputs)} and {len(outputs)}",
            )
        ((self._in_name, spec),) = inputs.items()
        ((self._out_name, out_spec),) = outputs.items()
        self._loaded, self._fn = loaded, fn
        self.input_shape = tuple(int(s) for s in spec.shape[1:])
        self.output_shape = tuple(int(s) for s in out_spec.shape[1:])
        self.num_classes = int(out_spec.shape[-1])
        self.tokens = spec.dtype.is_integer

    def predict(self, x, *, batch_size: int = 256, preprocess: bool = True, on_batch=None, where: str = "input"):
        from tff_lab.export.tflite_model import check_finite, check_input, check_tokens

        x = check_input(x, self.input_shape, where)
        probs = np.empty((len(x), *self.output_shape), np.float32)
        for start in range(0, len(x), batch_size):
            if self.tokens:  # token ids: no preprocessing
                xb = check_tokens(np.asarray(x[start : start + batch_size]), start, self.num_classes, where)
                xb = xb.astype(np.int32)
            else:
                xb = np.asarray(x[start : start + batch_size], np.float32)
                check_finite(xb, start, where)
                if preprocess:
                    xb = (xb - self._offset) * self._scale
            if self._fn is None:
                out = self.model(xb, training=False)
            else:
                out = self._fn(**{self._in_name: xb})[self._out_name]
            out = np.asarray(out, np.float32)
            if self.outputs == "logits":
                e = np.exp(out - out.max(axis=-1, keepdims=True))
                out = e / e.sum(axis=-1, keepdims=True)
            probs[start : start + len(xb)] = out
            if on_batch is not None:
                on_batch(len(xb))
        return probs


def _run_sidecar(model_path: Path) -> Optional[dict]:
    """Preprocessing and labels for a Keras model inside RUN_DIR/model/ (None elsewhere).

    An export's sidecar from the same config is read when there is one (cheap); otherwise the
    run's data is rebuilt from config.yaml, as export does.
    """
    p = model_path.resolve()
    run_dir = p.parent.parent if p.parent.name == "model" else None
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return None
    from tff_lab.config import config_hash, load_config

    cfg = load_config(run_dir / "config.yaml")
    h = config_hash(cfg)
    for sc in sorted((run_dir / "export").glob("model_*.json")):
        try:
            side = json.loads(sc.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(side, dict) and side.get("source", {}).get("config_hash") == h and "preprocessing" in side:
            return side
    from tff_lab.data import load_federated_data
    from tff_lab.export.convert import model_outputs

    data = load_federated_data(cfg)
    return {"labels": data.labels, "preprocessing": data.preprocessing, "keras_outputs": model_outputs(cfg)}


def load_predictor(
    model: Union[str, os.PathLike], *, sidecar: Union[str, os.PathLike, None] = None, num_threads: Optional[int] = None
):
    """A :class:`TFLiteModel` for ``.tflite``, an ``ONNXModel`` for ``.onnx``, else a :class:`KerasPredictor`."""
    p = Path(model)
    if not p.exists():
        raise DataError(str(p), "model not found (expected a .tflite, .onnx or .keras file or a SavedModel directory)")
    if p.suffix.lower() == ".onnx":
        from tff_lab.export.onnx_model import ONNXModel

        return ONNXModel(p, sidecar=sidecar, num_threads=num_threads)
    if p.suffix.lower() == ".tflite":
        from tff_lab.export.tflite_model import TFLiteModel

        return TFLiteModel(p, sidecar=sidecar, num_threads=num_threads)
    side = None
    if sidecar is not None:
        from tff_lab.export.tflite_model import read_sidecar

        if not Path(sidecar).is_file():
            raise DataError(str(sidecar), "sidecar JSON not found")
        side = read_sidecar(Path(sidecar))
    if p.is_file() and p.suffix.lower() != ".keras":
        raise DataError(
            str(p), f"unsupported model type '{p.suffix}'; expected .tflite, .onnx, .keras or a SavedModel directory"
        )
    return KerasPredictor(p, sidecar=side)


DEFAULT_BATCH_SIZE = 256
MAX_SEARCH_BATCH = 65536  # the largest candidate the batch-size search measures
SEARCH_REPEATS = 5  # timed calls per candidate (after one warm-up call at that size)
SEARCH_CALL_LIMIT_MS = 2000.0  # a candidate slower than this ends the search (the next would take ~2x)
NUM_SHARDS_ENV = "TFF_LAB_NUM_SHARDS"
COMPLETION_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes in each pod of an Indexed Job
PART_FORMAT = "tff-lab-predict-part/1"
MERGED_FORMAT = "tff-lab-predictions/1"
FULL_DIGEST_MAX_BYTES = 256 << 20  # inputs up to this size are hashed whole by every shard
SAMPLE_BLOCKS = 64  # larger inputs: sha256 of the size and 64 evenly spaced 1 MiB blocks
SAMPLE_BLOCK_BYTES = 1 << 20
_PART_RE = re.compile(r"^part-(\d{5,})-of-(\d{5,})\.json$")


# --- sharding ------------------------------------------------------------------------------------


def shard_range(n: int, index: int, num_shards: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``index`` of ``num_shards``: contiguous, sizes differ by at most one,
    every row of ``range(n)`` in exactly one shard."""
    return index * n // num_shards, (index + 1) * n // num_shards


def part_name(index: int, num_shards: int) -> str:
    return f"part-{index:05d}-of-{num_shards:05d}"


def _env_int(name: str, env) -> Optional[int]:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise ConfigError(name, f"expected an integer >= 0, got {raw!r}")
    return int(raw)


def resolve_shard(shard_index: Optional[int], num_shards: Optional[int], env=None) -> Optional[tuple[int, int]]:
    """(index, num_shards) of a sharded run, or None for a one-process run.

    ``num_shards`` defaults from ``$TFF_LAB_NUM_SHARDS``, ``shard_index`` from ``$JOB_COMPLETION_INDEX``."""
    env = os.environ if env is None else env
    where_n = "--num-shards"
    if num_shards is None:
        num_shards, where_n = _env_int(NUM_SHARDS_ENV, env), NUM_SHARDS_ENV
    if num_shards is None:
        if shard_index is not None:
            raise ConfigError("--shard-index", f"needs --num-shards (or {NUM_SHARDS_ENV})")
        return None
    if num_shards < 1:
        raise ConfigError(where_n, f"expected an integer >= 1, got {num_shards}")
    where_i = "--shard-index"
    if shard_index is None:
        shard_index, where_i = _env_int(COMPLETION_INDEX, env), COMPLETION_INDEX
        if shard_index is None:
            raise ConfigError(
                "--shard-index", f"not given and {COMPLETION_INDEX} is not set (it is, in each pod of an Indexed Job)"
            )
    if not 0 <= shard_index < num_shards:
        raise ConfigError(
            where_i, f"{shard_index} is out of range for {num_shards} shards (expected 0..{num_shards - 1})"
        )
    return shard_index, num_shards


# --- digests -------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_digest(path: Union[str, os.PathLike]) -> dict:
    """The input file's identity: sha256 of the whole file up to 256 MiB; above that, sha256 of its size
    and 64 evenly spaced 1 MiB blocks (every shard computes it: hashing a huge input whole would cost
    each shard a full read). It tells different inputs apart; it is no proof against an edit that
    falls between the sampled blocks."""
    p = Path(path)
    size = p.stat().st_size
    if size <= FULL_DIGEST_MAX_BYTES:
        return {"sha256": _sha256_file(p), "scheme": "sha256 of the file", "size_bytes": size}
    h = hashlib.sha256(f"tff-lab sampled input digest v1; size {size}\n".encode())
    span = size - SAMPLE_BLOCK_BYTES
    with open(p, "rb") as f:
        for k in range(SAMPLE_BLOCKS):
            f.seek(k * span // (SAMPLE_BLOCKS - 1))
            h.update(f.read(SAMPLE_BLOCK_BYTES))
    return {
        "sha256": h.hexdigest(),
        "scheme": f"sha256 of the size and {SAMPLE_BLOCKS} evenly spaced 1 MiB blocks",
        "size_bytes": size,
    }


def model_digest(path: Union[str, os.PathLike]) -> str:
    """sha256 of a model file; of each file's relative path and sha256 for a SavedModel directory."""
    p = Path(path)
    if p.is_file():
        return _sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{_sha256_file(f)}\n".encode())
    return h.hexdigest()


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def prediction_setup(predictor, preprocess: bool) -> dict:
    """What, besides the model's weights, decides the predictions: labels, preprocessing, I/O shapes."""
    return {
        "labels": [str(v) for v in predictor.labels],
        "preprocessing": predictor.preprocessing if preprocess else None,
        "keras_outputs": getattr(predictor, "outputs", None),
        "input_shape": [int(v) for v in predictor.input_shape],
        "output_shape": [int(v) for v in predictor.output_shape],
    }


def _setup_sha256(setup: dict) -> str:
    return hashlib.sha256(json.dumps(setup, sort_keys=True, default=_jsonable).encode()).hexdigest()


# --- batch size by measurement ---------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) to the current RSS; False where /proc refuses it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """The process's peak resident memory in MiB (VmHWM; the lifetime maximum where that is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch_candidates(n: int, cap: int = MAX_SEARCH_BATCH) -> list[int]:
    """1, 2, 4, ... up to min(n, cap), and min(n, cap) itself."""
    top = min(n, cap)
    if top < 1:
        return []
    out = [1]
    while out[-1] * 2 <= top:
        out.append(out[-1] * 2)
    if out[-1] != top:
        out.append(top)
    return out


def bounds_broken(
    row: dict, *, max_latency_ms: Optional[float] = None, max_memory_mb: Optional[float] = None
) -> list[str]:
    """The flags whose bound a measured candidate breaks (empty: it is within every bound)."""
    over = []
    if max_latency_ms is not None and row["median_ms"] > max_latency_ms:
        over.append("--max-latency-ms")
    if max_memory_mb is not None and row["projected_mib"] > max_memory_mb:
        over.append("--max-memory-mb")
    return over


def choose_batch_size(
    rows: list[dict], *, max_latency_ms: Optional[float] = None, max_memory_mb: Optional[float] = None
) -> Optional[int]:
    """The search's rule on measured candidates (increasing): the last one before the first that breaks a
    bound; None if the first already does."""
    chosen = None
    for row in rows:
        if bounds_broken(row, max_latency_ms=max_latency_ms, max_memory_mb=max_memory_mb):
            break
        chosen = row["batch_size"]
    return chosen


def search_batch_size(
    predictor,
    x,
    *,
    max_latency_ms: Optional[float] = None,
    max_memory_mb: Optional[float] = None,
    preprocess: bool = True,
    reserve_bytes: int = 0,
    repeats: int = SEARCH_REPEATS,
    cap: int = MAX_SEARCH_BATCH,
    where: str = "input",
) -> dict:
    """Measures candidate batch sizes on ``x[:b]`` in increasing order and picks the largest that meets
    every bound given.

    Per candidate ``b``: one warm-up call on ``b`` rows, then ``repeats`` timed calls; ``median_ms`` is
    the median wall time of one call (one batch through ``predictor.predict``: input checks,
    preprocessing, the model). ``peak_mib`` is the process's peak resident memory during those calls
    (the kernel's mark, reset before them), ``projected_mib`` that plus ``reserve_bytes`` (the output
    array the whole prediction will hold). Measuring stops at the first candidate that breaks a bound
    (or takes over 2 s); the choice is the last candidate before it, so it is fixed by the figures.
    """
    if max_latency_ms is None and max_memory_mb is None:
        raise ValueError("search_batch_size needs a bound")
    n = len(x)
    cands = batch_candidates(n, cap)
    if not cands:
        raise DataError(where, "no rows to measure batch sizes on")
    predictor.predict(np.asarray(x[:1]), batch_size=1, preprocess=preprocess, where=where)  # load, trace, warm
    exact = reset_peak_rss()
    rows: list[dict] = []
    chosen, stop = None, f"the largest candidate ({cands[-1]}: min(rows, {cap}))"
    for b in cands:
        xb = np.asarray(x[:b])
        predictor.predict(xb, batch_size=b, preprocess=preprocess, where=where)  # warm-up at this size
        reset_peak_rss()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            predictor.predict(xb, batch_size=b, preprocess=preprocess, where=where)
            times.append(time.perf_counter() - t0)
        ms = float(np.median(times)) * 1e3
        peak = peak_rss_mib()
        projected = peak + reserve_bytes / 2**20
        row = {
            "batch_size": b,
            "median_ms": ms,
            "rows_per_s": b / max(ms / 1e3, 1e-12),
            "peak_mib": peak,
            "projected_mib": projected,
        }
        over = bounds_broken(row, max_latency_ms=max_latency_ms, max_memory_mb=max_memory_mb)
        rows.append({**row, "within": not over})
        if over:
            stop = f"batch {b} breaks {' and '.join(over)}"
            break
        chosen = b
        if ms > SEARCH_CALL_LIMIT_MS:
            stop = f"batch {b} took {ms:.0f} ms (> {SEARCH_CALL_LIMIT_MS:.0f} ms): larger ones were not measured"
            break
    del xb
    if hasattr(predictor, "_interpreter"):
        # A TFLite interpreter keeps the arena of the largest size measured: start the run with a fresh one.
        predictor._interpreter = None
    if chosen is None:
        r = rows[0]
        if max_latency_ms is not None and r["median_ms"] > max_latency_ms:
            raise ConfigError(
                "--max-latency-ms",
                f"even a batch of 1 takes {r['median_ms']:.3g} ms (median of "
                f"{repeats} calls), above {max_latency_ms:g} ms",
            )
        raise ConfigError(
            "--max-memory-mb",
            f"even a batch of 1 needs {r['projected_mib']:.1f} MiB (peak resident "
            f"memory {r['peak_mib']:.1f} MiB + {reserve_bytes / 2**20:.1f} MiB of output), above "
            f"{max_memory_mb:g} MiB",
        )
    return {
        "batch_size": chosen,
        "candidates": rows,
        "stop": stop,
        "repeats": repeats,
        "rows_available": n,
        "max_latency_ms": max_latency_ms,
        "max_memory_mb": max_memory_mb,
        "reserve_mib": reserve_bytes / 2**20,
        "peak_is_per_candidate": exact,
    }


def format_search(res: dict) -> list[str]:
    """The search's figures and choice, as printed by ``tff-lab predict``."""
    bounds = " and ".join(
        b
        for b in (
            f"--max-latency-ms {res['max_latency_ms']:g}" if res["max_latency_ms"] is not None else "",
            f"--max-memory-mb {res['max_memory_mb']:g}" if res["max_memory_mb"] is not None else "",
        )
        if b
    )
    peak_note = (
        "peak resident memory during its calls"
        if res["peak_is_per_candidate"]
        else "peak resident memory of the process so far (this kernel does not reset the mark)"
    )
    lines = [
        f"batch-size search for {bounds} on the first rows of the input ({res['rows_available']} rows): median "
        f"of {res['repeats']} calls per batch after a warm-up; memory = {peak_note} + "
        f"{res['reserve_mib']:.1f} MiB of output",
        f"  {'batch':>7} {'ms/batch':>10} {'rows/s':>12} {'memory MiB':>11}",
    ]
    for r in res["candidates"]:
        lines.append(
            f"  {r['batch_size']:>7} {r['median_ms']:>10.3f} {r['rows_per_s']:>12,.0f} "
            f"{r['projected_mib']:>11.1f}{'' if r['within'] else '  over'}"
        )
    lines.append(
        f"batch size {res['batch_size']} (measuring stopped: {res['stop']}); reproduce with "
        f"--batch-size {res['batch_size']}"
    )
    return lines


# --- prediction ----------------------------------------------------------------------------------


def _positive(flag: str, value) -> None:
    if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
        raise ConfigError(flag, f"expected a number > 0, got {value}")


def predict_file(
    model: Union[str, os.PathLike],
    input_path: Union[str, os.PathLike],
    out: Union[str, os.PathLike],
    *,
    batch_size: Optional[int] = None,
    preprocess: bool = True,
    key: Optional[str] = None,
    sidecar: Union[str, os.PathLike, None] = None,
    num_threads: Optional[int] = None,
    quiet: bool = False,
    max_latency_ms: Optional[float] = None,
    max_memory_mb: Optional[float] = None,
    shard_index: Optional[int] = None,
    num_shards: Optional[int] = None,
    env=None,
) -> dict:
    """Predicts every example of ``input_path`` (or one shard of them) and writes ``out``.

    ``batch_size`` fixes the batch; else ``max_latency_ms``/``max_memory_mb`` choose it by measurement
    (:func:`search_batch_size`); else 256. With ``num_shards`` (default ``$TFF_LAB_NUM_SHARDS``) only
    shard ``shard_index`` (default ``$JOB_COMPLETION_INDEX``) is predicted and ``out`` is the directory
    of the parts. Returns counts, throughput, the batch search and the part's paths."""
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ConfigError("--batch-size", f"expected an integer >= 1, got {batch_size}")
    _positive("--max-latency-ms", max_latency_ms)
    _positive("--max-memory-mb", max_memory_mb)
    searching = max_latency_ms is not None or max_memory_mb is not None
    if batch_size is not None and searching:
        raise ConfigError(
            "--batch-size",
            "give either --batch-size (no search) or a bound to choose it by "
            "measurement (--max-latency-ms, --max-memory-mb), not both",
        )
    shard = resolve_shard(shard_index, num_shards, env)
    if shard is not None:
        o = Path(out)
        if o.suffix.lower() in OUTPUT_SUFFIXES or o.is_file():
            raise ConfigError(
                "--out",
                f"with --num-shards, --out is the directory of the parts "
                f"(OUT/{part_name(shard[0], shard[1])}.npz and .json), not a file: {o}",
            )
    elif Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(
            "--out", f"unsupported output type '{Path(out).suffix}'; expected one of: {', '.join(OUTPUT_SUFFIXES)}"
        )
    predictor = load_predictor(model, sidecar=sidecar, num_threads=num_threads)
    x = load_input(input_path, key)
    from tff_lab.export.tflite_model import check_finite, check_input, check_tokens

    x = check_input(x, predictor.input_shape, str(input_path))
    total = len(x)
    start, stop = shard_range(total, *shard) if shard is not None else (0, total)
    xs = x[start:stop]  # a view: a memory-mapped .npy is read only where this shard's rows are
    for s in range(0, len(xs), 65536):  # before the progress bar: a bad row is a one-line error
        chunk = np.asarray(xs[s : s + 65536])
        check_finite(chunk, start + s, str(input_path))
        if getattr(predictor, "tokens", False):
            check_tokens(chunk, start + s, predictor.num_classes, str(input_path))
    if not isinstance(predictor, KerasPredictor):
        _ = predictor.interpreter  # an interpreter that rejects the model fails here, before the bar
    notes = []
    if preprocess and isinstance(predictor, KerasPredictor) and not predictor.has_preprocessing:
        notes.append(
            "no run or sidecar found for this Keras model: inputs are fed as they are (pass --sidecar to "
            "apply an export's preprocessing)"
        )
    if preprocess and not isinstance(predictor, KerasPredictor) and predictor.sidecar is None:
        notes.append(f"no sidecar next to {Path(model).name}: inputs are fed as they are, labels are class ids")
    if not quiet:
        for n in notes:
            print(f"tff-lab predict: note: {n}", file=sys.stderr)
    search = None
    if searching and len(xs):
        reserve = len(xs) * int(np.prod(predictor.output_shape)) * 4
        search = search_batch_size(
            predictor,
            xs,
            max_latency_ms=max_latency_ms,
            max_memory_mb=max_memory_mb,
            preprocess=preprocess,
            reserve_bytes=reserve,
            where=str(input_path),
        )
        batch_size = search["batch_size"]
        if not quiet:
            for line in format_search(search):
                print(f"tff-lab predict: {line}", file=sys.stderr)
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE
    from tqdm import tqdm

    bar = tqdm(total=len(xs), unit="ex", desc="predict", disable=quiet, file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        if len(xs):
            probs = predictor.predict(
                xs, batch_size=batch_size, preprocess=preprocess, on_batch=bar.update, where=str(input_path)
            )
        else:  # a shard of an input with fewer rows than shards
            probs = np.empty((0, *predictor.output_shape), np.float32)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    res = {
        "examples": int(len(probs)),
        "seconds": seconds,
        "examples_per_s": len(probs) / max(seconds, 1e-9),
        "batch_size": batch_size,
        "backend": predictor.backend,
        "out": str(out),
        "notes": notes,
        "batch_search": search,
    }
    if shard is None:
        write_predictions(out, probs, predictor.labels)
        return res
    index, n_shards = shard
    setup = prediction_setup(predictor, preprocess)
    manifest = {
        "format": PART_FORMAT,
        "shard_index": index,
        "num_shards": n_shards,
        "start": start,
        "stop": stop,
        "rows": int(len(probs)),
        "total_rows": total,
        "input": {"path": str(input_path), "key": key, **input_digest(input_path)},
        "model": {
            "path": str(model),
            "sha256": model_digest(model),
            "backend": predictor.backend,
            "setup_sha256": _setup_sha256(setup),
        },
        "setup": setup,
        "preprocess": preprocess,
        "batch_size": batch_size,
        "batch_search": search,
        "seconds": seconds,
        "examples_per_s": res["examples_per_s"],
    }
    part, meta = write_part(out, index, n_shards, probs, predictor.labels, manifest)
    res.update(
        out=str(part),
        part=str(part),
        manifest=str(meta),
        shard_index=index,
        num_shards=n_shards,
        start=start,
        stop=stop,
        total_rows=total,
    )
    return res


def write_part(
    out_dir: Union[str, os.PathLike], index: int, num_shards: int, probs: np.ndarray, labels: list, manifest: dict
) -> tuple[Path, Path]:
    """``OUT/part-I-of-N.npz`` then its manifest ``.json`` (written last: a manifest means a complete part)."""
    from tff_lab.fileio import atomic_write_text

    d = Path(out_dir)
    name = part_name(index, num_shards)
    part = write_predictions(d / f"{name}.npz", probs, labels)
    manifest = {
        **manifest,
        "predictions": {"file": part.name, "sha256": _sha256_file(part), "shape": [int(v) for v in probs.shape]},
    }
    meta = d / f"{name}.json"
    atomic_write_text(meta, json.dumps(manifest, indent=1, sort_keys=False, default=_jsonable) + "\n")
    return part, meta


# --- merging the parts ---------------------------------------------------------------------------


def _int_field(m: dict, field: str, where: str) -> int:
    v = m.get(field)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise DataError(where, f"manifest field {field!r} is not an integer >= 0 ({v!r}); not a part tff-lab wrote")
    return v


def _read_manifest(path: Path) -> dict:
    where = str(path)
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(where, f"not a readable part manifest ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(m, dict) or m.get("format") != PART_FORMAT:
        raise DataError(where, f"not a tff-lab prediction part manifest (expected format {PART_FORMAT!r})")
    for f in ("shard_index", "num_shards", "start", "stop", "rows", "total_rows"):
        _int_field(m, f, where)
    for f in ("input", "model", "predictions"):
        if not isinstance(m.get(f), dict) or not isinstance(m[f].get("sha256"), str):
            raise DataError(where, f"manifest field {f!r} has no sha256; not a part tff-lab wrote")
    return m


def merge_parts(
    parts_dir: Union[str, os.PathLike],
    num_shards: int,
    out: Union[str, os.PathLike],
    *,
    wait_s: float = 0.0,
    poll_s: float = 2.0,
) -> dict:
    """Checks the ``num_shards`` parts in ``parts_dir`` and writes the merged predictions to ``out``.

    Waits up to ``wait_s`` seconds for missing parts. Refuses (DataError/ConfigError) a missing part, a
    part from another input, model or preprocessing, a gap or overlap in the rows, counts that do
    not add up, or a part file that does not match its manifest's sha256."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError("--num-shards", f"expected an integer >= 1, got {num_shards}")
    if Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(
            "--out", f"unsupported output type '{Path(out).suffix}'; expected one of: {', '.join(OUTPUT_SUFFIXES)}"
        )
    if wait_s < 0:
        raise ConfigError("--wait", f"expected seconds >= 0, got {wait_s}")
    d = Path(parts_dir)
    if d.exists() and not d.is_dir():
        raise DataError(str(d), "not a directory of prediction parts")
    names = [part_name(i, num_shards) for i in range(num_shards)]
    deadline = time.monotonic() + wait_s
    while True:
        missing = [nm for nm in names if not (d / f"{nm}.json").is_file()]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.01)))
    if missing:
        listing = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        others = sorted(
            {
                int(m.group(2))
                for f in (d.iterdir() if d.is_dir() else ())
                if (m := _PART_RE.match(f.name)) and int(m.group(2)) != num_shards
            }
        )
        hint = f"; it holds parts of {' and '.join(map(str, others))} shards (--num-shards)" if others else ""
        waited = f" after waiting {wait_s:g} s" if wait_s else ""
        raise DataError(str(d), f"missing {len(missing)} of {num_shards} parts{waited}: {listing}{hint}")
    manifests = []
    for i, nm in enumerate(names):
        path = d / f"{nm}.json"
        m = _read_manifest(path)
        if (m["shard_index"], m["num_shards"]) != (i, num_shards):
            raise DataError(
                str(path), f"its manifest says shard {m['shard_index']} of {m['num_shards']}, not {i} of {num_shards}"
            )
        manifests.append(m)
    ref, ref_where = manifests[0], str(d / f"{names[0]}.json")
    checks = (
        ("input", lambda m: (m["input"]["sha256"], m["input"].get("key"))),
        ("model", lambda m: m["model"]["sha256"]),
        ("preprocessing, labels or output setup", lambda m: m["model"].get("setup_sha256")),
        ("row count of the input", lambda m: m["total_rows"]),
    )
    for m, nm in zip(manifests[1:], names[1:]):
        for what, get in checks:
            if get(m) != get(ref):
                a, b = get(m), get(ref)
                a, b = (a[0], b[0]) if isinstance(a, tuple) and a[0] != b[0] else (a, b)
                raise DataError(
                    str(d / f"{nm}.json"),
                    f"predicted from another {what} than {names[0]} "
                    f"({str(a)[:16]} vs {str(b)[:16]}); rerun the shards on one input and model",
                )
    total = ref["total_rows"]
    # The rows: sorted by start they must tile [0, total) with no gap and no overlap.
    pos, prev = 0, None
    for i in sorted(range(num_shards), key=lambda j: (manifests[j]["start"], manifests[j]["stop"])):
        m, where = manifests[i], str(d / f"{names[i]}.json")
        s, e = m["start"], m["stop"]
        if e < s or e - s != m["rows"]:
            raise DataError(where, f"rows [{s}, {e}) do not hold the {m['rows']} rows it claims")
        if s < pos:
            raise DataError(where, f"rows [{s}, {e}) overlap rows [{manifests[prev]['start']}, {pos}) of {names[prev]}")
        if s > pos:
            raise DataError(where, f"rows [{pos}, {s}) of the input are in no part")
        pos, prev = e, i
    if pos != total:
        raise DataError(
            ref_where, f"the parts hold {pos} rows, the input has {total}: rows [{pos}, {total}) are in no part"
        )
    for i, m in enumerate(manifests):
        if (m["start"], m["stop"]) != shard_range(total, i, num_shards):
            a, b = shard_range(total, i, num_shards)
            raise DataError(
                str(d / f"{names[i]}.json"),
                f"holds rows [{m['start']}, {m['stop']}), but shard {i} of {num_shards} of {total} rows is [{a}, {b})",
            )
    chunks, labels = [], None
    for i, (m, nm) in enumerate(zip(manifests, names)):
        pf = d / f"{nm}.npz"
        if m["predictions"].get("file") != pf.name:
            raise DataError(
                str(d / f"{nm}.json"),
                f"names {m['predictions'].get('file')!r} as its predictions, expected {pf.name!r}",
            )
        if not pf.is_file():
            raise DataError(str(pf), "missing (its manifest is there)")
        data = pf.read_bytes()
        if hashlib.sha256(data).hexdigest() != m["predictions"]["sha256"]:
            raise DataError(str(pf), "does not match its manifest's sha256 (truncated, replaced or from another run)")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as f:
                probs, part_labels = f["probs"], [str(v) for v in f["labels"]]
        except Exception as e:
            raise DataError(str(pf), f"not a readable part ({type(e).__name__}: {str(e)[:120]})") from None
        if len(probs) != m["rows"]:
            raise DataError(str(pf), f"holds {len(probs)} rows, its manifest says {m['rows']}")
        if labels is not None and (part_labels != labels or probs.shape[1:] != chunks[0].shape[1:]):
            raise DataError(str(pf), f"its labels or output shape differ from {names[0]}'s")
        labels = part_labels if labels is None else labels
        chunks.append(probs)
    merged = np.concatenate(chunks)
    if len(merged) != total:  # the ranges above make this impossible; kept as the final count check
        raise DataError(str(d), f"the parts hold {len(merged)} rows, the input has {total}")
    from tff_lab.fileio import atomic_write_text

    out = write_predictions(out, merged, labels)
    summary = {
        "format": MERGED_FORMAT,
        "rows": int(total),
        "num_shards": num_shards,
        "out": str(out),
        "input": {k: ref["input"].get(k) for k in ("path", "key", "sha256", "scheme", "size_bytes")},
        "model": {k: ref["model"].get(k) for k in ("path", "sha256", "setup_sha256", "backend")},
        "parts": [
            {
                "file": f"{nm}.npz",
                "start": m["start"],
                "stop": m["stop"],
                "sha256": m["predictions"]["sha256"],
                "batch_size": m.get("batch_size"),
                "seconds": m.get("seconds"),
            }
            for m, nm in zip(manifests, names)
        ],
    }
    manifest_path = Path(f"{out}.manifest.json")
    atomic_write_text(manifest_path, json.dumps(summary, indent=1, default=_jsonable) + "\n")
    summary["manifest"] = str(manifest_path)
    return summary
