"""The one training loop: sampling, rounds, evaluation, checkpoints, metrics, hooks.

``run_experiment`` is the whole experiment: load data, build the TFF process once,
train for ``training.rounds`` rounds (resuming from the last checkpoint on request),
evaluate, train the centralized baseline, and write every artifact into RUN_DIR.

Determinism: all randomness derives from ``cfg.seed`` and the round number
(stateless per-round seeds), so a resumed run draws exactly what an uninterrupted
one would, and TFF's server state is restored bit for bit from the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from tff_lab.config import ExperimentConfig, config_hash, dump_yaml, load_config, read_yaml, from_dict
from tff_lab.errors import ConfigError, Preempted
from tff_lab.training import checkpoint as ckpt_lib
from tff_lab.fileio import atomic_write_text, replace_dir
from tff_lab.sampling import client_dataset, sample_clients
from tff_lab.training.hooks import RoundHook, RoundInfo, RunContext


def _resolve_config(config, overrides: Sequence[str]) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        if overrides:
            from tff_lab.config import apply_overrides, to_dict

            return from_dict(apply_overrides(to_dict(config), overrides))
        return config
    return load_config(config, overrides)


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


def _prepare_run_dir(run_dir: Path, cfg: ExperimentConfig, *, resume: bool, overwrite: bool) -> Optional[int]:
    """Checks RUN_DIR against the experiment; returns the checkpoint round to resume from."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(str(run_dir), "RUN_DIR exists and is not a directory")
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            raise ConfigError(str(run_dir), "RUN_DIR is not empty and holds no tff-lab run; choose a new --out")
        return None
    try:
        existing = from_dict(read_yaml(cfg_file), validate=False)
        same = config_hash(existing) == config_hash(cfg)
    except ConfigError:
        same = False
    if overwrite:
        for name in ("checkpoints", "tb", "plots", "model", "metrics.jsonl", "metrics.csv", "summary.json",
                     "privacy.json", "client_stats.json"):
            p = run_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        return None
    if not same:
        raise ConfigError(str(run_dir), "RUN_DIR already holds a different experiment (its config.yaml differs); "
                          "choose a new --out or pass --overwrite")
    if not resume:
        raise ConfigError(str(run_dir), "RUN_DIR already holds a run of this experiment; pass --resume to "
                          "continue it or --overwrite to start again")
    return ckpt_lib.latest(run_dir / "checkpoints")


def run_experiment(config: Union[str, os.PathLike, ExperimentConfig, None] = None,
                   out_dir: Union[str, os.PathLike] = "runs/default", *, overrides: Iterable[str] = (),
                   resume: bool = False, overwrite: bool = False, quiet: bool = True,
                   hooks: Optional[list[RoundHook]] = None) -> dict:
    """Runs a federated experiment end to end and returns its summary (also in RUN_DIR/summary.json).

    Args:
      config: an experiment YAML path, an :class:`ExperimentConfig`, or None for the default
        experiment (digits, 20 clients, Dirichlet alpha 0.5, FedAvg).
      out_dir: RUN_DIR; receives config.yaml, metrics, plots, TensorBoard events, the model,
        checkpoints and summary.json.
      overrides: ``key.sub=value`` strings applied on top of the file.
      resume: continue from RUN_DIR's last checkpoint (start fresh when there is none).
      overwrite: discard an earlier run in RUN_DIR.
      quiet: no progress bar.
      hooks: extra :class:`RoundHook` objects (privacy and communication hooks are added
        from the config).

    Example:
      >>> from tff_lab import run_experiment
      >>> summary = run_experiment("experiments/digits_fedavg.yaml", "runs/a", overrides=["training.rounds=5"])
    """
    cfg = _resolve_config(config, list(overrides))
    run_dir = Path(out_dir)
    start_round = _prepare_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite)
    t_start = time.time()

    from tff_lab.data import client_stats, load_federated_data

    data = load_federated_data(cfg)  # user errors surface here, before RUN_DIR is touched
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml",
                      f"# resolved config; rerun with: tff-lab run {run_dir / 'config.yaml'} --out NEW_DIR\n"
                      + dump_yaml(cfg))
    stats = client_stats(data)
    atomic_write_text(run_dir / "client_stats.json", json.dumps(stats, indent=1))

    try:
        with _sigterm_flag() as preempt:
            return _train(cfg, data, stats, run_dir, start_round, t_start, quiet, list(hooks or []), preempt)
    finally:
        from tff_lab.federated import runtime

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


def _default_hooks(cfg: ExperimentConfig) -> list[RoundHook]:  # HOOKS
    from tff_lab.federated.communication import CommunicationHook

    hooks: list[RoundHook] = [CommunicationHook()]
    if cfg.privacy.enabled:
        from tff_lab.privacy.hook import PrivacyHook

        hooks.append(PrivacyHook())
    return hooks


def _resolve_noise(cfg: ExperimentConfig, population: int) -> Optional[float]:  # HOOKS
    if not cfg.privacy.enabled:
        return None
    from tff_lab.privacy.calibration import resolve_noise_multiplier

    return resolve_noise_multiplier(cfg, population)


def _train(cfg, data, stats, run_dir: Path, start_round, t_start, quiet, extra_hooks, preempt) -> dict:
    import tensorflow as tf
    import tensorflow_federated as tff
    from tqdm.auto import tqdm

    from tff_lab.centralized.baseline import compile_for_eval, matched_epochs, train_centralized
    from tff_lab.federated import runtime
    from tff_lab.federated.aggregators import make_aggregator, needs_secure_intrinsics
    from tff_lab.federated.algorithms import build_learning_process
    from tff_lab.models import build_model, initial_weights
    from tff_lab.models.tff_adapter import make_model_fn
    from tff_lab.training.metrics import MetricsWriter
    from tff_lab.training.plots import plot_curves, plot_heterogeneity

    t = cfg.training
    population = data.num_clients
    runtime.ensure_context(t.client_concurrency, secure=needs_secure_intrinsics(cfg))
    init = initial_weights(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    noise = _resolve_noise(cfg, population)
    record_specs = [tf.TensorSpec(w.shape, tf.as_dtype(w.dtype)) for w in init]
    aggregator = make_aggregator(cfg, population=population, noise_multiplier=noise, record_specs=record_specs)
    model_fn = make_model_fn(cfg.model, data.input_shape, data.num_classes)
    process = build_learning_process(cfg, model_fn, aggregator)

    hooks = _default_hooks(cfg) + extra_hooks
    ctx = RunContext(cfg=cfg, run_dir=run_dir, population=population, noise_multiplier=noise,
                     model_weight_shapes=[list(w.shape) for w in init],
                     model_weight_dtypes=[str(w.dtype) for w in init], data=data)
    for h in hooks:
        h.on_start(ctx)

    state = process.initialize()
    ckpt_dir = run_dir / "checkpoints"
    counters = {"example_passes": 0, "train_seconds": 0.0}
    stop_reason = None
    if start_round is not None:
        state, meta = ckpt_lib.load(ckpt_dir, start_round, state)
        if meta.get("config_hash") != config_hash(cfg):
            raise ConfigError(str(ckpt_dir), "checkpoint was written by a different experiment")
        counters.update(meta.get("counters", {}))
        for h in hooks:
            h.load_state_dict(meta.get("hooks", {}).get(h.name, {}))
        stop_reason = meta.get("stop_reason")
        done = start_round
    else:
        state = process.set_model_weights(state, tff.learning.models.ModelWeights(trainable=init, non_trainable=[]))
        done = 0

    eval_model = compile_for_eval(build_model(cfg.model, data.input_shape, data.num_classes))

    # Built once: Keras' evaluate(x, y) on arrays leaks ~0.3 MB per call in TF 2.14 (BENCHMARKS.md, soak).
    test_ds = tf.data.Dataset.from_tensor_slices(data.test).batch(1024)

    def evaluate_global(st):
        process.get_model_weights(st).assign_weights_to(eval_model)
        loss, acc = eval_model.evaluate(test_ds, verbose=0)
        return float(loss), float(acc)

    writer = MetricsWriter(run_dir, resume_round=done)  # drops rows after the checkpoint

    def save_checkpoint(r):
        meta = {"config_hash": config_hash(cfg), "counters": counters, "stop_reason": stop_reason,
                "hooks": {h.name: h.state_dict() for h in hooks}}
        ckpt_lib.save(ckpt_dir, r, state, meta)
        writer.write_csv()

    bar = tqdm(total=t.rounds, initial=done, disable=quiet, unit="round", dynamic_ncols=True,
               desc=cfg.name)
    client_ids = data.client_ids
    r = done
    while r < t.rounds and stop_reason is None:
        r += 1
        for h in hooks:
            reason = h.before_round(ctx, r)
            if reason:
                stop_reason = reason
        if stop_reason:
            r -= 1
            break
        t0 = time.perf_counter()
        idx = sample_clients(cfg, population, r)
        sampled = [client_ids[i] for i in idx]
        expected = int(sum(len(data.train[c][1]) for c in sampled)) * t.local_epochs
        tff_metrics: dict = {}
        # A Poisson round that samples nobody still runs under DP: the accountant counts it as a
        # sampled round, so its noise-only update must be released (skipping it would reveal that
        # nobody was chosen). Without DP there is nothing to average, so the round is skipped.
        if len(idx) or cfg.privacy.enabled:
            datasets = [client_dataset(cfg, *data.train[c], int(i), r) for c, i in zip(sampled, idx)]
            out = process.next(state, datasets)
            state, tff_metrics = out.state, out.metrics
        train = tff_metrics.get("client_work", {}).get("train", {})
        counters["example_passes"] += int(train.get("num_examples", 0))
        row = {"round": r, "clients": len(idx), "train_examples": int(train.get("num_examples", 0)),
               "train_loss": float(train["loss"]) if "loss" in train else None,
               "train_accuracy": float(train["accuracy"]) if "accuracy" in train else None,
               "eval_loss": None, "eval_accuracy": None}
        info = RoundInfo(round_num=r, sampled_clients=sampled, participants=len(idx), trained=bool(tff_metrics),
                         expected_examples=expected, tff_metrics=tff_metrics)
        for h in hooks:
            h.after_round(ctx, info, row)
        if r % t.eval_every_rounds == 0 or r == t.rounds:
            row["eval_loss"], row["eval_accuracy"] = evaluate_global(state)
        seconds = time.perf_counter() - t0
        counters["train_seconds"] += seconds
        row["round_seconds"] = round(seconds, 4)
        writer.append(row)
        postfix = {"loss": f"{row['train_loss']:.3f}" if row["train_loss"] is not None else "-",
                   "acc": f"{row['train_accuracy']:.3f}" if row["train_accuracy"] is not None else "-"}
        if row["eval_accuracy"] is not None:
            postfix["test_acc"] = f"{row['eval_accuracy']:.3f}"
        for h in hooks:
            postfix.update(h.progress_fields())
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
        if r % t.rounds_per_checkpoint == 0 or r == t.rounds or preempt.is_set():
            save_checkpoint(r)
        if preempt.is_set():
            bar.close()
            raise Preempted(f"SIGTERM after round {r}; checkpoint saved in {ckpt_dir}; rerun with --resume")
    bar.close()
    rounds_done = r
    if stop_reason:
        save_checkpoint(rounds_done)

    # Final evaluation: global test set and the per-client evaluation splits.
    final_loss, final_acc = evaluate_global(state)
    per_client = _per_client_accuracy(eval_model, data)
    spread = ({"min": float(np.min(per_client)), "median": float(np.median(per_client)),
               "max": float(np.max(per_client)), "clients": len(per_client)} if per_client else {})

    # Final model: .keras and SavedModel, written beside and renamed into place.
    model_dir = run_dir / "model"
    model_dir.mkdir(exist_ok=True)
    keras_tmp = model_dir / ".model.tmp.keras"
    eval_model.save(keras_tmp)
    os.replace(keras_tmp, model_dir / "model.keras")
    sm_tmp = model_dir / ".saved_model.tmp"
    shutil.rmtree(sm_tmp, ignore_errors=True)
    tf.saved_model.save(eval_model, str(sm_tmp))
    replace_dir(sm_tmp, model_dir / "saved_model")

    central = None
    if cfg.centralized.enabled:
        epochs = matched_epochs(counters["example_passes"], data.num_train_examples())
        central = train_centralized(cfg, data, epochs=epochs, initial_weights=init)
        if cfg.centralized.dp_sgd:
            from tff_lab.privacy.dpsgd import train_dp_sgd

            central["dp_sgd"] = train_dp_sgd(cfg, data, epochs, initial_weights=init)

    summary = {
        "experiment": cfg.name,
        "config_hash": config_hash(cfg),
        "seed": cfg.seed,
        "rounds": rounds_done,
        "rounds_planned": t.rounds,
        "stopped_reason": stop_reason,
        "population": population,
        "final_test_accuracy": final_acc,
        "final_test_loss": final_loss,
        "per_client_eval_accuracy": spread,
        "centralized": central,
        "centralized_accuracy": central["accuracy"] if central else None,
        "retention": (final_acc / central["accuracy"]) if central and central["accuracy"] else None,
        "example_passes": counters["example_passes"],
        "train_seconds": round(counters["train_seconds"], 3),
        "wall_seconds": round(time.time() - t_start, 3),
        "seconds_per_round_median": _median_round_seconds(writer.rows),
        "data": {k: stats[k] for k in ("num_clients", "num_classes", "train_examples", "test_examples",
                                        "examples_per_client", "mean_tv_distance")},
        "versions": _versions(),
    }
    for h in hooks:
        h.on_end(ctx, summary)
    writer.close()
    plots = run_dir / "plots"
    plot_curves(writer.rows, plots, centralized_accuracy=summary["centralized_accuracy"], title=cfg.name)
    plot_heterogeneity(stats, data.labels, plots / "heterogeneity.png")
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


def _per_client_accuracy(model, data) -> list[float]:
    """Accuracy of ``model`` on each client's evaluation split (clients with an empty split skipped).

    One batched predict over all splits: per-client ``evaluate`` calls cost ~50 ms each, which
    dominates the end of a run with thousands of clients.
    """
    ids = [c for c in data.client_ids if len(data.eval[c][1])]
    if not ids:
        return []
    x = np.concatenate([data.eval[c][0] for c in ids])
    y = np.concatenate([data.eval[c][1] for c in ids])
    correct = model.predict(x, batch_size=4096, verbose=0).argmax(axis=1) == y
    bounds = np.cumsum([len(data.eval[c][1]) for c in ids])[:-1]
    return [float(part.mean()) for part in np.split(correct, bounds)]


def _median_round_seconds(rows: list[dict]) -> Optional[float]:
    secs = [r["round_seconds"] for r in rows if r.get("round_seconds") is not None]
    # Skip the first rounds: they include TFF's tracing and the C++ worker's start.
    steady = secs[2:] if len(secs) > 4 else secs
    return float(np.median(steady)) if steady else None
