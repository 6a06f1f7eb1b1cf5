"""Your own Keras model and client data, trained with DP-FedAvg through tff_lab's Python API.

    python experiments/own_model_dp.py --out runs/own_model_dp            # train, epsilon, export
    python experiments/own_model_dp.py --out runs/x --stop-after 6        # stop early (as if killed)
    python experiments/own_model_dp.py --out runs/x --resume              # ...and resume it

The model (a small ResNet with GroupNorm, logits out) and the data (digits split by "writer" with
feature skew) live in experiments/own_parts.py: plain Keras and numpy, no tff_lab code. The run
uses the stages a script can call (build -> initialize -> run_rounds -> finalize), gets its epsilon
from dp_accounting for the mechanism that ran, and exports the model to TFLite with the parity
report (float32 and dynamic-range; int8 with --int8).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import own_parts  # noqa: E402  (the researcher's own module)

from tff_lab import ModelSpec, load_config  # noqa: E402
from tff_lab.data import federated_data  # noqa: E402
from tff_lab.training import loop  # noqa: E402


def make_config(rounds: int, noise: float):
    return load_config(
        None,
        [
            "name=own_model_dp",
            "seed=0",
            "algorithm.weighting=uniform",
            "algorithm.client_optimizer.learning_rate=0.1",
            f"training.rounds={rounds}",
            "training.sampling=poisson",
            "training.sampling_rate=0.3",
            "training.batch_size=16",
            "training.eval_every_rounds=5",
            "training.rounds_per_checkpoint=2",
            "privacy.mechanism=gaussian_fixed",
            f"privacy.noise_multiplier={noise}",
            "privacy.clip=1.0",
            "centralized.enabled=true",
        ],
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/own_model_dp")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--noise", type=float, default=0.8)
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this round (then --resume)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--int8", action="store_true", help="also export int8")
    args = ap.parse_args(argv)

    model = ModelSpec(builder=own_parts.resnet_gn, outputs="logits", kwargs={"width": 8, "blocks": 1}, name="resnet_gn")
    data = federated_data(own_parts.writer_clients(args.clients, alpha=1.0, seed=0), cfg=make_config(1, 1.0))
    exp = loop.build(make_config(args.rounds, args.noise), model=model, data=data)
    try:
        rs = loop.initialize(exp, args.out, resume=args.resume, overwrite=not args.resume)
        loop.run_rounds(exp, rs, quiet=False, until=args.stop_after)
        if args.stop_after is not None and rs.round < args.rounds:
            print(f"stopped after round {rs.round}; continue with --resume")
            return 0
        summary = loop.finalize(exp, rs)
        eps = summary["privacy"]["epsilon"]

        def fmt(v):
            return "withheld (not covered by epsilon)" if v is None else f"{v:.4f}"

        print(
            f"test accuracy {fmt(summary.get('final_test_accuracy'))} "
            f"(centralized {fmt(summary.get('centralized_accuracy'))})"
        )
        print(
            f"epsilon: RDP {eps['rdp']:.4f}, PLD {eps['pld']:.4f} at delta {summary['privacy']['delta']:g} "
            "(dp_accounting, the mechanism that ran; see privacy.json)"
        )
        if not args.no_export:
            from tff_lab.export import export_run

            quant = ["float32", "dynamic"] + (["int8"] if args.int8 else [])
            result = export_run(args.out, quant)
            report = json.loads((Path(args.out) / "export" / "report.json").read_text())
            print(f"exported {', '.join(quant)} to {args.out}/export/ (parity report: report.md)")
            _ = result, report
    finally:
        exp.close()
        from tff_lab.federated import runtime

        runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
