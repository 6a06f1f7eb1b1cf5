"""Parity, size and latency report of every export (RUN_DIR/export/report.json and report.md).

For each converted model, against the Keras model it came from:
  * file size, and the ratio to the float32 file;
  * output parity on the global test set: max absolute difference of the class probabilities,
    max relative difference (per example ``max_j |t_j - k_j| / max_j |k_j|``, the largest over
    examples; well defined because a probability vector's largest entry is >= 1/C), top-1
    agreement;
  * accuracy on the test set, and a federated evaluation over every client's evaluation split:
    the mean per-client drop next to the worst client's (the largest drop) and the lowest
    client accuracy: quantization can hurt a few clients much more than the average;
  * interpreter latency per call (p50/p95) at batch 1 and at a larger batch, and throughput.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tff_lab.export.tflite_model import TFLiteModel

REPORT_FORMAT = "tff_lab.export-report/1"
LATENCY_BATCH = 64


def parity(probs: np.ndarray, ref: np.ndarray, positions: Optional[np.ndarray] = None) -> dict:
    """Output differences of ``probs`` against the reference (Keras) probabilities.

    Text models: ``probs`` is (n, T, C) and ``positions`` (n, T) selects the positions compared
    (those whose target is not padding); each selected position counts as one example.
    """
    if probs.ndim > 2:
        keep = positions.reshape(-1) if positions is not None else slice(None)
        probs = probs.reshape(-1, probs.shape[-1])[keep]
        ref = ref.reshape(-1, ref.shape[-1])[keep]
        if not len(ref):
            return {
                "examples": 0,
                "max_abs_diff": 0.0,
                "mean_abs_diff": 0.0,
                "max_rel_diff": 0.0,
                "top1_agreement": 1.0,
                "top1_disagreements": 0,
            }
    diff = np.abs(probs.astype(np.float64) - ref.astype(np.float64))
    rel = diff.max(axis=1) / np.maximum(np.abs(ref).max(axis=1), 1e-12)
    agree = probs.argmax(axis=1) == ref.argmax(axis=1)
    return {
        "examples": int(len(ref)),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_diff": float(rel.max()),
        "top1_agreement": float(agree.mean()),
        "top1_disagreements": int((~agree).sum()),
    }


def _accuracy_fn(preprocessing: dict):
    """accuracy(pred, y): plain top-1 for classes; for text models the masked accuracy (positions whose
    target is one of ``masked_ids``, e.g. pad/OOV/BOS/EOS, do not count), as in training."""
    if (preprocessing or {}).get("kind") == "tokens":
        from tff_lab.tasks.metrics import masked_accuracy

        masked = list(preprocessing.get("masked_ids", [preprocessing.get("pad_id", 0)]))
        return lambda pred, y: masked_accuracy(pred, y, masked)
    return lambda pred, y: float(np.mean(pred == y))


def client_accuracies(pred: np.ndarray, y: np.ndarray, counts: Sequence[int], accuracy=None) -> list[Optional[float]]:
    acc = accuracy or (lambda p, t: float(np.mean(p == t)))
    out, start = [], 0
    for n in counts:
        out.append(acc(pred[start : start + n], y[start : start + n]) if n else None)
        start += n
    return out


def client_summary(client_ids, counts, acc: list, ref_acc: Optional[list] = None) -> dict:
    """Federated evaluation summary; with ``ref_acc`` (Keras) the per-client drops too."""
    idx = [i for i, n in enumerate(counts) if n]
    if not idx:
        return {"evaluated": 0}
    total = sum(counts[i] for i in idx)
    lowest = min(idx, key=lambda i: (acc[i], client_ids[i]))
    s = {
        "evaluated": len(idx),
        "examples": int(total),
        "accuracy_mean": float(np.mean([acc[i] for i in idx])),
        "accuracy_weighted": float(sum(acc[i] * counts[i] for i in idx) / total),
        "lowest_accuracy": {"client": client_ids[lowest], "accuracy": acc[lowest], "examples": int(counts[lowest])},
    }
    if ref_acc is not None:
        drops = {i: ref_acc[i] - acc[i] for i in idx}
        worst = max(idx, key=lambda i: (drops[i], -counts[i], client_ids[i]))
        s["mean_drop"] = float(np.mean(list(drops.values())))
        s["clients_with_drop"] = int(sum(d > 0 for d in drops.values()))
        s["worst_drop"] = {
            "client": client_ids[worst],
            "drop": float(drops[worst]),
            "accuracy": acc[worst],
            "keras_accuracy": ref_acc[worst],
            "examples": int(counts[worst]),
        }
        s["lowest_accuracy"]["keras_accuracy"] = ref_acc[lowest]
    return s


def _keras_probs(model, x: np.ndarray, outputs: str = "probabilities") -> np.ndarray:
    from tff_lab.export.convert import keras_probabilities

    return keras_probabilities(model, x, outputs)


def build_report(
    art,
    results,
    *,
    latency_runs: int = 200,
    latency_batch: int = LATENCY_BATCH,
    num_threads: int = 1,
    quiet: bool = True,
) -> dict:
    """The report for ``results`` (ExportResult list) of run ``art`` (RunArtifacts).

    Variants exported earlier from the same model (same sha256) whose files are unchanged are kept,
    so ``--quantize float32`` then ``--quantize int8`` gives one report with both.
    """
    data = art.data
    tx, ty = data.test
    ids = list(data.client_ids)
    counts = [int(len(data.eval[c][1])) for c in ids]
    ex = np.concatenate([data.eval[c][0] for c in ids]) if sum(counts) else np.zeros((0, *data.input_shape), np.float32)
    ey = np.concatenate([data.eval[c][1] for c in ids]) if sum(counts) else np.zeros((0,), np.int32)

    outputs = getattr(art, "outputs", "probabilities")
    accuracy = _accuracy_fn(data.preprocessing)
    tokens = (data.preprocessing or {}).get("kind") == "tokens"
    positions = (ty != data.preprocessing.get("pad_id", 0)) if tokens else None
    out_shape = tuple(int(s) for s in art.model.output_shape[1:])
    k_test = _keras_probs(art.model, tx, outputs)
    k_eval = _keras_probs(art.model, ex, outputs) if len(ex) else np.zeros((0, *out_shape), np.float32)
    k_client_acc = client_accuracies(k_eval.argmax(-1), ey, counts, accuracy)
    keras_acc = accuracy(k_test.argmax(-1), ty)

    variants = {}
    backend = None
    for res in results:
        if not quiet:
            print(f"  evaluating {res.variant} ...", flush=True)
        m = _runtime_model(res.path, num_threads)
        t_test = m.predict(tx, batch_size=1024, preprocess=False)
        backend = m.backend
        t_eval = m.predict(ex, batch_size=1024, preprocess=False) if len(ex) else k_eval[:0]
        acc = accuracy(t_test.argmax(-1), ty)
        c_acc = client_accuracies(t_eval.argmax(-1), ey, counts, accuracy)
        lat1 = m.latency(tx, batch_size=1, runs=latency_runs)
        latb = m.latency(tx, batch_size=latency_batch, runs=max(20, latency_runs // 4))
        variants[res.variant] = {
            "quantization": res.quantization,
            "file": _rel(res.path, art.run_dir),
            "sha256": res.sidecar["sha256"],
            "size_bytes": res.size_bytes,
            "format": "onnx" if Path(res.path).suffix == ".onnx" else "tflite",
            "backend": m.backend,
            "io": {"input": m.input_dtype.name, "output": m.output_dtype.name},
            "parity": parity(t_test, k_test, positions),
            "accuracy": {
                "test": acc,
                "test_drop": keras_acc - acc,
                "clients": client_summary(ids, counts, c_acc, k_client_acc),
            },
            "latency": {"batch_1": lat1, f"batch_{latency_batch}": latb},
        }

    previous = _previous_variants(art, exclude=set(variants))
    variants = {**previous, **variants}
    order = ["float32", "dynamic", "float16", "int8", "int8_float_io", "onnx"]
    backends = list(dict.fromkeys(v["backend"] for v in variants.values() if v.get("backend")))
    backend = ", ".join(backends) or backend
    variants = dict(sorted(variants.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
    f32 = variants.get("float32", {}).get("size_bytes")
    for v in variants.values():
        v["size_vs_float32"] = (v["size_bytes"] / f32) if f32 else None

    return {
        "format": REPORT_FORMAT,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "source": {
            "run_dir": str(Path(art.run_dir).resolve()),
            "experiment": art.cfg.name,
            "config_hash": art.config_hash,
            "model": _rel(art.model_path, art.run_dir),
            "model_sha256": art.model_sha256,
        },
        "data": {
            "test_examples": int(len(ty)),
            "clients": len(ids),
            "clients_evaluated": sum(1 for n in counts if n),
            "client_eval_examples": int(sum(counts)),
            "num_classes": data.num_classes,
            **(
                {
                    "kind": "sequence",
                    "positions_compared": int(positions.sum()),
                    "accuracy": "masked: targets in "
                    + str(list(data.preprocessing.get("masked_ids", [])))
                    + " do not count",
                    "parity": "over positions whose target is not padding",
                }
                if tokens
                else {}
            ),
        },
        "interpreter": {
            "backend": backend,
            "num_threads": num_threads,
            "latency_batch": latency_batch,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        },
        "keras": {
            "size_bytes": os.path.getsize(art.model_path),
            "test_accuracy": keras_acc,
            "clients": client_summary(ids, counts, k_client_acc),
        },
        "variants": variants,
    }


def _runtime_model(path: Path, num_threads: int):
    """The converted model in its runtime: ONNX Runtime for ``.onnx``, the TFLite interpreter otherwise."""
    if Path(path).suffix == ".onnx":
        from tff_lab.export.onnx_model import ONNXModel

        return ONNXModel(path, num_threads=num_threads)
    return TFLiteModel(path, num_threads=num_threads)


def _rel(path: Path, run_dir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(Path(path).resolve())


def _previous_variants(art, exclude: set) -> dict:
    path = Path(art.run_dir) / "export" / "report.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if old.get("format") != REPORT_FORMAT or old.get("source", {}).get("model_sha256") != art.model_sha256:
        return {}
    from tff_lab.export.convert import file_sha256

    kept = {}
    for name, v in (old.get("variants") or {}).items():
        if name in exclude:
            continue
        f = Path(v.get("file", ""))
        f = f if f.is_absolute() else Path(art.run_dir) / f
        if f.is_file() and file_sha256(f) == v.get("sha256"):
            kept[name] = v
    return kept


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _pp(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:+.2f} pp"


def worst_drop_text(c: dict) -> str:
    worst = c.get("worst_drop")
    if not worst:
        return "-"
    if worst["drop"] <= 0:
        return f"{_pp(max(worst['drop'], 0.0))} (no client drops)"
    return f"{_pp(worst['drop'])} ({worst['client']})"


def to_markdown(rep: dict) -> str:
    src, d, it = rep["source"], rep["data"], rep["interpreter"]
    b = it["latency_batch"]
    lines = [
        f"# Export report: {src['experiment']}",
        "",
        f"Run `{src['run_dir']}` (config hash `{src['config_hash']}`), model `{src['model']}` "
        f"(sha256 `{src['model_sha256'][:12]}`).",
        f"Keras: test accuracy {_pct(rep['keras']['test_accuracy'])} on {d['test_examples']} examples; "
        f"{d['clients_evaluated']} clients evaluated on {d['client_eval_examples']} examples.",
        f"Interpreter: {it['backend']}, {it['num_threads']} thread(s), on {it['machine']}.",
        "",
        "Parity is against the Keras model on the global test set. Drops are Keras accuracy minus the "
        'converted model\'s (percentage points); "worst client" is the client with the largest drop.',
        "",
        f"| variant | size | vs float32 | max abs diff | max rel diff | top-1 agreement | test acc | test drop | "
        f"mean client drop | worst client drop | lowest client acc | p50 b=1 | p95 b=1 | p50 b={b} | "
        f"throughput b={b} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in rep["variants"].items():
        p, a, c = v["parity"], v["accuracy"], v["accuracy"]["clients"]
        l1, lb = v["latency"]["batch_1"], v["latency"].get(f"batch_{b}", {})
        low = c.get("lowest_accuracy")
        ratio = v.get("size_vs_float32")
        lines.append(
            f"| {name} | {v['size_bytes'] / 1024:.1f} KiB | {'-' if ratio is None else f'{ratio:.3f}'} | "
            f"{p['max_abs_diff']:.2e} | {p['max_rel_diff']:.2e} | {_pct(p['top1_agreement'])} | {_pct(a['test'])} | "
            f"{_pp(a['test_drop'])} | {_pp(c.get('mean_drop'))} | "
            f"{worst_drop_text(c)} | "
            f"{'-' if not low else _pct(low['accuracy']) + ' (' + low['client'] + ')'} | "
            f"{1e3 * l1['p50_ms']:.1f} µs | {1e3 * l1['p95_ms']:.1f} µs | "
            f"{lb.get('p50_ms', float('nan')):.3f} ms | {lb.get('throughput_per_s', float('nan')):,.0f}/s |"
        )
    for name, why in (rep.get("skipped") or {}).items():
        lines.append(f"\nNot exported: {name}: {why}")
    if rep.get("data", {}).get("kind") == "sequence":
        d = rep["data"]
        lines.append(
            f"\nText model: parity {d['parity']} ({d['positions_compared']} positions); accuracy {d['accuracy']}."
        )
    lines.append("")
    return "\n".join(lines)


def write_report(export_dir: Path, rep: dict) -> tuple[Path, Path]:
    from tff_lab.fileio import atomic_write

    export_dir = Path(export_dir)
    jp, mp = export_dir / "report.json", export_dir / "report.md"
    atomic_write(jp, json.dumps(rep, indent=1) + "\n")
    atomic_write(mp, to_markdown(rep))
    return jp, mp
