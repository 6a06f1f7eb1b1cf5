"""Keras model -> ``.tflite`` (float32, dynamic-range, float16, full-integer int8) plus a sidecar JSON.

The converted model carries one signature, ``serving_default``, with input ``x`` and output
``probs``. Next to every ``model_<variant>.tflite`` lies ``model_<variant>.json``: labels, input
and output shape/dtype/quantization, the preprocessing a device applies to raw features, and the
source run (directory, config hash, model hash). Full-integer int8 calibrates on examples drawn
round-robin across the clients' training splits (seeded by the experiment's seed), so every
client's distribution, not only the large clients', sets the quantization ranges.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from tff_lab.errors import ConfigError, DataError
from tff_lab.export.tflite_model import (
    INPUT_NAME,
    OUTPUT_NAME,
    SIDECAR_FORMAT,
    SIGNATURE_KEY,
    sha256_bytes,
    sidecar_path,
)
from tff_lab.fileio import atomic_write

QUANTIZATIONS = ("float32", "dynamic", "float16", "int8")
INT8_IO = ("int8", "float")
DEFAULT_REPRESENTATIVE_EXAMPLES = 500


def parse_quantize(spec: Union[str, Sequence[str]]) -> list[str]:
    """``"all"``, one name or a comma-separated list -> quantizations in canonical order."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip() for s in items if s.strip()]
    if not names:
        raise ConfigError("--quantize", f"expected one of: {', '.join(QUANTIZATIONS)}, all")
    out: set[str] = set()
    for n in names:
        if n == "all":
            out.update(QUANTIZATIONS)
        elif n in QUANTIZATIONS:
            out.add(n)
        else:
            raise ConfigError(
                "--quantize",
                f"unknown quantization {n!r}; expected one of: "
                f"{', '.join(QUANTIZATIONS)}, all (or a comma-separated list)",
            )
    return [q for q in QUANTIZATIONS if q in out]


def variant_name(quantization: str, int8_io: str = "int8") -> str:
    """File-name stem suffix: int8 with float input/output is its own variant."""
    return "int8_float_io" if quantization == "int8" and int8_io == "float" else quantization


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass
class RunArtifacts:
    """What export needs from a finished run: its config, data (rebuilt) and final model."""

    run_dir: Path
    cfg: Any  # ExperimentConfig
    config_hash: str
    data: Any  # FederatedData
    model: Any  # tf.keras.Model
    model_path: Path
    model_sha256: str
    outputs: str = "probabilities"  # what the Keras model returns; the .tflite always returns probabilities
    inputs_note: str = "the run's data, rebuilt from its config"  # where the evaluation inputs came from


def is_sequence_model(model) -> bool:
    """A text model: integer token-id inputs (its outputs then have a per-position class axis)."""
    import tensorflow as tf

    return tf.as_dtype(model.inputs[0].dtype).is_integer


def model_outputs(cfg) -> str:
    """``probabilities`` or ``logits``, as the run's model declared (a part that no longer resolves:
    ``model.outputs`` or probabilities)."""
    try:
        from tff_lab.models import resolve_model

        return resolve_model(cfg.model).outputs
    except Exception:  # noqa: BLE001 - a user part of the run's process is not importable here
        return cfg.model.outputs or "probabilities"


def keras_probabilities(model, x: np.ndarray, outputs: str = "probabilities", batch_size: int = 1024) -> np.ndarray:
    """The Keras model's class probabilities (softmax of logits models), float32."""
    out = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float32)
    if outputs == "logits":
        z = out - out.max(axis=-1, keepdims=True)
        e = np.exp(z)
        out = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


def refused_quantization(model, quantization: str) -> Optional[str]:
    """Why ``quantization`` cannot be exported for this model (None when it can)."""
    import tensorflow as tf

    if quantization == "float16" and any(isinstance(l, tf.keras.layers.LSTM) for l in model.submodules):
        return (
            "float16 of an LSTM hangs TensorFlow 2.14's converter (fused UNIDIRECTIONAL_SEQUENCE_LSTM); "
            "export float32, dynamic or int8, or train with model.kwargs.cell: gru"
        )
    return None


def load_run(run_dir: Union[str, os.PathLike]) -> RunArtifacts:
    """Loads RUN_DIR's resolved config, final model and evaluation inputs.

    Export needs no part it cannot find: the model is RUN_DIR's, its inputs are the ones the run
    saved (``model/export_inputs.*``, :mod:`tff_lab.export.run_inputs`); what the privacy policy
    kept out of them is rebuilt from the config when its parts resolve here (and build the same
    data as parts.json records), else parity is measured on what there is, or on synthetic inputs,
    and the report says which."""
    from tff_lab.export import run_inputs

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(str(run_dir), "RUN_DIR not found (expected the output directory of `tff-lab run`)")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise DataError(
            str(run_dir), "not a run directory: config.yaml is missing (expected the output directory of `tff-lab run`)"
        )
    model_path = run_dir / "model" / "model.keras"
    if not model_path.is_file():
        raise DataError(
            str(run_dir),
            "the run has no finished model: expected model/model.keras, which "
            "`tff-lab run` writes when training ends (resume the run with --resume)",
        )
    from tff_lab.config import config_hash, load_config

    cfg = load_config(cfg_path)
    model = load_keras_model(model_path)
    saved = run_inputs.load(run_dir)
    data, note = saved, (saved.note if saved is not None else "")
    complete = saved is not None and "evaluation_splits" in saved.info.get("saved", [])
    if not complete:
        rebuilt, why = _rebuild_data(run_dir, cfg)
        if rebuilt is not None:
            data, note = rebuilt, "the run's data, rebuilt from its config (its parts resolve here)"
        elif saved is not None and len(saved.test[1]):
            note = f"{saved.note}; per-client evaluation and int8 calibration unavailable: {why}"
        else:
            data = run_inputs.synthetic(model, saved.info if saved is not None else None, cfg.seed)
            note = f"{data.note}; the run's data: {why}"
    got = tuple(int(s) for s in model.input_shape[1:])
    if got != tuple(data.input_shape):
        raise DataError(
            str(model_path),
            f"the model takes inputs of shape {got}, but the run's data has "
            f"examples of shape {tuple(data.input_shape)}",
        )
    n_out = int(model.output_shape[-1])
    if n_out != data.num_classes:
        raise DataError(str(model_path), f"the model has {n_out} outputs, the run's data {data.num_classes} classes")
    outputs = saved.info.get("outputs") if saved is not None else None
    return RunArtifacts(
        run_dir=run_dir,
        cfg=cfg,
        config_hash=config_hash(cfg),
        data=data,
        model=model,
        model_path=model_path,
        model_sha256=file_sha256(model_path),
        outputs=outputs or model_outputs(cfg),
        inputs_note=note,
    )


def _rebuild_data(run_dir: Path, cfg):
    """(data, None) when the config's data source resolves here and builds the data parts.json
    records; else (None, why)."""
    from tff_lab.errors import UserError

    try:
        from tff_lab.data import load_federated_data

        data = load_federated_data(cfg)
    except UserError as e:
        return None, f"its data source cannot be rebuilt here ({e})"
    try:
        parts = json.loads((run_dir / "parts.json").read_text())
        want = next((p.get("builds_sha256") for p in parts if isinstance(p, dict) and p.get("kind") == "data"), None)
    except (OSError, ValueError):
        want = None
    if want:
        from tff_lab.parts import data_builds

        if data_builds(data)["builds_sha256"] != want:
            return None, (
                "the data source found here builds other data than the run's (its digest differs from parts.json)"
            )
    return data, None


def load_keras_model(path: Union[str, os.PathLike]):
    """A ``.keras`` file or a SavedModel directory -> tf.keras model (inference only, not compiled)."""
    import tensorflow as tf

    path = Path(path)
    if not path.exists():
        raise DataError(str(path), "model not found")
    try:
        return tf.keras.models.load_model(str(path), compile=False)
    except Exception as e:  # zip/HDF5/protobuf errors of a corrupt or foreign file
        raise DataError(str(path), f"not a loadable Keras model ({type(e).__name__}: {str(e).strip()[:160]})") from None


def representative_examples(
    data, num_examples: int = DEFAULT_REPRESENTATIVE_EXAMPLES, seed: int = 0
) -> tuple[np.ndarray, dict]:
    """Calibration examples drawn round-robin across clients (each client's order seeded).

    Every client contributes equally until a client runs out, so small clients' feature ranges
    count as much as large clients'. Returns (examples, {client_id: count}).
    """
    if num_examples < 1:
        raise ConfigError("--representative-examples", f"expected an integer >= 1, got {num_examples}")
    if hasattr(data, "representative"):  # a run's saved export inputs: the same draw, from what was saved
        if not data.has_calibration():
            raise DataError(
                "--quantize int8",
                "full-integer quantization needs calibration examples, but the run "
                "saved none (its privacy policy withholds client data, or its clients hold no training "
                "examples) and its data cannot be rebuilt here; export float32, dynamic or float16",
            )
        return data.representative(num_examples)
    from tff_lab.export.run_inputs import client_orders, round_robin

    lengths = [len(data.train[c][1]) for c in data.client_ids]
    if sum(lengths) == 0:
        raise DataError(
            "--quantize int8",
            "full-integer quantization needs representative data, but the "
            "clients hold no training examples; export float32, dynamic or float16 instead",
        )
    orders = client_orders(lengths, seed)
    take = round_robin(lengths, num_examples)
    xs = [data.train[c][0][o[:k]] for c, o, k in zip(data.client_ids, orders, take) if k]
    x = np.concatenate(xs)
    return (x if x.dtype.kind in "iu" else x.astype(np.float32)), {
        c: int(k) for c, k in zip(data.client_ids, take) if k
    }


def _resizable(tflite_bytes: bytes, input_shape, dtype) -> bool:
    """Whether a dynamic-batch .tflite really runs at another batch size (some ops, e.g. the
    BROADCAST_TO of Keras' GroupNormalization, are frozen to the traced batch by the converter)."""
    import tensorflow as tf

    try:
        interp = tf.lite.Interpreter(model_content=tflite_bytes)
        d = interp.get_input_details()[0]
        interp.resize_tensor_input(d["index"], [2, *input_shape], strict=False)
        interp.allocate_tensors()
        interp.set_tensor(d["index"], np.zeros([2, *input_shape], d["dtype"]))
        interp.invoke()
        return True
    except (RuntimeError, ValueError):
        return False


def convert_keras_model(
    model,
    quantization: str,
    *,
    representative: Optional[np.ndarray] = None,
    int8_io: str = "int8",
    outputs: str = "probabilities",
    fixed_batch: bool = False,
) -> bytes:
    """Converts a tf.keras model to TFLite bytes with signature ``serving_default(x) -> probs``.

    A logits model gets a softmax, so every ``.tflite`` returns probabilities. A text model
    (integer token inputs) keeps int32 token inputs (int8 quantizes weights and activations, the
    output stays float32) and is exported with a fixed batch of 1: TFLite's fused LSTM keeps
    per-batch state and cannot be resized; callers run it example by example.
    """
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ConfigError(
            "--quantize", f"unknown quantization {quantization!r}; expected one of: {', '.join(QUANTIZATIONS)}"
        )
    if int8_io not in INT8_IO:
        raise ConfigError("--int8-io", f"expected one of: {', '.join(INT8_IO)}, got {int8_io!r}")
    if quantization == "int8" and (representative is None or len(representative) == 0):
        raise DataError(
            "--quantize int8",
            "full-integer quantization needs representative data (calibration "
            "examples), got none; export float32, dynamic or float16 instead",
        )

    why = refused_quantization(model, quantization)
    if why:
        raise ConfigError("--quantize", why)
    tokens = is_sequence_model(model)
    if tokens:
        spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.int32, name=INPUT_NAME)
    else:
        spec = tf.TensorSpec([1 if fixed_batch else None, *model.input_shape[1:]], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(x):
        out = model(x, training=False)
        return {OUTPUT_NAME: tf.nn.softmax(out, axis=-1) if outputs == "logits" else out}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        rep = np.asarray(representative, np.int32 if tokens else np.float32)

        def gen():
            for i in range(len(rep)):
                yield [rep[i : i + 1]]

        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io = tf.int8 if int8_io == "int8" else tf.float32
        if not tokens:  # token ids stay int32
            converter.inference_input_type = io
        converter.inference_output_type = io
    out = converter.convert()
    if (
        not tokens
        and not fixed_batch
        and not _resizable(
            out, model.input_shape[1:], np.float32 if quantization != "int8" or int8_io == "float" else np.int8
        )
    ):
        # Run example by example (as text models are): the callers and tflite/runner.py handle a fixed batch.
        return convert_keras_model(
            model, quantization, representative=representative, int8_io=int8_io, outputs=outputs, fixed_batch=True
        )
    return out


def _tensor_info(detail: dict) -> dict:
    scale, zp = detail["quantization"]
    sig = detail.get("shape_signature", detail["shape"])
    return {
        "shape": [None if int(s) < 0 else int(s) for s in sig],
        "dtype": np.dtype(detail["dtype"]).name,
        "quantization": ({"scale": float(scale), "zero_point": int(zp)} if scale else None),
    }


def build_sidecar(
    tflite_bytes: bytes,
    *,
    model_file: str,
    quantization: str,
    int8_io: str,
    labels: list,
    preprocessing: dict,
    source: dict,
    representative: Optional[dict] = None,
) -> dict:
    """The sidecar JSON for one converted model (read back from the model itself where it can)."""
    import tensorflow as tf

    from tff_lab import __version__

    interp = tf.lite.Interpreter(model_content=tflite_bytes)
    sigs = interp.get_signature_list()
    ins, outs = interp.get_input_details(), interp.get_output_details()
    pre = dict(preprocessing or {})
    if pre.get("kind") != "tokens":
        pre.setdefault("offset", 0.0)
        pre.setdefault("scale", 1.0)
        pre["formula"] = "model_input = (raw - offset) * scale"
    side = {
        "format": SIDECAR_FORMAT,
        "model_file": model_file,
        "sha256": sha256_bytes(tflite_bytes),
        "size_bytes": len(tflite_bytes),
        "quantization": quantization,
        "variant": variant_name(quantization, int8_io),
        "signature": {
            "key": SIGNATURE_KEY,
            "inputs": sigs.get(SIGNATURE_KEY, {}).get("inputs", []),
            "outputs": sigs.get(SIGNATURE_KEY, {}).get("outputs", []),
        },
        "labels": [str(v) for v in labels],
        "num_classes": len(labels),
        "input": {"name": INPUT_NAME, **_tensor_info(ins[0])},
        "output": {"name": OUTPUT_NAME, **_tensor_info(outs[0])},
        "preprocessing": pre,
        "source": source,
        "created_by": f"tff_lab {__version__}, tensorflow {tf.__version__}",
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if representative is not None:
        side["representative_data"] = representative
    return side


@dataclasses.dataclass
class ExportResult:
    quantization: str
    variant: str
    path: Path
    sidecar_path: Path
    size_bytes: int
    sidecar: dict


def export_artifacts(
    art: RunArtifacts,
    quantizations: Sequence[str],
    *,
    out: Union[str, os.PathLike, None] = None,
    int8_io: str = "int8",
    representative_examples_count: int = DEFAULT_REPRESENTATIVE_EXAMPLES,
    representative: Optional[np.ndarray] = None,
    skipped: Optional[dict] = None,
) -> list[ExportResult]:
    """Converts the run's model to each quantization and writes ``.tflite`` + sidecar atomically.

    A quantization this model cannot take (:func:`refused_quantization`) raises a one-line
    :class:`ConfigError`, unless ``skipped`` is a dict: it is then left out and its reason
    recorded there (``--quantize all``).

    ``out``: None -> RUN_DIR/export/model_<variant>.tflite; a path ending in ``.tflite`` -> that file
    (one quantization only); any other path -> a directory for ``model_<variant>.tflite`` files.
    ``representative`` overrides the calibration examples (int8); by default they are drawn
    across clients with :func:`representative_examples`.
    """
    quantizations = parse_quantize(list(quantizations))
    if int8_io not in INT8_IO:
        raise ConfigError("--int8-io", f"expected one of: {', '.join(INT8_IO)}, got {int8_io!r}")
    for q in list(quantizations):
        why = refused_quantization(art.model, q)
        if why and skipped is None:
            raise ConfigError("--quantize", why)
        if why:
            skipped[q] = why
            quantizations.remove(q)
    targets: dict[str, Path] = {}
    if out is not None and str(out).endswith(".tflite"):
        if len(quantizations) != 1:
            raise ConfigError(
                "--out",
                f"names one .tflite file, but {len(quantizations)} quantizations were asked "
                "for; give a directory (or no --out: RUN_DIR/export/)",
            )
        targets[quantizations[0]] = Path(out)
    else:
        out_dir = Path(out) if out is not None else art.run_dir / "export"
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError("--out", f"{out_dir} exists and is not a directory")
        for q in quantizations:
            targets[q] = out_dir / f"model_{variant_name(q, int8_io)}.tflite"

    rep_info = None
    if "int8" in quantizations:
        if representative is None:
            representative, counts = representative_examples(art.data, representative_examples_count, art.cfg.seed)
            rep_info = {
                "examples": int(len(representative)),
                "clients": len(counts),
                "seed": art.cfg.seed,
                "sampling": "round-robin across clients' training splits",
                "per_client": counts,
            }
        else:
            representative = np.asarray(representative)
            representative = representative if representative.dtype.kind in "iu" else representative.astype(np.float32)
            rep_info = {"examples": int(len(representative)), "sampling": "given by the caller"}

    source = {
        "run_dir": str(art.run_dir.resolve()),
        "config_hash": art.config_hash,
        "experiment": art.cfg.name,
        "seed": art.cfg.seed,
        "model": str(art.model_path.relative_to(art.run_dir)),
        "model_sha256": art.model_sha256,
    }
    results = []
    for q in quantizations:
        data = convert_keras_model(
            art.model, q, representative=representative if q == "int8" else None, int8_io=int8_io, outputs=art.outputs
        )
        path = targets[q]
        side = build_sidecar(
            data,
            model_file=path.name,
            quantization=q,
            int8_io=int8_io if q == "int8" else "float",
            labels=art.data.labels,
            preprocessing=art.data.preprocessing,
            source=source,
            representative=rep_info if q == "int8" else None,
        )
        side["model_kind"] = "sequence" if is_sequence_model(art.model) else "classification"
        side["keras_outputs"] = art.outputs  # the .tflite's output is always probabilities
        atomic_write(path, data)
        sc = sidecar_path(path)
        atomic_write(sc, json.dumps(side, indent=1) + "\n")
        results.append(
            ExportResult(
                quantization=q, variant=side["variant"], path=path, sidecar_path=sc, size_bytes=len(data), sidecar=side
            )
        )
    return results


def export_run(
    run_dir: Union[str, os.PathLike],
    quantize: Union[str, Sequence[str]] = "all",
    *,
    out: Union[str, os.PathLike, None] = None,
    int8_io: str = "int8",
    representative_examples_count: int = DEFAULT_REPRESENTATIVE_EXAMPLES,
    report: bool = True,
    latency_runs: int = 200,
    quiet: bool = True,
    format: str = "tflite",
) -> dict:  # noqa: A002
    """Exports RUN_DIR's final model and writes the parity report (RUN_DIR/export/report.json, .md).

    ``format="onnx"`` writes ``model.onnx`` (float32; ``quantize`` must be ``all`` or ``float32``)
    instead of ``.tflite`` files: see :mod:`tff_lab.export.onnx_model`. The report keeps the other
    format's variants exported earlier from the same model.

    Returns ``{"exports": [ExportResult, ...], "report": dict or None}``.

    Example:
      >>> from tff_lab.export import export_run
      >>> res = export_run("runs/default", "all")
      >>> res["report"]["variants"]["int8"]["parity"]["top1_agreement"]
    """
    from tff_lab.export.onnx_model import onnx_quantizations, parse_format

    fmt = parse_format(format)
    # before any slow work: a typo fails at once
    quantizations = onnx_quantizations(quantize) if fmt == "onnx" else parse_quantize(quantize)
    if int8_io not in INT8_IO:
        raise ConfigError("--int8-io", f"expected one of: {', '.join(INT8_IO)}, got {int8_io!r}")
    asked_all = any(s.strip() == "all" for s in (quantize.split(",") if isinstance(quantize, str) else quantize))
    from tff_lab import run_dir as run_dir_lib

    with run_dir_lib.own(run_dir, kind="run", where=str(run_dir), create=False):  # no run writes it meanwhile
        return _export_run(
            run_dir,
            quantizations,
            fmt,
            out=out,
            int8_io=int8_io,
            asked_all=asked_all,
            representative_examples_count=representative_examples_count,
            report=report,
            latency_runs=latency_runs,
            quiet=quiet,
        )


def _export_run(
    run_dir, quantizations, fmt, *, out, int8_io, asked_all, representative_examples_count, report, latency_runs, quiet
) -> dict:
    art = load_run(run_dir)
    skipped: dict = {}
    if "int8" in quantizations and hasattr(art.data, "has_calibration") and not art.data.has_calibration():
        why = (
            "int8 needs calibration examples: the run saved none (its privacy policy withholds client data) "
            "and its data cannot be rebuilt here"
        )
        if not asked_all:
            raise ConfigError("--quantize", why + "; export float32, dynamic or float16")
        skipped["int8"] = why
        quantizations = [q for q in quantizations if q != "int8"]
    if fmt == "onnx":
        from tff_lab.export.onnx_model import export_onnx

        results = export_onnx(art, out=out)
    else:
        results = export_artifacts(
            art,
            quantizations,
            out=out,
            int8_io=int8_io,
            representative_examples_count=representative_examples_count,
            skipped=skipped if asked_all else None,
        )
    rep = None
    if report:
        from tff_lab.export.report import build_report, write_report

        rep = build_report(art, results, latency_runs=latency_runs, quiet=quiet)
        rep["evaluation_inputs"] = art.inputs_note
        if skipped:
            rep["skipped"] = dict(skipped)
        write_report(art.run_dir / "export", rep)
    return {"exports": results, "report": rep, "skipped": skipped}
