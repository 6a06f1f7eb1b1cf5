"""The one place engines are assembled, and ``training.engine: auto`` decided.

``auto`` (the default) runs the vectorised engine whenever it can run the experiment exactly as
TFF's runtime does (:func:`tff_lab.engines.vectorized.check_supported`, the model checks of its
constructor, and its round graph traced once), else the TFF engine; :class:`EngineChoice` says
which ran and why (the progress line, ``summary.json`` and ``config.yaml`` report it). ``tff`` and
``vectorized`` force one (``vectorized`` refuses in one line what it cannot run).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from tff_lab.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EngineChoice:
    requested: str  # training.engine
    name: str  # the engine that runs: "tff" | "vectorized"
    reason: str  # one line: why this engine

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def build_engine(cfg, spec, data, noise: Optional[float], record_specs) -> tuple[Any, Any, EngineChoice]:
    """(engine, the TFF aggregator or None, the choice). ``spec`` is the run's ModelSpec."""
    requested = cfg.training.engine
    why_not = None
    if requested in ("auto", "vectorized"):
        try:
            engine = _vectorized(cfg, spec, data, noise, probe=requested == "auto")
        except ConfigError as e:
            if requested == "vectorized":
                raise
            why_not = f"{e.where}: {e.message.removesuffix('; use training.engine: tff')}"
        except Exception as e:  # noqa: BLE001 - auto: a round graph it cannot build goes to TFF's runtime
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            why_not = (
                f"model: the vectorised engine could not build its round graph ({type(e).__name__}: "
                f"{lines[-1][:200] if lines else ''})"
            )
        else:
            reason = (
                "training.engine: vectorized"
                if requested == "vectorized"
                else "auto: the vectorised engine runs this experiment exactly as TFF does"
            )
            return engine, None, EngineChoice(requested, "vectorized", reason)
    if cfg.algorithm.builder is None:
        from tff_lab.algorithms import algorithm_class

        refusal = algorithm_class(cfg.algorithm.name).tff_refusal
        if refusal is not None:
            raise ConfigError(
                "algorithm.name", refusal + (f"; here the vectorised engine refused it ({why_not})" if why_not else "")
            )
    engine, agg = _tff(cfg, spec, data, noise, record_specs)
    reason = "training.engine: tff" if requested == "tff" else f"auto: {why_not}"
    return engine, agg, EngineChoice(requested, "tff", reason)


def _vectorized(cfg, spec, data, noise, *, probe: bool):
    from tff_lab.engines.vectorized import VectorizedEngine, check_supported

    check_supported(cfg)
    engine = VectorizedEngine(
        cfg,
        data,
        model_builder=lambda: spec.build(data.input_shape, data.num_classes),
        loss_builder=spec.make_loss,
        metrics_builder=spec.make_metrics,
        noise_multiplier=noise,
    )
    if probe:  # a model whose round graph cannot be built is found now, not in round 1 (TF's own
        import logging  # error logs of the failed conversion are silenced: the fallback says why)

        import tensorflow as tf

        logger = tf.get_logger()
        level = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            engine.trace()
        finally:
            logger.setLevel(level)
    return engine


def _tff(cfg, spec, data, noise, record_specs):
    from tff_lab.engines.base import TFFEngine
    from tff_lab.federated import runtime
    from tff_lab.federated.aggregators import needs_secure_intrinsics, resolve_aggregator
    from tff_lab.federated.algorithms import check_checkpointable, resolve_process
    from tff_lab.models.tff_adapter import data_element_spec, make_model_fn

    runtime.ensure_context(cfg.training, secure=needs_secure_intrinsics(cfg))
    agg = resolve_aggregator(cfg, population=data.num_clients, noise_multiplier=noise, record_specs=record_specs)
    model_fn = make_model_fn(spec, data.input_shape, data.num_classes, batch_spec=data_element_spec(data))
    process = resolve_process(cfg, model_fn, agg)
    engine = TFFEngine(cfg, process, data)
    check_checkpointable(engine.initialize())
    return engine, agg
