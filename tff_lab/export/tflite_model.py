"""A ``.tflite`` model with its sidecar, run by the TFLite interpreter inside tff_lab.

The same steps as the edge runner (``tflite/runner.py``), which cannot import tff_lab:
check the file before the interpreter sees it, apply the sidecar's preprocessing, quantize
int8 inputs, run in batches (``resize_tensor_input``), dequantize int8 outputs. Inputs are
*raw* features (what a device reads, e.g. digit pixels 0..16) unless ``preprocess=False``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from tff_lab.errors import DataError

SIDECAR_FORMAT = "tff_lab.tflite-sidecar/1"
SIGNATURE_KEY = "serving_default"
INPUT_NAME = "x"
OUTPUT_NAME = "probs"


def sidecar_path(model_path: Union[str, Path]) -> Path:
    """``model_int8.tflite`` -> ``model_int8.json`` (the sidecar lies next to the model)."""
    return Path(model_path).with_suffix(".json")


def interpreter_backend():
    """(Interpreter class, "name version"): LiteRT when installed, else TensorFlow's own."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        try:
            from importlib.metadata import version

            ver = version("ai-edge-litert")
        except Exception:  # pragma: no cover - metadata missing
            ver = "?"
        return Interpreter, f"ai_edge_litert {ver}"
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, f"tensorflow.lite {tf.__version__}"


_SCHEMA = None


def _tflite_schema():
    """TensorFlow's generated TFLite schema module, loaded from its file *without* importing TensorFlow.

    It needs only ``flatbuffers``; loading it standalone keeps a bad ``.tflite`` a fast, quiet error
    (importing TensorFlow takes seconds and logs to stderr).
    """
    global _SCHEMA
    if _SCHEMA is None:
        import importlib.util

        spec = importlib.util.find_spec("tensorflow")
        if spec is None or not spec.submodule_search_locations:  # pragma: no cover - TF is a dependency
            raise ImportError("tensorflow is not installed")
        path = Path(list(spec.submodule_search_locations)[0]) / "lite" / "python" / "schema_py_generated.py"
        sspec = importlib.util.spec_from_file_location("_tff_lab_tflite_schema", path)
        mod = importlib.util.module_from_spec(sspec)
        sspec.loader.exec_module(mod)
        _SCHEMA = mod
    return _SCHEMA


def _tensor_type_names() -> dict:
    t = _tflite_schema().TensorType
    return {v: k.lower() for k, v in vars(t).items() if not k.startswith("_") and isinstance(v, int)}


def verify_flatbuffer(data: bytes, where: str):
    """Parses ``data`` as a complete TFLite model (raises :class:`DataError` otherwise); returns the model.

    TensorFlow 2.14's interpreter does not verify the FlatBuffer and crashes (SIGSEGV) on a
    truncated file, so the whole model is unpacked in Python first: every table and vector is
    read, and a read past the end raises instead of crashing.
    """
    if len(data) < 8 or data[4:8] != b"TFL3":
        head = data[4:8] if len(data) >= 8 else data[:8]
        raise DataError(
            where,
            f"not a TFLite model: expected a FlatBuffer with file identifier 'TFL3', got {head!r} ({len(data)} bytes)",
        )
    schema = _tflite_schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as e:
        raise DataError(
            where, f"corrupt or truncated TFLite model ({len(data)} bytes): {type(e).__name__}: {str(e)[:160]}"
        ) from None
    if not model.subgraphs:
        raise DataError(where, "corrupt TFLite model: it holds no subgraph")
    for buf in model.buffers or []:
        # Large models keep buffers outside the FlatBuffer (offset/size); check they lie in the file.
        off, size = int(getattr(buf, "offset", 0) or 0), int(getattr(buf, "size", 0) or 0)
        if off > 1 and off + size > len(data):
            raise DataError(
                where, f"truncated TFLite model: a weight buffer ends at byte {off + size}, the file has {len(data)}"
            )
    return model


def _io_tensor(model, which: str, where: str):
    sg = model.subgraphs[0]
    idx = list(sg.inputs if which == "input" else sg.outputs)
    if len(idx) != 1:
        raise DataError(where, f"expected a model with one {which}, got {len(idx)}")
    if not 0 <= idx[0] < len(sg.tensors or []):
        raise DataError(where, f"corrupt TFLite model: the {which} tensor index {idx[0]} is out of range")
    t = sg.tensors[idx[0]]
    shape = t.shapeSignature if t.shapeSignature is not None and len(t.shapeSignature) else t.shape
    try:
        dtype = np.dtype(_tensor_type_names()[t.type])
    except (KeyError, TypeError):
        raise DataError(where, f"unsupported {which} tensor type {t.type}") from None
    return tuple(int(s) for s in shape), dtype


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_sidecar(path: Path) -> dict:
    try:
        side = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(str(path), f"unreadable sidecar JSON ({type(e).__name__}: {e})") from None
    if not isinstance(side, dict) or side.get("format") != SIDECAR_FORMAT:
        raise DataError(str(path), f'not a tff_lab sidecar: expected "format": "{SIDECAR_FORMAT}"')
    return side


def preprocessing_arrays(pre: Optional[dict], input_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) broadcastable to a batch; model_input = (raw - offset) * scale.

    Each is a scalar or one value per input feature (standardized data such as breast cancer).
    """
    n = int(np.prod(input_shape))
    out = []
    for key, default in (("offset", 0.0), ("scale", 1.0)):
        v = np.asarray((pre or {}).get(key, default), np.float32)
        if v.size == 1:
            out.append(v.reshape(()))
        elif v.size == n:
            out.append(v.reshape(input_shape))
        else:
            raise DataError(
                "sidecar.preprocessing", f"{key} has {v.size} values, expected 1 or {n} (one per input feature)"
            )
    return out[0], out[1]


def check_input(x: np.ndarray, input_shape: tuple, where: str) -> np.ndarray:
    """Validates a batch of raw examples against the model's input; returns float32 (n, *input_shape).

    A single example (shape == input_shape) becomes a batch of one; flat rows are reshaped when
    the feature count matches (CSV inputs of image models).
    """
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(where, f"expected a numeric array (float or int), got dtype {x.dtype}")
    shape = tuple(int(s) for s in input_shape)
    if x.shape == shape:
        x = x[None]
    if x.ndim == 2 and len(shape) > 1 and x.shape[1] == int(np.prod(shape)):
        x = x.reshape((x.shape[0], *shape))
    if tuple(x.shape[1:]) != shape:
        want = "(n, " + ", ".join(str(s) for s in shape) + ")"
        raise DataError(where, f"wrong input shape: expected {want} (examples of shape {shape}), got {x.shape}")
    if len(x) == 0:
        raise DataError(where, "holds no examples")
    return x


def is_token_dtype(dtype) -> bool:
    """Integer model inputs that are not quantized int8/uint8: token ids of a sequence model."""
    return np.dtype(dtype) in (np.dtype(np.int32), np.dtype(np.int64))


def check_tokens(xb: np.ndarray, start: int, vocab_size: int, where: str) -> np.ndarray:
    """Token ids: integers in [0, vocab_size); names the first bad example otherwise."""
    xb = np.asarray(xb)
    if xb.dtype.kind == "f":
        bad = ~np.isfinite(xb) | (np.mod(np.nan_to_num(xb), 1) != 0)
        if bad.any():
            row = start + int(np.flatnonzero(bad.reshape(len(xb), -1).any(axis=1))[0])
            raise DataError(where, f"example {row} holds a value that is not an integer token id")
    bad = (xb < 0) | (xb >= vocab_size)
    if bad.any():
        row = start + int(np.flatnonzero(bad.reshape(len(xb), -1).any(axis=1))[0])
        raise DataError(where, f"example {row} holds a token id outside 0..{vocab_size - 1} (the model's vocabulary)")
    return xb


def check_finite(xb: np.ndarray, start: int, where: str) -> None:
    """NaN/inf would come out as confident-looking garbage; name the first bad row instead."""
    if xb.dtype.kind == "f" and not np.isfinite(xb).all():
        row = start + int(np.flatnonzero(~np.isfinite(xb.reshape(len(xb), -1)).all(axis=1))[0])
        raise DataError(where, f"example {row} holds NaN or inf; expected finite numbers")


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.round(x / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


class TFLiteModel:
    """A verified ``.tflite`` model, its sidecar and an interpreter.

    Args:
      path: the ``.tflite`` file.
      sidecar: a sidecar path, a sidecar dict, or None to use ``<model>.json`` when present.
      num_threads: interpreter threads (None: the interpreter's default).
    """

    def __init__(
        self, path: Union[str, Path], *, sidecar: Union[str, Path, dict, None] = None, num_threads: Optional[int] = None
    ):
        self.path = Path(path)
        where = str(self.path)
        if not self.path.is_file():
            raise DataError(where, "TFLite model file not found")
        data = self.path.read_bytes()
        self.size_bytes = len(data)
        self.sha256 = sha256_bytes(data)
        if isinstance(sidecar, dict):
            self.sidecar = sidecar
        else:
            sc = Path(sidecar) if sidecar is not None else sidecar_path(self.path)
            if sidecar is not None and not sc.is_file():
                raise DataError(str(sc), "sidecar JSON not found")
            self.sidecar = read_sidecar(sc) if sc.is_file() else None
        if self.sidecar is not None and self.sidecar.get("sha256") not in (None, self.sha256):
            size = self.sidecar.get("size_bytes")
            why = (
                f"truncated: {len(data)} of {size} bytes"
                if isinstance(size, int) and len(data) < size
                else "corrupt or replaced"
            )
            raise DataError(
                where, f"the model does not match its sidecar's sha256 ({why}); expected the file as exported"
            )
        parsed = verify_flatbuffer(data, where)
        in_shape, self.input_dtype = _io_tensor(parsed, "input", where)
        out_shape, self.output_dtype = _io_tensor(parsed, "output", where)
        self.input_shape = in_shape[1:]
        self.output_shape = out_shape[1:]  # (num_classes,), or (sequence_length, num_classes) for text models
        self.num_classes = int(out_shape[-1])
        # Token-id inputs (text models) take no (raw - offset) * scale; recurrent models are exported
        # with a fixed batch (TFLite's fused LSTM keeps per-batch state), called example by example.
        self.tokens = is_token_dtype(self.input_dtype)
        self.fixed_batch = int(in_shape[0]) if in_shape and int(in_shape[0]) > 0 else None
        side = self.sidecar or {}
        self.labels = [str(v) for v in side.get("labels", range(self.num_classes))]
        self.preprocessing = side.get("preprocessing", {})
        self._offset, self._scale = preprocessing_arrays(self.preprocessing, self.input_shape)
        self._data, self._num_threads = data, num_threads
        self._interpreter = None
        self.backend = None

    @property
    def interpreter(self):
        """The interpreter, created on first use (after the input was checked: no TensorFlow before that)."""
        if self._interpreter is None:
            cls, self.backend = interpreter_backend()
            try:
                interp = cls(model_content=self._data, num_threads=self._num_threads)
                interp.allocate_tensors()
            except (ValueError, RuntimeError) as e:
                raise DataError(
                    str(self.path), f"the TFLite interpreter rejected the model: {' '.join(str(e).split())[:200]}"
                ) from None
            self._in, self._out = interp.get_input_details()[0], interp.get_output_details()[0]
            self._batch = int(self._in["shape"][0])
            self._interpreter = interp
        return self._interpreter

    @property
    def input_quant(self) -> tuple:
        """(scale, zero_point) of the input tensor; (0.0, 0) for float inputs."""
        _ = self.interpreter
        return tuple(self._in["quantization"])

    @property
    def output_quant(self) -> tuple:
        _ = self.interpreter
        return tuple(self._out["quantization"])

    @property
    def signatures(self) -> dict:
        return self.interpreter.get_signature_list()

    def to_model_input(self, raw: np.ndarray, *, preprocess: bool = True) -> np.ndarray:
        """Raw examples -> the interpreter's input tensor (preprocessed, quantized for int8)."""
        if self.tokens:
            return np.asarray(raw).astype(self.input_dtype, copy=False)
        x = raw.astype(np.float32, copy=False)
        if preprocess:
            x = (x - self._offset) * self._scale
        if self.input_dtype.kind in "iu":
            return quantize(x, self.input_quant[0], self.input_quant[1], self.input_dtype)
        return x.astype(self.input_dtype, copy=False)

    def _invoke(self, xin: np.ndarray) -> np.ndarray:
        _ = self.interpreter
        if self.fixed_batch is not None and xin.shape[0] != self.fixed_batch:
            fb = self.fixed_batch
            outs = [self._invoke(xin[i : i + fb]) for i in range(0, len(xin), fb)]
            return np.concatenate(outs)
        if xin.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self._in["index"], list(xin.shape), strict=False)
            self.interpreter.allocate_tensors()
            self._batch = xin.shape[0]
        if self.fixed_batch is not None:
            # TFLite's fused LSTM writes its final state into variable tensors: without a reset every
            # call would start from the previous example's state instead of zeros (as Keras does).
            self.interpreter.reset_all_variables()
        self.interpreter.set_tensor(self._in["index"], xin)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out["index"])

    def from_model_output(self, out: np.ndarray) -> np.ndarray:
        if self.output_dtype.kind in "iu":
            return dequantize(out, self.output_quant[0], self.output_quant[1])
        return out.astype(np.float32, copy=False)

    def predict(
        self,
        x: np.ndarray,
        *,
        batch_size: int = 256,
        preprocess: bool = True,
        on_batch: Optional[Callable[[int], None]] = None,
        where: str = "input",
    ) -> np.ndarray:
        """Class probabilities (float32, (n, num_classes); (n, sequence_length, num_classes) for text
        models) for raw examples ``x`` (token ids for text models)."""
        x = check_input(x, self.input_shape, where)
        n = len(x)
        probs = np.empty((n, *self.output_shape), np.float32)
        for start in range(0, n, batch_size):
            xb = np.asarray(x[start : start + batch_size])
            check_finite(xb, start, where)
            if self.tokens:
                check_tokens(xb, start, self.num_classes, where)
            out = self._invoke(self.to_model_input(xb, preprocess=preprocess))
            probs[start : start + len(xb)] = self.from_model_output(out)
            if on_batch is not None:
                on_batch(len(xb))
        return probs

    def latency(
        self, x: np.ndarray, *, batch_size: int = 1, runs: int = 100, warmup: int = 5, preprocess: bool = False
    ) -> dict:
        """Wall time of one interpreter call (set input, invoke, get output) on ``batch_size`` examples."""
        x = check_input(x, self.input_shape, "latency input")
        reps = math.ceil(batch_size / len(x))
        xb = self.to_model_input(
            np.concatenate([x] * reps)[:batch_size] if reps > 1 else x[:batch_size], preprocess=preprocess
        )
        for _ in range(warmup):
            self._invoke(xb)
        times = np.empty(runs)
        for i in range(runs):
            t0 = time.perf_counter()
            self._invoke(xb)
            times[i] = time.perf_counter() - t0
        p50 = float(np.percentile(times, 50))
        return {
            "batch_size": batch_size,
            "runs": runs,
            "p50_ms": p50 * 1e3,
            "p95_ms": float(np.percentile(times, 95)) * 1e3,
            "mean_ms": float(times.mean()) * 1e3,
            "throughput_per_s": batch_size / p50,
        }
