"""Soak: many rounds of the digits task; does resident memory grow?

One tff_lab run (``tff_lab.run_experiment``, default settings: evaluation and a checkpoint every
10 rounds) in a fresh process. Every ``--every`` rounds a hook records the RSS of the Python
process and of TFF's C++ worker process. Reported: the least-squares slope in MB per 100 rounds
over the second half of the run (the first half holds the warm-up: tracing, allocator pools),
for each process and their sum. Goal: < 1 MB per 100 rounds.

The proposed fixes (``--variants fixed``, prototyped in bench/_common.py; see BENCHMARKS.md):
evaluate on a tf.data pipeline built once instead of ``model.evaluate(x, y)`` (Keras leaks per
call), MALLOC_ARENA_MAX=2 for TFF's C++ worker (glibc arena growth), and one TensorBoard write
per round instead of one per scalar.

    .venv/bin/python bench/soak.py                  # 1,000 rounds as is, then with the fixes (~2 x 3 min)
    .venv/bin/python bench/soak.py --rounds 300 --every 25 --variants as-is
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common

SCRIPT = _common.BENCH / "soak.py"
GOAL_MB_PER_100 = 1.0


def _soak_worker(spec: dict) -> dict:
    if spec.get("fixed"):
        _common.install_proposed_fixes()
    return _common.measure_tff_lab(spec)


WORKERS = {"soak": _soak_worker}


def run_soak(
    rounds: int, every: int, task: str = "digits", overrides=(), *, fixed: bool = False, timeout: float = 3600
) -> dict:
    """One soak run in a fresh process; ``fixed`` applies the proposed fixes (_common.install_proposed_fixes)."""
    res = _common.run_isolated(
        SCRIPT,
        {
            "kind": "soak",
            "task": task,
            "rounds": rounds,
            "memory_every": every,
            "overrides": list(overrides),
            "fixed": fixed,
        },
        timeout=timeout,
    )
    return dict(summarize(res, rounds, every), variant="fixed" if fixed else "as is")


def summarize(res: dict, rounds: int, every: int) -> dict:
    """Slopes (MB per 100 rounds) over the second half of a measured run's memory samples."""
    samples = [m for m in res["memory"] if m["round"] > 0]
    second_half = [m for m in samples if m["round"] >= rounds / 2]
    slopes = {
        k: _common.slope_per_100([m["round"] for m in second_half], [m[k] for m in second_half])
        for k in ("total", "main", "worker")
    }
    return {
        "task": res["task"],
        "rounds": rounds,
        "every": every,
        "samples": res["memory"],
        "slope_mb_per_100_rounds": slopes,
        "median_s": res["median_s"],
        "accuracy": res["accuracy"],
        "peak_rss_mb": res.get("peak_rss_mb"),
        "load": res["load"],
        "run_seconds": res["run_seconds"],
        "passes": bool(slopes["total"] < GOAL_MB_PER_100),
    }


def plot(results: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results):
        s = [m for m in result["samples"] if m["round"] > 0]
        for key, label in (("total", "total"), ("main", "Python process"), ("worker", "TFF C++ worker")):
            ax.plot([m["round"] for m in s], [m[key] - s[0][key] for m in s], "o-", ms=3, label=label)
        ax.axvline(result["rounds"] / 2, color="gray", ls=":", lw=1)
        sl = result["slope_mb_per_100_rounds"]
        ax.set_title(f"{result['variant']}: second-half slope {sl['total']:+.2f} MB / 100 rounds", fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel(f"RSS change since round {s[0]['round']} (MB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Soak: {results[0]['rounds']} rounds of {results[0]['task']}")
    fig.tight_layout()
    return _common.save_figure(fig, path)


def report(result: dict) -> str:
    rows = [[m["round"], m["main"], m["worker"], m["total"]] for m in result["samples"]]
    sl = result["slope_mb_per_100_rounds"]
    return "\n".join(
        [
            f"### {result['variant']}",
            "",
            _common.format_table(["round", "Python RSS MB", "TFF worker RSS MB", "total MB"], rows),
            "",
            f"- slope over rounds >= {result['rounds'] // 2} (MB per 100 rounds): total {sl['total']:+.3f}, "
            f"Python {sl['main']:+.3f}, TFF worker {sl['worker']:+.3f}; goal < {GOAL_MB_PER_100}: "
            f"{'met' if result['passes'] else 'NOT met'}",
            f"- {result['median_s']:.4f} s/round (median), final accuracy {result['accuracy']:.4f}, "
            f"run {result['run_seconds']:.0f} s, load {result['load'][0]:.2f}",
        ]
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--every", type=int, default=50, help="sample memory every N rounds")
    p.add_argument("--task", default="digits", choices=sorted(_common.TASKS))
    p.add_argument(
        "--variants",
        default="as-is,fixed",
        help="as-is: tff_lab unchanged; fixed: with the proposed fixes (bench/_common.py)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="tff_lab config override")
    p.add_argument("--out", default=str(_common.RESULTS / "soak.json"))
    p.add_argument("--plot", default=str(_common.RESULTS / "soak.png"))
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - {"as-is", "fixed"}:
        p.error("--variants takes as-is, fixed or both")
    print(f"machine: {_common.machine_info()}", flush=True)
    results = []
    for v in variants:
        results.append(run_soak(args.rounds, args.every, args.task, args.set, fixed=v == "fixed"))
        print(report(results[-1]) + "\n", flush=True)
    if len(results) == 2 and results[0]["accuracy"] == results[1]["accuracy"]:
        print("- the fixes leave the final accuracy bit-identical")
    print(f"plot: {plot(results, Path(args.plot))}")
    _common.save_json(Path(args.out), {"machine": _common.machine_info(), "argv": sys.argv[1:], "results": results})
    print(f"{_common.load_now()}; results in {args.out}")
    return 0


if __name__ == "__main__":
    if not _common.worker_main(WORKERS):
        raise SystemExit(main())
