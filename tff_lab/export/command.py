"""``tff-lab export`` (Keras -> .tflite + parity report) and ``tff-lab predict`` (batch prediction)."""

from __future__ import annotations

import sys
from pathlib import Path

from tff_lab.inputs import MAX_TEXT_FILE_BYTES, int_in, output_file_arg, readable_file_arg

MAX_REPRESENTATIVE_EXAMPLES = 100_000  # int8 calibration: TFLite's converter needs hundreds, not millions
MAX_LATENCY_RUNS = 100_000
MAX_BATCH_SIZE = 1 << 20
MAX_THREADS = 1024


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="convert a run's model to .tflite (float32, dynamic, float16, int8) with a parity report",
        description="Convert RUN_DIR/model/model.keras to TFLite. Each model_<variant>.tflite gets a sidecar "
                    "model_<variant>.json (labels, input shape/dtype, preprocessing, quantization parameters, source "
                    "run and config hash). Every export writes RUN_DIR/export/report.json and report.md: size, "
                    "parity with Keras, test accuracy overall and per client, interpreter latency.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's directory (from `tff-lab run`)")
    p.add_argument("--quantize", default="all", metavar="{float32,dynamic,float16,int8,all}",
                   help="quantization(s), comma-separated or 'all' (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="output .tflite file (one quantization) or directory (default: RUN_DIR/export/)")
    p.add_argument("--int8-io", default="int8", metavar="{int8,float}",
                   help="int8 model's input/output type: int8 (fully integer, the sidecar holds scale and zero "
                        "point) or float (quantize/dequantize inside the model) (default: %(default)s)")
    p.add_argument("--representative-examples", type=int_in(1, MAX_REPRESENTATIVE_EXAMPLES), default=500, metavar="N",
                   help="int8 calibration examples, drawn round-robin across clients (default: %(default)s)")
    p.add_argument("--latency-runs", type=int_in(1, MAX_LATENCY_RUNS), default=200, metavar="N",
                   help="interpreter calls timed at batch 1 for the report (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_export)

    q = sub.add_parser(
        "predict", help="batch prediction with a .tflite, .keras or SavedModel model",
        description="Predict every example of INPUT (.npy, .npz, .csv; raw features, preprocessed as the run's data "
                    "was) with MODEL and write class probabilities and labels to PREDICTIONS (.npz or .csv).")
    q.add_argument("model", metavar="MODEL", help=".tflite file (its sidecar .json beside it), .keras file or "
                                                  "SavedModel directory")
    q.add_argument("input", metavar="INPUT", type=readable_file_arg(what="input file"), help="input examples: .npy, .npz (array 'x') or .csv (one row each)")
    q.add_argument("--out", required=True, metavar="PREDICTIONS", type=output_file_arg, help="output file: .npz or .csv")
    q.add_argument("--batch-size", type=int_in(1, MAX_BATCH_SIZE), default=256, metavar="N", help="examples per call (default: %(default)s)")
    q.add_argument("--key", default=None, help="array name inside an .npz input (default: 'x' or its only array)")
    q.add_argument("--sidecar", default=None, metavar="JSON", type=readable_file_arg(MAX_TEXT_FILE_BYTES, "sidecar JSON"),
                   help="sidecar with preprocessing and labels (default: MODEL's own, or its run's)")
    q.add_argument("--no-preprocess", action="store_true",
                   help="INPUT already holds model inputs: skip the sidecar's (raw - offset) * scale")
    q.add_argument("--threads", type=int_in(1, MAX_THREADS), default=None, metavar="N", help="TFLite interpreter threads")
    q.add_argument("--quiet", action="store_true", help="no progress bar or throughput line")
    q.set_defaults(func=_predict)


def _export(args) -> int:
    from tff_lab.errors import ConfigError
    from tff_lab.export.convert import export_run
    from tff_lab.export.report import worst_drop_text

    if args.latency_runs < 1:
        raise ConfigError("--latency-runs", f"expected an integer >= 1, got {args.latency_runs}")
    res = export_run(args.run_dir, args.quantize, out=args.out, int8_io=args.int8_io,
                     representative_examples_count=args.representative_examples, latency_runs=args.latency_runs,
                     quiet=args.quiet)
    if not args.quiet:
        rep = res["report"]
        print(f"{'variant':<14} {'size':>10} {'top-1 agree':>12} {'max abs diff':>13} {'test acc':>9} "
              f"{'worst client drop':>26} {'p50 b=1':>10}  file")
        for r in res["exports"]:
            v = rep["variants"][r.variant]
            w = worst_drop_text(v["accuracy"]["clients"])
            print(f"{r.variant:<14} {r.size_bytes / 1024:>7.1f} KiB {100 * v['parity']['top1_agreement']:>11.2f}% "
                  f"{v['parity']['max_abs_diff']:>13.2e} {100 * v['accuracy']['test']:>8.2f}% {w:>26} "
                  f"{1e3 * v['latency']['batch_1']['p50_ms']:>7.1f} µs  {r.path}")
        for name, why in (res.get("skipped") or {}).items():
            print(f"not exported: {name}: {why}")
        print(f"report: {Path(args.run_dir) / 'export' / 'report.md'} (and report.json)")
    return 0


def _predict(args) -> int:
    from tff_lab.export.predict import predict_file

    res = predict_file(args.model, args.input, args.out, batch_size=args.batch_size,
                       preprocess=not args.no_preprocess, key=args.key, sidecar=args.sidecar,
                       num_threads=args.threads, quiet=args.quiet)
    if not args.quiet:
        print(f"predicted {res['examples']} examples in {res['seconds']:.3f} s: {res['examples_per_s']:,.0f} "
              f"examples/s (batch {res['batch_size']}, {res['backend']}) -> {res['out']}", file=sys.stderr)
    return 0
