"""Config -> a TFF aggregation factory (mean, DP, secure, distributed DP, compression, robust).

DP is an aggregator passed to the algorithm, never a separate algorithm (as in TFF).
The DP factories are unweighted; the config refuses weighted algorithms with them.
"""

from __future__ import annotations

from typing import Optional

from tff_lab.config.schema import ExperimentConfig


def expected_clients_per_round(cfg: ExperimentConfig, population: int) -> float:
    t = cfg.training
    if t.sampling == "poisson":
        return float(t.sampling_rate) * population
    return float(t.clients_per_round)


def default_clipped_count_stddev(expected_clients: float) -> float:
    """TFF's recommendation (``DifferentiallyPrivateFactory.gaussian_adaptive``): 5% of the
    expected number of clients; the adaptive factory otherwise derives a value that can make
    the quantile noise exceed TFF's sanity limit at noise 1.0 with 10 clients per round."""
    return 0.05 * expected_clients


def make_aggregator(cfg: ExperimentConfig, *, population: int, noise_multiplier: Optional[float] = None,
                    record_specs=None):
    """Returns a TFF aggregation factory, or None for TFF's default (weighted or unweighted mean).

    ``noise_multiplier`` is the calibrated value when ``privacy.target_epsilon`` is used.
    ``record_specs`` (the model's trainable-weight TensorSpecs) are needed by tree aggregation.
    """
    import tensorflow_federated as tff

    p, a = cfg.privacy, cfg.aggregation
    weighted = cfg.algorithm.weighting == "num_examples"
    n_clients = expected_clients_per_round(cfg, population)
    nm = noise_multiplier if noise_multiplier is not None else p.noise_multiplier
    dpf = tff.aggregators.DifferentiallyPrivateFactory
    if p.mechanism == "gaussian_fixed":
        return dpf.gaussian_fixed(noise_multiplier=nm, clients_per_round=n_clients, clip=p.clip)
    if p.mechanism == "gaussian_adaptive":
        stddev = p.clipped_count_stddev
        if stddev is None:
            stddev = default_clipped_count_stddev(n_clients)
        return dpf.gaussian_adaptive(noise_multiplier=nm, clients_per_round=n_clients,
                                     initial_l2_norm_clip=p.clip, target_unclipped_quantile=p.target_quantile,
                                     learning_rate=p.clip_learning_rate, clipped_count_stddev=stddev)
    if p.mechanism == "tree":
        if record_specs is None:
            raise ValueError("tree aggregation needs the model's record_specs")
        return dpf.tree_aggregation(noise_multiplier=nm, clients_per_round=n_clients, l2_norm_clip=p.clip,
                                    record_specs=record_specs, noise_seed=cfg.seed)
    if a.kind == "mean":
        return None
    if a.kind == "secure":
        return tff.learning.secure_aggregator(zeroing=a.zeroing, clipping=a.clipping, weighted=weighted)
    if a.kind == "robust":
        return tff.learning.robust_aggregator(zeroing=a.zeroing, clipping=a.clipping, weighted=weighted)
    if a.kind == "compression":
        return tff.learning.compression_aggregator(zeroing=a.zeroing, clipping=a.clipping, weighted=weighted)
    if a.kind == "ddp_secure":
        return tff.learning.ddp_secure_aggregator(noise_multiplier=nm or 0.0,
                                                  expected_clients_per_round=int(round(n_clients)),
                                                  bits=a.ddp_bits, zeroing=a.zeroing, rotation_type=a.ddp_rotation)
    raise ValueError(f"unknown aggregation kind '{a.kind}'")
