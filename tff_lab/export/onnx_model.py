"""Keras model -> ``model.onnx`` (tf2onnx, float32) with the TFLite exports' sidecar, run by ONNX Runtime.

``tff-lab export RUN_DIR --format onnx`` writes ``RUN_DIR/export/model.onnx`` and its sidecar
``model.json`` (the same schema as ``model_<variant>.json`` next to a ``.tflite``: labels, input and
output shape/dtype, preprocessing, source run), and adds the variant ``onnx`` to the parity report.
The graph has one input ``x`` and one output ``probs`` (a logits model gets a softmax, as in TFLite)
with a dynamic batch dimension named ``batch``. Text models (int32 token ids, LSTM or GRU) convert to
ONNX's own LSTM/GRU ops, which hold no state between calls, so they keep the dynamic batch too.

A model tf2onnx cannot express in standard ONNX ops is refused with one line naming the ops. ONNX
is exported in float32 only: quantized variants are TFLite's (``--format tflite``).

TensorFlow and tf2onnx are imported inside the conversion functions; :class:`ONNXModel` needs only
onnxruntime (and ``onnx`` to check the file before the runtime sees it).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from tff_lab.errors import ConfigError, DataError
from tff_lab.export.tflite_model import (
    INPUT_NAME,
    OUTPUT_NAME,
    SIDECAR_FORMAT,
    SIGNATURE_KEY,
    check_finite,
    check_input,
    check_tokens,
    preprocessing_arrays,
    read_sidecar,
    sha256_bytes,
    sidecar_path,
)

ONNX_OPSET = 15  # tf2onnx's preferred opset (tf2onnx 1.17 writes up to 18; onnxruntime 1.24 runs all of them)
ONNX_VARIANT = "onnx"
ONNX_FILE = "model.onnx"
BATCH_DIM = "batch"
FORMATS = ("tflite", "onnx")

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}


def parse_format(fmt: str) -> str:
    f = str(fmt).strip().lower()
    if f not in FORMATS:
        raise ConfigError("--format", f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    return f


def onnx_quantizations(spec) -> list[str]:
    """``--quantize`` for ``--format onnx``: ``all`` and ``float32`` mean float32; anything else is refused."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip() for s in items if s.strip()]
    if not names:
        raise ConfigError("--quantize", "expected float32 (or all) with --format onnx")
    bad = [n for n in names if n not in ("all", "float32")]
    if bad:
        raise ConfigError(
            "--quantize",
            f"{bad[0]!r} is not available with --format onnx: ONNX is exported in float32 "
            "only; use --format tflite for dynamic, float16 and int8",
        )
    return ["float32"]


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("tf2onnx", "onnx", "onnxruntime"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:  # pragma: no cover - all three are in requirements.lock
            out[dist] = None
    return out


def ort_session(data: bytes, num_threads: Optional[int] = None, where: str = "model", log_level: int = 3):
    """An ONNX Runtime CPU session for ``data``, quiet (``log_level`` 3: errors only; 4: fatal only) and
    single-stream."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = log_level
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if num_threads:
        so.intra_op_num_threads = int(num_threads)
    try:
        return ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's pybind errors (InvalidProtobuf, Fail, InvalidGraph, ...)
        raise DataError(where, f"ONNX Runtime rejected the model: {' '.join(str(e).split())[:200]}") from None


def _unsupported_ops(proto) -> list[str]:
    """Standard-domain nodes (in the graph and its subgraphs) that ONNX has no schema for: TensorFlow ops
    tf2onnx could not map, which it leaves in the graph under their TensorFlow names."""
    import onnx

    bad: set[str] = set()

    def walk(graph):
        for node in graph.node:
            if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
                bad.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(proto.graph)
    return sorted(bad)


def _set_shape(value_info, dims) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = int(d)


def convert_keras_to_onnx(model, *, outputs: str = "probabilities", fixed_batch: bool = False) -> bytes:
    """A tf.keras model -> ONNX bytes (opset :data:`ONNX_OPSET`), input ``x``, output ``probs``.

    Float inputs stay float32; a text model's token ids are int32. The batch dimension is dynamic
    (named ``batch``) unless the converted graph only runs at the traced batch, in which case it is
    exported with a fixed batch of 1 (callers then run it example by example, as for TFLite).
    Raises :class:`ConfigError` (``--format``) when tf2onnx cannot convert the model.
    """
    import tensorflow as tf
    import tf2onnx
    from tf2onnx import verbose_logging

    from tff_lab.export.convert import is_sequence_model

    verbose_logging.set_level(logging.ERROR)  # tf2onnx logs every step at INFO
    tokens = is_sequence_model(model)
    batch = 1 if fixed_batch else None
    spec = tf.TensorSpec([batch, *model.input_shape[1:]], tf.int32 if tokens else tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(x):
        out = model(x, training=False)
        return {OUTPUT_NAME: tf.nn.softmax(out, axis=-1) if outputs == "logits" else out}

    ver = versions()["tf2onnx"]
    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=ONNX_OPSET)
    except Exception as e:  # tf2onnx raises plain ValueError/KeyError/... on graphs it cannot handle
        raise ConfigError(
            "--format",
            f"tf2onnx {ver} cannot convert this model to ONNX ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:160]}); export --format tflite instead",
        ) from None
    bad = _unsupported_ops(proto)
    if bad:
        raise ConfigError(
            "--format",
            f"tf2onnx {ver} cannot convert this model to ONNX: TensorFlow op(s) "
            f"{', '.join(bad)} have no ONNX equivalent; export --format tflite instead",
        )
    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise ConfigError(
            "--format",
            f"expected a model with one input and one output, the ONNX graph has "
            f"{len(proto.graph.input)} and {len(proto.graph.output)}",
        )
    b = 1 if fixed_batch else BATCH_DIM
    _set_shape(proto.graph.input[0], [b, *model.input_shape[1:]])
    _set_shape(proto.graph.output[0], [b, *model.output_shape[1:]])
    proto.producer_name = "tff_lab (tf2onnx)"
    proto.doc_string = "tff_lab export: serving_default(x) -> probs"
    # tf2onnx's graph doc string names the traced function's object; a fixed one keeps the bytes a function
    # of the model alone (same model -> same file, in any process)
    proto.graph.doc_string = f"converted by tf2onnx {ver} from a tf.keras model"
    import onnx

    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # onnx.checker.ValidationError
        raise ConfigError(
            "--format",
            f"tf2onnx {ver} wrote an invalid ONNX graph for this model "
            f"({' '.join(str(e).split())[:160]}); export --format tflite instead",
        ) from None
    data = proto.SerializeToString()
    if not fixed_batch and not _resizable(data, model.input_shape[1:], np.int32 if tokens else np.float32):
        return convert_keras_to_onnx(model, outputs=outputs, fixed_batch=True)
    return data


def _resizable(data: bytes, input_shape, dtype) -> bool:
    """Whether the dynamic-batch graph really runs at batch 2 (a Reshape frozen to the traced batch does not)."""
    try:
        sess = ort_session(data, log_level=4)  # the failure is the answer, not an error to log
        out = sess.run(None, {INPUT_NAME: np.zeros([2, *input_shape], dtype)})[0]
        return out.shape[0] == 2
    except Exception:  # noqa: BLE001 - any failure means: export with a fixed batch
        return False


def _tensor_info(arg) -> dict:
    shape = [d if isinstance(d, int) and d >= 0 else None for d in arg.shape]
    return {"shape": shape, "dtype": np.dtype(_ORT_TYPES.get(arg.type, np.float32)).name, "quantization": None}


def build_onnx_sidecar(data: bytes, *, model_file: str, labels: list, preprocessing: dict, source: dict) -> dict:
    """The sidecar of ``model.onnx``: the TFLite sidecar's fields, read back from the ONNX graph."""
    import onnx

    from tff_lab import __version__

    proto = onnx.load_model_from_string(data)
    sess = ort_session(data)
    ins, outs = sess.get_inputs(), sess.get_outputs()
    pre = dict(preprocessing or {})
    if pre.get("kind") != "tokens":
        pre.setdefault("offset", 0.0)
        pre.setdefault("scale", 1.0)
        pre["formula"] = "model_input = (raw - offset) * scale"
    v = versions()
    return {
        "format": SIDECAR_FORMAT,
        "model_file": model_file,
        "model_format": "onnx",
        "sha256": sha256_bytes(data),
        "size_bytes": len(data),
        "quantization": "float32",
        "variant": ONNX_VARIANT,
        "signature": {"key": SIGNATURE_KEY, "inputs": [i.name for i in ins], "outputs": [o.name for o in outs]},
        "labels": [str(x) for x in labels],
        "num_classes": len(labels),
        "input": {"name": ins[0].name, **_tensor_info(ins[0])},
        "output": {"name": outs[0].name, **_tensor_info(outs[0])},
        "preprocessing": pre,
        "onnx": {
            "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
            "ir_version": int(proto.ir_version),
            "checked_with": f"onnxruntime {v['onnxruntime']}",
        },
        "source": source,
        "created_by": f"tff_lab {__version__}, tf2onnx {v['tf2onnx']}, onnx {v['onnx']}",
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def onnx_target(art, out) -> Path:
    """None -> RUN_DIR/export/model.onnx; a path ending in .onnx -> that file; any other path -> a directory."""
    if out is not None and str(out).endswith(".onnx"):
        return Path(out)
    if out is not None and str(out).endswith(".tflite"):
        raise ConfigError(
            "--out",
            f"{out} names a .tflite file, but --format onnx writes an .onnx file; give a "
            "path ending in .onnx or a directory",
        )
    out_dir = Path(out) if out is not None else Path(art.run_dir) / "export"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("--out", f"{out_dir} exists and is not a directory")
    return out_dir / ONNX_FILE


def export_onnx(art, *, out=None) -> list:
    """Converts the run's model to ONNX and writes ``model.onnx`` + sidecar atomically; [ExportResult]."""
    from tff_lab.export.convert import ExportResult, is_sequence_model
    from tff_lab.fileio import atomic_write

    path = onnx_target(art, out)
    data = convert_keras_to_onnx(art.model, outputs=art.outputs)
    source = {
        "run_dir": str(Path(art.run_dir).resolve()),
        "config_hash": art.config_hash,
        "experiment": art.cfg.name,
        "seed": art.cfg.seed,
        "model": str(Path(art.model_path).relative_to(art.run_dir)),
        "model_sha256": art.model_sha256,
    }
    side = build_onnx_sidecar(
        data, model_file=path.name, labels=art.data.labels, preprocessing=art.data.preprocessing, source=source
    )
    side["model_kind"] = "sequence" if is_sequence_model(art.model) else "classification"
    side["keras_outputs"] = art.outputs  # the .onnx's output is always probabilities
    atomic_write(path, data)
    sc = sidecar_path(path)
    atomic_write(sc, json.dumps(side, indent=1) + "\n")
    return [
        ExportResult(
            quantization="float32", variant=ONNX_VARIANT, path=path, sidecar_path=sc, size_bytes=len(data), sidecar=side
        )
    ]


class ONNXModel:
    """A checked ``.onnx`` model, its sidecar and an ONNX Runtime session: the interface of
    :class:`~tff_lab.export.tflite_model.TFLiteModel` (``predict``, ``latency``, ``backend``, ...).

    Args:
      path: the ``.onnx`` file.
      sidecar: a sidecar path, a sidecar dict, or None to use ``<model>.json`` when present.
      num_threads: ONNX Runtime intra-op threads (None: the runtime's default).
    """

    input_quant = (0.0, 0)
    output_quant = (0.0, 0)

    def __init__(
        self, path: Union[str, Path], *, sidecar: Union[str, Path, dict, None] = None, num_threads: Optional[int] = None
    ):
        self.path = Path(path)
        where = str(self.path)
        if not self.path.is_file():
            raise DataError(where, "ONNX model file not found")
        data = self.path.read_bytes()
        self.size_bytes, self.sha256 = len(data), sha256_bytes(data)
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
        verify_onnx(data, where)
        from importlib.metadata import version

        self.session = ort_session(data, num_threads, where)
        self.backend = f"onnxruntime {version('onnxruntime')}"
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise DataError(where, f"expected a model with one input and one output, got {len(ins)} and {len(outs)}")
        self._in, self._out = ins[0].name, outs[0].name
        side = self.sidecar or {}
        in_shape = _static_dims(ins[0].shape, (side.get("input") or {}).get("shape"), "input", where)
        out_shape = _static_dims(outs[0].shape, (side.get("output") or {}).get("shape"), "output", where)
        try:
            self.input_dtype = np.dtype(_ORT_TYPES[ins[0].type])
            self.output_dtype = np.dtype(_ORT_TYPES[outs[0].type])
        except KeyError:
            raise DataError(where, f"unsupported tensor types {ins[0].type} -> {outs[0].type}") from None
        self.input_shape, self.output_shape = in_shape[1:], out_shape[1:]
        self.num_classes = int(out_shape[-1])
        self.tokens = self.input_dtype in (np.dtype(np.int32), np.dtype(np.int64))
        self.fixed_batch = in_shape[0] if isinstance(in_shape[0], int) and in_shape[0] > 0 else None
        self.labels = [str(v) for v in side.get("labels", range(self.num_classes))]
        self.preprocessing = side.get("preprocessing", {})
        self._offset, self._scale = preprocessing_arrays(self.preprocessing, self.input_shape)

    def to_model_input(self, raw: np.ndarray, *, preprocess: bool = True) -> np.ndarray:
        if self.tokens:
            return np.asarray(raw).astype(self.input_dtype, copy=False)
        x = np.asarray(raw).astype(np.float32, copy=False)
        if preprocess:
            x = (x - self._offset) * self._scale
        return x.astype(self.input_dtype, copy=False)

    def _invoke(self, xin: np.ndarray) -> np.ndarray:
        if self.fixed_batch is not None and xin.shape[0] != self.fixed_batch:
            fb = self.fixed_batch
            return np.concatenate([self._invoke(xin[i : i + fb]) for i in range(0, len(xin), fb)])
        return self.session.run([self._out], {self._in: xin})[0]

    def from_model_output(self, out: np.ndarray) -> np.ndarray:
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
            probs[start : start + len(xb)] = self.from_model_output(
                self._invoke(self.to_model_input(xb, preprocess=preprocess))
            )
            if on_batch is not None:
                on_batch(len(xb))
        return probs

    def latency(
        self, x: np.ndarray, *, batch_size: int = 1, runs: int = 100, warmup: int = 5, preprocess: bool = False
    ) -> dict:
        """Wall time of one ``session.run`` on ``batch_size`` examples (input in, probabilities out)."""
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


def verify_onnx(data: bytes, where: str) -> None:
    """Parses and checks ``data`` as an ONNX ModelProto before ONNX Runtime sees it (one-line DataError)."""
    import onnx

    if not data or data[:1] != b"\x08":  # field 1 (ir_version, a varint) comes first in a serialized ModelProto
        raise DataError(
            where,
            f"not an ONNX model: expected a protobuf ModelProto starting with its ir_version "
            f"({len(data)} bytes, first byte {data[:1]!r})",
        )
    try:
        proto = onnx.load_model_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as e:  # DecodeError of a truncated file, ValidationError of a broken graph
        raise DataError(
            where,
            f"corrupt or truncated ONNX model ({len(data)} bytes): {type(e).__name__}: "
            f"{' '.join(str(e).split())[:160]}",
        ) from None
    if not proto.graph.node:
        raise DataError(where, "corrupt ONNX model: its graph holds no node")


def _static_dims(shape, sidecar_shape, which: str, where: str) -> tuple:
    """The runtime's shape with named/unknown dimensions after the first taken from the sidecar."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    side = list(sidecar_shape or [])
    for i in range(1, len(dims)):
        if dims[i] is None and i < len(side) and isinstance(side[i], int):
            dims[i] = side[i]
    if any(d is None for d in dims[1:]):
        raise DataError(
            where,
            f"the model's {which} shape {list(shape)} has unknown dimensions besides the batch; "
            "expected its sidecar (model .json) next to it",
        )
    return tuple(dims)
