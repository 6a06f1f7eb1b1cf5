"""Config -> a TFF aggregation factory (mean, DP, secure, distributed DP, compression, robust).

DP is an aggregator passed to the algorithm, never a separate algorithm (as in TFF). The
DP factories are unweighted; the config refuses weighted algorithms with them rather than
silently switching.

Private aggregation (``privacy.mechanism``):

- ``gaussian_fixed`` / ``gaussian_adaptive``: the queries of TFF's
  ``DifferentiallyPrivateFactory.gaussian_fixed`` / ``gaussian_adaptive`` (tensorflow_privacy
  ``GaussianSumQuery`` / ``QuantileAdaptiveClipSumQuery`` normalised by the expected clients).
  With ``privacy.reproducible_noise`` (default) their Gaussian noise comes from a seed kept in
  the aggregator state (:mod:`tff_lab.privacy.queries`), so a seed fixes the noise and a resumed
  run draws what an uninterrupted one would; otherwise TFF's own factories are used as they are.
- ``tree``: TFF's ``DifferentiallyPrivateFactory.tree_aggregation`` (DP-FTRL); its noise is
  seeded by TFF itself (``noise_seed``) when reproducible.
- ``ddp_secure``: ``tff.learning.ddp_secure_aggregator`` (distributed Skellam under SecAgg).

No adaptive zeroing is put in front of a DP aggregator (TFF's ``dp_aggregator`` does): its
norm threshold is estimated from client updates without noise, a release the accountant would
not see.

Other aggregation (``aggregation.kind``): ``secure`` (``tff.learning.secure_aggregator``),
``robust`` (``tff.learning.robust_aggregator``), ``compression`` (uniform quantization with
``quantization_bits``, optionally after a randomized Hadamard rotation, inside TFF's default
adaptive clipping/zeroing, as ``tff.learning.compression_aggregator`` composes it). TFF's
simulation runtime evaluates secure sums as plain sums: they show what SecAgg's bounds and
clipping do to accuracy, not cryptographic cost.
"""

from __future__ import annotations

from typing import Optional

from tff_lab.config.schema import ExperimentConfig
from tff_lab.errors import ConfigError


def expected_clients_per_round(cfg: ExperimentConfig, population: int) -> float:
    t = cfg.training
    if t.sampling == "poisson":
        return float(t.sampling_rate) * population
    return float(t.clients_per_round)


def default_clipped_count_stddev(expected_clients: float, noise_multiplier: float = 0.0) -> float:
    """``max(0.05 * expected_clients, noise_multiplier)``.

    TFF's default (5% of the expected clients, Andrew et al. 2021) raises when
    ``noise_multiplier >= 2 * clipped_count_stddev`` (e.g. noise 1.0 with 10 clients per
    round), because TFF keeps the configured multiplier as the *total* and must raise the
    value noise to ``(z^-2 - (2 s)^-2)^-1/2``. With ``s >= z`` the value noise grows by at
    most 1/sqrt(3/4) = 15.5%, and the quantile estimate's count noise stays at 5% of the
    clients wherever TFF's default already worked.
    """
    return max(0.05 * float(expected_clients), float(noise_multiplier))


def resolve_clipped_count_stddev(
    configured: Optional[float], expected_clients: float, noise_multiplier: float
) -> float:
    """The clipped-count stddev the adaptive aggregator uses; refuses values TFF would reject."""
    if configured is None:
        return default_clipped_count_stddev(expected_clients, noise_multiplier)
    if noise_multiplier > 0 and noise_multiplier >= 2 * configured:
        raise ConfigError(
            "privacy.clipped_count_stddev",
            f"{configured} is too small for noise multiplier {noise_multiplier}: the adaptive clip "
            f"needs noise_multiplier < 2 * clipped_count_stddev (TFF treats the noise multiplier as the "
            f"total over the values and the clipped count); leave it unset for a safe default",
        )
    return float(configured)


def needs_secure_intrinsics(cfg: ExperimentConfig) -> bool:
    """Whether the aggregator uses TFF's secure-sum intrinsics. TFF's native local runtime
    refuses them ("Cannot embed a federated value"); its test runtime
    (``tff.backends.test.set_sync_test_cpp_execution_context``) compiles them to plain sums,
    which is all a simulation can do."""
    return cfg.aggregation.kind == "secure" or cfg.privacy.mechanism == "ddp_secure"


def dp_noise_seed(cfg: ExperimentConfig) -> Optional[int]:
    """Seed of the DP noise: from the experiment seed when reproducible, else None (fresh)."""
    return int(cfg.seed) if cfg.privacy.reproducible_noise else None


def make_aggregator(
    cfg: ExperimentConfig, *, population: int, noise_multiplier: Optional[float] = None, record_specs=None
):
    """Returns a TFF aggregation factory, or None for TFF's default (weighted or unweighted mean).

    ``noise_multiplier`` is the value to use (after calibration from ``privacy.target_epsilon``);
    without it ``privacy.noise_multiplier``. ``record_specs`` (the model's trainable-weight
    ``tf.TensorSpec`` list) are needed by tree aggregation.
    """
    p, a = cfg.privacy, cfg.aggregation
    weighted = cfg.algorithm.weighting == "num_examples"
    if p.enabled:
        nm = noise_multiplier if noise_multiplier is not None else p.noise_multiplier
        if nm is None:
            raise ConfigError("privacy.noise_multiplier", "no noise multiplier given or calibrated")
        if p.audit.canaries:  # privacy audit: canary clients join the population (tff_lab.privacy.audit)
            from tff_lab.privacy.audit import canary_aggregator

            return canary_aggregator(
                cfg, population=population, noise_multiplier=float(nm), record_specs=record_specs, build=_dp_aggregator
            )
        return _dp_aggregator(cfg, population=population, noise_multiplier=float(nm), record_specs=record_specs)
    if a.kind == "mean":
        return None
    import tensorflow_federated as tff

    if a.kind == "secure":
        return tff.learning.secure_aggregator(zeroing=a.zeroing, clipping=a.clipping, weighted=weighted)
    if a.kind == "robust":
        return tff.learning.robust_aggregator(zeroing=a.zeroing, clipping=a.clipping, weighted=weighted)
    if a.kind == "compression":
        return compression_aggregator(cfg)
    raise ValueError(f"unknown aggregation kind '{a.kind}'")


def _dp_aggregator(cfg: ExperimentConfig, *, population: int, noise_multiplier: float, record_specs):
    import tensorflow_federated as tff

    from tff_lab.privacy import queries

    p = cfg.privacy
    n_clients = expected_clients_per_round(cfg, population)
    nm = noise_multiplier
    dpf = tff.aggregators.DifferentiallyPrivateFactory
    seed = dp_noise_seed(cfg)
    if p.mechanism == "gaussian_fixed":
        if seed is None:
            return dpf.gaussian_fixed(noise_multiplier=nm, clients_per_round=n_clients, clip=float(p.clip))
        return dpf(queries.seeded_gaussian_fixed_query(nm, n_clients, float(p.clip), seed))
    if p.mechanism == "gaussian_adaptive":
        stddev = resolve_clipped_count_stddev(p.clipped_count_stddev, n_clients, nm)
        if seed is None:
            return dpf.gaussian_adaptive(
                noise_multiplier=nm,
                clients_per_round=n_clients,
                initial_l2_norm_clip=float(p.clip),
                target_unclipped_quantile=float(p.target_quantile),
                learning_rate=float(p.clip_learning_rate),
                clipped_count_stddev=stddev,
            )
        from tensorflow_federated.python.aggregators.differential_privacy import adaptive_clip_noise_params

        value_nm, stddev = adaptive_clip_noise_params(nm, n_clients, stddev)
        return dpf(
            queries.seeded_gaussian_adaptive_query(
                value_nm, n_clients, float(p.clip), float(p.target_quantile), float(p.clip_learning_rate), stddev, seed
            )
        )
    if p.mechanism == "tree":
        if record_specs is None:
            raise ValueError("tree aggregation needs the model's record_specs")
        return dpf.tree_aggregation(
            noise_multiplier=nm,
            clients_per_round=n_clients,
            l2_norm_clip=float(p.clip),
            record_specs=record_specs,
            noise_seed=seed,
        )
    if p.mechanism == "ddp_secure":
        return ddp_secure_aggregator(cfg, expected_clients=n_clients, noise_multiplier=nm)
    raise ValueError(f"unknown privacy mechanism '{p.mechanism}'")


def ddp_secure_aggregator(cfg: ExperimentConfig, *, expected_clients: float, noise_multiplier: float):
    """``tff.learning.ddp_secure_aggregator``'s composition (distributed Skellam under SecAgg, adaptive
    L2 clip starting at 0.1, unweighted mean with a secure count, optional adaptive zeroing), with
    the adaptive clip's clipped-count stddev set safely (TFF's fixed default of 5% of the clients
    raises at noise 1.0 with 10 clients, and ``ddp_secure_aggregator`` does not expose it)."""
    import tensorflow_federated as tff
    from tensorflow_federated.python.aggregators import distributed_dp
    from tensorflow_federated.python.learning import model_update_aggregator as tff_mua

    # TFF's test compiler (which turns the secure sums into plain sums for simulation) serialises
    # this deeply nested computation past upb protobuf's default recursion limit of 100
    # ("DecodeError: Error parsing message"); allow deep messages, process-wide.
    try:
        from google._upb import _message as upb_message

        upb_message.SetAllowOversizeProtos(True)
    except ImportError:  # pragma: no cover - other protobuf implementations have no such limit here
        pass
    a, p = cfg.aggregation, cfg.privacy
    n = max(1, int(round(expected_clients)))
    stddev = resolve_clipped_count_stddev(p.clipped_count_stddev, n, noise_multiplier)
    try:
        factory = distributed_dp.DistributedDpSumFactory(
            noise_multiplier=noise_multiplier,
            expected_clients_per_round=n,
            bits=a.ddp_bits,
            l2_clip=0.1,
            mechanism="distributed_skellam",
            rotation_type=a.ddp_rotation,
            auto_l2_clip=True,
            auto_l2_clip_count_stddev=stddev,
        )
    except ValueError as e:  # TFF's bit-width checks against the expected clients
        raise ConfigError("aggregation.ddp_bits", str(e)) from None
    factory = tff.aggregators.UnweightedMeanFactory(
        value_sum_factory=factory,
        count_sum_factory=tff.aggregators.SecureSumFactory(upper_bound_threshold=1, lower_bound_threshold=0),
    )
    if a.zeroing:
        factory = tff_mua._default_zeroing(factory, secure_estimation=True)  # pylint: disable=protected-access
    return factory


def compression_aggregator(cfg: ExperimentConfig):
    """TFF's ``compression_aggregator`` composition with configurable bits, threshold and rotation.

    TFF's own ``tff.learning.compression_aggregator`` fixes 8 bits and quantizes only tensors of
    more than 20,000 elements, i.e. nothing in the small models here. This builds the same
    chain: ``EncodedSumFactory.quantize_above_threshold`` (uniform quantization to
    ``quantization_bits`` between the tensor's min and max, bit-packed), optionally inside a
    ``HadamardTransformFactory`` (randomized Hadamard rotation, which spreads a vector's energy
    over its coordinates so that min-max quantization loses less; Suresh et al. 2017), inside the
    (weighted or unweighted) mean, inside TFF's default adaptive clipping and zeroing.
    """
    import tensorflow_federated as tff
    from tensorflow_federated.python.learning import model_update_aggregator as tff_mua

    a = cfg.aggregation
    weighted = cfg.algorithm.weighting == "num_examples"
    value_sum = tff.aggregators.EncodedSumFactory.quantize_above_threshold(
        quantization_bits=a.quantization_bits, threshold=a.quantization_threshold, stochastic=a.stochastic_rounding
    )
    if a.rotation == "hadamard":
        value_sum = tff.aggregators.HadamardTransformFactory(inner_agg_factory=value_sum)
    factory = tff.aggregators.MeanFactory(value_sum) if weighted else tff.aggregators.UnweightedMeanFactory(value_sum)
    # TFF's own defaults (model_update_aggregator._default_clipping/_default_zeroing), as
    # compression_aggregator applies them.
    if a.clipping:
        factory = tff_mua._default_clipping(factory)  # pylint: disable=protected-access
    if a.zeroing:
        factory = tff_mua._default_zeroing(factory)  # pylint: disable=protected-access
    return factory


def resolve_aggregator(
    cfg: ExperimentConfig,
    *,
    population: int,
    noise_multiplier: Optional[float] = None,
    record_specs=None,
    aggregator=None,
):
    """The run's aggregation factory: a user's (``aggregator`` or ``aggregation.builder``) or a
    built-in one (:func:`make_aggregator`). A user's may be a factory instance or a function
    ``(**aggregation.kwargs) -> factory``; it must be a ``tff.aggregators`` factory."""
    from tff_lab import parts as parts_lib
    from tff_lab.errors import PartTypeError

    if aggregator is None and cfg.aggregation.builder is None:
        return make_aggregator(cfg, population=population, noise_multiplier=noise_multiplier, record_specs=record_specs)
    import tensorflow_federated as tff

    name = cfg.aggregation.builder or parts_lib.object_name(aggregator)
    obj = aggregator if aggregator is not None else parts_lib.resolve(cfg.aggregation.builder, "aggregation.builder")
    kinds = (tff.aggregators.UnweightedAggregationFactory, tff.aggregators.WeightedAggregationFactory)
    if not isinstance(obj, kinds):
        if not callable(obj):
            raise PartTypeError(
                "aggregator",
                f"{name!r} is a {type(obj).__name__}, expected a tff.aggregators "
                "factory (UnweightedAggregationFactory or WeightedAggregationFactory)",
            )
        try:
            obj = obj(**cfg.aggregation.kwargs)
        except TypeError as e:
            raise PartTypeError("aggregator", f"calling {name!r} failed: {e}") from None
    if not isinstance(obj, kinds):
        raise PartTypeError(
            "aggregator",
            f"{name!r} gave a {type(obj).__name__}, expected a tff.aggregators "
            "factory (UnweightedAggregationFactory or WeightedAggregationFactory)",
        )
    return obj


def declared_dp_event(aggregator):
    """A user aggregator's declaration of what it does, for the accountant: an attribute
    ``dp_event(cfg, population) -> dp_accounting.DpEvent`` giving ONE round's event (sampling
    included). None when it declares nothing (the run then reports no epsilon, and says why)."""
    fn = getattr(aggregator, "dp_event", None)
    return fn if callable(fn) else None
