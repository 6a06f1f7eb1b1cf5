#!/usr/bin/env python3
"""Rows/s of `tff-lab predict` as 1 process vs N shard processes (+ `predict-merge`), Keras and TFLite.

    python bench/predict_throughput.py                      # digits MLP 64-64, 400,000 rows, N = 2 and 4
    python bench/predict_throughput.py --rows 1000000 --shards 2,4,8 --max-latency-ms 20

Builds a small run (the default experiment's data and MLP, trained centrally for a few epochs) and its
float32 TFLite export, and an input of raw digits rows (the test set tiled). For each model:
1. `tff-lab predict --max-latency-ms MS` (one process) chooses the batch size by measurement; every
   later run uses that `--batch-size`;
2. 1 process: `tff-lab predict --batch-size B` on every row;
3. N processes started together, `--num-shards N` with JOB_COMPLETION_INDEX = 0..N-1 (what the
   predict overlay's pods run), then `tff-lab predict-merge`; the merged predictions must equal the
   one-process predictions bit for bit.
Reported: end-to-end wall time (process start, TensorFlow import, model load, input digest, predict,
writes; for N, the slowest shard then the merge) and the predict phase alone (rows / the slowest
shard's predict seconds). Each command is its own process, as on a cluster. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JOB_COMPLETION_INDEX", "TFF_LAB_NUM_SHARDS")}
    return {**env, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "tff_lab.cli", *map(str, args)]


def make_run(run_dir: Path, epochs: int) -> Path:
    """config.yaml + model/model.keras of the default experiment's MLP, trained centrally."""
    if (run_dir / "model" / "model.keras").is_file():
        return run_dir
    import tensorflow as tf

    from tff_lab.config import dump_yaml, load_config
    from tff_lab.data import load_federated_data
    from tff_lab.models import build_model

    cfg = load_config(None)
    data = load_federated_data(cfg)
    tf.keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    x, y = data.union_train()
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    (run_dir / "model").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    model.save(run_dir / "model" / "model.keras")
    return run_dir


def make_input(run_dir: Path, rows: int, path: Path) -> Path:
    from tff_lab.export.convert import load_run

    art = load_run(run_dir)
    tx, _ = art.data.test
    pre = art.data.preprocessing
    raw = (tx / np.asarray(pre["scale"], np.float32) + np.asarray(pre["offset"], np.float32)).astype(np.float32)
    reps = -(-rows // len(raw))
    np.save(path, np.concatenate([raw] * reps)[:rows])
    return path


def choose_batch(model: Path, inp: Path, out: Path, max_latency_ms: float) -> tuple[int, str]:
    proc = subprocess.run(
        _cli("predict", model, inp, "--out", out, "--max-latency-ms", max_latency_ms),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    m = re.search(r"reproduce with --batch-size (\d+)", proc.stderr)
    table = [
        ln for ln in proc.stderr.splitlines() if "batch-size search" in ln or re.match(r"tff-lab predict:\s+\d", ln)
    ]
    return int(m.group(1)), "\n".join(table)


def run_shards(model: Path, inp: Path, parts: Path, shards: int, batch: int) -> dict:
    """N shard processes started together, then the merge; times end to end."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            _cli("predict", model, inp, "--out", parts, "--num-shards", shards, "--batch-size", batch, "--quiet"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(JOB_COMPLETION_INDEX=str(i)),
        )
        for i in range(shards)
    ]
    lines = []
    for p in procs:
        out, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(err[-2000:])
        lines.append(json.loads(out.strip().splitlines()[-1]))
    t_shards = time.perf_counter() - t0
    merged = parts.parent / f"merged-{shards}.npz"
    proc = subprocess.run(
        _cli("predict-merge", parts, "--num-shards", shards, "--out", merged, "--quiet"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "shards_s": t_shards,
        "merge_s": wall - t_shards,
        "predict_s": max(r["seconds"] for r in lines),
        "merged": merged,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--shards", default="2,4", help="comma-separated process counts besides 1")
    ap.add_argument("--max-latency-ms", type=float, default=20.0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--work-dir", default=None, help="keep the run, input and outputs here (default: a temp dir)")
    args = ap.parse_args(argv)
    shard_counts = [int(s) for s in args.shards.split(",") if s.strip()]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="predict_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    run = make_run(work / "run", args.epochs)
    from tff_lab.export import export_run

    tflite = run / "export" / "model_float32.tflite"
    if not tflite.is_file():
        export_run(run, "float32", latency_runs=10, quiet=True)
    inp = work / "input.npy"
    if not inp.is_file() or len(np.load(inp, mmap_mode="r")) != args.rows:
        make_input(run, args.rows, inp)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}; "
        f"input {args.rows:,} rows x 64 float32 ({inp.stat().st_size / 2**20:.0f} MiB); batch size chosen by "
        f"--max-latency-ms {args.max_latency_ms:g}",
        flush=True,
    )
    table = [
        "| model | processes | batch | end-to-end wall (s) | end-to-end rows/s | vs 1 | slowest shard's predict (s) "
        "| predict-phase rows/s | vs 1 | start-up + I/O (s) | merge (s) | merged == 1 process |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, model in (("keras", run / "model" / "model.keras"), ("tflite float32", tflite)):
        batch, search = choose_batch(model, inp, work / f"search-{name.split()[0]}.npz", args.max_latency_ms)
        print(f"\n{name}: chosen batch size {batch}\n{search}", flush=True)
        one = run_shards(model, inp, work / f"parts-{name.split()[0]}-1", 1, batch)  # shard 0 of 1: all rows
        with np.load(one["merged"]) as f:
            ref = f["probs"]
        base, base_predict = args.rows / one["wall_s"], args.rows / one["predict_s"]
        for n in [1, *shard_counts]:
            res = one if n == 1 else run_shards(model, inp, work / f"parts-{name.split()[0]}-{n}", n, batch)
            with np.load(res["merged"]) as f:
                same = bool(np.array_equal(f["probs"], ref))
            rps = args.rows / res["wall_s"]
            table.append(
                f"| {name} | {n} | {batch} | {res['wall_s']:.2f} | {rps:,.0f} | {rps / base:.2f}x | "
                f"{res['predict_s']:.2f} | {args.rows / res['predict_s']:,.0f} | "
                f"{args.rows / res['predict_s'] / base_predict:.2f}x | {res['shards_s'] - res['predict_s']:.2f} | "
                f"{res['merge_s']:.2f} | "
                f"{'yes' if same else 'NO'} |"
            )
            print(table[-1], flush=True)
    print("\n" + "\n".join(table))
    print(f"\n(work dir: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
