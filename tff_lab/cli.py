"""``tff-lab`` command line: thin parsing over the library.

Each subcommand lives beside the code it drives (``<package>/command.py`` with a
``register(subparsers)`` function) so this module stays small and imports no
TensorFlow until a command runs. Every :class:`~tff_lab.errors.UserError` becomes a
one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommand modules, in --help order.
COMMAND_MODULES = [
    "tff_lab.training.command",  # run
    "tff_lab.export.command",  # export, predict
    "tff_lab.distributed.command",  # train-dist
    "tff_lab.deploy.command",  # k8s render, sweep
    "tff_lab.privacy.command",  # privacy epsilon, privacy noise
]


def _quiet_tf_logs() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF 2.14 logs CUDA-plugin errors at import
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tff-lab",
        description="Private federated learning on TensorFlow Federated: run experiments, account privacy, "
                    "export to TFLite, train on a cluster.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    _quiet_tf_logs()
    from tff_lab.errors import Preempted, TrainingDiverged, UserError, WorkerLost

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except UserError as e:
        print(f"tff-lab: error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        print(f"tff-lab: preempted: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingDiverged as e:
        print(f"tff-lab: diverged: {e}", file=sys.stderr)
        return e.exit_code
    except WorkerLost as e:
        print(f"tff-lab: worker lost: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tff-lab: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
