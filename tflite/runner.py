#!/usr/bin/env python3
"""Edge runner for tff_lab's ``.tflite`` and ``.onnx`` exports: numpy and the runtime, nothing else.

    python tflite/runner.py MODEL.tflite|MODEL.onnx INPUT [--out PRED.npz|PRED.csv] [--batch N] [--bench]

The runtime follows the file extension: ``.onnx`` runs on ONNX Runtime (``onnxruntime``, CPU),
anything else is read as a ``.tflite`` and runs on ``ai_edge_litert`` (LiteRT), falling back to
``tflite_runtime``. Same CLI, same outputs for both.

Reads the sidecar next to the model (``model_int8.tflite`` -> ``model_int8.json``, ``model.onnx`` ->
``model.json``), applies its preprocessing to the raw INPUT features (``model_input = (raw - offset) *
scale``), quantizes int8 inputs and dequantizes int8 outputs with the model's own scale and zero
point, and runs the model in batches. Predictions go to stdout (``index,pred,label,prob``) or to
``--out`` (.npz: probs, pred, label, labels; .csv: index,pred,label,p_<label>...). ``--bench``
reports the latency of one runtime call (p50/p95) at batch 1 and at ``--bench-batch``, and the
throughput.

This file must never import TensorFlow or tff_lab: it runs on devices that have neither.
Exit codes: 0 ok, 2 bad input (one line on stderr), 3 no interpreter (or ONNX Runtime) installed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

SIDECAR_FORMAT = "tff_lab.tflite-sidecar/1"
INPUT_SUFFIXES = (".npy", ".npz", ".csv")
OUTPUT_SUFFIXES = (".npz", ".csv")
ONNX_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}


class RunnerError(Exception):
    """Bad input: printed as one line, exit code 2."""


class NoInterpreterError(Exception):
    """The model's runtime is not installed (ai-edge-litert/tflite-runtime; onnxruntime): exit code 3."""


def load_interpreter_class():
    """(Interpreter class, "name version"): LiteRT first, then the older tflite-runtime wheel."""
    from importlib.metadata import PackageNotFoundError, version

    for module, dist in (
        ("ai_edge_litert.interpreter", "ai-edge-litert"),
        ("tflite_runtime.interpreter", "tflite-runtime"),
    ):
        try:
            mod = __import__(module, fromlist=["Interpreter"])
        except ImportError:
            continue
        try:
            ver = version(dist)
        except PackageNotFoundError:  # pragma: no cover
            ver = "?"
        return mod.Interpreter, f"{module.split('.')[0]} {ver}"
    raise NoInterpreterError(
        "no TFLite interpreter: install ai-edge-litert (pip install -r tflite/requirements.txt) or tflite-runtime"
    )


def load_onnxruntime():
    """(the onnxruntime module, "onnxruntime version") for ``.onnx`` models."""
    try:
        ort = __import__("onnxruntime")
    except ImportError:
        raise NoInterpreterError(
            "no ONNX runtime: install onnxruntime (pip install -r tflite/requirements.txt)"
        ) from None
    return ort, f"onnxruntime {ort.__version__}"


# --- input -------------------------------------------------------------------------------------


def load_input(path: str, key: Optional[str] = None) -> np.ndarray:
    """``.npy`` (memory-mapped), ``.npz`` (array ``x``, its only array, or ``key``) or ``.csv``; never unpickles."""
    p = Path(path)
    if not p.is_file():
        raise RunnerError(f"{p}: input file not found")
    suffix = p.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise RunnerError(f"{p}: unsupported input type '{p.suffix}'; expected one of: {', '.join(INPUT_SUFFIXES)}")
    try:
        if suffix == ".npy":
            return np.load(p, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as f:
                names = list(f.files)
                if key is not None and key not in names:
                    raise RunnerError(f"{p}: no array {key!r}; the file holds: {', '.join(names) or 'nothing'}")
                name = key or ("x" if "x" in names else (names[0] if len(names) == 1 else None))
                if name is None:
                    raise RunnerError(
                        f"{p}: expected an array 'x' (or pass --key), the file holds: {', '.join(names) or 'nothing'}"
                    )
                return f[name]
        with open(p, newline="") as f:
            first = f.readline()
        try:
            [float(t) for t in first.strip().split(",") if t.strip()]
            skip = 0
        except ValueError:
            skip = 1  # a header row
        return np.loadtxt(p, delimiter=",", dtype=np.float32, ndmin=2, skiprows=skip, comments="#")
    except RunnerError:
        raise
    except ValueError as e:
        if any(s in str(e) for s in ("allow_pickle", "Object arrays", "Python objects")):
            raise RunnerError(
                f"{p}: holds Python objects (pickled data), which are never loaded; expected a numeric array"
            ) from None
        raise RunnerError(f"{p}: not a readable {suffix} file ({str(e)[:160]})") from None
    except Exception as e:  # BadZipFile, EOFError, OSError of a corrupt file
        raise RunnerError(f"{p}: not a readable {suffix} file ({type(e).__name__}: {str(e)[:160]})") from None


def check_input(x: np.ndarray, input_shape: tuple, where: str) -> np.ndarray:
    """(n, *input_shape) numeric examples; a single example becomes a batch of one."""
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.dtype.kind not in "biuf":
        raise RunnerError(f"{where}: expected a numeric array (float or int), got dtype {x.dtype}")
    shape = tuple(int(s) for s in input_shape)
    if x.shape == shape:
        x = x[None]
    if x.ndim == 2 and len(shape) > 1 and x.shape[1] == int(np.prod(shape)):
        x = x.reshape((x.shape[0], *shape))
    if tuple(x.shape[1:]) != shape:
        want = "(n, " + ", ".join(str(s) for s in shape) + ")"
        raise RunnerError(f"{where}: wrong input shape: expected {want} (examples of shape {shape}), got {x.shape}")
    if len(x) == 0:
        raise RunnerError(f"{where}: holds no examples")
    return x


def preprocessing_arrays(pre: Optional[dict], input_shape: tuple):
    """(offset, scale) for ``model_input = (raw - offset) * scale``: scalars or one value per feature."""
    n = int(np.prod(input_shape))
    out = []
    for key, default in (("offset", 0.0), ("scale", 1.0)):
        v = np.asarray((pre or {}).get(key, default), np.float32)
        if v.size == 1:
            out.append(v.reshape(()))
        elif v.size == n:
            out.append(v.reshape(input_shape))
        else:
            raise RunnerError(f"sidecar preprocessing: {key} has {v.size} values, expected 1 or {n}")
    return out[0], out[1]


def check_tokens(xb: np.ndarray, start: int, vocab_size: int, where: str) -> np.ndarray:
    """Token ids of a text model: integers in [0, vocab_size)."""
    xb = np.asarray(xb)
    if xb.dtype.kind == "f":
        bad = ~np.isfinite(xb) | (np.mod(np.nan_to_num(xb), 1) != 0)
        if bad.any():
            row = start + int(np.flatnonzero(bad.reshape(len(xb), -1).any(axis=1))[0])
            raise RunnerError(f"{where}: example {row} holds a value that is not an integer token id")
    bad = (xb < 0) | (xb >= vocab_size)
    if bad.any():
        row = start + int(np.flatnonzero(bad.reshape(len(xb), -1).any(axis=1))[0])
        raise RunnerError(
            f"{where}: example {row} holds a token id outside 0..{vocab_size - 1} (the model's vocabulary)"
        )
    return xb


def check_finite(xb: np.ndarray, start: int, where: str) -> None:
    if xb.dtype.kind == "f" and not np.isfinite(xb).all():
        row = start + int(np.flatnonzero(~np.isfinite(xb.reshape(len(xb), -1)).all(axis=1))[0])
        raise RunnerError(f"{where}: example {row} holds NaN or inf; expected finite numbers")


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / np.float32(scale)) + zero_point, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


# --- model -------------------------------------------------------------------------------------


def read_sidecar(path: Path) -> dict:
    try:
        side = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunnerError(f"{path}: unreadable sidecar JSON ({type(e).__name__}: {e})") from None
    if not isinstance(side, dict) or side.get("format") != SIDECAR_FORMAT:
        raise RunnerError(f'{path}: not a tff_lab sidecar (expected "format": "{SIDECAR_FORMAT}")')
    return side


class _Model:
    """What a ``.tflite`` and an ``.onnx`` model share: the file, its sidecar (sha256 checked), the
    preprocessing, and batched prediction and timing around ``invoke`` (one runtime call)."""

    fixed_batch: Optional[int] = None
    input_quant = (0.0, 0)
    output_quant = (0.0, 0)

    def _read(self, path: str, sidecar: Optional[str]) -> bytes:
        self.path = Path(path)
        if not self.path.is_file():
            raise RunnerError(f"{self.path}: model file not found")
        data = self.path.read_bytes()
        sc = Path(sidecar) if sidecar else self.path.with_suffix(".json")
        if sidecar and not sc.is_file():
            raise RunnerError(f"{sc}: sidecar JSON not found")
        self.sidecar = read_sidecar(sc) if sc.is_file() else None
        if self.sidecar is not None:
            want = self.sidecar.get("sha256")
            got = hashlib.sha256(data).hexdigest()
            if want and want != got:
                size = self.sidecar.get("size_bytes")
                why = f"truncated: {len(data)} of {size} bytes" if size and len(data) < size else "corrupt or replaced"
                raise RunnerError(f"{self.path}: the model does not match its sidecar's sha256 ({why})")
        return data

    def _finish(self) -> None:
        """Labels and preprocessing from the sidecar, once input_shape and num_classes are known."""
        # Text models take int32 token ids (no preprocessing).
        self.tokens = self.input_dtype in (np.dtype(np.int32), np.dtype(np.int64))
        side = self.sidecar or {}
        self.labels = [str(v) for v in side.get("labels", range(self.num_classes))]
        self.offset, self.scale = preprocessing_arrays(side.get("preprocessing"), self.input_shape)

    def to_model_input(self, raw: np.ndarray, preprocess: bool = True) -> np.ndarray:
        if self.tokens:
            return np.asarray(raw).astype(self.input_dtype)
        x = np.asarray(raw, np.float32)
        if preprocess:
            x = (x - self.offset) * self.scale
        if self.input_dtype.kind in "iu":
            scale, zp = self.input_quant
            return quantize(x, scale, zp, self.input_dtype)
        return x.astype(self.input_dtype, copy=False)

    def invoke(self, xin: np.ndarray) -> np.ndarray:  # pragma: no cover - defined by each runtime
        raise NotImplementedError

    def from_model_output(self, out: np.ndarray) -> np.ndarray:
        if self.output_dtype.kind in "iu":
            scale, zp = self.output_quant
            return dequantize(out, scale, zp)
        return out.astype(np.float32, copy=False)

    def predict(self, x: np.ndarray, batch: int = 256, preprocess: bool = True, where: str = "input") -> np.ndarray:
        probs = np.empty((len(x), *self.output_shape), np.float32)
        for start in range(0, len(x), batch):
            xb = np.asarray(x[start : start + batch])
            check_finite(xb, start, where)
            if self.tokens:
                check_tokens(xb, start, self.num_classes, where)
            probs[start : start + len(xb)] = self.from_model_output(self.invoke(self.to_model_input(xb, preprocess)))
        return probs

    def latency(self, x: np.ndarray, batch: int, runs: int, preprocess: bool = True, warmup: int = 5) -> dict:
        reps = -(-batch // len(x))
        xb = self.to_model_input(np.concatenate([np.asarray(x)] * reps)[:batch], preprocess)
        for _ in range(warmup):
            self.invoke(xb)
        times = np.empty(runs)
        for i in range(runs):
            t0 = time.perf_counter()
            self.invoke(xb)
            times[i] = time.perf_counter() - t0
        p50 = float(np.percentile(times, 50))
        return {
            "batch_size": batch,
            "runs": runs,
            "p50_ms": 1e3 * p50,
            "p95_ms": 1e3 * float(np.percentile(times, 95)),
            "mean_ms": 1e3 * float(times.mean()),
            "throughput_per_s": batch / p50,
        }


class EdgeModel(_Model):
    """A ``.tflite`` model, its sidecar and a LiteRT interpreter."""

    def __init__(self, path: str, *, sidecar: Optional[str] = None, num_threads: Optional[int] = None):
        data = self._read(path, sidecar)
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise RunnerError(
                f"{self.path}: not a TFLite model: expected a FlatBuffer with file identifier 'TFL3' "
                f"({len(data)} bytes)"
            )
        cls, self.backend = load_interpreter_class()
        try:
            self.interpreter = cls(model_content=data, num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise RunnerError(
                f"{self.path}: corrupt or truncated TFLite model; the interpreter says: "
                f"{' '.join(str(e).split())[:160]}"
            ) from None
        ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise RunnerError(f"{self.path}: expected one input and one output, got {len(ins)} and {len(outs)}")
        self._in, self._out = ins[0], outs[0]
        self.input_quant, self.output_quant = tuple(self._in["quantization"]), tuple(self._out["quantization"])
        in_sig = [int(s) for s in self._in.get("shape_signature", self._in["shape"])]
        self.input_shape = tuple(in_sig[1:])
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])
        self.output_shape = tuple(int(s) for s in self._out["shape"][1:])  # (C,) or (T, C) for text models
        self.num_classes = int(self._out["shape"][-1])
        # Text models are exported with a fixed batch: TFLite's fused LSTM keeps per-batch state, so they
        # run example by example.
        self.fixed_batch = in_sig[0] if in_sig and in_sig[0] > 0 else None
        self._batch = int(self._in["shape"][0])
        self._finish()

    def invoke(self, xin: np.ndarray) -> np.ndarray:
        if self.fixed_batch is not None and xin.shape[0] != self.fixed_batch:
            fb = self.fixed_batch
            return np.concatenate([self.invoke(xin[i : i + fb]) for i in range(0, len(xin), fb)])
        if self.fixed_batch is not None:
            # The fused LSTM writes its final state into variable tensors: start every call from zeros.
            self.interpreter.reset_all_variables()
        if xin.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self._in["index"], list(xin.shape), strict=False)
            self.interpreter.allocate_tensors()
            self._batch = xin.shape[0]
        self.interpreter.set_tensor(self._in["index"], xin)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out["index"])


class OnnxEdgeModel(_Model):
    """A ``.onnx`` model (``tff-lab export --format onnx``), its sidecar and an ONNX Runtime CPU session."""

    def __init__(self, path: str, *, sidecar: Optional[str] = None, num_threads: Optional[int] = None):
        data = self._read(path, sidecar)
        # A serialized ModelProto starts with field 1, ir_version (a varint): tag byte 0x08.
        if len(data) < 2 or data[:1] != b"\x08":
            raise RunnerError(
                f"{self.path}: not an ONNX model: expected a protobuf ModelProto starting with its "
                f"ir_version ({len(data)} bytes)"
            )
        ort, self.backend = load_onnxruntime()
        so = ort.SessionOptions()
        so.log_severity_level = 3  # errors only: nothing on stderr but this runner's own lines
        so.inter_op_num_threads = 1
        if num_threads:
            so.intra_op_num_threads = num_threads
        try:
            self.session = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's InvalidProtobuf, InvalidGraph, Fail, ...
            raise RunnerError(
                f"{self.path}: corrupt or truncated ONNX model; ONNX Runtime says: {' '.join(str(e).split())[:160]}"
            ) from None
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise RunnerError(f"{self.path}: expected one input and one output, got {len(ins)} and {len(outs)}")
        self._in, self._out = ins[0].name, outs[0].name
        try:
            self.input_dtype = np.dtype(ONNX_TYPES[ins[0].type])
            self.output_dtype = np.dtype(ONNX_TYPES[outs[0].type])
        except KeyError:
            raise RunnerError(f"{self.path}: unsupported tensor types {ins[0].type} -> {outs[0].type}") from None
        side = self.sidecar or {}
        in_shape = self._dims(ins[0].shape, (side.get("input") or {}).get("shape"), "input")
        out_shape = self._dims(outs[0].shape, (side.get("output") or {}).get("shape"), "output")
        self.input_shape, self.output_shape = in_shape[1:], out_shape[1:]
        self.num_classes = int(out_shape[-1])
        self.fixed_batch = in_shape[0]  # None: any batch (ONNX's LSTM/GRU hold no state between calls)
        self._finish()

    def _dims(self, shape, sidecar_shape, which: str) -> tuple:
        """Static dimensions after the batch (named ones taken from the sidecar); the batch or None."""
        dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
        side = list(sidecar_shape or [])
        for i in range(1, len(dims)):
            if dims[i] is None and i < len(side) and isinstance(side[i], int):
                dims[i] = side[i]
        if not dims or any(d is None for d in dims[1:]):
            raise RunnerError(
                f"{self.path}: the model's {which} shape {list(shape)} has unknown dimensions besides "
                "the batch; expected its sidecar .json next to it"
            )
        return tuple(dims)

    def invoke(self, xin: np.ndarray) -> np.ndarray:
        if self.fixed_batch is not None and xin.shape[0] != self.fixed_batch:
            fb = self.fixed_batch
            return np.concatenate([self.invoke(xin[i : i + fb]) for i in range(0, len(xin), fb)])
        return self.session.run([self._out], {self._in: xin})[0]


def open_model(path: str, *, sidecar: Optional[str] = None, num_threads: Optional[int] = None) -> _Model:
    """By file extension: ``.onnx`` -> ONNX Runtime; anything else is read as a ``.tflite`` (LiteRT)."""
    cls = OnnxEdgeModel if Path(path).suffix.lower() == ".onnx" else EdgeModel
    return cls(path, sidecar=sidecar, num_threads=num_threads)


# --- output ------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_predictions(path: str, probs: np.ndarray, labels: list) -> None:
    p = Path(path)
    suffix = p.suffix.lower()
    pred = probs.argmax(axis=-1).astype(np.int32)
    names = np.asarray([str(v) for v in labels])
    if probs.ndim > 2 and suffix == ".csv":  # text model: one row per example, a class per position
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
        _atomic_write(p, buf.getvalue().encode())
        return
    if suffix == ".npz":
        buf = io.BytesIO()
        np.savez(buf, probs=probs.astype(np.float32), pred=pred, label=names[pred], labels=names)
        _atomic_write(p, buf.getvalue())
    elif suffix == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["index", "pred", "label", *[f"p_{n}" for n in names]])
        for i in range(len(pred)):
            w.writerow([i, int(pred[i]), names[pred[i]], *[f"{v:.7g}" for v in probs[i]]])
        _atomic_write(p, buf.getvalue().encode())
    else:
        raise RunnerError(
            f"--out {p}: unsupported output type '{p.suffix}'; expected one of: {', '.join(OUTPUT_SUFFIXES)}"
        )


def print_predictions(probs: np.ndarray, labels: list, stream) -> None:
    pred = probs.argmax(axis=-1)
    stream.write("index,pred,label,prob\n")
    if probs.ndim > 2:  # text model: the predicted next token at every position
        top = probs.max(axis=-1)
        for i in range(len(pred)):
            text = "".join(str(labels[k]) for k in pred[i])
            stream.write(f"{i},{' '.join(str(int(k)) for k in pred[i])},{json.dumps(text)},{top[i].mean():.6f}\n")
        return
    for i, k in enumerate(pred):
        stream.write(f"{i},{int(k)},{labels[k]},{probs[i, k]:.6f}\n")


# --- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runner.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "model",
        metavar="MODEL",
        help=".tflite (run by LiteRT) or .onnx (run by ONNX Runtime), its sidecar .json beside it",
    )
    p.add_argument("input", metavar="INPUT", help=".npy, .npz (array 'x') or .csv of raw examples")
    p.add_argument("--out", default=None, help="write predictions to .npz or .csv (default: print to stdout)")
    p.add_argument("--batch", type=int, default=256, help="examples per runtime call (default: %(default)s)")
    p.add_argument("--key", default=None, help="array name in an .npz input (default: 'x' or its only array)")
    p.add_argument("--sidecar", default=None, help="sidecar JSON (default: MODEL with .json)")
    p.add_argument("--no-preprocess", action="store_true", help="INPUT already holds model inputs")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="interpreter (ONNX Runtime: intra-op) threads (default: the runtime's)",
    )
    p.add_argument("--bench", action="store_true", help="report latency (p50/p95) at batch 1 and --bench-batch")
    p.add_argument("--bench-batch", type=int, default=64, help="the larger batch of --bench (default: %(default)s)")
    p.add_argument("--runs", type=int, default=200, help="timed calls at batch 1 for --bench (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print --bench results (and a run summary) as JSON")
    return p


def run(args) -> int:
    for name in ("batch", "bench_batch", "runs"):
        if getattr(args, name) < 1:
            raise RunnerError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    if args.out and Path(args.out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise RunnerError(f"--out {args.out}: unsupported output type; expected one of: {', '.join(OUTPUT_SUFFIXES)}")
    model = open_model(args.model, sidecar=args.sidecar, num_threads=args.threads)
    x = check_input(load_input(args.input, args.key), model.input_shape, args.input)
    for start in range(0, len(x), 65536):
        check_finite(np.asarray(x[start : start + 65536]), start, args.input)
    preprocess = not args.no_preprocess
    if model.sidecar is None and preprocess:
        print(
            f"runner: note: no sidecar next to {model.path.name}: inputs are fed as they are, labels are class ids",
            file=sys.stderr,
        )
    summary = {
        "model": str(model.path),
        "backend": model.backend,
        "threads": args.threads,
        "input_dtype": model.input_dtype.name,
        "output_dtype": model.output_dtype.name,
    }
    if args.out or not args.bench:
        t0 = time.perf_counter()
        probs = model.predict(x, batch=args.batch, preprocess=preprocess, where=args.input)
        seconds = time.perf_counter() - t0
        summary.update(examples=int(len(probs)), seconds=seconds, examples_per_s=len(probs) / max(seconds, 1e-9))
        if args.out:
            write_predictions(args.out, probs, model.labels)
            print(
                f"runner: {len(probs)} predictions in {seconds:.3f} s ({len(probs) / max(seconds, 1e-9):,.0f} "
                f"examples/s, batch {args.batch}, {model.backend}) -> {args.out}",
                file=sys.stderr,
            )
        elif not args.json:
            print_predictions(probs, model.labels, sys.stdout)
    if args.bench:
        runs_big = max(20, args.runs // 4)
        summary["bench"] = [
            model.latency(x, 1, args.runs, preprocess),
            model.latency(x, args.bench_batch, runs_big, preprocess),
        ]
        if not args.json:
            print(
                f"{model.path.name}: {model.path.stat().st_size / 1024:.1f} KiB, {model.input_dtype.name} in / "
                f"{model.output_dtype.name} out, {model.backend}, threads {args.threads or 'default'}"
            )
            print(f"{'batch':>6} {'p50 ms/call':>12} {'p95 ms/call':>12} {'throughput ex/s':>16}")
            for b in summary["bench"]:
                print(f"{b['batch_size']:>6} {b['p50_ms']:>12.4f} {b['p95_ms']:>12.4f} {b['throughput_per_s']:>16,.0f}")
    if args.json:
        print(json.dumps(summary))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except RunnerError as e:
        print(f"runner: error: {e}", file=sys.stderr)
        return 2
    except NoInterpreterError as e:
        print(f"runner: error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
