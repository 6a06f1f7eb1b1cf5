"""The one training loop, as stages a script can call: build -> initialize -> run_rounds -> finalize.

- :func:`build` resolves every part (model, data, learning process or engine, aggregator, hooks),
  built-in or a user's, through the same registries, and checks them, touching no file.
- :func:`initialize` prepares RUN_DIR (fresh, ``resume`` or ``overwrite``) and gives the starting
  :class:`RunState` (a fresh state with the seeded initial weights, or the last checkpoint).
- :func:`run_rounds` samples, trains (the engine), runs the hooks (privacy ledger, communication),
  evaluates, checkpoints, and stops on divergence, a privacy budget or SIGTERM.
- :func:`finalize` evaluates, saves the model, trains the centralized baseline, writes plots and
  ``summary.json``.

:func:`run_experiment` is the four stages in order. Determinism: all randomness derives from
``cfg.seed`` and the round number (stateless per-round seeds), so a resumed run draws exactly what
an uninterrupted one would, and the engine's state is restored bit for bit from the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from tff_lab import run_dir as run_dir_lib
from tff_lab.aggregation.secagg.protocol import SecAggAborted
from tff_lab.config import ExperimentConfig, config_hash, from_dict, load_config
from tff_lab.errors import ConfigError, PartValueError, Preempted, TrainingDiverged, WorkerLost
from tff_lab.fileio import atomic_write_text, replace_dir
from tff_lab.sampling import client_dataset, sample_clients  # noqa: F401  (public here too)
from tff_lab.training import checkpoint as ckpt_lib
from tff_lab.training.hooks import RoundHook, RoundInfo, RunContext

# What a run writes into RUN_DIR; --overwrite replaces exactly these (nothing else of the user's).
RUN_ARTIFACTS = (
    "config.yaml",
    "parts.json",
    "client_stats.json",
    "checkpoints",
    "tb",
    "plots",
    "model",
    "export",
    "metrics.jsonl",
    "metrics.csv",
    "summary.json",
    "privacy.json",
    "privacy_audit.json",
)


# ----------------------------------------------------------------------------------------------
# build
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Experiment:
    """Everything a run needs, resolved and checked (see :func:`build`)."""

    cfg: ExperimentConfig
    data: Any  # FederatedData
    model: Any  # ModelSpec
    engine: Any  # tff_lab.engines.Engine
    hooks: list
    ctx: RunContext
    init_weights: list
    noise_multiplier: Optional[float]
    parts: list  # provenance of every part that ran
    stats: dict
    eval_model: Any
    accuracy_name: str

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.close()


def _resolve_config(config, overrides: Sequence[str]) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        if overrides:
            from tff_lab.config import apply_overrides, to_dict

            return from_dict(apply_overrides(to_dict(config), overrides))
        return config
    if config is not None:
        from tff_lab import parts as parts_lib

        parts_lib.add_search_path(Path(config).parent)
    return load_config(config, overrides)


def _with_python_parts(cfg: ExperimentConfig, model, data, algorithm, aggregator):
    """Registers parts passed as Python objects and names them in the config (so the resolved
    config records them and every stage resolves them as it resolves built-in parts).

    Any object is accepted as it is (functions, lambdas, closures, ``functools.partial``, bound
    methods, callable instances, factory instances): its name is its import path when another
    process can import exactly it, else ``python:<kind>:<qualname>``; what it builds is digested
    in :func:`build` (see :mod:`tff_lab.parts`). A ModelSpec's plain kwargs and declared outputs go
    into ``model.kwargs``/``model.outputs`` (config.yaml and the config hash keep them); the zoo's
    fields (``model.name``, ``hidden_units``, ...) no longer apply and are reset."""
    from tff_lab import parts as parts_lib
    from tff_lab.config.schema import DataConfig, ModelConfig

    fd = None
    if model is not None:
        spec = model if _is_spec(model) else None
        name = parts_lib.part_name(spec.builder if spec is not None else model, "model")
        if (
            spec is not None
            and (spec.loss is not None or spec.metrics is not None)
            and not parts_lib.is_python_name(name)
        ):
            # The builder alone (importable) would lose the spec's loss/metrics in another process.
            name = f"{parts_lib.PYTHON_PREFIX}model:{name.replace(':', '.')}"
        kwargs = dict(cfg.model.kwargs)
        outputs = cfg.model.outputs
        if spec is not None:
            if spec.kwargs and _plain_data(dict(spec.kwargs)):
                kwargs = {**dict(spec.kwargs), **kwargs}
            outputs = outputs or spec.outputs
            if spec.name == "model":
                model = dataclasses.replace(spec, name=name)
        parts_lib.register_object(
            model, name, description=parts_lib.describe(spec.builder if spec is not None else model)
        )
        cfg = dataclasses.replace(cfg, model=ModelConfig(builder=name, kwargs=kwargs, outputs=outputs))
    if data is not None:
        from tff_lab.data import federated_data

        fd = federated_data(data, cfg=cfg)
        name = f"{parts_lib.PYTHON_PREFIX}data:{type(data).__name__}"
        parts_lib.register_object(fd, name, description=parts_lib.describe(data))
        defaults = DataConfig()
        # Python data replaces the source: what configured a source no longer applies.
        cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(
                defaults,
                source=name,
                test_fraction=cfg.data.test_fraction,
                client_eval_fraction=cfg.data.client_eval_fraction,
                max_clients=cfg.data.max_clients,
            ),
        )
    if algorithm is not None:
        name = parts_lib.register_object(
            algorithm, parts_lib.part_name(algorithm, "algorithm"), description=parts_lib.describe(algorithm)
        )
        cfg = dataclasses.replace(cfg, algorithm=dataclasses.replace(cfg.algorithm, builder=name))
    if aggregator is not None:
        name = parts_lib.register_object(
            aggregator, parts_lib.part_name(aggregator, "aggregator"), description=parts_lib.describe(aggregator)
        )
        cfg = dataclasses.replace(cfg, aggregation=dataclasses.replace(cfg.aggregation, builder=name))
    cfg.validate()
    return cfg, fd


def _plain_data(value) -> bool:
    """Whether a value survives YAML (config.yaml) unchanged: str, int, float, bool, None, lists, dicts."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return isinstance(value, list) and all(_plain_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_data(v) for k, v in value.items())
    return False


def _with_what_ran(cfg: ExperimentConfig, data) -> ExperimentConfig:
    """The config as it ran: a user source's population is what it loaded (``data.num_clients``
    is not read by a user's loader or Python data)."""
    from tff_lab.config.schema import BUILTIN_SOURCES

    if cfg.data.source not in BUILTIN_SOURCES and cfg.data.num_clients != data.num_clients:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_clients=int(data.num_clients)))
    return cfg


def _is_spec(obj) -> bool:
    from tff_lab.models.spec import ModelSpec

    return isinstance(obj, ModelSpec)


def _check_user_parts_config(cfg: ExperimentConfig) -> None:
    if cfg.aggregation.builder is not None and cfg.privacy.enabled:
        raise ConfigError(
            "aggregation.builder",
            "a user aggregator replaces tff_lab's aggregator, but "
            f"privacy.mechanism is '{cfg.privacy.mechanism}'; use one or the other (a private user "
            "aggregator declares its dp_event)",
        )
    if cfg.aggregation.builder is not None and cfg.aggregation.kind != "mean":
        raise ConfigError(
            "aggregation.kind",
            f"'{cfg.aggregation.kind}' has no effect with aggregation.builder "
            "(the user aggregator replaces it); leave kind: mean",
        )
    if cfg.model.builder is not None:
        from tff_lab.config.schema import ModelConfig

        defaults = ModelConfig()
        for name in ("name", "hidden_units", "cnn_filters", "dropout"):
            if getattr(cfg.model, name) != getattr(defaults, name):
                raise ConfigError(
                    f"model.{name}",
                    f"has no effect with model.builder ({cfg.model.builder}): only "
                    "tff_lab's own models read it; remove it (your builder's arguments go in "
                    "model.kwargs)",
                )
    from tff_lab.algorithms.optimizers import check_engine

    check_engine(cfg)


def _check_model_fits(spec, model, data):
    """The model's output must fit the labels: shape (batch, *label_shape, num_classes); and what
    it emits (probabilities or logits) is settled on this probe batch (a declaration the outputs
    contradict is refused). Returns the spec with ``outputs`` settled."""
    from tff_lab.models.spec import check_outputs

    x, y = data.test
    if len(y) == 0:
        x, y = data.union_train()
    if len(y) == 0:
        return spec if spec.outputs else dataclasses.replace(spec, outputs="probabilities")
    n = min(16, len(y))
    try:
        out = model(x[:n], training=False)
    except Exception as e:  # noqa: BLE001 - the user's model cannot take the data at all
        raise PartValueError(
            "model",
            f"{spec.name!r} cannot take the data's inputs of shape {x.shape[1:]} "
            f"({x.dtype}): {type(e).__name__}: {str(e).splitlines()[0][:200]}",
        ) from None
    if isinstance(out, (list, tuple, dict)):
        raise PartValueError(
            "model",
            f"{spec.name!r} returns {type(out).__name__} of outputs; expected one tensor "
            f"of shape (batch, {data.num_classes}) of class scores",
        )
    want = (n, *y.shape[1:], data.num_classes)
    if tuple(out.shape) != want:
        raise PartValueError(
            "model",
            f"{spec.name!r} outputs shape {tuple(out.shape)[1:]} per example, but the "
            f"labels have shape {y.shape[1:]} with {data.num_classes} classes: expected "
            f"{want[1:]} ({spec.outputs or 'probabilities or logits'})",
        )
    return check_outputs(spec, np.asarray(out))


def build(
    config: Union[str, os.PathLike, ExperimentConfig, None] = None,
    *,
    overrides: Iterable[str] = (),
    model=None,
    data=None,
    algorithm=None,
    aggregator=None,
    hooks: Optional[list] = None,
) -> Experiment:
    """Resolves and checks every part of an experiment; writes nothing.

    Args:
      config: an experiment YAML path, an :class:`ExperimentConfig`, or None (the default).
      overrides: ``key.sub=value`` strings applied on top.
      model: your model: a :class:`~tff_lab.models.ModelSpec` or a builder
        ``(input_shape, num_classes, **model.kwargs) -> tf.keras.Model`` (probabilities out;
        use ModelSpec(outputs="logits") otherwise).
      data: your client data: a TFF ``ClientData``, a mapping client id -> ``(x, y)`` /
        ``tf.data.Dataset``, or a :class:`~tff_lab.data.FederatedData`
        (:func:`tff_lab.data.federated_data` adds a test set and preprocessing).
      algorithm: ``builder(model_fn, model_aggregator=..., **algorithm.kwargs) ->
        tff.learning.templates.LearningProcess``.
      aggregator: a ``tff.aggregators`` factory (or a function returning one). A private one
        declares ``dp_event(cfg, population)``; otherwise no epsilon is reported.
      hooks: extra :class:`~tff_lab.training.hooks.RoundHook` objects.

    Raises:
      ConfigError / TypeError / ValueError naming the part and what was expected.
    """
    import tensorflow as tf

    from tff_lab.data import client_stats, load_federated_data
    from tff_lab.data.sources import check_finite
    from tff_lab.models import initial_weights, resolve_model

    cfg = _resolve_config(config, list(overrides))
    cfg, fd = _with_python_parts(cfg, model, data, algorithm, aggregator)
    _check_user_parts_config(cfg)
    spec = resolve_model(cfg.model)
    if fd is not None:
        check_finite(fd, "data")  # a source's data is checked by load_federated_data
    loaded = fd if fd is not None else load_federated_data(cfg)
    cfg = _with_what_ran(cfg, loaded)
    if cfg.training.sampling == "uniform" and cfg.training.clients_per_round > loaded.num_clients:
        raise ConfigError(
            "training.clients_per_round",
            f"expected at most the population ({loaded.num_clients} clients), got {cfg.training.clients_per_round}",
        )
    from tff_lab import parts as parts_lib

    probe = spec.build(loaded.input_shape, loaded.num_classes)
    spec = _check_model_fits(spec, probe, loaded)
    if cfg.model.outputs != spec.outputs:  # the resolved config records what the model emits
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, outputs=spec.outputs))
    model_builds = parts_lib.model_builds(probe)
    del probe
    init = initial_weights(spec, loaded.input_shape, loaded.num_classes, cfg.seed)
    from tff_lab.privacy.audit import audit_population

    population = loaded.num_clients
    total = audit_population(cfg, population)  # the sampler's and the ledger's population (+ audit canaries)
    noise = _resolve_noise(cfg, total, sum(math.prod(int(d) for d in w.shape) for w in init))
    record_specs = [tf.TensorSpec(w.shape, tf.as_dtype(w.dtype)) for w in init]

    engine, agg = _build_engine(cfg, spec, loaded, noise, record_specs)
    parts = _provenance(cfg, spec, agg, model_builds=model_builds, data=loaded, record_specs=record_specs)
    all_hooks = _default_hooks(cfg, agg) + list(hooks or [])
    ctx = RunContext(
        cfg=cfg,
        run_dir=Path("."),
        population=total,
        noise_multiplier=noise,
        model_weight_shapes=[list(w.shape) for w in init],
        model_weight_dtypes=[str(w.dtype) for w in init],
        data=loaded,
        initial_weights=init,
    )
    eval_model = spec.compile(spec.build(loaded.input_shape, loaded.num_classes))
    acc_name = eval_model.metrics_names[1] if len(eval_model.metrics_names) > 1 else "accuracy"
    return Experiment(
        cfg=cfg,
        data=loaded,
        model=spec,
        engine=engine,
        hooks=all_hooks,
        ctx=ctx,
        init_weights=init,
        noise_multiplier=noise,
        parts=parts,
        stats=client_stats(loaded),
        eval_model=eval_model,
        accuracy_name=acc_name,
    )


def _build_engine(cfg, spec, data, noise, record_specs):
    """(engine, TFF aggregator or None); ``engine.choice`` says which engine runs and why
    (``training.engine: auto`` picks the vectorised one whenever it runs the experiment exactly)."""
    from tff_lab.engines.factory import build_engine

    engine, agg, choice = build_engine(cfg, spec, data, noise, record_specs)
    engine.choice = choice
    return engine, agg


def _provenance(cfg, spec, agg, *, model_builds: Optional[dict] = None, data=None, record_specs=None) -> list[dict]:
    """Every part that ran: its name, type, source file and sha256, and (user parts) a digest of
    what it builds: the model's architecture and weight shapes, the data's arrays, the aggregator's
    type signature and settings; an algorithm builder's code and bound arguments."""
    from tff_lab import parts as parts_lib
    from tff_lab.data.registry import source_part

    model = dict(spec.provenance) or {"kind": "model", "name": spec.name}
    if cfg.model.builder is not None:
        model.update(parts_lib.registered_description(cfg.model.builder) or {})
        model["name"] = cfg.model.builder
    if model_builds:
        model.update(model_builds)
    model["outputs"] = spec.outputs
    if spec.kwargs:
        model["kwargs"] = {k: (v if _plain_data(v) else repr(v)[:200]) for k, v in dict(spec.kwargs).items()}
    out = [model]
    _, prov = source_part(cfg)
    prov = dict(prov)
    prov.update(parts_lib.registered_description(cfg.data.source) or {})
    if data is not None and not prov.get("builtin"):
        prov.update(parts_lib.data_builds(data))
    out.append(prov)
    if cfg.algorithm.builder is not None:
        obj = parts_lib.resolve(cfg.algorithm.builder, "algorithm.builder")
        out.append(parts_lib.provenance(obj, name=cfg.algorithm.builder, kind="algorithm"))
    else:
        out.append({"kind": "algorithm", "name": cfg.algorithm.name, "builtin": True})
    if cfg.aggregation.builder is not None:
        obj = parts_lib.resolve(cfg.aggregation.builder, "aggregation.builder")
        prov = parts_lib.provenance(obj, name=cfg.aggregation.builder, kind="aggregator")
        if agg is not None and record_specs is not None:
            prov.update(parts_lib.aggregator_builds(agg, record_specs))
        out.append(prov)
    return out


def _default_hooks(cfg: ExperimentConfig, agg) -> list[RoundHook]:
    from tff_lab.federated.communication import CommunicationHook

    hooks: list[RoundHook] = [CommunicationHook()]
    if cfg.aggregation.kind == "secagg":
        from tff_lab.aggregation.secagg.hook import SecAggHook

        hooks.append(SecAggHook())
    if cfg.privacy.enabled:
        from tff_lab.privacy.hook import PrivacyHook

        hooks.append(PrivacyHook())
    elif cfg.aggregation.builder is not None:
        from tff_lab.federated.aggregators import declared_dp_event
        from tff_lab.federated.declared_dp import DeclaredPrivacyHook

        hooks.append(DeclaredPrivacyHook(cfg.aggregation.builder, declared_dp_event(agg), aggregator=agg))
    return hooks


def _resolve_noise(cfg: ExperimentConfig, population: int, model_dim: Optional[int] = None) -> Optional[float]:
    if not cfg.privacy.enabled:
        return None
    from tff_lab.privacy.calibration import resolve_noise_multiplier

    return resolve_noise_multiplier(cfg, population, model_dim)


# ----------------------------------------------------------------------------------------------
# initialize
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunState:
    """Where a run stands: the engine state after ``round`` rounds, and the run's bookkeeping."""

    run_dir: Path
    state: Any
    round: int
    counters: dict
    stop_reason: Optional[str]
    writer: Any
    t_start: float
    owner: Optional[run_dir_lib.Owner] = None  # the exclusive hold on RUN_DIR (tff_lab.run_dir)
    retries_left: int = 0


def _existing_config(owner: run_dir_lib.Owner) -> ExperimentConfig:
    text = owner.read_verified("config.yaml")
    try:
        import yaml

        return from_dict(yaml.safe_load(text) or {}, validate=False)
    except Exception as e:  # noqa: BLE001 - any malformed content: one line
        raise ConfigError(
            str(owner.path / "config.yaml"),
            f"the run's resolved config is unreadable ({type(e).__name__}); it was written "
            "by tff-lab and must not be edited",
        ) from None


def _prepare_run_dir(
    owner: run_dir_lib.Owner, cfg: ExperimentConfig, *, resume: bool, overwrite: bool
) -> tuple[Optional[int], bool]:
    """Checks RUN_DIR against the experiment; returns (checkpoint round to resume from, replace?).

    Refuses, before anything is written: a non-empty folder that is not a tff_lab run (with or
    without ``overwrite``), a different experiment's run, a run of this experiment without
    ``resume``/``overwrite``, and an extension that is not only more rounds."""
    run_dir = owner.path
    if owner.is_empty():
        return None, False
    if not owner.is_ours():
        raise ConfigError(
            str(run_dir),
            f"RUN_DIR is not empty and holds no tff-lab run (no "
            f"{run_dir_lib.MARKER}); it is never overwritten: choose a new --out",
        )
    if overwrite:
        return None, True
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(
            str(run_dir),
            "RUN_DIR holds tff-lab output that is not a run (no config.yaml); choose a new --out or pass --overwrite",
        )
    existing = _existing_config(owner)
    if config_hash(existing) != config_hash(cfg):
        if extension_hash(existing) != extension_hash(cfg):
            if resume:  # name the first field that differs
                check_resume_config(existing, cfg)
            raise ConfigError(
                str(run_dir),
                "RUN_DIR already holds a different experiment (its config.yaml "
                "differs); choose a new --out or pass --overwrite",
            )
        # Only training.rounds differs: extending the run.
        if not resume:
            raise ConfigError(
                str(run_dir),
                f"RUN_DIR holds this experiment with training.rounds="
                f"{existing.training.rounds}; pass --resume to continue it to "
                f"{cfg.training.rounds} rounds, or --overwrite to start again",
            )
        done = ckpt_lib.latest(run_dir / "checkpoints")
        check_resume_config(existing, cfg, done_round=done or 0)  # fewer rounds, a calibrated noise: refused
        return done, False
    if not resume:
        raise ConfigError(
            str(run_dir),
            "RUN_DIR already holds a run of this experiment; pass --resume to "
            "continue it or --overwrite to start again",
        )
    return ckpt_lib.latest(run_dir / "checkpoints"), False


def initialize(
    exp: Experiment, out_dir: Union[str, os.PathLike], *, resume: bool = False, overwrite: bool = False
) -> RunState:
    """Takes RUN_DIR (exclusively, for the whole run) and returns the starting state (fresh, or the
    last checkpoint's).

    RUN_DIR is owned by :mod:`tff_lab.run_dir`: a second process is refused while this run holds it;
    with ``overwrite`` an earlier run is moved aside and put back if the new run fails before its
    first checkpoint (nothing of a working run is lost to a broken experiment); a folder that is not
    a tff_lab run is never overwritten. :func:`finalize` (or :func:`release`) lets it go.
    """
    from tff_lab.training.metrics import MetricsWriter

    cfg = exp.cfg
    owner = run_dir_lib.acquire(out_dir, kind="run", where=str(out_dir))
    run_dir = owner.path if Path(out_dir).is_absolute() else Path(out_dir)
    try:
        start_round, replace = _prepare_run_dir(owner, cfg, resume=resume, overwrite=overwrite)
        if replace:
            owner.begin_replace([*RUN_ARTIFACTS, run_dir_lib.MARKER])
        exp.ctx.run_dir = run_dir
        owner.mark(experiment=cfg.name)
        owner.write_text("config.yaml", _config_text(exp, run_dir))
        owner.write_text("parts.json", json.dumps(exp.parts, indent=1))
        if _policy_allows(exp, "client_stats"):
            owner.write_text("client_stats.json", json.dumps(exp.stats, indent=1))
        for h in exp.hooks:
            h.on_start(exp.ctx)
        rs = RunState(
            run_dir=run_dir,
            state=None,
            round=0,
            counters={"example_passes": 0, "train_seconds": 0.0},
            stop_reason=None,
            writer=None,
            t_start=time.time(),
            owner=owner,
            retries_left=cfg.training.worker_retries,
        )
        _restore(exp, rs, start_round)
        rs.writer = MetricsWriter(run_dir, resume_round=rs.round)  # drops rows after the checkpoint
    except BaseException:
        owner.rollback()
        created = owner.created
        owner.release()
        if created:
            shutil.rmtree(owner.path, ignore_errors=True)
        raise
    return rs


def release(rs: RunState, *, failed: bool = False) -> None:
    """Lets RUN_DIR go. ``failed``: a replacement that never reached its first checkpoint is rolled
    back (the earlier run comes back as it was)."""
    if rs.owner is None:
        return
    if failed:
        with contextlib.suppress(Exception):
            if rs.writer is not None:
                rs.writer.close()
        rs.owner.rollback()
    else:
        rs.owner.commit()
    rs.owner.release()
    rs.owner = None


def _config_text(exp: Experiment, run_dir: Path) -> str:
    """config.yaml: what ran. Fields that had no effect are left out (they read back as their
    defaults, so the config hash is the same): the zoo's model fields beside a builder, a natural
    source's ``num_clients``, synthetic settings of other sources."""
    import yaml

    from tff_lab.config import to_dict

    cfg = exp.cfg
    lines = [f"# resolved config; rerun with: tff-lab run {run_dir / 'config.yaml'} --out NEW_DIR"]
    user = [p for p in exp.parts if not p.get("builtin")]
    if user:
        lines.append("# user parts (see parts.json and summary.json):")
        for p in user:
            digest = p.get("builds_sha256") or p.get("code_sha256") or p.get("source_sha256") or "-"
            lines.append(
                f"#   {p['kind']}: {p['name']}  ({p.get('type', 'part')})  source {p.get('source_file', '-')}"
                f"  builds {str(digest)[:16]}"
            )
        if any(str(p.get("name", "")).startswith("python:") for p in user):
            lines.append(
                "#   python:... parts were Python objects of the process that ran: pass them again from Python to rerun"
            )
    choice = getattr(exp.engine, "choice", None)
    if choice is not None:
        lines.append(f"# engine that ran: {choice.name} ({choice.reason})")
    d = to_dict(cfg)
    if cfg.model.builder is not None:
        for k in ("name", "hidden_units", "cnn_filters", "dropout"):
            d["model"].pop(k, None)
    if cfg.data.source != "synthetic":
        for k in [k for k in d["data"] if k.startswith("synthetic_")]:
            d["data"].pop(k)
    natural = cfg.partition.scheme in ("auto", "natural") and cfg.data.source not in (
        "digits",
        "breast_cancer",
        "synthetic",
    )
    from tff_lab.config.schema import BUILTIN_SOURCES

    if natural and cfg.data.source in BUILTIN_SOURCES:
        d["data"].pop("num_clients", None)  # the source's own population (a default the schema keeps)
    for k in ("path", "cache_dir", "max_clients"):
        if d["data"].get(k) is None:
            d["data"].pop(k, None)
    if not d["data"].get("kwargs"):
        d["data"].pop("kwargs", None)
    return "\n".join(lines) + "\n" + yaml.safe_dump(d, sort_keys=False)


def _parts_digest(parts: list[dict]) -> dict:
    """kind -> the digest a resumed run must match (what the part builds, else its code, else its
    source). Only a user's parts: built-in ones change with tff_lab's version, which config_hash
    does not pin."""
    from tff_lab import parts as parts_lib

    return {p["kind"]: parts_lib.identity(p) for p in parts if not p.get("builtin")}


def _check_parts_unchanged(run_dir: Path, exp: Experiment, meta: Optional[dict] = None) -> None:
    """Refuses (one line naming the part and what changed) to resume with a part that builds
    something else than the checkpoint's."""
    from tff_lab import parts as parts_lib

    saved = (meta or {}).get("parts")
    if not isinstance(saved, dict):
        return
    now = _parts_digest(exp.parts)
    by_kind = {p["kind"]: p for p in exp.parts}
    for key, digest in saved.items():
        kind = str(key).split(":", 1)[0]
        if kind not in now or digest is None or now[kind] is None:
            continue
        old = str(digest) if ":" in str(digest) else f"source:{digest}"  # an older checkpoint: the source sha256
        new = now[kind]
        if old.split(":")[0] != new.split(":")[0]:
            p = by_kind[kind]
            key_name = old.split(":")[0] + ("_sha256" if old.split(":")[0] != "content" else "_hash")
            new = f"{old.split(':')[0]}:{p.get(key_name)}" if p.get(key_name) else new
        if old == new:
            continue
        p = by_kind[kind]
        what = parts_lib.IDENTITY_WHAT.get(old.split(":")[0], "it")
        detail = ""
        if kind == "model" and p.get("builds"):
            detail = f"; it now builds weights of shapes {p['builds'].get('weight_shapes')}"
        raise ConfigError(
            kind,
            f"{p.get('name')}: {what} changed since the checkpoint in {run_dir} was written "
            f"(sha256 {old.split(':', 1)[1][:12]} then, {new.split(':', 1)[1][:12]} now{detail}); "
            f"a resumed run must use the same {kind}",
        )


def extension_hash(cfg: ExperimentConfig) -> str:
    """The config hash with ``training.rounds`` left out: equal for a run and its extension."""
    return config_hash(dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, rounds=1)))


def _differences(a, b, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, value in a, value in b) for every field where two config dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [(prefix, a, b)]


def check_resume_config(saved: ExperimentConfig, cfg: ExperimentConfig, *, done_round: int = 0) -> str:
    """How ``cfg`` may continue the run of ``saved`` (RUN_DIR's config.yaml): ``"same"``, or
    ``"extend"`` (only ``training.rounds`` grew: the run continues, its privacy ledger and budget
    with it, epsilon composed over all rounds). Anything else is refused in one line naming the
    first field that changed."""
    from tff_lab.config import to_dict

    diff = _differences(to_dict(saved), to_dict(cfg))
    if not diff:
        return "same"
    others = [d for d in diff if d[0] != "training.rounds"]
    field, old, new = (others or diff)[0]
    if not others:
        if new < max(done_round, 1):
            raise ConfigError(
                "training.rounds",
                f"the run in RUN_DIR already ran {done_round} rounds; to extend it give more than that (got {new})",
            )
        if cfg.privacy.target_epsilon is not None and new != old:
            raise ConfigError(
                "training.rounds",
                f"the run's noise was calibrated to privacy.target_epsilon over "
                f"{old} rounds; more rounds would need other noise, so this run cannot be extended "
                "(start a new run with the rounds you want)",
            )
        return "extend"
    raise ConfigError(
        field,
        f"differs from the run in RUN_DIR, a different experiment ({old!r} there, {new!r} now); "
        "--resume continues the "
        "same experiment (only training.rounds may grow, to extend it); choose a new --out or "
        "pass --overwrite",
    )


def _checkpoint_meta(ckpt_dir: Path, round_num: int) -> dict:
    """The manifest of a checkpoint, read before its arrays (empty when unreadable: load() reports it)."""
    if ckpt_lib.verify(Path(ckpt_dir), round_num) is not None:
        return {}  # not trusted: load() reports why
    return json.loads((Path(ckpt_dir) / f"ckpt_{round_num:06d}.json").read_text())


def _restore(exp: Experiment, rs: RunState, round_num: Optional[int]) -> None:
    """Sets ``rs`` to the checkpoint of ``round_num`` (None: a fresh start from the initial weights)."""
    cfg, engine = exp.cfg, exp.engine
    state = engine.initialize()
    ckpt_dir = rs.run_dir / "checkpoints"
    if round_num is not None:
        # Parts first: a model that builds other weights would otherwise fail as "does not match the state".
        _check_parts_unchanged(rs.run_dir, exp, _checkpoint_meta(ckpt_dir, round_num))
        state, meta = ckpt_lib.load(ckpt_dir, round_num, state)
        round_num = int(meta.get("round", round_num))
        extends = meta.get("extension_hash") == extension_hash(cfg) and round_num <= cfg.training.rounds
        if meta.get("config_hash") != config_hash(cfg) and not extends:
            raise ConfigError(str(ckpt_dir), "checkpoint was written by a different experiment")
        _check_parts_unchanged(rs.run_dir, exp, meta)
        rs.counters = {"example_passes": 0, "train_seconds": 0.0, **meta.get("counters", {})}
        for h in exp.hooks:
            h.load_state_dict(meta.get("hooks", {}).get(h.name, {}))
        rs.stop_reason = meta.get("stop_reason")
        rs.round = round_num
    else:
        state = engine.set_model_weights(state, exp.init_weights)
        rs.counters = {"example_passes": 0, "train_seconds": 0.0}
        rs.counters["initial_loss"], _ = evaluate_global(exp, state)
        for h in exp.hooks:
            h.load_state_dict({})
        rs.stop_reason = None
        rs.round = 0
    rs.state = state


def _save_checkpoint(exp: Experiment, rs: RunState) -> None:
    meta = {
        "config_hash": config_hash(exp.cfg),
        "extension_hash": extension_hash(exp.cfg),
        "counters": rs.counters,
        "stop_reason": rs.stop_reason,
        "hooks": {h.name: h.state_dict() for h in exp.hooks},
        "parts": _parts_digest(exp.parts),
        "engine": exp.engine.name,
    }
    ckpt_lib.save(rs.run_dir / "checkpoints", rs.round, rs.state, meta)
    rs.writer.write_csv()
    if rs.owner is not None:  # the new run now has something to put in the old one's place
        rs.owner.commit()


# ----------------------------------------------------------------------------------------------
# rounds
# ----------------------------------------------------------------------------------------------
def _policy_allows(exp: Experiment, what: str) -> bool:
    pol = _policy(exp)
    if pol is None:
        return True
    fn = {"client_stats": "allow_client_stats", "per_client_eval": "allow_per_client_eval"}[what]
    return bool(getattr(pol, fn)()) if hasattr(pol, fn) else True


def _policy(exp: Experiment):
    declared = any(getattr(h, "declares_dp", False) for h in exp.hooks)
    if not exp.cfg.privacy.enabled and not declared:
        return None
    cached = getattr(exp, "_policy_obj", False)
    if cached is not False:
        return cached
    from tff_lab.privacy.release import publication_policy

    pol = publication_policy(exp.cfg, data=exp.data, declared_dp=declared)
    exp._policy_obj = pol
    return pol


def evaluate_global(exp: Experiment, state) -> tuple[float, float]:
    """(loss, accuracy) of the state's model on the global test set."""
    import tensorflow as tf

    if getattr(exp, "_test_ds", None) is None:
        # Built once: Keras' evaluate(x, y) on arrays leaks ~0.3 MB per call in TF 2.14 (BENCHMARKS.md).
        object.__setattr__(exp, "_test_ds", tf.data.Dataset.from_tensor_slices(exp.data.test).batch(1024))
    exp.engine.get_model_weights(state).assign_weights_to(exp.eval_model)
    out = exp.eval_model.evaluate(exp._test_ds, verbose=0)
    loss, acc = (out[0], out[1]) if isinstance(out, (list, tuple)) else (out, math.nan)
    return float(loss), float(acc)


def _diverged(exp: Experiment, rs: RunState, r: int, row: dict, metrics: dict) -> Optional[str]:
    """Why round ``r`` diverged, or None: a training loss that is NaN/inf or above
    ``training.divergence_factor`` x the reference loss (the initial model's test loss, at least
    ln(num_classes), i.e. chance), or model weights that are NaN/inf."""
    train = metrics.get("client_work", {}).get("train", {}) if metrics else {}
    loss = train.get("loss")
    if loss is not None:
        loss = float(loss)
        if not math.isfinite(loss):
            return f"round {r}: the training loss is {loss}"
        ref = max(float(rs.counters.get("initial_loss") or 0.0), math.log(max(2, exp.data.num_classes)))
        factor = exp.cfg.training.divergence_factor
        if loss > factor * ref:
            return (
                f"round {r}: the training loss {loss:.4g} exceeds training.divergence_factor ({factor:g}) x "
                f"the reference {ref:.4g} (the initial model's test loss, at least chance level)"
            )
    weights = exp.engine.get_model_weights(rs.state).trainable
    for i, w in enumerate(weights):
        if not np.all(np.isfinite(np.asarray(w))):
            return f"round {r}: model weight tensor {i} holds NaN or inf"
    return None


def run_rounds(
    exp: Experiment,
    rs: RunState,
    *,
    quiet: bool = True,
    until: Optional[int] = None,
    preempt: Optional[threading.Event] = None,
) -> RunState:
    """Runs rounds ``rs.round + 1 ..`` up to ``until`` (default ``training.rounds``)."""
    from tqdm.auto import tqdm

    from tff_lab.privacy.audit import round_clients

    cfg, t, data, hooks, ctx = exp.cfg, exp.cfg.training, exp.data, exp.hooks, exp.ctx
    last = t.rounds if until is None else min(int(until), t.rounds)
    preempt = preempt or threading.Event()
    ckpt_dir = rs.run_dir / "checkpoints"
    policy = _policy(exp)
    bar = tqdm(
        total=t.rounds,
        initial=rs.round,
        disable=quiet,
        unit="round",
        dynamic_ncols=True,
        desc=f"{cfg.name} [{exp.engine.name}]",
    )
    client_ids = data.client_ids
    try:
        while rs.round < last and rs.stop_reason is None:
            r = rs.round + 1
            for h in hooks:
                reason = h.before_round(ctx, r)
                if reason:
                    rs.stop_reason = reason
            if rs.stop_reason:
                break
            t0 = time.perf_counter()
            # Sampled over the population the ledger accounts (a privacy audit's canaries included);
            # the engine trains the real clients, the aggregator adds the sampled canaries' updates.
            idx, real, sampled = round_clients(cfg, client_ids, r)
            expected = int(sum(len(data.train[client_ids[i]][1]) for i in real)) * t.local_epochs
            metrics: dict = {}
            new_state = rs.state
            aborted = None
            # A Poisson round that samples nobody still runs under DP: the accountant counts it as a
            # sampled round, so its noise-only update must be released (skipping it would reveal that
            # nobody was chosen). Without DP there is nothing to average, so the round is skipped.
            if len(idx) or cfg.privacy.enabled:
                try:
                    result = exp.engine.next(rs.state, r, real)
                except SecAggAborted as e:
                    # Secure aggregation failed (too many dropouts): nothing was summed, so the round is
                    # not applied; the state stays, and the row says so (secagg_aborted = 1).
                    aborted, result = str(e), None
                    logging.getLogger(__name__).warning("round %d: secure aggregation aborted: %s", r, e)
                except Exception as e:  # noqa: BLE001 - classified below
                    err = _classify(e)
                    if isinstance(err, WorkerLost) and rs.retries_left > 0:
                        rs.retries_left -= 1
                        _recover(exp, rs, err)
                        bar.n = rs.round
                        continue
                    if err is e:
                        raise
                    raise err from e
                if result is not None:
                    new_state, metrics = result.state, result.metrics
            prev_state, rs.state = rs.state, new_state
            train = metrics.get("client_work", {}).get("train", {}) if metrics else {}
            n_ex = int(train.get("num_examples", 0))
            row = {
                "round": r,
                "clients": len(idx),
                "train_examples": n_ex,
                "train_loss": float(train["loss"]) if "loss" in train else None,
                "train_accuracy": float(train[exp.accuracy_name]) if exp.accuracy_name in train else None,
                "eval_loss": None,
                "eval_accuracy": None,
            }
            if aborted:
                row["_secagg_aborted"] = aborted  # taken by the SecAgg hook
            info = RoundInfo(
                round_num=r,
                sampled_clients=sampled,
                participants=len(idx),
                trained=bool(metrics),
                expected_examples=expected,
                tff_metrics=metrics,
                state=rs.state,
            )
            why = _diverged(exp, rs, r, row, metrics)
            if why:
                rs.state, rs.round = prev_state, r - 1
                kept = ckpt_lib.latest(ckpt_dir)
                raise TrainingDiverged(
                    f"training diverged at {why}; stopped without saving it. The last good "
                    f"checkpoint is "
                    + (f"round {kept} in {ckpt_dir}" if kept else "none")
                    + "; lower the learning rates (algorithm.*_optimizer.learning_rate) or clip"
                )
            rs.round = r
            rs.counters["example_passes"] += n_ex
            for h in hooks:
                h.after_round(ctx, info, row)
            if r % t.eval_every_rounds == 0 or r == t.rounds:
                row["eval_loss"], row["eval_accuracy"] = evaluate_global(exp, rs.state)
            seconds = time.perf_counter() - t0
            rs.counters["train_seconds"] += seconds
            row["round_seconds"] = round(seconds, 4)
            if policy is not None and hasattr(policy, "filter_row"):
                row = policy.filter_row(row)
            rs.writer.append(row)
            postfix = {}
            for k, label in (("train_loss", "loss"), ("train_accuracy", "acc")):
                if row.get(k) is not None:
                    postfix[label] = f"{row[k]:.3f}"
            if row.get("eval_accuracy") is not None:
                postfix["test_acc"] = f"{row['eval_accuracy']:.3f}"
            for h in hooks:
                postfix.update(h.progress_fields())
            if policy is not None and hasattr(policy, "progress_fields"):
                postfix = policy.progress_fields(row)  # under DP: epsilon and covered evaluation only
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if r % t.rounds_per_checkpoint == 0 or r == t.rounds or preempt.is_set():
                _save_checkpoint(exp, rs)
            if preempt.is_set():
                raise Preempted(f"SIGTERM after round {r}; checkpoint saved in {ckpt_dir}; rerun with --resume")
        if rs.stop_reason:
            _save_checkpoint(exp, rs)
    finally:
        bar.close()
    return rs


def _classify(e: BaseException) -> BaseException:
    from tff_lab.federated import runtime

    fn = getattr(runtime, "classify_failure", None)
    return fn(e) if fn is not None else e


def _recover(exp: Experiment, rs: RunState, err: WorkerLost) -> None:
    """A worker died mid-round: rebuild the runtime and go back to the last checkpoint (the round
    that failed was never accounted; the ledger is restored with the checkpoint)."""
    from tff_lab.federated import runtime
    from tff_lab.training.metrics import MetricsWriter

    reset = getattr(runtime, "reset", None)
    if reset is not None:
        reset()
    kept = ckpt_lib.latest(rs.run_dir / "checkpoints")
    rs.writer.close()
    _restore(exp, rs, kept)
    rs.writer = MetricsWriter(rs.run_dir, resume_round=rs.round)


# ----------------------------------------------------------------------------------------------
# finalize
# ----------------------------------------------------------------------------------------------
def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in (
        "tff-lab",
        "tensorflow",
        "tensorflow-federated",
        "tensorflow-privacy",
        "dp-accounting",
        "numpy",
        "keras",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _save_model(model, model_dir: Path) -> None:
    """``model.keras`` and ``saved_model/``, each written beside and renamed into place."""
    import tensorflow as tf

    from tff_lab.fileio import atomic_path

    model_dir.mkdir(exist_ok=True)
    with atomic_path(model_dir / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    sm_tmp = model_dir / ".saved_model.tmp"
    shutil.rmtree(sm_tmp, ignore_errors=True)
    tf.saved_model.save(model, str(sm_tmp))
    replace_dir(sm_tmp, model_dir / "saved_model")


def finalize(exp: Experiment, rs: RunState) -> dict:
    """Final evaluation, the model, the centralized baseline, plots and ``summary.json``."""
    from tff_lab.centralized.baseline import matched_epochs, train_centralized
    from tff_lab.training.plots import plot_curves, plot_heterogeneity

    cfg, data, run_dir = exp.cfg, exp.data, rs.run_dir
    final_loss, final_acc = evaluate_global(exp, rs.state)
    spread = {}
    if _policy_allows(exp, "per_client_eval"):
        per_client = per_client_accuracy(exp)
        if per_client:
            spread = {
                "min": float(np.min(per_client)),
                "median": float(np.median(per_client)),
                "max": float(np.max(per_client)),
                "clients": len(per_client),
            }
    # A stale export of an earlier model must not survive beside the new one.
    shutil.rmtree(run_dir / "export", ignore_errors=True)
    _save_model(exp.eval_model, run_dir / "model")
    from tff_lab.export import run_inputs

    run_inputs.save(run_dir, cfg, data, outputs=exp.model.outputs)  # what export needs, as the policy allows

    central = None
    policy = _policy(exp)
    if cfg.centralized.enabled and (policy is None or policy.allow_centralized_baseline()):
        epochs = matched_epochs(rs.counters["example_passes"], data.num_train_examples())
        central = train_centralized(cfg, data, epochs=epochs, initial_weights=exp.init_weights, model=exp.model)
        if cfg.centralized.dp_sgd:
            from tff_lab.privacy.dpsgd import train_dp_sgd

            central["dp_sgd"] = train_dp_sgd(cfg, data, epochs, initial_weights=exp.init_weights)

    summary = {
        "experiment": cfg.name,
        "config_hash": config_hash(cfg),
        "seed": cfg.seed,
        "engine": exp.engine.name,
        "engine_choice": exp.engine.choice.to_json() if exp.engine.choice is not None else None,
        "rounds": rs.round,
        "rounds_planned": cfg.training.rounds,
        "stopped_reason": rs.stop_reason,
        "population": data.num_clients,
        "final_test_accuracy": final_acc,
        "final_test_loss": final_loss,
        "per_client_eval_accuracy": spread,
        "centralized": central,
        "centralized_accuracy": central["accuracy"] if central else None,
        "retention": (final_acc / central["accuracy"]) if central and central["accuracy"] else None,
        "example_passes": rs.counters["example_passes"],
        "train_seconds": round(rs.counters["train_seconds"], 3),
        "wall_seconds": round(time.time() - rs.t_start, 3),
        "seconds_per_round_median": _median_round_seconds(rs.writer.rows),
        "data": {
            k: exp.stats[k]
            for k in (
                "num_clients",
                "num_classes",
                "train_examples",
                "test_examples",
                "examples_per_client",
                "mean_tv_distance",
            )
        },
        "parts": exp.parts,
        "versions": _versions(),
    }
    summary["data"]["test_set"] = getattr(data, "test_source", "separate")
    for h in exp.hooks:
        h.on_end(exp.ctx, summary)
    if policy is not None:
        summary = policy.filter_summary(summary)
    rs.writer.close()
    plots = run_dir / "plots"
    plot_curves(rs.writer.rows, plots, centralized_accuracy=summary.get("centralized_accuracy"), title=cfg.name)
    if _policy_allows(exp, "client_stats"):
        plot_heterogeneity(exp.stats, data.labels, plots / "heterogeneity.png")
    text = json.dumps(summary, indent=1, default=str)
    if rs.owner is not None:
        rs.owner.write_text("summary.json", text)
    else:
        atomic_write_text(run_dir / "summary.json", text)
    if policy is not None:
        from tff_lab.privacy.release import update_privacy_json

        update_privacy_json(run_dir, policy)  # every artifact, covered by epsilon or why released
    release(rs)
    return summary


def per_client_accuracy(exp: Experiment) -> list[float]:
    """The model's accuracy metric on each client's evaluation split (empty splits skipped).

    One batched predict over all splits (per-client ``evaluate`` calls cost ~50 ms each), then the
    spec's first metric per client.
    """
    data, model = exp.data, exp.eval_model
    ids = [c for c in data.client_ids if len(data.eval[c][1])]
    if not ids:
        return []
    x = np.concatenate([data.eval[c][0] for c in ids])
    y = np.concatenate([data.eval[c][1] for c in ids])
    pred = model.predict(x, batch_size=4096, verbose=0)
    bounds = np.cumsum([len(data.eval[c][1]) for c in ids])[:-1]
    if exp.model.metrics is None:  # the default metric: sparse categorical accuracy, in numpy
        correct = pred.argmax(axis=-1) == y
        return [float(part.mean()) for part in np.split(correct, bounds)]
    metric = exp.model.make_metrics()[0]
    out = []
    for yp, pp in zip(np.split(y, bounds), np.split(pred, bounds)):
        metric.reset_state()
        metric.update_state(yp, pp)
        out.append(float(metric.result()))
    return out


def _median_round_seconds(rows: list[dict]) -> Optional[float]:
    secs = [r["round_seconds"] for r in rows if r.get("round_seconds") is not None]
    # Skip the first rounds: they include TFF's tracing and the C++ worker's start.
    steady = secs[2:] if len(secs) > 4 else secs
    return float(np.median(steady)) if steady else None


# ----------------------------------------------------------------------------------------------
# the whole run
# ----------------------------------------------------------------------------------------------
def run_experiment(
    config: Union[str, os.PathLike, ExperimentConfig, None] = None,
    out_dir: Union[str, os.PathLike] = "runs/default",
    *,
    overrides: Iterable[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
    hooks: Optional[list[RoundHook]] = None,
    model=None,
    data=None,
    algorithm=None,
    aggregator=None,
) -> dict:
    """Runs a federated experiment end to end and returns its summary (also in RUN_DIR/summary.json).

    Args:
      config: an experiment YAML path, an :class:`ExperimentConfig`, or None for the default
        experiment (digits, 20 clients, Dirichlet alpha 0.5, FedAvg).
      out_dir: RUN_DIR; receives config.yaml, parts.json, metrics, plots, TensorBoard events, the
        model, checkpoints and summary.json.
      overrides: ``key.sub=value`` strings applied on top of the file.
      resume: continue from RUN_DIR's last checkpoint (start fresh when there is none).
      overwrite: replace an earlier run in RUN_DIR (it is kept until the new run's first checkpoint).
      quiet: no progress bar.
      hooks: extra :class:`RoundHook` objects (privacy and communication hooks are added
        from the config).
      model, data, algorithm, aggregator: your own parts (see :func:`build`).

    Example:
      >>> from tff_lab import run_experiment
      >>> summary = run_experiment("experiments/digits_fedavg.yaml", "runs/a", overrides=["training.rounds=5"])
    """
    from tff_lab.federated import runtime

    exp = None
    rs = None
    run_dir_lib.precheck(out_dir, str(out_dir))  # before any work: unwritable, not ours, or held elsewhere
    try:
        exp = build(
            config, overrides=overrides, model=model, data=data, algorithm=algorithm, aggregator=aggregator, hooks=hooks
        )
        with _sigterm_flag() as preempt:
            rs = initialize(exp, out_dir, resume=resume, overwrite=overwrite)
            try:
                run_rounds(exp, rs, quiet=quiet, preempt=preempt)
                return finalize(exp, rs)
            except BaseException:
                release(rs, failed=True)  # no checkpoint of the new run yet: the old run comes back
                raise
    finally:
        if exp is not None:
            exp.close()
        runtime.shutdown()


@contextlib.contextmanager
def _sigterm_flag():
    """SIGTERM (preemption, ``kubectl delete``) sets a flag; the loop checkpoints after the current
    round and raises :class:`Preempted`. Only in the main thread (where handlers can be installed)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)
