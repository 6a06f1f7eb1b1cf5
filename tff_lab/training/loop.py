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

from tff_lab.config import ExperimentConfig, config_hash, dump_yaml, from_dict, load_config, read_yaml
from tff_lab.errors import ConfigError, PartValueError, Preempted, TrainingDiverged, WorkerLost
from tff_lab.fileio import atomic_write_text, replace_dir
from tff_lab.sampling import client_dataset, sample_clients  # noqa: F401  (public here too)
from tff_lab.training import checkpoint as ckpt_lib
from tff_lab.training.hooks import RoundHook, RoundInfo, RunContext

# What a run writes into RUN_DIR; --overwrite replaces exactly these (nothing else of the user's).
RUN_ARTIFACTS = ("config.yaml", "parts.json", "client_stats.json", "checkpoints", "tb", "plots", "model",
                 "export", "metrics.jsonl", "metrics.csv", "summary.json", "privacy.json", "privacy_audit.json")


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
    config records them and every stage resolves them as it resolves built-in parts)."""
    from tff_lab import parts as parts_lib

    fd = None
    if model is not None:
        name = parts_lib.register_object(model, parts_lib.object_name(model.builder if _is_spec(model) else model)
                                         .split("@")[0])
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, builder=name))
    if data is not None:
        from tff_lab.data import content_hash, federated_data

        fd = federated_data(data, cfg=cfg)
        name = parts_lib.register_object(fd, f"python:{type(data).__name__}#{content_hash(fd)}")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=name, kwargs={}))
    if algorithm is not None:
        name = parts_lib.register_object(algorithm, parts_lib.object_name(algorithm).split("@")[0])
        cfg = dataclasses.replace(cfg, algorithm=dataclasses.replace(cfg.algorithm, builder=name))
    if aggregator is not None:
        name = parts_lib.register_object(aggregator, parts_lib.object_name(aggregator).split("@")[0])
        cfg = dataclasses.replace(cfg, aggregation=dataclasses.replace(cfg.aggregation, builder=name))
    cfg.validate()
    return cfg, fd


def _is_spec(obj) -> bool:
    from tff_lab.models.spec import ModelSpec

    return isinstance(obj, ModelSpec)


def _check_user_parts_config(cfg: ExperimentConfig) -> None:
    if cfg.aggregation.builder is not None and cfg.privacy.enabled:
        raise ConfigError("aggregation.builder", "a user aggregator replaces tff_lab's aggregator, but "
                          f"privacy.mechanism is '{cfg.privacy.mechanism}'; use one or the other (a private user "
                          "aggregator declares its dp_event)")
    if cfg.aggregation.builder is not None and cfg.aggregation.kind != "mean":
        raise ConfigError("aggregation.kind", f"'{cfg.aggregation.kind}' has no effect with aggregation.builder "
                          "(the user aggregator replaces it); leave kind: mean")


def _check_model_fits(spec, model, data) -> None:
    """The model's output must fit the labels: shape (batch, *label_shape, num_classes)."""
    x, y = data.test
    if len(y) == 0:
        x, y = data.union_train()
    if len(y) == 0:
        return
    try:
        out = model(x[:2], training=False)
    except Exception as e:  # noqa: BLE001 - the user's model cannot take the data at all
        raise PartValueError("model", f"{spec.name!r} cannot take the data's inputs of shape {x.shape[1:]} "
                             f"({x.dtype}): {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    want = (min(2, len(y)), *y.shape[1:], data.num_classes)
    if tuple(out.shape) != want:
        raise PartValueError("model", f"{spec.name!r} outputs shape {tuple(out.shape)[1:]} per example, but the "
                             f"labels have shape {y.shape[1:]} with {data.num_classes} classes: expected "
                             f"{want[1:]} ({spec.outputs})")


def build(config: Union[str, os.PathLike, ExperimentConfig, None] = None, *, overrides: Iterable[str] = (),
          model=None, data=None, algorithm=None, aggregator=None, hooks: Optional[list] = None) -> Experiment:
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
    if cfg.model.outputs != spec.outputs:  # the resolved config records what the model declares
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, outputs=spec.outputs))
    if fd is not None:
        check_finite(fd, "data")  # a source's data is checked by load_federated_data
    loaded = fd if fd is not None else load_federated_data(cfg)
    if cfg.training.sampling == "uniform" and cfg.training.clients_per_round > loaded.num_clients:
        raise ConfigError("training.clients_per_round", f"expected at most the population ({loaded.num_clients} "
                          f"clients), got {cfg.training.clients_per_round}")
    probe = spec.build(loaded.input_shape, loaded.num_classes)
    _check_model_fits(spec, probe, loaded)
    del probe
    init = initial_weights(spec, loaded.input_shape, loaded.num_classes, cfg.seed)
    from tff_lab.privacy.audit import audit_population

    population = loaded.num_clients
    total = audit_population(cfg, population)  # the sampler's and the ledger's population (+ audit canaries)
    noise = _resolve_noise(cfg, total)
    record_specs = [tf.TensorSpec(w.shape, tf.as_dtype(w.dtype)) for w in init]

    engine, agg = _build_engine(cfg, spec, loaded, noise, record_specs)
    parts = _provenance(cfg, spec, agg)
    all_hooks = _default_hooks(cfg, agg) + list(hooks or [])
    ctx = RunContext(cfg=cfg, run_dir=Path("."), population=total, noise_multiplier=noise,
                     model_weight_shapes=[list(w.shape) for w in init],
                     model_weight_dtypes=[str(w.dtype) for w in init], data=loaded, initial_weights=init)
    eval_model = spec.compile(spec.build(loaded.input_shape, loaded.num_classes))
    acc_name = eval_model.metrics_names[1] if len(eval_model.metrics_names) > 1 else "accuracy"
    return Experiment(cfg=cfg, data=loaded, model=spec, engine=engine, hooks=all_hooks, ctx=ctx,
                      init_weights=init, noise_multiplier=noise, parts=parts, stats=client_stats(loaded),
                      eval_model=eval_model, accuracy_name=acc_name)


def _build_engine(cfg, spec, data, noise, record_specs):
    """(engine, TFF aggregator or None); ``engine.choice`` says which engine runs and why
    (``training.engine: auto`` picks the vectorised one whenever it runs the experiment exactly)."""
    from tff_lab.engines.factory import build_engine

    engine, agg, choice = build_engine(cfg, spec, data, noise, record_specs)
    engine.choice = choice
    return engine, agg


def _provenance(cfg, spec, agg) -> list[dict]:
    from tff_lab import parts as parts_lib
    from tff_lab.data.registry import source_part

    out = [dict(spec.provenance) or {"kind": "model", "name": spec.name}]
    _, prov = source_part(cfg)
    out.append(prov)
    if cfg.algorithm.builder is not None:
        obj = parts_lib.resolve(cfg.algorithm.builder, "algorithm.builder")
        out.append(parts_lib.provenance(obj, name=cfg.algorithm.builder, kind="algorithm"))
    else:
        out.append({"kind": "algorithm", "name": cfg.algorithm.name, "builtin": True})
    if cfg.aggregation.builder is not None:
        out.append(parts_lib.provenance(agg, name=cfg.aggregation.builder, kind="aggregator"))
    if cfg.data.source.startswith("python:"):
        out[1]["content_hash"] = cfg.data.source.rsplit("#", 1)[-1]
    return out


def _default_hooks(cfg: ExperimentConfig, agg) -> list[RoundHook]:
    from tff_lab.federated.communication import CommunicationHook

    hooks: list[RoundHook] = [CommunicationHook()]
    if cfg.privacy.enabled:
        from tff_lab.privacy.hook import PrivacyHook

        hooks.append(PrivacyHook())
    elif cfg.aggregation.builder is not None:
        from tff_lab.federated.aggregators import declared_dp_event
        from tff_lab.federated.declared_dp import DeclaredPrivacyHook

        hooks.append(DeclaredPrivacyHook(cfg.aggregation.builder, declared_dp_event(agg)))
    return hooks


def _resolve_noise(cfg: ExperimentConfig, population: int) -> Optional[float]:
    if not cfg.privacy.enabled:
        return None
    from tff_lab.privacy.calibration import resolve_noise_multiplier

    return resolve_noise_multiplier(cfg, population)


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
    replaced: Optional[Path] = None  # the earlier run moved aside by --overwrite, until this one commits
    retries_left: int = 0


def _prepare_run_dir(run_dir: Path, cfg: ExperimentConfig, *, resume: bool, overwrite: bool):
    """Checks RUN_DIR against the experiment; returns (checkpoint round to resume from, replace?)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(str(run_dir), "RUN_DIR exists and is not a directory")
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            raise ConfigError(str(run_dir), "RUN_DIR is not empty and holds no tff-lab run; choose a new --out")
        return None, overwrite and run_dir.exists()
    try:
        existing = from_dict(read_yaml(cfg_file), validate=False)
        same = config_hash(existing) == config_hash(cfg)
    except ConfigError:
        same = False
    if overwrite:
        return None, True
    if not same:
        raise ConfigError(str(run_dir), "RUN_DIR already holds a different experiment (its config.yaml differs); "
                          "choose a new --out or pass --overwrite")
    if not resume:
        raise ConfigError(str(run_dir), "RUN_DIR already holds a run of this experiment; pass --resume to "
                          "continue it or --overwrite to start again")
    return ckpt_lib.latest(run_dir / "checkpoints"), False


def _move_aside(run_dir: Path) -> Optional[Path]:
    """Moves an earlier run's artifacts into a hidden folder of RUN_DIR (restored if the new run
    fails before its first checkpoint, deleted once it has one)."""
    present = [n for n in RUN_ARTIFACTS if (run_dir / n).exists()]
    if not present:
        return None
    aside = run_dir / f".replaced-{os.getpid()}"
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for n in present:
        os.replace(run_dir / n, aside / n)
    return aside


def _restore_aside(run_dir: Path, aside: Path) -> None:
    for n in RUN_ARTIFACTS:
        p = run_dir / n
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
    for child in aside.iterdir():
        os.replace(child, run_dir / child.name)
    shutil.rmtree(aside, ignore_errors=True)


def initialize(exp: Experiment, out_dir: Union[str, os.PathLike], *, resume: bool = False,
               overwrite: bool = False) -> RunState:
    """Prepares RUN_DIR and returns the starting state (fresh, or the last checkpoint's).

    With ``overwrite`` an earlier run is moved aside, and put back if the new run fails before
    its first checkpoint (nothing of a working run is lost to a broken experiment).
    """
    from tff_lab.training.metrics import MetricsWriter

    cfg = exp.cfg
    run_dir = Path(out_dir)
    start_round, replace = _prepare_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    aside = _move_aside(run_dir) if replace else None
    exp.ctx.run_dir = run_dir
    try:
        atomic_write_text(run_dir / "config.yaml", _config_text(exp, run_dir))
        atomic_write_text(run_dir / "parts.json", json.dumps(exp.parts, indent=1))
        if _policy_allows(exp, "client_stats"):
            atomic_write_text(run_dir / "client_stats.json", json.dumps(exp.stats, indent=1))
        for h in exp.hooks:
            h.on_start(exp.ctx)
        rs = RunState(run_dir=run_dir, state=None, round=0, counters={"example_passes": 0, "train_seconds": 0.0},
                      stop_reason=None, writer=None, t_start=time.time(), replaced=aside,
                      retries_left=cfg.training.worker_retries)
        _restore(exp, rs, start_round)
        rs.writer = MetricsWriter(run_dir, resume_round=rs.round)  # drops rows after the checkpoint
    except BaseException:
        if aside is not None:
            _restore_aside(run_dir, aside)
        raise
    return rs


def _config_text(exp: Experiment, run_dir: Path) -> str:
    lines = [f"# resolved config; rerun with: tff-lab run {run_dir / 'config.yaml'} --out NEW_DIR"]
    user = [p for p in exp.parts if not p.get("builtin")]
    if user:
        lines.append("# user parts (see parts.json and summary.json):")
        for p in user:
            lines.append(f"#   {p['kind']}: {p['name']}  source {p.get('source_file', '-')}  "
                         f"sha256 {str(p.get('source_sha256') or p.get('content_hash') or '-')[:16]}")
    choice = exp.engine.choice
    if choice is not None:
        lines.append(f"# engine that ran: {choice.name} ({choice.reason})")
    return "\n".join(lines) + "\n" + dump_yaml(exp.cfg)


def _parts_digest(parts: list[dict]) -> dict:
    # Only a user's parts: built-in ones change with tff_lab's version, which config_hash does not pin.
    return {f"{p['kind']}:{p['name']}": p.get("source_sha256") or p.get("content_hash") for p in parts
            if not p.get("builtin")}


def _check_parts_unchanged(run_dir: Path, exp: Experiment, meta: Optional[dict] = None) -> None:
    saved = (meta or {}).get("parts")
    if saved is None:
        return
    now = _parts_digest(exp.parts)
    for key, digest in saved.items():
        if key in now and digest is not None and now[key] != digest:
            raise ConfigError(key.split(":", 1)[0], f"{key.split(':', 1)[1]}: its source changed since the "
                              f"checkpoint in {run_dir} was written (sha256 {str(digest)[:12]} then, "
                              f"{str(now[key])[:12]} now); a resumed run must use the same code")


def _restore(exp: Experiment, rs: RunState, round_num: Optional[int]) -> None:
    """Sets ``rs`` to the checkpoint of ``round_num`` (None: a fresh start from the initial weights)."""
    cfg, engine = exp.cfg, exp.engine
    state = engine.initialize()
    ckpt_dir = rs.run_dir / "checkpoints"
    if round_num is not None:
        state, meta = ckpt_lib.load(ckpt_dir, round_num, state)
        round_num = int(meta.get("round", round_num))
        if meta.get("config_hash") != config_hash(cfg):
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
    meta = {"config_hash": config_hash(exp.cfg), "counters": rs.counters, "stop_reason": rs.stop_reason,
            "hooks": {h.name: h.state_dict() for h in exp.hooks}, "parts": _parts_digest(exp.parts),
            "engine": exp.engine.name}
    ckpt_lib.save(rs.run_dir / "checkpoints", rs.round, rs.state, meta)
    rs.writer.write_csv()
    if rs.replaced is not None:  # the new run now has something to put in the old one's place
        shutil.rmtree(rs.replaced, ignore_errors=True)
        rs.replaced = None


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
    if not exp.cfg.privacy.enabled:
        return None
    cached = getattr(exp, "_policy_obj", False)
    if cached is not False:
        return cached
    from tff_lab.privacy.release import publication_policy

    pol = publication_policy(exp.cfg, data=exp.data)
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
            return (f"round {r}: the training loss {loss:.4g} exceeds training.divergence_factor ({factor:g}) x "
                    f"the reference {ref:.4g} (the initial model's test loss, at least chance level)")
    weights = exp.engine.get_model_weights(rs.state).trainable
    for i, w in enumerate(weights):
        if not np.all(np.isfinite(np.asarray(w))):
            return f"round {r}: model weight tensor {i} holds NaN or inf"
    return None


def run_rounds(exp: Experiment, rs: RunState, *, quiet: bool = True, until: Optional[int] = None,
               preempt: Optional[threading.Event] = None) -> RunState:
    """Runs rounds ``rs.round + 1 ..`` up to ``until`` (default ``training.rounds``)."""
    from tqdm.auto import tqdm

    from tff_lab.privacy.audit import round_clients

    cfg, t, data, hooks, ctx = exp.cfg, exp.cfg.training, exp.data, exp.hooks, exp.ctx
    last = t.rounds if until is None else min(int(until), t.rounds)
    preempt = preempt or threading.Event()
    ckpt_dir = rs.run_dir / "checkpoints"
    policy = _policy(exp)
    bar = tqdm(total=t.rounds, initial=rs.round, disable=quiet, unit="round", dynamic_ncols=True,
               desc=f"{cfg.name} [{exp.engine.name}]")
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
            # A Poisson round that samples nobody still runs under DP: the accountant counts it as a
            # sampled round, so its noise-only update must be released (skipping it would reveal that
            # nobody was chosen). Without DP there is nothing to average, so the round is skipped.
            if len(idx) or cfg.privacy.enabled:
                try:
                    result = exp.engine.next(rs.state, r, real)
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
                new_state, metrics = result.state, result.metrics
            prev_state, rs.state = rs.state, new_state
            train = metrics.get("client_work", {}).get("train", {}) if metrics else {}
            n_ex = int(train.get("num_examples", 0))
            row = {"round": r, "clients": len(idx), "train_examples": n_ex,
                   "train_loss": float(train["loss"]) if "loss" in train else None,
                   "train_accuracy": float(train[exp.accuracy_name]) if exp.accuracy_name in train else None,
                   "eval_loss": None, "eval_accuracy": None}
            info = RoundInfo(round_num=r, sampled_clients=sampled, participants=len(idx), trained=bool(metrics),
                             expected_examples=expected, tff_metrics=metrics, state=rs.state)
            why = _diverged(exp, rs, r, row, metrics)
            if why:
                rs.state, rs.round = prev_state, r - 1
                kept = ckpt_lib.latest(ckpt_dir)
                raise TrainingDiverged(f"training diverged at {why}; stopped without saving it. The last good "
                                       f"checkpoint is " + (f"round {kept} in {ckpt_dir}" if kept else "none")
                                       + "; lower the learning rates (algorithm.*_optimizer.learning_rate) or clip")
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
    for pkg in ("tff-lab", "tensorflow", "tensorflow-federated", "tensorflow-privacy", "dp-accounting", "numpy",
                "keras"):
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
            spread = {"min": float(np.min(per_client)), "median": float(np.median(per_client)),
                      "max": float(np.max(per_client)), "clients": len(per_client)}
    # A stale export of an earlier model must not survive beside the new one.
    shutil.rmtree(run_dir / "export", ignore_errors=True)
    _save_model(exp.eval_model, run_dir / "model")

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
        "data": {k: exp.stats[k] for k in ("num_clients", "num_classes", "train_examples", "test_examples",
                                            "examples_per_client", "mean_tv_distance")},
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
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1, default=str))
    if policy is not None:
        from tff_lab.privacy.release import update_privacy_json

        update_privacy_json(run_dir, policy)  # every artifact, covered by epsilon or why released
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
def run_experiment(config: Union[str, os.PathLike, ExperimentConfig, None] = None,
                   out_dir: Union[str, os.PathLike] = "runs/default", *, overrides: Iterable[str] = (),
                   resume: bool = False, overwrite: bool = False, quiet: bool = True,
                   hooks: Optional[list[RoundHook]] = None, model=None, data=None, algorithm=None,
                   aggregator=None) -> dict:
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
    try:
        exp = build(config, overrides=overrides, model=model, data=data, algorithm=algorithm,
                    aggregator=aggregator, hooks=hooks)
        with _sigterm_flag() as preempt:
            rs = initialize(exp, out_dir, resume=resume, overwrite=overwrite)
            try:
                run_rounds(exp, rs, quiet=quiet, preempt=preempt)
                return finalize(exp, rs)
            except BaseException:
                if rs.replaced is not None:  # no checkpoint of the new run yet: put the old run back
                    with contextlib.suppress(Exception):
                        rs.writer.close()
                    _restore_aside(rs.run_dir, rs.replaced)
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
