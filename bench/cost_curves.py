"""Cost curves: seconds per round and memory against clients per round and population.

The FedProx synthetic(1,1) logistic-regression task with population P in {100, 1,000, 10,000}
and K in {10, 50, 200} clients per round (K <= P). Each point is one tff_lab run in a fresh
process; the parent samples the RSS of its process tree (the Python process plus TFF's C++
worker). Reported per point: steady-state seconds per round, the RSS before round 1 ("data +
process": the clients' arrays are held in memory), after the warm-up rounds (+ TFF's worker) and
its growth after that, the peak of the whole run (data generation and the run's end included),
and the setup time (data generation, process build). A second table times evaluating every
client's split at the end of a run, one Keras ``evaluate`` per client against one batched
predict: the first scales with the population (see BENCHMARKS.md).

Clients' evaluation splits are off (``data.client_eval_fraction=0``) and the global test set is
evaluated only after the last round, so a point's rounds hold only training work.

    .venv/bin/python bench/cost_curves.py                 # the full grid, 8 rounds per point
    .venv/bin/python bench/cost_curves.py --populations 100,1000 --clients 10,50 --rounds 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _common
import numpy as np

SCRIPT = _common.BENCH / "cost_curves.py"
TASK = "synthetic"


def point_overrides(population: int, clients: int, rounds: int) -> list[str]:
    return [
        f"data.num_clients={population}",
        f"training.clients_per_round={clients}",
        "data.client_eval_fraction=0",
        f"training.eval_every_rounds={rounds}",
    ]


def _point_worker(spec: dict) -> dict:
    return _common.measure_tff_lab(spec)


def measure_point(population: int, clients: int, rounds: int, timeout: float = 1800) -> dict:
    res = _common.run_isolated(
        SCRIPT,
        {"kind": "point", "task": TASK, "rounds": rounds, "overrides": point_overrides(population, clients, rounds)},
        timeout=timeout,
    )
    return summarize_point(res, population, clients)


def summarize_point(res: dict, population: int, clients: int) -> dict:
    """Memory phases of a measured run: before round 1 (TF, the population's data, the built process),
    after the warm-up rounds (+ TFF's C++ worker, traced computations) and the growth after that."""
    mem = res.pop("memory")
    res.pop("round_seconds")
    warm = next((m for m in mem if m["round"] >= _common.WARMUP_ROUNDS), mem[-1])
    res.update(
        population=population,
        clients=clients,
        rss_before_rounds_mb=round(mem[0]["total"], 1),
        rss_after_warmup_mb=round(warm["total"], 1),
        rss_growth_after_warmup_mb=round(
            max(m["total"] for m in mem if m["round"] >= warm["round"]) - warm["total"], 1
        ),
    )
    return res


def _eval_worker(spec: dict) -> dict:
    return per_client_eval_cost(spec["population"], spec.get("sample_clients", 300))


def per_client_eval_cost(population: int, sample_clients: int = 300) -> dict:
    """Times the end-of-run per-client evaluation as tff_lab's loop does it (one Keras ``evaluate``
    per client; timed on ``sample_clients`` clients and scaled to the population) against one
    batched prediction over all clients' splits with per-client accuracies by segment sums."""
    from tff_lab.centralized.baseline import compile_for_eval, evaluate
    from tff_lab.data import load_federated_data
    from tff_lab.models import build_model

    cfg = _common.task_config(TASK, 1, [f"data.num_clients={population}", "training.clients_per_round=1"])
    data = load_federated_data(cfg)
    model = compile_for_eval(build_model(cfg.model, data.input_shape, data.num_classes))
    ids = [c for c in data.client_ids if len(data.eval[c][1])]
    sample = ids[:sample_clients]
    evaluate(model, *data.eval[sample[0]])  # warm-up: builds Keras' test function
    t0 = time.perf_counter()
    loop_acc = [evaluate(model, *data.eval[c])[1] for c in sample]
    per_client = (time.perf_counter() - t0) / len(sample)

    t0 = time.perf_counter()
    batched_acc = batched_client_accuracy(model, [data.eval[c] for c in ids])
    batched = time.perf_counter() - t0
    same = bool(np.allclose(batched_acc[: len(sample)], loop_acc, atol=1e-6))
    return {
        "population": population,
        "clients_with_eval": len(ids),
        "per_client_loop_s": per_client * len(ids),
        "per_client_loop_timed_on": len(sample),
        "batched_s": batched,
        "same_accuracies": same,
    }


def batched_client_accuracy(model, splits) -> np.ndarray:
    """Per-client accuracy from one batched prediction (the fix proposed for tff_lab's loop)."""
    x = np.concatenate([s[0] for s in splits])
    y = np.concatenate([s[1] for s in splits])
    sizes = np.array([len(s[1]) for s in splits])
    correct = (np.argmax(model.predict(x, batch_size=4096, verbose=0), axis=1) == y).astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.add.reduceat(correct, starts) / sizes


WORKERS = {"point": _point_worker, "eval": _eval_worker}


def plot(points: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for pop in sorted({p["population"] for p in points}):
        ps = sorted((p for p in points if p["population"] == pop), key=lambda p: p["clients"])
        a1.plot([p["clients"] for p in ps], [p["median_s"] for p in ps], "o-", label=f"population {pop:,}")
    a1.set_xlabel("clients per round")
    a1.set_ylabel("seconds per round (median)")
    a1.set_title("Round time grows with the work (clients per round)")
    a1.legend()
    a1.grid(alpha=0.3)
    for k in sorted({p["clients"] for p in points}):
        ps = sorted((p for p in points if p["clients"] == k), key=lambda p: p["population"])
        a2.plot([p["population"] for p in ps], [p["peak_rss_mb"] for p in ps], "o-", label=f"peak, {k}/round")
        a2.plot(
            [p["population"] for p in ps],
            [p["rss_before_rounds_mb"] for p in ps],
            "x--",
            alpha=0.6,
            label=f"before round 1, {k}/round",
        )
    a2.set_xscale("log")
    a2.set_xlabel("population (clients)")
    a2.set_ylabel("RSS of process tree (MB)")
    a2.set_title("Memory: peak of the whole run (o) and before round 1 (x)")
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    return _common.save_figure(fig, path)


def fit_linear(xs, ys) -> tuple[float, float]:
    """(intercept, slope) of a least-squares line."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def report(points: list[dict], evals: list[dict]) -> str:
    rows = [
        [
            p["population"],
            p["clients"],
            p["median_s"],
            p["median_s"] / p["clients"] * 1000,
            p["setup_seconds"],
            p["rss_before_rounds_mb"],
            p["rss_after_warmup_mb"],
            p["rss_growth_after_warmup_mb"],
            p["peak_rss_mb"],
            f"{p['load'][0]:.1f}",
        ]
        for p in points
    ]
    out = [
        _common.format_table(
            [
                "population",
                "clients/round",
                "s/round",
                "ms/client",
                "setup s",
                "RSS before round 1 MB",
                f"RSS after round {_common.WARMUP_ROUNDS} MB",
                "growth after MB",
                "peak RSS MB",
                "load",
            ],
            rows,
        )
    ]
    for pop in sorted({p["population"] for p in points}):
        ps = [p for p in points if p["population"] == pop]
        if len(ps) >= 2:
            b, m = fit_linear([p["clients"] for p in ps], [p["median_s"] for p in ps])
            out.append(f"- population {pop:,}: s/round = {b:.3f} + {m * 1000:.2f} ms x clients/round")
    for k in sorted({p["clients"] for p in points}):
        ps = [p for p in points if p["clients"] == k]
        if len(ps) >= 2:
            lo, hi = min(ps, key=lambda p: p["population"]), max(ps, key=lambda p: p["population"])
            out.append(
                f"- {k}/round: population x{hi['population'] // lo['population']} changes s/round "
                f"x{hi['median_s'] / lo['median_s']:.2f}; RSS before round 1 "
                f"+{hi['rss_before_rounds_mb'] - lo['rss_before_rounds_mb']:.0f} MB (the data); growth after "
                f"round {_common.WARMUP_ROUNDS} {lo['rss_growth_after_warmup_mb']:.0f} -> "
                f"{hi['rss_growth_after_warmup_mb']:.0f} MB; peak of the whole run (data generation and "
                f"the run's end included) {lo['peak_rss_mb']:.0f} -> {hi['peak_rss_mb']:.0f} MB"
            )
    if evals:
        out += [
            "",
            "End of run: evaluating every client's split, one Keras evaluate per client (timed on "
            f"{evals[0]['per_client_loop_timed_on']}+ clients, scaled) vs one batched predict",
            _common.format_table(
                [
                    "population",
                    "clients evaluated",
                    "one evaluate per client s",
                    "one batched predict s",
                    "same accuracies",
                ],
                [
                    [
                        e["population"],
                        e["clients_with_eval"],
                        e["per_client_loop_s"],
                        e["batched_s"],
                        e["same_accuracies"],
                    ]
                    for e in evals
                ],
            ),
        ]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--populations", default="100,1000,10000")
    p.add_argument("--clients", default="10,50,200")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--no-eval-check", action="store_true", help="skip the end-of-run evaluation table")
    p.add_argument("--out", default=str(_common.RESULTS / "cost_curves.json"))
    p.add_argument("--plot", default=str(_common.RESULTS / "cost_curves.png"))
    args = p.parse_args(argv)
    pops = [int(x) for x in args.populations.split(",")]
    ks = [int(x) for x in args.clients.split(",")]
    grid = [(pop, k) for pop in pops for k in ks if k <= pop]
    print(f"machine: {_common.machine_info()}", flush=True)
    points = []
    for pop, k in grid:
        res = measure_point(pop, k, args.rounds)
        points.append(res)
        print(
            f"  population {pop:>6,} x {k:>3}/round: {res['median_s']:.3f} s/round, peak {res['peak_rss_mb']:.0f} MB "
            f"(before rounds {res['rss_before_rounds_mb']:.0f} MB), setup {res['setup_seconds']:.1f} s, "
            f"load {res['load'][0]:.2f}",
            flush=True,
        )
    evals = []
    if not args.no_eval_check:
        for pop in pops:
            evals.append(_common.run_isolated(SCRIPT, {"kind": "eval", "population": pop}))
    print("\n" + report(points, evals))
    if len(points) >= 2:
        print(f"plot: {plot(points, Path(args.plot))}")
    _common.save_json(
        Path(args.out),
        {
            "machine": _common.machine_info(),
            "argv": sys.argv[1:],
            "rounds": args.rounds,
            "points": points,
            "end_of_run_eval": evals,
        },
    )
    print(f"{_common.load_now()}; results in {args.out}")
    return 0


if __name__ == "__main__":
    if not _common.worker_main(WORKERS):
        raise SystemExit(main())
