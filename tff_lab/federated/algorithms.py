"""The TFF engine's learning process: a built-in algorithm's (through :mod:`tff_lab.algorithms`'
registry, which builds it with TFF 0.87's own builders) or a user's (``algorithm.builder``)."""

from __future__ import annotations

from tff_lab.config.schema import ExperimentConfig


def loop_implementation(cfg: ExperimentConfig):
    import tensorflow_federated as tff

    return {
        "dataset_iterator": tff.learning.LoopImplementation.DATASET_ITERATOR,
        "dataset_reduce": tff.learning.LoopImplementation.DATASET_REDUCE,
    }[cfg.training.loop_implementation]


def build_learning_process(cfg: ExperimentConfig, model_fn, aggregator=None):
    """The registered algorithm's ``LearningProcess`` (FedAvg, FedProx, FedSGD ...); an algorithm
    the TFF engine cannot run raises its one-line ConfigError."""
    from tff_lab.algorithms import create

    return create(cfg.algorithm).learning_process(
        model_fn, aggregator=aggregator, loop_implementation=loop_implementation(cfg)
    )


def build_evaluation(cfg: ExperimentConfig, model_fn):
    import tensorflow_federated as tff

    return tff.learning.algorithms.build_fed_eval(model_fn, loop_implementation=loop_implementation(cfg))


def resolve_process(cfg: ExperimentConfig, model_fn, aggregator=None, builder=None):
    """The run's LearningProcess: ``builder`` (a user's, or ``algorithm.builder``) or a built-in one.

    A user builder is called as ``builder(model_fn, model_aggregator=aggregator, **algorithm.kwargs)``
    (``model_aggregator`` is omitted when it is None, so TFF's own default applies) and must return
    a ``tff.learning.templates.LearningProcess``.
    """
    import tensorflow_federated as tff

    from tff_lab import parts as parts_lib
    from tff_lab.errors import PartTypeError

    if builder is None and cfg.algorithm.builder is None:
        return build_learning_process(cfg, model_fn, aggregator)
    name = cfg.algorithm.builder or parts_lib.object_name(builder)
    fn = builder if builder is not None else parts_lib.resolve_callable(cfg.algorithm.builder, "algorithm.builder")
    if isinstance(fn, tff.learning.templates.LearningProcess):
        process = fn
    else:
        if not callable(fn):
            raise PartTypeError(
                "algorithm",
                f"{name!r} is a {type(fn).__name__}, expected a function returning a "
                "tff.learning.templates.LearningProcess",
            )
        kwargs = dict(cfg.algorithm.kwargs)
        if aggregator is not None:
            kwargs["model_aggregator"] = aggregator
        try:
            process = fn(model_fn, **kwargs)
        except (TypeError, ValueError) as e:
            raise PartTypeError(
                "algorithm", f"building the learning process with {name!r} failed: {type(e).__name__}: {e}"
            ) from None
    if not isinstance(process, tff.learning.templates.LearningProcess):
        raise PartTypeError(
            "algorithm",
            f"{name!r} returned {type(process).__name__}, expected a "
            "tff.learning.templates.LearningProcess (e.g. from "
            "tff.learning.templates.compose_learning_process)",
        )
    return process


def check_checkpointable(state, what: str = "algorithm") -> None:
    """Every leaf of the process state must round-trip through numpy (NPZ checkpoints)."""
    import numpy as np
    import tensorflow as tf

    from tff_lab.errors import PartValueError

    for i, leaf in enumerate(tf.nest.flatten(state)):
        try:
            arr = np.asarray(leaf)
        except Exception as e:  # noqa: BLE001 - any failure means it cannot be saved
            raise PartValueError(
                what, f"the process state cannot be checkpointed: leaf {i} is a {type(leaf).__name__} ({e})"
            ) from None
        if arr.dtype == object:
            raise PartValueError(
                what,
                f"the process state cannot be checkpointed: leaf {i} is a "
                f"{type(leaf).__name__}, not an array (checkpoints are NPZ, no pickle)",
            )
