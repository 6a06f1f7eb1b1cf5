"""``tff-lab train-dist``: the MultiWorkerMirroredStrategy trainer (one worker or many)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tff_lab.distributed import EXIT_RETRIABLE


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-dist",
        help="train the experiment's Keras model with MultiWorkerMirroredStrategy (cluster from env)",
        description="Trains the experiment's model centrally on the union of the clients' training data with "
        "tf.distribute.MultiWorkerMirroredStrategy. The cluster comes from TF_CONFIG (TFJob), from "
        "a Kubernetes Indexed Job's env (JOB_COMPLETION_INDEX, TFF_LAB_NUM_WORKERS, "
        "TFF_LAB_JOB_NAME, TFF_LAB_SERVICE), or is a single worker. Only the chief writes to OUT. "
        f"Exit codes: 0 done, 2 bad input, {EXIT_RETRIABLE} retriable (SIGTERM checkpointed, "
        "or a peer was lost).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("experiment", help="experiment YAML (its `dist` section configures this trainer)")
    p.add_argument("--out", required=True, help="run directory, shared by all workers (e.g. on a PVC)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set dist.epochs=3 (repeatable)",
    )
    p.add_argument("--verbose", action="store_true", help="print Keras progress and the cluster layout")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from tff_lab.config import load_config
    from tff_lab.distributed import cluster as cluster_lib

    cfg = load_config(args.experiment, args.overrides)
    spec = cluster_lib.discover()  # bad cluster env fails here, before TensorFlow starts
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        print(f"tff-lab train-dist: {spec.describe()}", file=sys.stderr)

    from tff_lab.distributed.trainer import PeerLost, Preempted, train_distributed

    try:
        summary = train_distributed(cfg, args.out, cluster=spec, quiet=not args.verbose)
    except Preempted:
        print(
            f"tff-lab: preempted (SIGTERM); checkpoint saved, exiting {EXIT_RETRIABLE} to be retried", file=sys.stderr
        )
        return EXIT_RETRIABLE
    except PeerLost as e:
        print(
            f"tff-lab: lost a peer worker ({e}); exiting {EXIT_RETRIABLE} to be retried from the backup",
            file=sys.stderr,
        )
        return EXIT_RETRIABLE
    # One JSON line per worker (the chief's full summary is OUT/summary.json).
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "name",
                    "worker_id",
                    "chief",
                    "num_workers",
                    "global_batch_size",
                    "epochs",
                    "resumed",
                    "test_accuracy",
                    "weights_sha256",
                )
            }
        )
    )
    return 0
