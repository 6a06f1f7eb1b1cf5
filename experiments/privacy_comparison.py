"""Privacy comparison on one data set: centralized, centralized DP-SGD, FedAvg, DP-FedAvg (fixed and
adaptive clipping) and DP-FTRL, the private ones at the same epsilon.

    python experiments/privacy_comparison.py --out runs/privacy_comparison [--rounds 100] [--epsilon 5]

FedProx's synthetic(1, 1) data with --clients clients (logistic regression). Every private run's
noise multiplier is calibrated to --epsilon at delta = min(1e-5, N^-1.1) with dp_accounting (RDP),
and each epsilon printed is the one dp_accounting gives for the mechanism that ran (privacy.json).
DP-FedAvg samples clients by Poisson sampling (q = --rate), which its amplification claim needs;
DP-FTRL has no amplification and samples q*N clients per round. The same epsilon means different
things across rows: the federated runs protect a whole client (user-level DP), DP-SGD one example
(example-level DP); the table says which. Writes privacy_comparison.csv/.md and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import plot_lines, write_table  # noqa: E402

from tff_lab import run_experiment  # noqa: E402


def base_overrides(args) -> list[str]:
    return [
        f"seed={args.seed}",
        "data.source=synthetic",
        f"data.num_clients={args.clients}",
        "model.name=logreg",
        "algorithm.weighting=uniform",
        "algorithm.client_optimizer.learning_rate=0.05",
        "training.batch_size=10",
        f"training.rounds={args.rounds}",
        f"training.eval_every_rounds={max(1, args.rounds // 10)}",
        f"training.rounds_per_checkpoint={max(1, args.rounds // 4)}",
    ]


def poisson(args) -> list[str]:
    return ["training.sampling=poisson", f"training.sampling_rate={args.rate}"]


def methods(args) -> dict:
    eps = f"privacy.target_epsilon={args.epsilon}"
    per_round = max(1, round(args.rate * args.clients))
    return {
        "fedavg": poisson(args) + ["centralized.enabled=true"],
        "dp_fedavg_fixed": poisson(args)
        + ["privacy.mechanism=gaussian_fixed", eps, "privacy.clip=1.0", "centralized.enabled=false"],
        "dp_fedavg_adaptive": poisson(args)
        + ["privacy.mechanism=gaussian_adaptive", eps, "privacy.clip=0.1", "centralized.enabled=false"],
        "dp_ftrl": [
            f"training.clients_per_round={per_round}",
            "privacy.mechanism=tree",
            eps,
            "privacy.clip=1.0",
            "algorithm.server_optimizer.name=sgdm",
            "algorithm.server_optimizer.momentum=0.9",
            "centralized.enabled=false",
        ],
    }


def curve(run_dir: Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["round"], r["eval_accuracy"]) for r in rows if r.get("eval_accuracy") is not None]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/privacy_comparison")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=0.05, help="Poisson client sampling rate")
    ap.add_argument("--epsilon", type=float, default=5.0, help="the epsilon every private run is calibrated to")
    ap.add_argument("--dpsgd-epochs", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows, curves = [], {}
    for name, extra in methods(args).items():
        run_dir = out / "runs" / name
        s = run_experiment(None, run_dir, overrides=[*base_overrides(args), f"name={name}", *extra], overwrite=True)
        curves[name] = curve(run_dir)
        p = s.get("privacy") or {}
        rows.append(
            {
                "method": name,
                "dp_unit": "client" if p else "-",
                "epsilon_rdp": (p.get("epsilon") or {}).get("rdp"),
                "epsilon_pld": (p.get("epsilon") or {}).get("pld"),
                "delta": f"{p['delta']:.3g}" if p else None,
                "noise_multiplier": p.get("noise_multiplier"),
                "test_accuracy": s["final_test_accuracy"],
            }
        )
        if s.get("centralized"):
            rows.append({"method": "centralized", "dp_unit": "-", "test_accuracy": s["centralized"]["accuracy"]})
        print(f"{name:<20} acc={s['final_test_accuracy']:.4f} eps={p.get('epsilon')}", flush=True)

    # Centralized DP-SGD (example-level) on the union of the same clients' data, at the same epsilon.
    from tff_lab.config import load_config
    from tff_lab.data import load_federated_data
    from tff_lab.privacy.dpsgd import train_dp_sgd

    cfg = load_config(None, base_overrides(args) + poisson(args))
    data = load_federated_data(cfg)
    d = train_dp_sgd(cfg, data, args.dpsgd_epochs, target_epsilon=args.epsilon, batch_size=256, learning_rate=0.5)
    rows.append(
        {
            "method": "dp_sgd (centralized)",
            "dp_unit": "example",
            "epsilon_rdp": d["epsilon_rdp"],
            "epsilon_pld": d["epsilon_pld"],
            "delta": f"{d['delta']:.3g}",
            "noise_multiplier": d["noise_multiplier"],
            "test_accuracy": d["accuracy"],
        }
    )
    print(f"{'dp_sgd':<20} acc={d['accuracy']:.4f} eps_rdp={d['epsilon_rdp']:.3f}", flush=True)

    cols = ["method", "dp_unit", "epsilon_rdp", "epsilon_pld", "delta", "noise_multiplier", "test_accuracy"]
    print(write_table(rows, cols, out, "privacy_comparison"))
    plot_lines(
        curves,
        out / "privacy_comparison.png",
        xlabel="round",
        ylabel="global test accuracy",
        title=f"synthetic(1,1), {args.clients} clients, private runs at epsilon {args.epsilon}",
        marker=".",
    )
    (out / "privacy_comparison.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
