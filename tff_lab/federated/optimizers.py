"""Config -> ``tff.learning.optimizers`` (TFF 0.87 takes only its own optimizers).

The same names serve ``algorithm.client_optimizer`` and ``algorithm.server_optimizer``: sgd, sgdm,
adam, yogi, adagrad, adamw (``tff.learning.optimizers.build_*``).
"""

from __future__ import annotations

from tff_lab.config.schema import OptimizerConfig
from tff_lab.errors import ConfigError

NAMES = ("sgd", "sgdm", "adam", "yogi", "adagrad", "adamw")
# Client optimizers the vectorised engine runs with TFF's exact maths (tests/engines parity).
VECTORIZED_CLIENT = ("sgd",)


def build_optimizer(cfg: OptimizerConfig):
    import tensorflow_federated as tff

    opt = tff.learning.optimizers
    if cfg.name == "sgd":
        return opt.build_sgdm(learning_rate=cfg.learning_rate)
    if cfg.name == "sgdm":
        return opt.build_sgdm(learning_rate=cfg.learning_rate, momentum=cfg.momentum)
    if cfg.name == "adam":
        return opt.build_adam(learning_rate=cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
                              epsilon=cfg.epsilon)
    if cfg.name == "adamw":
        return opt.build_adamw(learning_rate=cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
                               epsilon=cfg.epsilon, weight_decay=cfg.weight_decay)
    extra = {}
    if cfg.initial_preconditioner_value is not None:
        extra["initial_preconditioner_value"] = cfg.initial_preconditioner_value
    if cfg.name == "yogi":
        return opt.build_yogi(learning_rate=cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
                              epsilon=cfg.epsilon, **extra)
    if cfg.name == "adagrad":
        return opt.build_adagrad(learning_rate=cfg.learning_rate, epsilon=cfg.epsilon, **extra)
    raise ValueError(f"unknown optimizer '{cfg.name}'")


def check_engine(cfg) -> None:
    """Refuses (one line naming the field) a client optimizer the configured engine does not run
    with TFF's maths."""
    alg = cfg.algorithm
    if cfg.training.engine == "vectorized" and alg.name != "fedsgd" and alg.client_optimizer.name not in \
            VECTORIZED_CLIENT:
        raise ConfigError("algorithm.client_optimizer.name",
                          f"'{alg.client_optimizer.name}' is not supported by training.engine: vectorized (it runs "
                          f"{', '.join(VECTORIZED_CLIENT)} clients); use training.engine: tff")
