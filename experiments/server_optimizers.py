"""Server optimizer comparison on non-IID digits: FedAvg (SGD), FedAvgM, FedAdam, FedYogi, FedAdagrad.

    python experiments/server_optimizers.py --out runs/server_optimizers [--rounds 60]

Writes server_optimizers.csv / .md and server_optimizers.png (test accuracy vs round).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import plot_lines, write_table  # noqa: E402

from tff_lab import run_experiment  # noqa: E402

# Server learning rates from the usual grids of Reddi et al. 2021 ("Adaptive Federated Optimization").
OPTIMIZERS = {
    "fedavg": ["algorithm.server_optimizer.name=sgd", "algorithm.server_optimizer.learning_rate=1.0"],
    "fedavgm": [
        "algorithm.server_optimizer.name=sgdm",
        "algorithm.server_optimizer.learning_rate=1.0",
        "algorithm.server_optimizer.momentum=0.9",
    ],
    "fedadam": ["algorithm.server_optimizer.name=adam", "algorithm.server_optimizer.learning_rate=0.01"],
    "fedyogi": ["algorithm.server_optimizer.name=yogi", "algorithm.server_optimizer.learning_rate=0.01"],
    "fedadagrad": ["algorithm.server_optimizer.name=adagrad", "algorithm.server_optimizer.learning_rate=0.1"],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/server_optimizers")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", choices=sorted(OPTIMIZERS), help="run a subset")
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows, curves = [], {}
    for name, opt in OPTIMIZERS.items():
        if args.only and name not in args.only:
            continue
        run_dir = out / "runs" / name
        overrides = [
            f"partition.alpha={args.alpha}",
            f"training.rounds={args.rounds}",
            f"training.eval_every_rounds={max(1, args.rounds // 10)}",
            f"seed={args.seed}",
            f"name={name}",
            *opt,
        ]
        s = run_experiment(None, run_dir, overrides=overrides, overwrite=True)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        curves[name] = [(m["round"], m["eval_accuracy"]) for m in metrics if m.get("eval_accuracy") is not None]
        rows.append(
            {
                "server_optimizer": name,
                "test_accuracy": s["final_test_accuracy"],
                "test_loss": s["final_test_loss"],
                "retention": s["retention"],
                "seconds_per_round": s["seconds_per_round_median"],
            }
        )
        print(f"{name:<11} acc={s['final_test_accuracy']:.4f} loss={s['final_test_loss']:.4f}", flush=True)
    print(
        write_table(
            rows,
            ["server_optimizer", "test_accuracy", "test_loss", "retention", "seconds_per_round"],
            out,
            "server_optimizers",
        )
    )

    plot_lines(
        curves,
        out / "server_optimizers.png",
        xlabel="round",
        ylabel="global test accuracy",
        title=f"digits, Dirichlet alpha={args.alpha}",
        marker=".",
    )
    print(f"wrote {out / 'server_optimizers.csv'}, {out / 'server_optimizers.md'}, {out / 'server_optimizers.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
