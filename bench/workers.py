"""Round time over TFF workers: W = 0 (one local worker, TFF's local context), 1 and 2 worker processes.

For each task and W, ``tff_lab.run_experiment`` runs the same experiment (same clients, batches,
seed) with ``training.workers=W``; a hook times each round's training (from before the round to
after it, evaluation excluded) and the CPU seconds the round cost in this process and in the
worker processes. Reported per configuration: the median wall ms/round after the warm-up rounds,
the mean CPU ms/round of all processes (the mean: the CPU clock ticks in 10 ms), and the final
weights' max difference from W = 0.

From two or more cohort sizes on synthetic (10 and 50 clients/round; add synthetic-100) it fits, per W,
``ms/round = a + b * clients`` (a: per-round cost, b: per-client cost) and prints what a second
worker saves or costs: the model in BENCHMARKS.md.

    .venv/bin/python bench/workers.py                       # digits + synthetic(10, 50), W = 0 1 2
    .venv/bin/python bench/workers.py --rounds 20 --workers 0 2 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common
import numpy as np

from tff_lab.training.hooks import RoundHook

WARMUP = _common.WARMUP_ROUNDS
CASES = {  # label -> (task, extra overrides, clients per round)
    "digits": ("digits", (), 10),
    "synthetic-10": ("synthetic", ("training.clients_per_round=10",), 10),
    "synthetic-50": ("synthetic", (), 50),
    "synthetic-100": ("synthetic", ("training.clients_per_round=100",), 100),  # not run by default
}
DEFAULT_CASES = ["digits", "synthetic-10", "synthetic-50"]


class RoundTimer(RoundHook):
    name = "bench_round_timer"

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.worker_processes = 0  # the most worker_binary processes seen in a round
        self._t0 = self._c0 = None

    def _cpu(self) -> float:
        import psutil

        from tff_lab.federated import runtime

        t = os.times()
        total = t.user + t.system
        pids = runtime.worker_pids()
        self.worker_processes = max(self.worker_processes, len(pids))
        for pid in pids:
            try:
                c = psutil.Process(pid).cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        return total

    def before_round(self, ctx, round_num):
        self._t0, self._c0 = time.perf_counter(), self._cpu()
        return None

    def after_round(self, ctx, info, row):
        self.wall.append(time.perf_counter() - self._t0)
        self.cpu.append(self._cpu() - self._c0)


def measure(case: str, workers: int, rounds: int) -> dict:
    from tff_lab import run_experiment

    task, extra, clients = CASES[case]
    cfg = _common.task_config(
        task,
        rounds,
        [
            *extra,
            f"training.workers={workers}",
            f"training.eval_every_rounds={rounds}",
            f"training.rounds_per_checkpoint={rounds}",
        ],
    )
    timer = RoundTimer()
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        t0 = time.perf_counter()
        summary = run_experiment(cfg, Path(tmp) / "run", hooks=[timer])
        total = time.perf_counter() - t0
        import tensorflow as tf

        weights = tf.keras.models.load_model(Path(tmp) / "run/model/model.keras").get_weights()
    steady_wall = timer.wall[WARMUP:]
    steady_cpu = timer.cpu[WARMUP:]
    return {
        "case": case,
        "workers": workers,
        "clients": clients,
        "rounds": rounds,
        "ms_round": 1000 * statistics.median(steady_wall),
        "ms_round_mean": 1000 * statistics.mean(steady_wall),
        "cpu_ms_round": 1000 * statistics.mean(steady_cpu),
        "first_round_ms": 1000 * timer.wall[0],
        "run_s": total,
        "worker_processes": timer.worker_processes,
        "accuracy": summary.get("final_test_accuracy"),
        "weights": weights,
    }


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """ms/round = a + b * clients through two (or more) cohort sizes (least squares)."""
    x = np.array([p[0] for p in points], float)
    y = np.array([p[1] for p in points], float)
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--reps", type=int, default=1, help="repetitions (W rotated each time); the median is kept")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    results: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.reps):
        for case in args.cases:
            order = args.workers[rep % len(args.workers) :] + args.workers[: rep % len(args.workers)]
            for w in order:
                r = measure(case, w, args.rounds)
                results.setdefault((case, w), []).append(r)
                print(
                    f"  {case:13s} W={w}: {r['ms_round']:7.1f} ms/round  cpu {r['cpu_ms_round']:7.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )

    def med(case, w, key):
        return statistics.median(r[key] for r in results[(case, w)])

    load = os.getloadavg()
    print(
        f"\nTFF workers, {args.rounds} rounds (median after {WARMUP} warm-up rounds), {args.reps} rep(s); "
        f"{os.cpu_count()} CPU cores, load {load[0]:.1f}"
    )
    print(
        f"{'case':14s} {'clients':>7s} {'W':>2s} {'ms/round':>9s} {'vs W=0':>7s} {'CPU ms/round':>12s} "
        f"{'max |w - w(W=0)|':>17s}"
    )
    rows = []
    for case in args.cases:
        base_w = results[(case, args.workers[0])][0]["weights"]
        base = med(case, args.workers[0], "ms_round")
        for w in args.workers:
            ms, cpu = med(case, w, "ms_round"), med(case, w, "cpu_ms_round")
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(results[(case, w)][0]["weights"], base_w))
            clients = results[(case, w)][0]["clients"]
            print(f"{case:14s} {clients:7d} {w:2d} {ms:9.1f} {ms / base:6.2f}x {cpu:12.1f} {diff:17.1e}")
            rows.append(
                {
                    "case": case,
                    "clients": clients,
                    "workers": w,
                    "ms_round": ms,
                    "cpu_ms_round": cpu,
                    "max_weight_diff_vs_first": diff,
                }
            )

    model = {}
    syn = [c for c in CASES if c.startswith("synthetic-") and c in args.cases]
    if len(syn) >= 2:
        sizes = ", ".join(str(CASES[c][2]) for c in syn)
        print(f"\nPer-round and per-client cost, ms/round = a + b * clients (synthetic, {sizes} clients/round):")
        print(f"{'W':>2s} {'a wall':>8s} {'b wall':>8s} {'a CPU':>8s} {'b CPU':>8s}")
        for w in args.workers:
            a, b = fit([(CASES[c][2], med(c, w, "ms_round")) for c in syn])
            ac, bc = fit([(CASES[c][2], med(c, w, "cpu_ms_round")) for c in syn])
            model[w] = {"a_ms": a, "b_ms": b, "a_cpu_ms": ac, "b_cpu_ms": bc}
            print(f"{w:2d} {a:8.1f} {b:8.2f} {ac:8.1f} {bc:8.2f}")
        if 0 in model and 2 in model:
            extra_a = model[2]["a_ms"] - model[0]["a_ms"]
            saved_b = model[0]["b_ms"] - model[2]["b_ms"]
            if saved_b > 0:
                print(
                    f"\nW=2 pays off (wall) above ~{max(0.0, extra_a) / saved_b:.0f} clients/round on this machine "
                    f"(extra per-round cost {extra_a:.1f} ms, per-client saving {saved_b:.2f} ms)."
                )
            else:
                print(
                    f"\nW=2 does not pay off on this machine: per-client cost {model[2]['b_ms']:.2f} ms vs "
                    f"{model[0]['b_ms']:.2f} ms at W=0 (no idle core to run the second worker on)."
                )
    if args.json:
        from tff_lab.fileio import atomic_write_text

        atomic_write_text(
            args.json,
            json.dumps(
                {
                    "rows": rows,
                    "model": model,
                    "rounds": args.rounds,
                    "reps": args.reps,
                    "cpus": os.cpu_count(),
                    "load": load,
                },
                indent=1,
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
