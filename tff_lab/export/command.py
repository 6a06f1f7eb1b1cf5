"""``tff-lab export`` (Keras -> .tflite + parity report) and ``tff-lab predict`` (batch prediction)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from tff_lab.inputs import MAX_TEXT_FILE_BYTES, float_in, int_in, readable_file_arg

MAX_REPRESENTATIVE_EXAMPLES = 100_000  # int8 calibration: TFLite's converter needs hundreds, not millions
MAX_LATENCY_RUNS = 100_000
MAX_BATCH_SIZE = 1 << 20
MAX_THREADS = 1024


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="convert a run's model to .tflite (float32, dynamic, float16, int8) or .onnx with a parity report",
        description="Convert RUN_DIR/model/model.keras to TFLite (or, with --format onnx, to RUN_DIR/export/"
        "model.onnx with sidecar model.json). Each model_<variant>.tflite gets a sidecar "
        "model_<variant>.json (labels, input shape/dtype, preprocessing, quantization parameters, source "
        "run and config hash). Every export writes RUN_DIR/export/report.json and report.md: size, "
        "parity with Keras, test accuracy overall and per client, interpreter latency.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's directory (from `tff-lab run`)")
    p.add_argument(
        "--format",
        default="tflite",
        metavar="{tflite,onnx}",
        help="tflite: model_<variant>.tflite files; onnx: model.onnx (tf2onnx, float32, run by ONNX "
        "Runtime) with the same sidecar and report (default: %(default)s)",
    )
    p.add_argument(
        "--quantize",
        default="all",
        metavar="{float32,dynamic,float16,int8,all}",
        help="quantization(s), comma-separated or 'all' (default: %(default)s); --format onnx: "
        "float32 only ('all' means float32)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="output .tflite (or .onnx) file (one quantization) or directory (default: RUN_DIR/export/)",
    )
    p.add_argument(
        "--int8-io",
        default="int8",
        metavar="{int8,float}",
        help="int8 model's input/output type: int8 (fully integer, the sidecar holds scale and zero "
        "point) or float (quantize/dequantize inside the model) (default: %(default)s)",
    )
    p.add_argument(
        "--representative-examples",
        type=int_in(1, MAX_REPRESENTATIVE_EXAMPLES),
        default=500,
        metavar="N",
        help="int8 calibration examples, drawn round-robin across clients (default: %(default)s)",
    )
    p.add_argument(
        "--latency-runs",
        type=int_in(1, MAX_LATENCY_RUNS),
        default=200,
        metavar="N",
        help="interpreter calls timed at batch 1 for the report (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_export)

    q = sub.add_parser(
        "predict",
        help="batch prediction with a .tflite, .keras or SavedModel model (one process or one shard)",
        description="Predict every example of INPUT (.npy, .npz, .csv; raw features, preprocessed as the run's data "
        "was) with MODEL and write class probabilities and labels to PREDICTIONS (.npz or .csv). "
        "Batch size: --batch-size N, or chosen by measurement from --max-latency-ms and/or "
        "--max-memory-mb (candidates 1, 2, 4, ... timed on the model and the first rows of INPUT; the "
        "largest within the bounds; the figures and the --batch-size that reproduces the choice are "
        "printed). Sharded: with --num-shards N only shard --shard-index I (default "
        "$JOB_COMPLETION_INDEX, as in a Kubernetes Indexed Job) is predicted, rows [I*n//N, (I+1)*n//N), "
        "into --out DIR as DIR/part-0000I-of-0000N.npz plus a .json manifest (rows, input and model "
        "sha256); `tff-lab predict-merge DIR --num-shards N --out FILE` checks and joins them.",
    )
    q.add_argument(
        "model", metavar="MODEL", help=".tflite file (its sidecar .json beside it), .keras file or SavedModel directory"
    )
    q.add_argument(
        "input",
        metavar="INPUT",
        type=readable_file_arg(what="input file"),
        help="input examples: .npy, .npz (array 'x') or .csv (one row each)",
    )
    q.add_argument(
        "--out",
        required=True,
        metavar="PREDICTIONS",
        help="output file: .npz or .csv; with --num-shards, the directory of the parts",
    )
    q.add_argument(
        "--batch-size",
        type=int_in(1, MAX_BATCH_SIZE),
        default=None,
        metavar="N",
        help="examples per call, no search (default: 256, or measured with a bound below)",
    )
    q.add_argument(
        "--max-latency-ms",
        type=float_in(1e-3, 3.6e6),
        default=None,
        metavar="MS",
        help="choose the largest batch whose median time per call is <= MS (measured)",
    )
    q.add_argument(
        "--max-memory-mb",
        type=float_in(1.0, 1 << 30),
        default=None,
        metavar="MIB",
        help="choose the largest batch for which the process's peak resident memory plus the output "
        "array stays <= MIB MiB (measured)",
    )
    q.add_argument(
        "--num-shards",
        type=int_in(1, 100_000),
        default=None,
        metavar="N",
        help="predict one of N contiguous shards of INPUT (default: $TFF_LAB_NUM_SHARDS; unset: all rows)",
    )
    q.add_argument(
        "--shard-index",
        type=int_in(0, 99_999),
        default=None,
        metavar="I",
        help="the shard to predict, 0..N-1 (default: $JOB_COMPLETION_INDEX)",
    )
    q.add_argument("--key", default=None, help="array name inside an .npz input (default: 'x' or its only array)")
    q.add_argument(
        "--sidecar",
        default=None,
        metavar="JSON",
        type=readable_file_arg(MAX_TEXT_FILE_BYTES, "sidecar JSON"),
        help="sidecar with preprocessing and labels (default: MODEL's own, or its run's)",
    )
    q.add_argument(
        "--no-preprocess",
        action="store_true",
        help="INPUT already holds model inputs: skip the sidecar's (raw - offset) * scale",
    )
    q.add_argument(
        "--threads", type=int_in(1, MAX_THREADS), default=None, metavar="N", help="TFLite interpreter threads"
    )
    q.add_argument("--quiet", action="store_true", help="no progress bar, search table or throughput line")
    q.set_defaults(func=_predict)

    m = sub.add_parser(
        "predict-merge",
        help="check and join the parts of a sharded `tff-lab predict`",
        description="Checks the N parts in PARTS_DIR (part-0000I-of-0000N.npz + .json from `tff-lab predict "
        "--num-shards N`): every part present, all from the same input, model and preprocessing "
        "(sha256 in the manifests), the row ranges tiling the input with no gap or overlap, the counts "
        "adding up, each part matching its manifest's sha256. Then writes the merged predictions to "
        "--out (.npz or .csv) and OUT.manifest.json, atomically. A refusal is one line and exit 2.",
    )
    m.add_argument("parts_dir", metavar="PARTS_DIR", help="the --out directory of the sharded predict runs")
    m.add_argument(
        "--num-shards",
        type=int_in(1, 100_000),
        required=True,
        metavar="N",
        help="how many shards the input was split into",
    )
    m.add_argument("--out", required=True, metavar="PREDICTIONS", help="merged output file: .npz or .csv")
    m.add_argument(
        "--wait",
        type=float_in(0.0, 86_400.0),
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for missing parts, polling every 2 s (default: %(default)s)",
    )
    m.add_argument("--quiet", action="store_true", help="print nothing but errors")
    m.set_defaults(func=_predict_merge)


def _export(args) -> int:
    from tff_lab.errors import ConfigError
    from tff_lab.export.convert import export_run
    from tff_lab.export.report import worst_drop_text

    if args.latency_runs < 1:
        raise ConfigError("--latency-runs", f"expected an integer >= 1, got {args.latency_runs}")
    res = export_run(
        args.run_dir,
        args.quantize,
        out=args.out,
        int8_io=args.int8_io,
        representative_examples_count=args.representative_examples,
        latency_runs=args.latency_runs,
        quiet=args.quiet,
        format=args.format,
    )
    if not args.quiet:
        rep = res["report"]
        print(
            f"{'variant':<14} {'size':>10} {'top-1 agree':>12} {'max abs diff':>13} {'test acc':>9} "
            f"{'worst client drop':>26} {'p50 b=1':>10}  file"
        )
        for r in res["exports"]:
            v = rep["variants"][r.variant]
            w = worst_drop_text(v["accuracy"]["clients"])
            print(
                f"{r.variant:<14} {r.size_bytes / 1024:>7.1f} KiB {100 * v['parity']['top1_agreement']:>11.2f}% "
                f"{v['parity']['max_abs_diff']:>13.2e} {100 * v['accuracy']['test']:>8.2f}% {w:>26} "
                f"{1e3 * v['latency']['batch_1']['p50_ms']:>7.1f} µs  {r.path}"
            )
        for name, why in (res.get("skipped") or {}).items():
            print(f"not exported: {name}: {why}")
        print(f"report: {Path(args.run_dir) / 'export' / 'report.md'} (and report.json)")
    return 0


def _predict(args) -> int:
    import os

    from tff_lab.export.predict import NUM_SHARDS_ENV, predict_file
    from tff_lab.inputs import check_output_dir, output_file
    from tff_lab.run_dir import own_file

    # Before any work: the parts' folder (sharded: each shard writes its own part, atomically) or the
    # predictions file can be written there; a single file is held for the whole run (one writer).
    sharded = args.num_shards is not None or bool(os.environ.get(NUM_SHARDS_ENV))
    if sharded:
        check_output_dir(args.out, "--out")
    else:
        output_file(args.out, "--out")
    with contextlib.nullcontext() if sharded else own_file(args.out, where="--out"):
        res = _predict_file(predict_file, args)
    return _report_prediction(args, res)


def _predict_file(predict_file, args) -> dict:
    return predict_file(
        args.model,
        args.input,
        args.out,
        batch_size=args.batch_size,
        preprocess=not args.no_preprocess,
        key=args.key,
        sidecar=args.sidecar,
        num_threads=args.threads,
        quiet=args.quiet,
        max_latency_ms=args.max_latency_ms,
        max_memory_mb=args.max_memory_mb,
        shard_index=args.shard_index,
        num_shards=args.num_shards,
    )


def _report_prediction(args, res) -> int:
    import json

    shard = (
        f"shard {res['shard_index']} of {res['num_shards']}, rows [{res['start']}, {res['stop']}) of "
        f"{res['total_rows']}, "
        if "shard_index" in res
        else ""
    )
    if not args.quiet:
        print(
            f"predicted {res['examples']} examples in {res['seconds']:.3f} s: {res['examples_per_s']:,.0f} "
            f"examples/s ({shard}batch {res['batch_size']}, {res['backend']}) -> {res['out']}",
            file=sys.stderr,
        )
    if "shard_index" in res:  # one machine-readable line per pod (the logs of an Indexed Job)
        print(
            json.dumps(
                {
                    k: res[k]
                    for k in (
                        "shard_index",
                        "num_shards",
                        "start",
                        "stop",
                        "total_rows",
                        "examples",
                        "seconds",
                        "examples_per_s",
                        "batch_size",
                        "part",
                        "manifest",
                    )
                }
            )
        )
    return 0


def _predict_merge(args) -> int:
    from tff_lab.export.predict import merge_parts
    from tff_lab.run_dir import own_file

    with own_file(args.out, where="--out"):
        res = merge_parts(args.parts_dir, args.num_shards, args.out, wait_s=args.wait)
    if not args.quiet:
        print(
            f"merged {res['num_shards']} parts, {res['rows']} rows (input sha256 {res['input']['sha256'][:12]}, "
            f"model sha256 {res['model']['sha256'][:12]}) -> {res['out']} (and {res['manifest']})",
            file=sys.stderr,
        )
    return 0
