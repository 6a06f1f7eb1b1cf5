"""Round time side by side: tff_lab vs a bare TFF script vs Flower, on identical work.

For each task, every system trains the same Keras model on the same data, partition, sampled
clients, batches, learning rates and seed, each in a fresh process; the systems run interleaved
(rotated each repetition) so that machine load hits them alike. Reported: steady-state seconds
per round (median over rounds after the first two, then median over repetitions), the mean, the
CPU seconds per round of the process and TFF's worker (mean over rounds without evaluation; far
less sensitive than wall time to other load on a shared machine; not measured for Flower's Ray
processes), the final test accuracy, a hash of the final weights (bit-identity), peak RSS of the
process tree, and the load.

Systems:
  tff_lab        tff_lab.run_experiment with its default settings
  bare_tff       bench/bare_tff.py with TFF's defaults (DATASET_REDUCE loop, import-time context)
  bare_tff_iter  the same bare script at tff_lab's settings (DATASET_ITERATOR): harness overhead
  flower         Flower's simulation engine (bench/flower_app.py in .venv-flower, built on first use)
  flower_per_call  the same, the client building its Keras model in every fit (--flower-per-call)
  tff_lab+fixes  tff_lab with the fixes proposed in BENCHMARKS.md patched in (--fixes)
  knob:...       tff_lab with one performance setting changed (--knobs): justifies the defaults

    .venv/bin/python bench/round_time.py                       # all tasks, 50 rounds, 2 repetitions
    .venv/bin/python bench/round_time.py --tasks digits --rounds 100 --reps 3
    .venv/bin/python bench/round_time.py --skip-flower --no-knobs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import _common

SCRIPT = _common.BENCH / "round_time.py"
KNOBS = {  # label -> how tff_lab runs (config overrides, environment)
    "knob:loop=dataset_reduce": {"overrides": ["training.loop_implementation=dataset_reduce"]},
    "knob:concurrency=1": {"overrides": ["training.client_concurrency=1"]},
    "knob:concurrency=2": {"overrides": ["training.client_concurrency=2"]},
    "knob:concurrency=4": {"overrides": ["training.client_concurrency=4"]},
    # The soak's fix for the C++ worker's memory growth (bench/soak.py): does it cost time?
    "knob:MALLOC_ARENA_MAX=2": {"env": {"MALLOC_ARENA_MAX": "2"}},
}


def _tff_lab_worker(spec: dict) -> dict:
    return _common.measure_tff_lab(spec)


def _bare_worker(spec: dict) -> dict:
    import bare_tff

    return bare_tff._worker(spec)


WORKERS = {"tff_lab": _tff_lab_worker, "bare_tff": _bare_worker}


def plan(
    task: str, *, flower: bool, knobs: bool, flower_per_call: bool = False, fixes: bool = False
) -> list[tuple[str, dict]]:
    """The (label, how to run it) list for one task."""
    systems = []
    dp = task.endswith("_dp")
    if not dp or _common.privacy_available():
        systems.append(("tff_lab", {"kind": "tff_lab"}))
    if fixes and (not dp or _common.privacy_available()):
        systems.append(("tff_lab+fixes", {"kind": "tff_lab", "fixed": True}))
    systems += [
        ("bare_tff", {"kind": "bare_tff", "loop": "tff_default"}),
        ("bare_tff_iter", {"kind": "bare_tff", "loop": "dataset_iterator"}),
    ]
    if flower:
        systems.append(("flower", {"kind": "flower"}))
    if flower and flower_per_call:
        systems.append(("flower_per_call", {"kind": "flower", "model_per_call": True}))
    if knobs and (not dp or _common.privacy_available()):
        systems += [(label, {"kind": "tff_lab", **how}) for label, how in KNOBS.items()]
    return systems


def run_one(label: str, how: dict, task: str, rounds: int, timeout: float) -> dict:
    if how["kind"] == "flower":
        import _flower

        return _flower.measure_flower(task, rounds, model_per_call=how.get("model_per_call", False), timeout=timeout)
    spec = {k: v for k, v in how.items() if k != "env"}
    return _common.run_isolated(
        SCRIPT, {**spec, "task": task, "rounds": rounds}, timeout=timeout, env=_common.worker_env(how.get("env"))
    )


def run_task(
    task: str,
    rounds: int,
    reps: int,
    *,
    flower: bool = True,
    knobs: bool = True,
    flower_per_call: bool = False,
    fixes: bool = False,
    timeout: float = 3600,
    log=print,
) -> dict:
    """Runs every system ``reps`` times, interleaved; returns the per-system summary and the runs."""
    systems = plan(task, flower=flower, knobs=knobs, flower_per_call=flower_per_call, fixes=fixes)
    runs: dict[str, list[dict]] = {label: [] for label, _ in systems}
    failures: dict[str, str] = {}
    for rep in range(reps):
        order = systems[rep % len(systems) :] + systems[: rep % len(systems)]
        for label, how in order:
            t0 = time.perf_counter()
            try:
                res = run_one(label, how, task, rounds, timeout)
            except (RuntimeError, TimeoutError) as e:  # keep measuring the others; report the failure
                log(f"  [{task} rep {rep + 1}/{reps}] {label}: FAILED: {str(e)[-1500:]}")
                failures.setdefault(label, str(e)[-1500:])
                continue
            res.pop("memory", None)
            runs[label].append(res)
            log(
                f"  [{task} rep {rep + 1}/{reps}] {label:26s} {res['median_s']:.4f} s/round  "
                f"acc {res['accuracy']:.4f}  ({time.perf_counter() - t0:.0f} s, load {res['load'][0]:.2f})"
            )
    summary = {label: summarize(rs) for label, rs in runs.items() if rs}
    return {
        "task": task,
        "rounds": rounds,
        "reps": reps,
        "systems": summary,
        "runs": runs,
        "failures": failures,
        "ratios": ratios(summary),
        "privacy_available": _common.privacy_available(),
    }


def summarize(rs: list[dict]) -> dict:
    cpu = [r["cpu_median_s"] for r in rs if r.get("cpu_median_s") is not None]
    return {
        "median_s": statistics.median(r["median_s"] for r in rs),
        "mean_s": statistics.median(r["mean_s"] for r in rs),
        "cpu_median_s": statistics.median(cpu) if cpu else None,
        "accuracy": rs[-1]["accuracy"],
        "accuracies": sorted({r["accuracy"] for r in rs}),
        "weights": sorted({r["weights"] for r in rs}),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        "load_1min": [round(r["load"][0], 2) for r in rs],
    }


def ratios(summary: dict) -> dict:
    """tff_lab's round time over each reference's, and which runs ended with the same weights."""
    out = {}
    s = summary

    def same(a, b):  # every run of a ended with one set of weights, the one b's runs ended with
        return a in s and b in s and len(s[a]["weights"]) == 1 and s[a]["weights"] == s[b]["weights"]

    for ref in ("bare_tff", "bare_tff_iter", "flower", "flower_per_call"):
        for lab in ("tff_lab", "tff_lab+fixes"):
            if lab in s and ref in s:
                out[f"{lab}/{ref}"] = s[lab]["median_s"] / s[ref]["median_s"]
    for ref in ("bare_tff", "bare_tff_iter"):
        for lab in ("tff_lab", "tff_lab+fixes"):
            if lab in s and ref in s and s[lab].get("cpu_median_s") and s[ref].get("cpu_median_s"):
                out[f"{lab}/{ref} (CPU s per round)"] = s[lab]["cpu_median_s"] / s[ref]["cpu_median_s"]
    if "bare_tff" in s and "bare_tff_iter" in s:
        out["bare_tff_iter/bare_tff"] = s["bare_tff_iter"]["median_s"] / s["bare_tff"]["median_s"]
    if "tff_lab" in s:
        knobs = [label for label in s if label.startswith("knob:") or label == "tff_lab+fixes"]
        out["tff_lab_settings_bit_identical"] = all(same(label, "tff_lab") for label in knobs) and same(
            "tff_lab", "tff_lab"
        )
        out["tff_lab_vs_bare_tff_bit_identical"] = same("tff_lab", "bare_tff")
    out["bare_tff_iter_vs_bare_tff_bit_identical"] = same("bare_tff_iter", "bare_tff")
    return out


SETTINGS = {
    "tff_lab": "defaults (dataset_iterator, concurrency unlimited)",
    "bare_tff": "TFF defaults (DATASET_REDUCE, import-time context)",
    "bare_tff_iter": "DATASET_ITERATOR, TFF's context",
    "flower": "flwr 1.23 run_simulation, Ray, 1 CPU per client, model kept per actor",
    "flower_per_call": "as flower, model built in every fit (Flower's quickstart style)",
    "tff_lab+fixes": "defaults + the proposed fixes (BENCHMARKS.md)",
    "knob:MALLOC_ARENA_MAX=2": "tff_lab, MALLOC_ARENA_MAX=2 (soak fix)",
}


def report(result: dict) -> str:
    rows = []
    for label, s in result["systems"].items():
        settings = SETTINGS.get(label, "tff_lab, " + label.split(":", 1)[-1])
        cpu = s.get("cpu_median_s")
        rows.append(
            [
                label,
                settings,
                s["median_s"],
                s["mean_s"],
                "-" if cpu is None else cpu,
                s["accuracy"],
                ",".join(s["weights"]),
                s["peak_rss_mb"],
                "/".join(f"{x:.1f}" for x in s["load_1min"]),
            ]
        )
    table = _common.format_table(
        [
            "system",
            "settings",
            "median s/round",
            "mean s/round",
            "CPU s/round",
            "final acc",
            "weights hash",
            "peak RSS MB",
            "load 1m",
        ],
        rows,
    )
    lines = [
        f"### {result['task']}: {_common.TASKS[result['task']].description} "
        f"({result['rounds']} rounds x {result['reps']} reps)",
        "",
        table,
        "",
    ]
    for k, v in result["ratios"].items():
        lines.append(f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}")
    for label, err in result.get("failures", {}).items():
        lines.append(f"- {label} FAILED: {err.strip().splitlines()[-1] if err.strip() else err}")
    if result["task"].endswith("_dp") and not result["privacy_available"]:
        lines.append("- tff_lab not run: tff_lab.privacy is not importable yet (bare TFF and Flower only)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tasks",
        default="digits,digits_dp,synthetic,synthetic_dp",
        help=f"comma-separated, from {', '.join(_common.TASKS)}",
    )
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--reps", type=int, default=2, help="repetitions of each system (interleaved)")
    p.add_argument("--skip-flower", action="store_true")
    p.add_argument(
        "--flower-per-call",
        action="store_true",
        help="also run Flower building the Keras model in every client fit (quickstart style)",
    )
    p.add_argument(
        "--knobs",
        default="digits",
        help="tasks on which to also vary tff_lab's performance settings (comma-separated; 'none' for none)",
    )
    p.add_argument("--no-knobs", action="store_true")
    p.add_argument("--fixes", action="store_true", help="also run tff_lab with the proposed fixes patched in")
    p.add_argument("--out", default=str(_common.RESULTS / "round_time.json"))
    args = p.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in _common.TASKS:
            p.error(f"unknown task '{t}'; choose from {', '.join(_common.TASKS)}")
    knob_tasks = set() if args.no_knobs or args.knobs == "none" else set(args.knobs.split(","))
    print(f"machine: {json.dumps(_common.machine_info())}", flush=True)
    results = []
    for task in tasks:
        results.append(
            run_task(
                task,
                args.rounds,
                args.reps,
                flower=not args.skip_flower,
                flower_per_call=args.flower_per_call,
                fixes=args.fixes,
                knobs=task in knob_tasks,
                log=lambda m: print(m, flush=True),
            )
        )
        print("\n" + report(results[-1]) + "\n", flush=True)
    _common.save_json(Path(args.out), {"machine": _common.machine_info(), "argv": sys.argv[1:], "results": results})
    print(f"{_common.load_now()}; results in {args.out}")
    return 0


if __name__ == "__main__":
    if not _common.worker_main(WORKERS):
        raise SystemExit(main())
