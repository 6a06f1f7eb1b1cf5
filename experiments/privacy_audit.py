"""Theoretical vs empirical epsilon across noise multipliers (one-shot canary audit, Andrew et al. 2024).

    python experiments/privacy_audit.py --out runs/privacy_audit_sweep [--noise 0 0.5 1 2 4 8]
    python experiments/privacy_audit.py --out runs/privacy_audit_sweep --mode run   # real audited runs

Settings (clip, Poisson rate, rounds, population, canaries, seed) come from --config
(experiments/privacy_audit.yaml). For each noise multiplier:

- the theoretical epsilon: dp_accounting's RDP and PLD accountants on the run's DpEvent (the
  ledger's computation), over the population with the canaries;
- the empirical epsilon: the one-shot estimate from the canaries' cosines with its bootstrap
  interval and the resolution the canary count allows.

``--mode simulate`` (default) runs DP-FedAvg's exact aggregation (tff_lab's seeded Gaussian query:
clip, sum, noise, / expected clients) on synthetic client updates in a --dim dimensional update
space; ``--mode run`` trains the experiment for real (``tff_lab.run_experiment`` with
``privacy.audit``; needs a loop that inserts the canaries) and reads each run's privacy.json.
Noise 0 is the non-private control (simulation only; in run mode it becomes 1e-3). Writes
privacy_audit.csv/.md, privacy_audit.png (epsilon vs noise) and cosines_<noise>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _load_common():
    # By file path: a module named `_common` (bench's) may already be imported in this process.
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tff_lab_experiments_common", Path(__file__).resolve().parent / "_common.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


write_table = _load_common().write_table

COLUMNS = [
    "noise_multiplier",
    "eps_theory_rdp",
    "eps_theory_pld",
    "eps_empirical",
    "ci_low",
    "ci_high",
    "resolution",
    "mu_over_sigma",
    "mean_canary_participations",
]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(Path(__file__).resolve().parent / "privacy_audit.yaml"))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    p.add_argument("--mode", choices=("simulate", "run"), default="simulate")
    p.add_argument("--dim", type=int, default=20000, help="update-space dimension of the simulation")
    p.add_argument("--rounds", type=int, help="override training.rounds")
    p.add_argument("--bootstrap", type=int, default=1000)
    return p.parse_args(argv)


def simulate(cfg, z: float, args) -> dict:
    from tff_lab.privacy.audit import audit_simulation

    a = cfg.privacy.audit
    return audit_simulation(
        noise_multiplier=z,
        clip=cfg.privacy.clip,
        population=cfg.data.num_clients,
        sampling_rate=cfg.training.sampling_rate,
        rounds=cfg.training.rounds,
        seen=a.canaries,
        unseen=a.unseen,
        dim=args.dim,
        seed=cfg.seed,
        bootstrap=args.bootstrap,
    )


def real_run(z: float, args, overrides) -> dict:
    from tff_lab import run_experiment

    zz = z if z > 0 else 1e-3
    out = args.out / f"run_noise_{z:g}"
    run_experiment(args.config, out, overrides=[*overrides, f"privacy.noise_multiplier={zz}"], overwrite=True)
    report = json.loads((out / "privacy.json").read_text())
    cos = json.loads((out / "privacy_audit.json").read_text())
    return {
        "epsilon_theoretical": report["epsilon"] if z > 0 else None,
        "epsilon_empirical": report["epsilon_empirical"],
        "seen_cosines": cos["seen_cosines"],
        "unseen_cosines": cos["unseen_cosines"],
        "mean_canary_participations": None,
    }


def row_of(z: float, res: dict) -> dict:
    emp, th = res["epsilon_empirical"], res["epsilon_theoretical"]
    return {
        "noise_multiplier": z,
        "eps_theory_rdp": th["rdp"] if th else math.inf,
        "eps_theory_pld": th["pld"] if th else math.inf,
        "eps_empirical": emp["epsilon"],
        "ci_low": emp["interval"][0],
        "ci_high": emp["interval"][1],
        "resolution": emp["resolution_epsilon"],
        "mu_over_sigma": emp["mu_over_sigma"],
        "mean_canary_participations": res.get("mean_canary_participations"),
    }


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tff_lab.fileio import atomic_path

    noisy = [r for r in rows if r["noise_multiplier"] > 0]
    fig, ax = plt.subplots(figsize=(6, 4))
    zs = [r["noise_multiplier"] for r in noisy]
    ax.plot(zs, [r["eps_theory_rdp"] for r in noisy], marker="s", label="theoretical (RDP)")
    ax.plot(zs, [r["eps_theory_pld"] for r in noisy], marker="^", label="theoretical (PLD)")
    emp = [r["eps_empirical"] for r in noisy]
    err = [
        [max(0.0, e - r["ci_low"]) for e, r in zip(emp, noisy)],
        [max(0.0, r["ci_high"] - e) for e, r in zip(emp, noisy)],
    ]
    ax.errorbar(zs, emp, yerr=err, marker="o", capsize=3, label="empirical (canaries, 95% interval)")
    ax.plot(zs, [r["resolution"] for r in noisy], linestyle=":", color="gray", label="audit resolution")
    for r in rows:
        if r["noise_multiplier"] == 0:
            ax.axhline(
                r["eps_empirical"], color="red", linestyle="--", label=f"no noise: empirical {r['eps_empirical']:.3g}"
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("noise multiplier")
    ax.set_ylabel("epsilon")
    ax.set_title("theoretical vs empirical epsilon")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def main(argv=None) -> int:
    from tff_lab.config import load_config
    from tff_lab.privacy.audit import estimate_epsilon, plot_cosines

    args = parse(argv)
    overrides = [f"training.rounds={args.rounds}"] if args.rounds else []
    cfg = load_config(args.config, overrides)
    if not cfg.privacy.audit.canaries:
        raise SystemExit(f"{args.config}: set privacy.audit.canaries and .unseen")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for z in args.noise:
        res = simulate(cfg, z, args) if args.mode == "simulate" else real_run(z, args, overrides)
        rows.append(row_of(z, res))
        est = estimate_epsilon(
            res["seen_cosines"],
            res["unseen_cosines"],
            res["epsilon_empirical"]["delta"],
            bootstrap=args.bootstrap,
            seed=cfg.seed,
        )
        th = rows[-1]["eps_theory_pld"]
        plot_cosines(
            res["seen_cosines"],
            res["unseen_cosines"],
            args.out / f"cosines_{z:g}.png",
            estimate=est,
            theoretical=th if math.isfinite(th) else None,
            title=f"noise multiplier {z:g}",
        )
        print(json.dumps(rows[-1]), flush=True)
    print(write_table(rows, COLUMNS, args.out, "privacy_audit"))
    plot(rows, args.out / "privacy_audit.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
