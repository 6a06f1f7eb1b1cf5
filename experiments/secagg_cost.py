"""What secure aggregation costs: per-client bytes and compute, and the round's time, versus the
cohort size and the dropout rate, SecAgg (complete graph) vs SecAgg+ (k ~ log2 n neighbours).

    python experiments/secagg_cost.py --out runs/secagg_cost [--cohorts 8 16 ... 256] [--dropouts 0 0.1 0.2]

Each point runs the protocol (tff_lab.aggregation.secagg.protocol: X25519 + HKDF, AES-GCM, AES-CTR
masks, pycryptodome Shamir) among n simulated clients on a vector the size of the default digits
MLP (8,970 parameters, 32-bit quantised as TFF's secure sum, plus the secure aggregator's side
values), ``--repeats`` times; dropouts are drawn as in training (half after share_keys, half after
masked_input). ``client_key_share_kB`` is what the protocol adds to the masked vector (keys, shares,
unmasking; sent + received). A round that cannot be completed (too many holders of one secret gone) counts as
aborted. Writes secagg_cost.csv/.md and secagg_cost.png.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_table  # noqa: E402

from tff_lab.aggregation.secagg import field, protocol  # noqa: E402
from tff_lab.aggregation.secagg import graph as graph_lib

MODEL_PARAMS = 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10  # the default experiment's MLP
SIDE_VALUES = 10  # weight, quantile records and counts of tff.learning.secure_aggregator


def point(n: int, neighbors, rate: float, repeats: int, seed: int, fraction: float) -> dict:
    k = graph_lib.resolve_degree(n, neighbors)
    t = graph_lib.threshold(k + 1, fraction)
    segments = [(MODEL_PARAMS, field.field_bits(32, n)), (SIDE_VALUES, field.field_bits(32, n))]
    rng = np.random.default_rng([seed, n])
    xs = [rng.integers(0, 2**32, MODEL_PARAMS + SIDE_VALUES, dtype=np.uint64) for _ in range(n)]
    sent, recv, overhead, client_s, server_s, wall, aborted = [], [], [], [], [], [], 0
    for r in range(repeats):
        dropouts = protocol.draw_dropouts(n, rate, np.random.default_rng([seed, n, r]))
        t0 = time.perf_counter()
        try:
            res, _ = protocol.run(xs, segments, degree=k, t=t, dropouts=dropouts, seed=seed + r)
        except protocol.SecAggAborted:
            aborted += 1
            continue
        wall.append(time.perf_counter() - t0)
        took_part = res.sent.sum(1) > 0
        sent.append(res.sent[took_part].sum(1).mean())
        recv.append(res.received[took_part].sum(1).mean())
        keys_shares = [protocol.STEPS.index(s) for s in ("advertise_keys", "share_keys", "unmasking")]
        overhead.append((res.sent[took_part][:, keys_shares] + res.received[took_part][:, keys_shares]).sum(1).mean())
        client_s.append(res.client_seconds[took_part].mean())
        server_s.append(res.server_seconds)
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {
        "protocol": "SecAgg" if neighbors == "all" else "SecAgg+",
        "clients": n,
        "neighbors": k,
        "threshold": t,
        "dropout_rate": rate,
        "client_sent_kB": mean(sent) / 1e3,
        "client_received_kB": mean(recv) / 1e3,
        "client_key_share_kB": mean(overhead) / 1e3,
        "client_compute_s": mean(client_s),
        "server_compute_s": mean(server_s),
        "round_wall_s": mean(wall),
        "aborted": f"{aborted}/{repeats}",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/secagg_cost")
    ap.add_argument("--cohorts", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    ap.add_argument(
        "--secagg-max",
        type=int,
        default=64,
        help="largest cohort for SecAgg (complete graph: its server's Shamir work grows as n^2 t)",
    )
    ap.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threshold-fraction", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = []
    point(4, "all", 0.0, 1, args.seed, args.threshold_fraction)  # warm-up: imports, first key generation
    for rate in args.dropouts:
        for n in args.cohorts:
            for neighbors in ("all", None):
                if neighbors == "all" and n > args.secagg_max:
                    continue
                row = point(n, neighbors, rate, args.repeats, args.seed, args.threshold_fraction)
                rows.append(row)
                print(
                    f"{row['protocol']:<8} n={n:<4} k={row['neighbors']:<3} drop={rate:<4} "
                    f"sent={row['client_sent_kB']:8.1f} kB recv={row['client_received_kB']:8.1f} kB keys+shares={row['client_key_share_kB']:6.2f} kB "
                    f"client={row['client_compute_s']:.4f}s server={row['server_compute_s']:.3f}s "
                    f"round={row['round_wall_s']:.3f}s aborted={row['aborted']}",
                    flush=True,
                )
    cols = [
        "protocol",
        "clients",
        "neighbors",
        "threshold",
        "dropout_rate",
        "client_sent_kB",
        "client_received_kB",
        "client_key_share_kB",
        "client_compute_s",
        "server_compute_s",
        "round_wall_s",
        "aborted",
    ]
    print(write_table(rows, cols, out, "secagg_cost"))
    plot(rows, out / "secagg_cost.png")
    print(f"wrote {out / 'secagg_cost.png'}")
    return 0


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({r["dropout_rate"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [
        ("client_key_share_kB", "kB per client beyond the masked vector\n(keys, shares, unmasking; sent + received)"),
        ("client_compute_s", "client compute seconds per round"),
        ("round_wall_s", "round time, all clients + server, one process (s)"),
    ]
    for ax, (key, label) in zip(axes, panels):
        for proto, style in (("SecAgg", "-"), ("SecAgg+", "--")):
            for rate in rates:
                pts = [
                    (r["clients"], r[key])
                    for r in rows
                    if r["protocol"] == proto and r["dropout_rate"] == rate and not math.isnan(r[key])
                ]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", label=f"{proto}, dropout {rate:g}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clients per round (n)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Secure aggregation cost: SecAgg (k = n - 1) vs SecAgg+ (k ~ log2 n); 8,970-parameter model")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
