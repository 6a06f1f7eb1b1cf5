"""Optimizers: config -> ``tff.learning.optimizers`` (TFF 0.87 takes only its own), and the server
step both engines share.

:func:`server_step` is TFF's ``apply_optimizer_finalizer`` written out for the vectorised engine:
the aggregate is the server optimizer's gradient, and a non-finite aggregate is rejected (weights
and optimizer state unchanged). The TFF engine runs TFF's own finalizer; parity tests hold the two
to the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from tff_lab.config.schema import OptimizerConfig


def build_optimizer(cfg: OptimizerConfig) -> Any:
    """The ``tff.learning.optimizers`` optimizer of an ``OptimizerConfig`` (client or server)."""
    import tensorflow_federated as tff

    opt = tff.learning.optimizers
    if cfg.name == "sgd":
        return opt.build_sgdm(learning_rate=cfg.learning_rate)
    if cfg.name == "sgdm":
        return opt.build_sgdm(learning_rate=cfg.learning_rate, momentum=cfg.momentum)
    if cfg.name == "adam":
        return opt.build_adam(
            learning_rate=cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon
        )
    if cfg.name == "adamw":
        return opt.build_adamw(
            learning_rate=cfg.learning_rate,
            beta_1=cfg.beta_1,
            beta_2=cfg.beta_2,
            epsilon=cfg.epsilon,
            weight_decay=cfg.weight_decay,
        )
    extra = {}
    if cfg.initial_preconditioner_value is not None:
        extra["initial_preconditioner_value"] = cfg.initial_preconditioner_value
    if cfg.name == "yogi":
        return opt.build_yogi(
            learning_rate=cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon, **extra
        )
    if cfg.name == "adagrad":
        return opt.build_adagrad(learning_rate=cfg.learning_rate, epsilon=cfg.epsilon, **extra)
    raise ValueError(f"unknown optimizer '{cfg.name}'")


NAMES = ("sgd", "sgdm", "adam", "yogi", "adagrad", "adamw")
# Client optimizers the vectorised engine runs with TFF's exact maths (tests/engines parity).
VECTORIZED_CLIENT = ("sgd",)


def vectorized_client_refusal(cfg: Any) -> str | None:
    """Why the vectorised engine cannot run this experiment's client optimizer (None: it can)."""
    alg = cfg.algorithm
    if alg.name != "fedsgd" and alg.client_optimizer.name not in VECTORIZED_CLIENT:
        return (
            f"algorithm.client_optimizer.name: '{alg.client_optimizer.name}' is not run by the vectorised engine "
            f"(it runs {', '.join(VECTORIZED_CLIENT)} clients with TFF's exact maths)"
        )
    return None


def check_engine(cfg: Any) -> None:
    """Refuses (one line naming the field) a client optimizer that ``training.engine: vectorized``
    does not run with TFF's maths (``auto`` falls back to the TFF engine instead)."""
    from tff_lab.errors import ConfigError

    why = vectorized_client_refusal(cfg)
    if cfg.training.engine == "vectorized" and why is not None:
        raise ConfigError(
            "algorithm.client_optimizer.name",
            f"'{cfg.algorithm.client_optimizer.name}' is not supported by training.engine: vectorized (it runs "
            f"{', '.join(VECTORIZED_CLIENT)} clients with TFF's exact maths); use training.engine: tff or auto",
        )


def server_step(
    optimizer: Any, state: Any, weights: Sequence[Any], aggregate: Sequence[Any]
) -> tuple[Any, list[Any], Any]:
    """One server optimizer step with the aggregate as the gradient (TFF's
    ``apply_optimizer_finalizer``). Returns (new optimizer state, new weights, non_finite: int32 1
    when the aggregate held NaN/inf and the step was rejected)."""
    import tensorflow as tf
    from tensorflow_federated.python.learning import tensor_utils

    new_state, new_weights = optimizer.next(state, list(weights), list(aggregate))
    _, non_finite = tensor_utils.zero_all_if_any_non_finite(list(aggregate))
    reject = tf.equal(non_finite, 1)
    new_weights = [tf.where(reject, old, new) for old, new in zip(weights, new_weights)]
    # (TFF optimizers may return tuples for lists: the new state is packed in the old one's containers.)
    new_state = tf.nest.pack_sequence_as(state, tf.nest.flatten(new_state))
    new_state = tf.nest.map_structure(lambda old, new: tf.where(reject, old, new), state, new_state)
    return new_state, new_weights, non_finite


def optimizer_state(optimizer: Any, specs: Sequence[Any]) -> Any:
    """The optimizer's initial state for weights of ``specs``, as numpy (checkpointable) leaves."""
    from tff_lab.algorithms.base import to_numpy

    return to_numpy(optimizer.initialize(list(specs)))
