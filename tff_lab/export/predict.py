"""Batch prediction: a Keras model (``.keras``/SavedModel) or a ``.tflite`` on a large input file.

Inputs are *raw* features, as the data came before the run's preprocessing (e.g. digit pixels
0..16); the preprocessing comes from the ``.tflite`` sidecar, from ``--sidecar``, or, for a Keras
model inside a RUN_DIR, from the run (an export's sidecar, else the rebuilt data). Pass
``preprocess=False`` (``--no-preprocess``) for inputs that are already model inputs.

Input files: ``.npy`` (memory-mapped, so inputs larger than memory stream through), ``.npz``
(array ``x``, the only array, or ``key``), ``.csv`` (numeric rows, an optional header row).
Outputs: ``.npz`` (``probs`` float32 (n, C), ``pred`` int32, ``label`` str, ``labels``) or ``.csv``
(``index,pred,label,p_<label>...``). No pickle: ``np.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import csv
import io
import json
import os
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
                    raise DataError(where, f"expected an array 'x' (or pass --key), the file holds: "
                                    f"{', '.join(names) or 'nothing'}")
                x = f[name]
        else:
            x = _load_csv(p)
    except DataError:
        raise
    except ValueError as e:
        msg = str(e)
        if "allow_pickle" in msg or "Object arrays" in msg or "Python objects" in msg:
            raise DataError(where, "holds Python objects (pickled data), which are never loaded; expected a "
                            "numeric array") from None
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
        raise ConfigError("--out", f"unsupported output type '{p.suffix}'; expected one of: "
                          f"{', '.join(OUTPUT_SUFFIXES)}")
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
                w.writerow([i, " ".join(str(int(t)) for t in pred[i]), "".join(names[pred[i]]),
                            " ".join(f"{v:.5g}" for v in top[i])])
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
            raise DataError(str(self.path), f"not a SavedModel with a serving_default signature "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
        inputs, outputs = fn.structured_input_signature[1], fn.structured_outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise DataError(str(self.path), f"expected a SavedModel signature with one input and one output, got "
                            f"{len(inputs)} and {len(outputs)}")
        (self._in_name, spec), = inputs.items()
        (self._out_name, out_spec), = outputs.items()
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
                xb = check_tokens(np.asarray(x[start:start + batch_size]), start, self.num_classes, where)
                xb = xb.astype(np.int32)
            else:
                xb = np.asarray(x[start:start + batch_size], np.float32)
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
            probs[start:start + len(xb)] = out
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


def load_predictor(model: Union[str, os.PathLike], *, sidecar: Union[str, os.PathLike, None] = None,
                   num_threads: Optional[int] = None):
    """A :class:`TFLiteModel` for ``.tflite`` files, else a :class:`KerasPredictor`."""
    p = Path(model)
    if not p.exists():
        raise DataError(str(p), "model not found (expected a .tflite file, a .keras file or a SavedModel directory)")
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
        raise DataError(str(p), f"unsupported model type '{p.suffix}'; expected .tflite, .keras or a SavedModel "
                        "directory")
    return KerasPredictor(p, sidecar=side)


def predict_file(model: Union[str, os.PathLike], input_path: Union[str, os.PathLike],
                 out: Union[str, os.PathLike], *, batch_size: int = 256, preprocess: bool = True,
                 key: Optional[str] = None, sidecar: Union[str, os.PathLike, None] = None,
                 num_threads: Optional[int] = None, quiet: bool = False) -> dict:
    """Predicts every example of ``input_path`` and writes ``out``; returns counts and throughput."""
    if batch_size < 1:
        raise ConfigError("--batch-size", f"expected an integer >= 1, got {batch_size}")
    if Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError("--out", f"unsupported output type '{Path(out).suffix}'; expected one of: "
                          f"{', '.join(OUTPUT_SUFFIXES)}")
    predictor = load_predictor(model, sidecar=sidecar, num_threads=num_threads)
    x = load_input(input_path, key)
    from tff_lab.export.tflite_model import check_finite, check_input

    x = check_input(x, predictor.input_shape, str(input_path))
    from tff_lab.export.tflite_model import check_tokens

    for start in range(0, len(x), 65536):  # before the progress bar: a bad row is a one-line error
        check_finite(np.asarray(x[start:start + 65536]), start, str(input_path))
        if getattr(predictor, "tokens", False):
            check_tokens(np.asarray(x[start:start + 65536]), start, predictor.num_classes, str(input_path))
    if not isinstance(predictor, KerasPredictor):
        _ = predictor.interpreter  # an interpreter that rejects the model fails here, before the bar
    notes = []
    if preprocess and isinstance(predictor, KerasPredictor) and not predictor.has_preprocessing:
        notes.append("no run or sidecar found for this Keras model: inputs are fed as they are (pass --sidecar to "
                     "apply an export's preprocessing)")
    if preprocess and not isinstance(predictor, KerasPredictor) and predictor.sidecar is None:
        notes.append(f"no sidecar next to {Path(model).name}: inputs are fed as they are, labels are class ids")
    if not quiet:
        for n in notes:
            print(f"tff-lab predict: note: {n}", file=sys.stderr)
    from tqdm import tqdm

    bar = tqdm(total=len(x), unit="ex", desc="predict", disable=quiet, file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        probs = predictor.predict(x, batch_size=batch_size, preprocess=preprocess, on_batch=bar.update,
                                  where=str(input_path))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    write_predictions(out, probs, predictor.labels)
    return {"examples": int(len(probs)), "seconds": seconds, "examples_per_s": len(probs) / max(seconds, 1e-9),
            "batch_size": batch_size, "backend": predictor.backend, "out": str(out), "notes": notes}
