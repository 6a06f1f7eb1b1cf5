"""The reference: a bare TFF 0.87 script, as a TFF user writes it from the tutorials.

It calls ``tff.learning.algorithms.build_weighted_fed_avg`` (or ``..._fed_prox``, or the
unweighted builders with ``DifferentiallyPrivateFactory.gaussian_fixed`` for DP) directly,
with TFF's defaults: the ``DATASET_REDUCE`` client loop and the execution context TFF
installs at import. Only the *inputs* come from tff_lab so that the work is identical to
tff_lab's run: the task's data and partition (``load_federated_data``), the Keras model
(``build_model``) and its seeded initial weights, the clients sampled in each round and their
pre-batched, shuffled datasets (``sample_clients``, ``client_dataset``). Everything that runs a
round (the process, its loop, the context, the training loop) is plain TFF.

Run alone (prints seconds per round and the final accuracy):
    .venv/bin/python bench/bare_tff.py --task digits --rounds 50
    .venv/bin/python bench/bare_tff.py --task digits --rounds 50 --loop dataset_iterator
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional

import _common

LOOPS = ("tff_default", "dataset_reduce", "dataset_iterator")


def run_bare_tff(
    task: str, rounds: int, *, loop: str = "tff_default", concurrency: Optional[int] = None, overrides=()
) -> dict:
    """Trains the task with a bare TFF process; returns per-round seconds and the final accuracy.

    ``loop``: "tff_default" passes no ``loop_implementation`` (TFF's default, DATASET_REDUCE).
    ``concurrency``: None keeps TFF's import-time context; an int installs
    ``set_sync_local_cpp_execution_context(max_concurrent_computation_calls=...)``.
    """
    import tensorflow as tf
    import tensorflow_federated as tff

    from tff_lab.data import load_federated_data
    from tff_lab.models import build_model, initial_weights
    from tff_lab.sampling import client_dataset, sample_clients

    cfg = _common.task_config(task, rounds, overrides)
    data = load_federated_data(cfg)
    if concurrency is not None:
        tff.backends.native.set_sync_local_cpp_execution_context(max_concurrent_computation_calls=concurrency)
    else:  # TFF's own default context, as in a fresh process (never a context tff_lab left behind)
        tff.backends.native.set_sync_local_cpp_execution_context()

    input_spec = {"x": tf.TensorSpec((None, *data.input_shape), tf.float32), "y": tf.TensorSpec((None,), tf.int32)}

    def model_fn():
        return tff.learning.models.from_keras_model(
            build_model(cfg.model, data.input_shape, data.num_classes),
            input_spec=input_spec,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )

    alg = cfg.algorithm
    client_opt = tff.learning.optimizers.build_sgdm(learning_rate=alg.client_optimizer.learning_rate)
    server_opt = tff.learning.optimizers.build_sgdm(learning_rate=alg.server_optimizer.learning_rate)
    kwargs = {}
    if loop != "tff_default":
        kwargs["loop_implementation"] = {
            "dataset_reduce": tff.learning.LoopImplementation.DATASET_REDUCE,
            "dataset_iterator": tff.learning.LoopImplementation.DATASET_ITERATOR,
        }[loop]
    builders = tff.learning.algorithms
    if cfg.privacy.mechanism == "gaussian_fixed":
        kwargs["model_aggregator"] = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
            noise_multiplier=cfg.privacy.noise_multiplier,
            clients_per_round=cfg.training.clients_per_round,
            clip=cfg.privacy.clip,
        )
        if alg.name == "fedprox":
            process = builders.build_unweighted_fed_prox(
                model_fn, alg.proximal_strength, client_opt, server_opt, **kwargs
            )
        else:
            process = builders.build_unweighted_fed_avg(model_fn, client_opt, server_opt, **kwargs)
    elif alg.name == "fedprox":
        process = builders.build_weighted_fed_prox(model_fn, alg.proximal_strength, client_opt, server_opt, **kwargs)
    else:
        process = builders.build_weighted_fed_avg(model_fn, client_opt, server_opt, **kwargs)

    init = initial_weights(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    state = process.initialize()
    state = process.set_model_weights(state, tff.learning.models.ModelWeights(trainable=init, non_trainable=[]))

    seconds, probes = [], [_common.probe_self(0)]
    for round_num in range(1, rounds + 1):
        t0 = time.perf_counter()
        sampled = sample_clients(cfg, data.num_clients, round_num)
        datasets = [client_dataset(cfg, *data.train[data.client_ids[i]], int(i), round_num) for i in sampled]
        state = process.next(state, datasets).state
        seconds.append(time.perf_counter() - t0)
        probes.append(_common.probe_self(round_num))  # the sample tff_lab's runs take each round

    model = build_model(cfg.model, data.input_shape, data.num_classes)
    model.compile(
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    process.get_model_weights(state).assign_weights_to(model)
    _, accuracy = model.evaluate(*data.test, batch_size=1024, verbose=0)
    return {
        "system": "bare_tff",
        "task": task,
        "loop": loop,
        "concurrency": concurrency,
        "round_seconds": seconds,
        **_common.round_stats(seconds),
        "cpu_median_s": _common.cpu_per_round(probes),
        "accuracy": float(accuracy),
        "weights": _common.weights_digest(model.get_weights()),
        "memory": probes,
        "load": os.getloadavg(),
    }


def _worker(spec: dict) -> dict:
    from tff_lab.federated import runtime  # only to stop TFF's C++ worker at the end

    try:
        return run_bare_tff(
            spec["task"],
            spec["rounds"],
            loop=spec.get("loop", "tff_default"),
            concurrency=spec.get("concurrency"),
            overrides=spec.get("overrides", ()),
        )
    finally:
        runtime.shutdown()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(_common.TASKS), default="digits")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--loop", choices=LOOPS, default="tff_default")
    p.add_argument("--concurrency", type=int, default=None)
    args = p.parse_args(argv)
    result = _worker({"task": args.task, "rounds": args.rounds, "loop": args.loop, "concurrency": args.concurrency})
    result.pop("round_seconds")
    result.pop("memory")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    if not _common.worker_main({"bare_tff": _worker}):
        raise SystemExit(main())
