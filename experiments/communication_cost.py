"""Accuracy against communication: plain float32 updates, uniform quantization (8/4/2 bits) and
Hadamard-rotated quantization, on the default digits experiment.

    python experiments/communication_cost.py --out runs/communication [--rounds 60]

Bytes come from the CommunicationHook (uplink: the encoded tensors TFF's quantizer emits, measured
by running it; downlink: the broadcast model). Writes communication_cost.csv/.md and
communication_cost.png (final accuracy vs total uplink bytes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import plot_lines, write_table  # noqa: E402

from tff_lab import run_experiment  # noqa: E402

AGGREGATORS = {
    "plain": [],
    **{f"q{b}": ["aggregation.kind=compression", f"aggregation.quantization_bits={b}"] for b in (8, 4, 2)},
    **{
        f"hadamard_q{b}": [
            "aggregation.kind=compression",
            f"aggregation.quantization_bits={b}",
            "aggregation.rotation=hadamard",
        ]
        for b in (8, 4, 2)
    },
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/communication")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", choices=sorted(AGGREGATORS))
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = []
    for name, extra in AGGREGATORS.items():
        if args.only and name not in args.only:
            continue
        s = run_experiment(
            None,
            out / "runs" / name,
            overwrite=True,
            overrides=[
                f"seed={args.seed}",
                f"name={name}",
                f"training.rounds={args.rounds}",
                f"training.eval_every_rounds={max(1, args.rounds // 6)}",
                "centralized.enabled=false",
                *extra,
            ],
        )
        c = s["communication"]
        rows.append(
            {
                "aggregator": name,
                "uplink_total_bytes": c["uplink_total_bytes"],
                "downlink_total_bytes": c["downlink_total_bytes"],
                "uplink_bytes_per_client": c["uplink_bytes_per_client"],
                "compression_ratio": c["compression_ratio"],
                "test_accuracy": s["final_test_accuracy"],
            }
        )
        print(f"{name:<12} uplink={c['uplink_total_bytes']:>12,d} B  acc={s['final_test_accuracy']:.4f}", flush=True)
    cols = [
        "aggregator",
        "uplink_total_bytes",
        "downlink_total_bytes",
        "uplink_bytes_per_client",
        "compression_ratio",
        "test_accuracy",
    ]
    print(write_table(rows, cols, out, "communication_cost"))
    series = {"plain": [], "quantized": [], "rotated + quantized": []}
    for r in rows:
        key = (
            "plain"
            if r["aggregator"] == "plain"
            else ("rotated + quantized" if r["aggregator"].startswith("hadamard") else "quantized")
        )
        series[key].append((r["uplink_total_bytes"], r["test_accuracy"]))
    plot_lines(
        {k: sorted(v) for k, v in series.items()},
        out / "communication_cost.png",
        logx=True,
        xlabel="total uplink bytes",
        ylabel="final test accuracy",
        title=f"digits, {args.rounds} rounds: accuracy vs communication",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
