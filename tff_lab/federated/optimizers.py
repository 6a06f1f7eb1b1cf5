"""Config -> ``tff.learning.optimizers`` (TFF 0.87 takes only its own optimizers)."""

from __future__ import annotations

from tff_lab.config.schema import OptimizerConfig


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
    extra = {}
    if cfg.initial_preconditioner_value is not None:
        extra["initial_preconditioner_value"] = cfg.initial_preconditioner_value
    if cfg.name == "yogi":
        return opt.build_yogi(learning_rate=cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
                              epsilon=cfg.epsilon, **extra)
    if cfg.name == "adagrad":
        return opt.build_adagrad(learning_rate=cfg.learning_rate, epsilon=cfg.epsilon, **extra)
    raise ValueError(f"unknown optimizer '{cfg.name}'")
