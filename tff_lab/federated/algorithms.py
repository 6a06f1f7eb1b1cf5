"""Config -> a TFF ``LearningProcess`` built with TFF 0.87's own builders."""

from __future__ import annotations

from tff_lab.config.schema import ExperimentConfig
from tff_lab.federated.optimizers import build_optimizer


def loop_implementation(cfg: ExperimentConfig):
    import tensorflow_federated as tff

    return {"dataset_iterator": tff.learning.LoopImplementation.DATASET_ITERATOR,
            "dataset_reduce": tff.learning.LoopImplementation.DATASET_REDUCE}[cfg.training.loop_implementation]


def build_learning_process(cfg: ExperimentConfig, model_fn, aggregator=None):
    """FedAvg (weighted/unweighted), FedProx (mu) or FedSGD with the configured optimizers."""
    import tensorflow_federated as tff

    alg = cfg.algorithm
    algos = tff.learning.algorithms
    loop = loop_implementation(cfg)
    server_opt = build_optimizer(alg.server_optimizer)
    client_opt = build_optimizer(alg.client_optimizer)
    weighted = alg.weighting == "num_examples"
    common = dict(model_aggregator=aggregator, loop_implementation=loop)
    if alg.name == "fedsgd":
        return algos.build_fed_sgd(model_fn, server_optimizer_fn=server_opt, **common)
    if alg.name == "fedavg":
        if weighted:
            return algos.build_weighted_fed_avg(model_fn, client_opt, server_opt, **common)
        return algos.build_unweighted_fed_avg(model_fn, client_opt, server_opt, **common)
    if alg.name == "fedprox":
        if weighted:
            return algos.build_weighted_fed_prox(model_fn, alg.proximal_strength, client_opt, server_opt, **common)
        return algos.build_unweighted_fed_prox(model_fn, alg.proximal_strength, client_opt, server_opt, **common)
    raise ValueError(f"unknown algorithm '{alg.name}'")


def build_evaluation(cfg: ExperimentConfig, model_fn):
    import tensorflow_federated as tff

    return tff.learning.algorithms.build_fed_eval(model_fn, loop_implementation=loop_implementation(cfg))
