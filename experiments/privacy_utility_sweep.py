"""Privacy-utility sweep: DP-FedProx on FedProx's synthetic(1, 1) data, >= 1,000 clients, accuracy
against epsilon for several noise multipliers (plus the non-private run).

    python experiments/privacy_utility_sweep.py --out runs/privacy_sweep [--rounds 100] [--noise 0.5 1 2 4]

Poisson client sampling (q = --rate) with fixed-clip Gaussian DP; epsilon at delta = min(1e-5,
N^-1.1) from dp_accounting's RDP and PLD accountants after the last round (privacy.json of each
run). Writes privacy_utility_sweep.csv/.md and privacy_utility_sweep.png (accuracy vs epsilon).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_table  # noqa: E402

from tff_lab import run_experiment  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/privacy_sweep")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.5, 0.7, 1.0, 1.5, 2.0, 4.0])
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.clients < 1000:
        ap.error("the sweep is defined on at least 1,000 clients (use --rounds to make it small)")
    out = Path(args.out)
    common = [
        f"seed={args.seed}",
        "data.source=synthetic",
        f"data.num_clients={args.clients}",
        "model.name=logreg",
        "algorithm.name=fedprox",
        "algorithm.proximal_strength=0.01",
        "algorithm.weighting=uniform",
        "algorithm.client_optimizer.learning_rate=0.05",
        "training.batch_size=10",
        "training.sampling=poisson",
        f"training.sampling_rate={args.rate}",
        f"training.rounds={args.rounds}",
        f"training.eval_every_rounds={max(1, args.rounds // 5)}",
        "centralized.enabled=false",
    ]
    rows = []
    s = run_experiment(None, out / "runs" / "non_private", overrides=common + ["name=non_private"], overwrite=True)
    reference = s["final_test_accuracy"]
    rows.append({"noise_multiplier": 0.0, "epsilon_rdp": "inf", "epsilon_pld": "inf", "test_accuracy": reference})
    print(f"non-private          acc={reference:.4f}", flush=True)
    for z in args.noise:
        name = f"noise_{z:g}"
        s = run_experiment(
            None,
            out / "runs" / name,
            overwrite=True,
            overrides=common
            + [
                f"name={name}",
                "privacy.mechanism=gaussian_fixed",
                f"privacy.noise_multiplier={z}",
                f"privacy.clip={args.clip}",
            ],
        )
        eps = s["privacy"]["epsilon"]
        rows.append(
            {
                "noise_multiplier": z,
                "epsilon_rdp": eps["rdp"],
                "epsilon_pld": eps["pld"],
                "delta": f"{s['privacy']['delta']:.3g}",
                "test_accuracy": s["final_test_accuracy"],
            }
        )
        print(
            f"noise {z:<6g} eps_rdp={eps['rdp']:.3f} eps_pld={eps['pld']:.3f} acc={s['final_test_accuracy']:.4f}",
            flush=True,
        )
    print(
        write_table(
            rows,
            ["noise_multiplier", "epsilon_rdp", "epsilon_pld", "delta", "test_accuracy"],
            out,
            "privacy_utility_sweep",
        )
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    private = [r for r in rows if r["noise_multiplier"] > 0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, marker in (("epsilon_pld", "PLD", "o"), ("epsilon_rdp", "RDP", "s")):
        ax.plot([r[key] for r in private], [r["test_accuracy"] for r in private], marker=marker, label=f"DP ({label})")
    for r in private:
        ax.annotate(
            f"z={r['noise_multiplier']:g}",
            (r["epsilon_pld"], r["test_accuracy"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(3, 3),
        )
    ax.axhline(reference, color="grey", linestyle="--", label="non-private")
    ax.set_xscale("log")
    ax.set_xlabel(f"epsilon (delta {private[0]['delta']}) after {args.rounds} rounds")
    ax.set_ylabel("global test accuracy")
    ax.set_title(f"DP-FedProx, synthetic(1,1), {args.clients} clients, q={args.rate}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out / "privacy_utility_sweep.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
