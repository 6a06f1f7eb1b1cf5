"""What ``tff-lab export`` needs from a run, saved in RUN_DIR when the run ends, so that export
needs no part it cannot find (Python data, a loader of another working directory).

``model/export_inputs.json`` holds the model's input signature (shape, dtype), the number of
classes, labels, preprocessing, whether the Keras model emits probabilities or logits, and what
was saved and why; ``model/export_inputs.npz`` holds evaluation and calibration examples, as the
run's privacy policy allows:

* a run without DP: the global test set, every client's evaluation split and int8 calibration
  examples (the round-robin draw :func:`tff_lab.export.convert.representative_examples` makes,
  up to ``REPRESENTATIVE_MAX``), each capped at ``MAX_BYTES``;
* a DP run: client data is never saved (epsilon does not cover it): only a global test set that is
  not client data. Export then rebuilds the data from the config when its parts resolve, and
  otherwise reports parity on what it has (or on synthetic inputs), saying so in the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

FORMAT = "tff_lab.export-inputs/1"
JSON_NAME = "export_inputs.json"
NPZ_NAME = "export_inputs.npz"
MAX_BYTES = 16 * 2**20  # per group (test, evaluation splits, calibration)
REPRESENTATIVE_MAX = 2000
REPRESENTATIVE_SALT = 0x7F11E


def round_robin(lengths: list[int], num_examples: int) -> list[int]:
    """How many examples each client gives to a round-robin draw of ``num_examples``."""
    take = [0] * len(lengths)
    remaining = min(num_examples, sum(lengths))
    while remaining:
        active = [i for i, n in enumerate(lengths) if take[i] < n]
        for i in active[:remaining]:
            take[i] += 1
        remaining -= min(len(active), remaining)
    return take


def client_orders(lengths: list[int], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, REPRESENTATIVE_SALT]))
    return [rng.permutation(n) for n in lengths]


def _cap(n: int, row_bytes: int) -> int:
    return int(min(n, max(1, MAX_BYTES // max(1, row_bytes))))


def save(run_dir, cfg, data, *, outputs: str) -> dict:
    """Writes model/export_inputs.{json,npz} for a finished run; returns the JSON written."""
    from tff_lab.fileio import atomic_path, atomic_write_text

    private = bool(cfg.privacy.enabled)
    public_test = getattr(data, "test_source", "separate") == "separate"
    arrays: dict[str, np.ndarray] = {}
    saved, withheld, capped = [], {}, {}
    tx, ty = data.test
    if not private or public_test:
        n = _cap(len(ty), int(tx[:1].nbytes) if len(tx) else 1)
        arrays["test_x"], arrays["test_y"] = tx[:n], ty[:n]
        saved.append("test")
        if n < len(ty):
            capped["test"] = {"saved": n, "of": int(len(ty))}
    else:
        withheld["test"] = "a DP run's global test set cut from client data (epsilon does not cover it)"
    ids = list(data.client_ids)
    if not private:
        counts = [int(len(data.eval[c][1])) for c in ids]
        row = int(data.eval[ids[0]][0][:1].nbytes) if ids and counts[0] else int(tx[:1].nbytes) if len(tx) else 1
        budget, kept = _cap(sum(counts), row), []
        for n in counts:
            kept.append(min(n, budget))
            budget -= kept[-1]
        if sum(counts):
            arrays["eval_x"] = np.concatenate([data.eval[c][0][:k] for c, k in zip(ids, kept)])
            arrays["eval_y"] = np.concatenate([data.eval[c][1][:k] for c, k in zip(ids, kept)])
        arrays["eval_counts"] = np.asarray(kept, np.int64)
        if kept != counts:
            capped["evaluation_splits"] = {"saved": int(sum(kept)), "of": int(sum(counts))}
        lengths = [int(len(data.train[c][1])) for c in ids]
        orders = client_orders(lengths, cfg.seed)
        take = round_robin(lengths, REPRESENTATIVE_MAX)
        if sum(take):
            arrays["rep_x"] = np.concatenate([data.train[c][0][o[:k]] for c, o, k in zip(ids, orders, take)])
        arrays["rep_take"] = np.asarray(take, np.int64)
        arrays["train_counts"] = np.asarray(lengths, np.int64)
        arrays["client_ids"] = np.asarray(ids, dtype=np.str_)
        saved += ["evaluation_splits", "calibration"]
    else:
        why = "client data of a DP run (epsilon does not cover it; never written)"
        withheld["evaluation_splits"] = why
        withheld["calibration"] = why
    x0 = tx if len(tx) else data.union_train()[0]
    info = {
        "format": FORMAT,
        "input_shape": [int(s) for s in data.input_shape],
        "input_dtype": str(x0.dtype),
        "num_classes": int(data.num_classes),
        "labels": [str(l) for l in data.labels],
        "preprocessing": data.preprocessing or {},
        "outputs": outputs,
        "seed": int(cfg.seed),
        "test_source": getattr(data, "test_source", "separate"),
        "saved": saved,
        "withheld": withheld,
        "capped": capped,
        "representative_max": REPRESENTATIVE_MAX,
        "num_clients": len(ids),
        "label_shape": [int(s) for s in ty.shape[1:]],
        "label_dtype": str(ty.dtype),
    }
    model_dir = Path(run_dir) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_dir / NPZ_NAME, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    atomic_write_text(model_dir / JSON_NAME, json.dumps(info, indent=1, default=str))
    return info


class SavedData:
    """The parts of a ``FederatedData`` export reads, from model/export_inputs.* (or synthetic)."""

    def __init__(self, info: dict, arrays: dict, *, note: str):
        self.info = info
        self.note = note
        self.input_shape = tuple(info["input_shape"])
        self.num_classes = int(info["num_classes"])
        self.labels = list(info["labels"])
        self.preprocessing = info.get("preprocessing") or {}
        self.test_source = info.get("test_source", "separate")
        dt = np.dtype(info.get("input_dtype", "float32"))
        ldt = np.dtype(info.get("label_dtype", "int32"))
        empty_x = np.zeros((0, *self.input_shape), dt)
        empty_y = np.zeros((0, *info.get("label_shape", [])), ldt)
        self.test = (arrays.get("test_x", empty_x), arrays.get("test_y", empty_y))
        ids = [str(c) for c in arrays.get("client_ids", [])]
        self.client_ids = ids
        counts = [int(n) for n in arrays.get("eval_counts", [0] * len(ids))]
        bounds = np.cumsum([0, *counts])
        ex, ey = arrays.get("eval_x", empty_x), arrays.get("eval_y", empty_y)
        self.eval = {c: (ex[bounds[i] : bounds[i + 1]], ey[bounds[i] : bounds[i + 1]]) for i, c in enumerate(ids)}
        self._rep_take = [int(n) for n in arrays.get("rep_take", [0] * len(ids))]
        self._train_counts = [int(n) for n in arrays.get("train_counts", [0] * len(ids))]
        rb = np.cumsum([0, *self._rep_take])
        rx = arrays.get("rep_x", empty_x)
        self._rep = [rx[rb[i] : rb[i + 1]] for i in range(len(ids))]
        self.seed = int(info.get("seed", 0))

    def has_calibration(self) -> bool:
        return sum(self._rep_take) > 0

    def representative(self, num_examples: int) -> tuple[np.ndarray, dict]:
        """The same draw as representative_examples on the run's data (up to the saved maximum)."""
        n = min(int(num_examples), int(self.info.get("representative_max", REPRESENTATIVE_MAX)))
        take = round_robin(self._train_counts, n)
        xs = [r[:k] for r, k in zip(self._rep, take) if k]
        x = np.concatenate(xs)
        return (x if x.dtype.kind in "iu" else x.astype(np.float32)), {
            c: int(k) for c, k in zip(self.client_ids, take) if k
        }


def load(run_dir) -> Optional[SavedData]:
    """RUN_DIR's saved export inputs (None for a run from before they were saved)."""
    model_dir = Path(run_dir) / "model"
    jp, npz = model_dir / JSON_NAME, model_dir / NPZ_NAME
    if not jp.is_file() or not npz.is_file():
        return None
    from tff_lab.errors import DataError

    try:
        info = json.loads(jp.read_text())
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ValueError(f"expected format {FORMAT}")
        with np.load(npz, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise DataError(str(jp), f"unreadable export inputs ({str(e).splitlines()[0][:160]})") from None
    what = ", ".join(info.get("saved", [])) or "nothing"
    return SavedData(info, arrays, note=f"the run's saved export inputs ({what}; model/{NPZ_NAME})")


def synthetic(model, info: Optional[dict], seed: int = 0, n: int = 256) -> SavedData:
    """Inputs for parity when no example may be read: seeded random inputs of the model's input
    signature, labelled with the Keras model's own predictions (accuracy = agreement with Keras)."""
    import tensorflow as tf

    shape = tuple(int(s) for s in model.input_shape[1:])
    dtype = tf.as_dtype(model.inputs[0].dtype)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E7]))
    if dtype.is_integer:
        vocab = next((int(l.input_dim) for l in model.submodules if isinstance(l, tf.keras.layers.Embedding)), 2)
        x = rng.integers(0, vocab, (n, *shape)).astype(dtype.as_numpy_dtype)
    else:
        x = rng.normal(0.0, 1.0, (n, *shape)).astype(np.float32)
    y = np.asarray(model.predict(x, verbose=0)).argmax(-1).astype(np.int32)
    base = dict(info or {})
    base.update(
        {
            "input_shape": list(shape),
            "input_dtype": str(x.dtype),
            "num_classes": int(model.output_shape[-1]),
            "label_shape": list(y.shape[1:]),
            "label_dtype": "int32",
        }
    )
    base.setdefault("labels", [str(i) for i in range(int(model.output_shape[-1]))])
    return SavedData(
        base,
        {"test_x": x, "test_y": y},
        note=f"{n} synthetic inputs (seeded random, no example of the run could be read): parity is "
        "measured on them and 'accuracy' is agreement with the Keras model's own predictions",
    )
