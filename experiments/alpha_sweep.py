"""Accuracy vs label skew: FedAvg vs FedProx across Dirichlet alpha on digits.

    python experiments/alpha_sweep.py --out runs/alpha_sweep [--rounds 60] [--alphas 0.05 0.1 0.5 1 10]

Writes alpha_sweep.csv / .md (a table) and alpha_sweep.png into --out; each run's full
RUN_DIR is kept under --out/runs/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import plot_lines, write_table  # noqa: E402

from tff_lab import run_experiment  # noqa: E402

ALGORITHMS = {
    "fedavg": ["algorithm.name=fedavg"],
    "fedprox": ["algorithm.name=fedprox", "algorithm.proximal_strength=0.01"],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/alpha_sweep")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1, 0.5, 1.0, 10.0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = []
    for alpha in args.alphas:
        for name, algo in ALGORITHMS.items():
            overrides = [
                f"partition.alpha={alpha}",
                "partition.min_examples_per_client=5",
                f"training.rounds={args.rounds}",
                f"training.local_epochs={args.local_epochs}",
                f"training.eval_every_rounds={args.rounds}",
                f"seed={args.seed}",
                f"name=alpha{alpha}_{name}",
                *algo,
            ]
            s = run_experiment(None, out / "runs" / f"alpha{alpha}_{name}", overrides=overrides, overwrite=True)
            rows.append(
                {
                    "alpha": alpha,
                    "algorithm": name,
                    "test_accuracy": s["final_test_accuracy"],
                    "centralized_accuracy": s["centralized_accuracy"],
                    "retention": s["retention"],
                    "worst_client_accuracy": s["per_client_eval_accuracy"].get("min"),
                    "mean_tv_distance": s["data"]["mean_tv_distance"],
                }
            )
            print(
                f"alpha={alpha:<6} {name:<8} acc={s['final_test_accuracy']:.4f} retention={s['retention']:.3f}",
                flush=True,
            )
    print(
        write_table(
            rows,
            [
                "alpha",
                "algorithm",
                "test_accuracy",
                "centralized_accuracy",
                "retention",
                "worst_client_accuracy",
                "mean_tv_distance",
            ],
            out,
            "alpha_sweep",
        )
    )

    series = {name: [(r["alpha"], r["test_accuracy"]) for r in rows if r["algorithm"] == name] for name in ALGORITHMS}
    plot_lines(
        series,
        out / "alpha_sweep.png",
        xlabel="Dirichlet alpha (smaller = more label skew)",
        ylabel="global test accuracy",
        title=f"digits, 20 clients, {args.rounds} rounds",
        logx=True,
    )
    print(f"wrote {out / 'alpha_sweep.csv'}, {out / 'alpha_sweep.md'}, {out / 'alpha_sweep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
