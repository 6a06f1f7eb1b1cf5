#!/usr/bin/env python3
"""Size, parity and latency of the default experiment's model in every TFLite quantization and in ONNX.

    python bench/edge_latency.py                       # trains the default experiment (~40 s), then exports
    python bench/edge_latency.py --run-dir runs/default  # an existing finished run

Exports float32, dynamic, float16, int8 (int8 I/O) and int8 with float I/O, and model.onnx
(``--format onnx``, float32), writes the parity report (RUN_DIR/export/report.json, report.md), then
times each model twice: inside tff_lab (TensorFlow 2.14's TFLite interpreter, or ONNX Runtime for
the .onnx: the report's numbers) and in the edge runner's TF-free venv (``tflite/runner.py --bench``:
LiteRT for .tflite, ONNX Runtime for .onnx; the numbers a device with the same CPU would see). All
run one thread. Prints two markdown tables for BENCHMARKS.md: every variant, and ONNX vs TFLite
float32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _finished(run_dir: Path) -> bool:
    return (run_dir / "model" / "model.keras").is_file() and (run_dir / "summary.json").is_file()


def _edge_bench(python: Path, model: Path, raw: Path, runs: int) -> dict:
    proc = subprocess.run(
        [
            str(python),
            str(REPO / "tflite" / "runner.py"),
            str(model),
            str(raw),
            "--bench",
            "--json",
            "--threads",
            "1",
            "--runs",
            str(runs),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"edge runner failed on {model.name}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, default=None, help="a finished run (default: train the default experiment)")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "runs" / "bench-edge",
        help="where the default experiment is trained when --run-dir is not given (default: %(default)s)",
    )
    p.add_argument("--runs", type=int, default=1000, help="timed calls at batch 1 (default: %(default)s)")
    p.add_argument("--no-edge", action="store_true", help="skip the LiteRT timings (no venv build)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    from tff_lab import run_experiment
    from tff_lab.export import export_run

    run_dir = args.run_dir
    if run_dir is None:
        run_dir = args.out
        if not _finished(run_dir):
            print(f"training the default experiment into {run_dir} ...", file=sys.stderr)
            run_experiment(None, run_dir, overwrite=True, quiet=True)
    export_run(run_dir, "all", latency_runs=args.runs)
    export_run(run_dir, "int8", int8_io="float", latency_runs=args.runs)
    rep = export_run(run_dir, "float32", format="onnx", latency_runs=args.runs)["report"]

    edge = {}
    if not args.no_edge:
        import importlib.util

        spec = importlib.util.spec_from_file_location("make_env", REPO / "tflite" / "make_env.py")
        make_env = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(make_env)
        python = make_env.build()
        from tff_lab.config import load_config
        from tff_lab.data import load_federated_data

        data = load_federated_data(load_config(run_dir / "config.yaml"))
        pre = data.preprocessing
        raw = run_dir / "export" / "bench_raw_test.npy"
        np.save(raw, data.test[0] / np.float32(pre.get("scale", 1.0)) + np.float32(pre.get("offset", 0.0)))
        for name, v in rep["variants"].items():
            edge[name] = _edge_bench(python, run_dir / v["file"], raw, args.runs)
        raw.unlink()

    b = rep["interpreter"]["latency_batch"]
    s = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    print(
        f"\nDefault experiment ({rep['source']['experiment']}, config {rep['source']['config_hash']}"
        f"{', ' + str(s['rounds']) + ' rounds' if 'rounds' in s else ''}): Keras test accuracy "
        f"{100 * rep['keras']['test_accuracy']:.2f}% on {rep['data']['test_examples']} examples, "
        f"{rep['data']['clients_evaluated']} clients evaluated; Keras file "
        f"{rep['keras']['size_bytes'] / 1024:.1f} KiB."
    )
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; one interpreter thread. "
        f"In tff_lab: {rep['interpreter']['backend']}; edge venv: "
        f"{', '.join(dict.fromkeys(e['backend'] for e in edge.values())) if edge else 'not run'}.\n"
    )
    head = [
        "variant",
        "size",
        "vs float32",
        "max abs diff",
        "top-1 agree",
        "test acc",
        "mean client drop",
        "worst client drop",
        "tff_lab p50 / p95 b=1",
        f"tff_lab b={b} throughput",
    ]
    if edge:
        head += ["edge p50 / p95 b=1", f"edge p50 b={b}", f"edge b={b} throughput"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    from tff_lab.export.report import worst_drop_text

    for name, v in rep["variants"].items():
        l1, lb = v["latency"]["batch_1"], v["latency"][f"batch_{b}"]
        c = v["accuracy"]["clients"]
        row = [
            name,
            f"{v['size_bytes'] / 1024:.1f} KiB",
            f"{v['size_vs_float32']:.3f}",
            f"{v['parity']['max_abs_diff']:.1e}",
            f"{100 * v['parity']['top1_agreement']:.2f}%",
            f"{100 * v['accuracy']['test']:.2f}%",
            f"{100 * c['mean_drop']:+.2f} pp",
            worst_drop_text(c),
            f"{1e3 * l1['p50_ms']:.1f} / {1e3 * l1['p95_ms']:.1f} µs",
            f"{lb['throughput_per_s'] / 1e6:.2f} M/s",
        ]
        if edge:
            e1, eb = edge[name]["bench"]
            row += [
                f"{1e3 * e1['p50_ms']:.1f} / {1e3 * e1['p95_ms']:.1f} µs",
                f"{1e3 * eb['p50_ms']:.1f} µs",
                f"{eb['throughput_per_s'] / 1e6:.2f} M/s",
            ]
        print("| " + " | ".join(row) + " |")
    if edge and "onnx" in edge and "float32" in edge:
        print("\nONNX vs TFLite, float32, in the TF-free venv (one thread):\n")
        print(
            f"| format | runtime | size | max abs diff vs Keras | top-1 agree | p50 / p95 b=1 | p50 b={b} | "
            f"b={b} throughput |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, fmt in (("float32", "TFLite"), ("onnx", "ONNX")):
            v, (e1, eb) = rep["variants"][name], edge[name]["bench"]
            print(
                f"| {fmt} | {edge[name]['backend']} | {v['size_bytes'] / 1024:.1f} KiB | "
                f"{v['parity']['max_abs_diff']:.1e} | {100 * v['parity']['top1_agreement']:.2f}% | "
                f"{1e3 * e1['p50_ms']:.1f} / {1e3 * e1['p95_ms']:.1f} µs | {1e3 * eb['p50_ms']:.1f} µs | "
                f"{eb['throughput_per_s'] / 1e6:.2f} M/s |"
            )
    print(f"\nreport: {run_dir / 'export' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
