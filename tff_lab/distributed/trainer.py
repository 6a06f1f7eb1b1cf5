"""The MultiWorkerMirroredStrategy trainer behind ``tff-lab train-dist``.

It trains the experiment's Keras model centrally (the union of the clients' training data,
evaluated on the global test set) on one or many workers:

- the cluster comes from :func:`tff_lab.distributed.cluster.discover` (TF_CONFIG, an Indexed
  Job's env, or a single worker);
- the global batch is ``dist.per_replica_batch_size x replicas in sync``; the input is sharded
  across workers (tf.data auto-shard by DATA, or an explicit ``Dataset.shard`` per worker);
- fault tolerance: ``BackupAndRestore`` backs up to ``dist.backup_dir`` (a volume every worker
  shares) at each epoch end, and a restarted worker resumes the epoch it lost. On SIGTERM
  (preemption, ``kubectl delete``) the workers agree on a step through TF's coordination
  service, save a checkpoint there, and exit with :data:`EXIT_RETRIABLE`; a worker that loses a
  peer exits with the same code. The manifests' pod failure policy retries that code;
- only the chief writes the run (model, metrics, summary); the other workers write what
  MWMS makes every worker write (model copies, backup shards) into temp dirs they remove.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Optional

from tff_lab.config.schema import ExperimentConfig
from tff_lab.distributed import cluster as cluster_lib
from tff_lab.errors import ConfigError

# The exit code of a worker that checkpointed on SIGTERM or lost a peer: 128 + SIGTERM, what a
# container stopped by SIGTERM reports. The Indexed Job's podFailurePolicy retries it without
# counting it against the backoff limit, and Kubeflow's TFJob restart policy "ExitCode" retries
# codes 128-255 (1-127 are permanent failures there, e.g. exit 2 for bad input).
EXIT_RETRIABLE = 143

log = logging.getLogger("tff_lab.distributed")

METRIC_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "examples_per_second")


class Preempted(Exception):
    """Raised inside ``fit`` once the preemption checkpoint is written."""


class PeerLost(Exception):
    """A collective failed because another worker went away; retry the whole job."""


def _configure_devices(cfg: ExperimentConfig) -> list:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Grow allocations on demand instead of grabbing all GPU memory at start-up.
        tf.config.experimental.set_memory_growth(gpu, True)
    policy = "mixed_float16" if cfg.dist.mixed_precision else "float32"
    tf.keras.mixed_precision.set_global_policy(policy)
    return gpus


def _build_model(cfg: ExperimentConfig, input_shape, num_classes: int):
    import tensorflow as tf

    from tff_lab.models import build_model

    # Same seed as tff_lab.models.initial_weights: the run starts from the weights a federated
    # run of this experiment starts from (MWMS also broadcasts the chief's initial values).
    tf.keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg.model, input_shape, num_classes)
    if cfg.dist.mixed_precision:
        # Softmax in float16 loses probability mass; keep the output (and the loss) in float32.
        out = tf.keras.layers.Activation("linear", dtype="float32", name="probs_float32")(model.output)
        model = tf.keras.Model(model.input, out, name=model.name)
    return model


def _datasets(cfg: ExperimentConfig, strategy, num_workers: int, x, y, x_test, y_test):
    """(train dataset, steps per epoch, test dataset, global batch)."""
    import tensorflow as tf

    d = cfg.dist
    n = len(y)
    replicas = strategy.num_replicas_in_sync
    global_batch = d.per_replica_batch_size * replicas
    usable = n if d.input_sharding == "data" else (n // num_workers) * num_workers
    steps = usable // global_batch
    if steps < 1:
        raise ConfigError(
            "dist.per_replica_batch_size",
            f"global batch {global_batch} ({d.per_replica_batch_size} x {replicas} replicas) "
            f"exceeds the {n} training examples",
        )
    shuffle_seed = cfg.seed + 0x5EED

    if d.input_sharding == "data":
        # Every worker reads the same seeded order; auto-shard DATA keeps each worker's slice of
        # every global batch, so the global batch is exactly per-replica batch x replicas.
        train = (
            tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=True)
            .batch(global_batch, drop_remainder=True)
            .repeat()
            .prefetch(tf.data.AUTOTUNE)
        )
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        opts.experimental_deterministic = True
        train = train.with_options(opts)
    else:

        def dataset_fn(ctx: tf.distribute.InputContext):
            per_worker = ctx.get_per_replica_batch_size(global_batch) * (replicas // ctx.num_input_pipelines)
            ds = tf.data.Dataset.from_tensor_slices((x, y)).take(usable)
            ds = (
                ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
                .shuffle(
                    usable // ctx.num_input_pipelines,
                    seed=shuffle_seed + ctx.input_pipeline_id,
                    reshuffle_each_iteration=True,
                )
                .batch(per_worker, drop_remainder=True)
                .take(steps)
                .repeat()
                .prefetch(tf.data.AUTOTUNE)
            )
            opts = tf.data.Options()
            opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            return ds.with_options(opts)

        train = strategy.distribute_datasets_from_function(dataset_fn)
    test = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(global_batch)
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    test = test.with_options(opts)
    return train, steps, test, global_batch


def _make_backup_callback(strategy, backup_dir: str, *, handle_sigterm: bool):
    """``BackupAndRestore`` with TF's cluster-wide preemption checkpointing turned on.

    Keras wires ``save_before_preemption`` (a ``PreemptionCheckpointHandler``: the worker that gets
    SIGTERM publishes it through the coordination service, all workers checkpoint at the same
    step, then exit) only on Google Cloud. Kubernetes gives the same notice, a SIGTERM and a grace
    period, so we create the handler ourselves with our exit path. Two details of Keras 2.14's
    wiring are fixed here: the handler restores through the *write* manager (a temp dir on
    non-chief workers), so every worker restores from the chief's backup explicitly, and the
    handler's step counter is re-read after that restore so all workers agree on it.
    """
    import tensorflow as tf

    # Uses private attributes of Keras 2.14's WorkerTrainingState and TF 2.14's handler (both pinned
    # by requirements.lock); tests/distributed/test_multiworker.py exercises every one of them.
    class ClusterBackupAndRestore(tf.keras.callbacks.BackupAndRestore):
        def __init__(self):
            # The chief deletes the backup itself once summary.json is written: a SIGTERM while the
            # model is being saved then resumes after the last epoch instead of from scratch.
            super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
            self.restored_epoch: Optional[int] = None
            self.restored_batch: Optional[int] = None

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            state = self._training_state
            if handle_sigterm:

                def exit_fn():
                    if not strategy.extended.should_checkpoint:
                        # This worker's copy of the checkpoint only exists to run the save's collectives.
                        shutil.rmtree(state.write_checkpoint_manager.directory, ignore_errors=True)
                    raise Preempted()

                handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                    strategy.cluster_resolver,
                    state.write_checkpoint_manager,
                    termination_config=tf.distribute.experimental.TerminationConfig(exit_fn=exit_fn, grace_period=0),
                )
                handler._read_checkpoint_manager = state.read_checkpoint_manager
                state.preemption_handler = handler
                self.model._preemption_handler = handler  # fit reports step errors to the cluster
                state._enable_save_before_preemption = True  # batch-level resume semantics
                state.read_checkpoint_manager.restore_or_initialize()
                handler._run_counter = int(handler._checkpointed_runs.numpy())
            self.restored_epoch = int(state._ckpt_saved_epoch.numpy())
            self.restored_batch = int(state._ckpt_saved_batch.numpy())

        def _implements_train_batch_hooks(self):
            # The base class skips batch hooks for epoch backups; the preemption check (and the
            # batch counter a mid-epoch checkpoint records) runs at every step.
            return handle_sigterm or super()._implements_train_batch_hooks()

        def on_train_end(self, logs=None):
            state = getattr(self, "_training_state", None)
            handler = getattr(state, "preemption_handler", None) if state else None
            super().on_train_end(logs)
            if handler is not None:
                handler._stop_cluster_wise_termination_watcher_thread()
                handler._stop_poll_termination_signal_thread()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                self.model._preemption_handler = None

    return ClusterBackupAndRestore()


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def _make_metrics_logger(run_dir: Path, write: bool, examples_per_epoch: int):
    """Per-epoch metrics (chief only), merged with the rows of earlier attempts of the job."""
    import tensorflow as tf

    from tff_lab.fileio import atomic_write_text

    class EpochMetrics(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs_run: list[int] = []
            self._t0 = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self._t0
            self.epochs_run.append(epoch + 1)
            if not write:
                return
            logs = logs or {}
            row = {
                "epoch": epoch + 1,
                "epoch_seconds": round(seconds, 4),
                "examples_per_second": round(examples_per_epoch / max(seconds, 1e-9), 1),
            }
            for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
                if k in logs:
                    row[k] = float(logs[k])
            # A restarted job re-runs the epoch it lost: keep the latest row per epoch.
            rows = [r for r in _read_metrics(run_dir / "metrics.jsonl") if r.get("epoch", 0) < row["epoch"]]
            rows.append(row)
            atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
            atomic_write_text(run_dir / "metrics.csv", buf.getvalue())

    return EpochMetrics()


def _is_peer_failure(exc: BaseException) -> bool:
    import tensorflow as tf

    return isinstance(
        exc,
        (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.DeadlineExceededError),
    )


def weights_fingerprint(weights) -> str:
    """sha256 over the weights' bytes: equal on every worker when MWMS kept them in sync."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for w in weights:
        a = np.ascontiguousarray(w)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _save_model(model, target: Path) -> None:
    """Writes model.keras and saved_model/ into ``target`` via a temp dir and a rename."""
    from tff_lab.fileio import replace_dir

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        model.save(tmp / "model.keras")
        model.save(tmp / "saved_model", save_format="tf")
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def train_distributed(
    cfg: ExperimentConfig, out_dir, *, cluster: Optional[cluster_lib.ClusterSpec] = None, quiet: bool = True
) -> dict:
    """Trains ``cfg``'s model with MultiWorkerMirroredStrategy; returns the summary.

    Every worker calls this with the same ``out_dir`` (a shared volume); only the chief writes
    there (besides the backups). Raises :class:`Preempted` or :class:`PeerLost` when the job
    should be retried (the CLI maps both to :data:`EXIT_RETRIABLE`).
    """
    spec = cluster or cluster_lib.discover()
    tf_config = spec.tf_config()
    if spec.is_multi_worker and tf_config is not None:
        os.environ["TF_CONFIG"] = json.dumps(tf_config)
    else:
        os.environ.pop("TF_CONFIG", None)

    import tensorflow as tf

    from tff_lab.config.io import config_hash, dump_yaml
    from tff_lab.data import load_federated_data
    from tff_lab.fileio import atomic_write_text

    if quiet:
        tf.get_logger().setLevel(logging.ERROR)  # e.g. the handler's deprecation notice on every run
    gpus = _configure_devices(cfg)
    out_dir = Path(out_dir)
    backup_dir = Path(cfg.dist.backup_dir) if cfg.dist.backup_dir else out_dir / "backup"
    # Writes of non-chief workers (their copy of the saved model) go to a private temp dir.
    scratch = None if spec.is_chief else Path(tempfile.mkdtemp(prefix=f"tff-lab-worker{spec.worker_id}-"))
    run_dir = out_dir if spec.is_chief else scratch
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if spec.is_chief:
            backup_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))

        communication = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication)
        replicas = strategy.num_replicas_in_sync
        log.info("cluster %s; %d replica(s) in sync", spec.describe(), replicas)

        data = load_federated_data(cfg)
        x, y = data.union_train()
        x_test, y_test = data.test
        train_ds, steps, test_ds, global_batch = _datasets(cfg, strategy, spec.num_workers, x, y, x_test, y_test)

        with strategy.scope():
            model = _build_model(cfg, data.input_shape, data.num_classes)
            model.compile(
                optimizer=tf.keras.optimizers.SGD(learning_rate=cfg.dist.learning_rate),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                steps_per_execution=cfg.dist.steps_per_execution,
            )

        backup = _make_backup_callback(strategy, str(backup_dir), handle_sigterm=True)
        metrics_cb = _make_metrics_logger(run_dir, spec.is_chief, steps * global_batch)
        t0 = time.perf_counter()
        try:
            # Metrics before the backup: an epoch whose backup was lost is re-run and its row replaced.
            model.fit(
                train_ds,
                epochs=cfg.dist.epochs,
                steps_per_epoch=steps,
                validation_data=test_ds,
                callbacks=[metrics_cb, backup],
                verbose=0 if quiet else 2,
            )
        except Preempted:
            log.warning("SIGTERM: checkpoint saved in %s; exiting with %d for a retry", backup_dir, EXIT_RETRIABLE)
            raise
        except Exception as e:
            if spec.is_multi_worker and _is_peer_failure(e):
                raise PeerLost(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
            raise
        train_seconds = time.perf_counter() - t0

        test_loss, test_acc = model.evaluate(test_ds, verbose=0)
        fingerprint = weights_fingerprint(model.get_weights())
        # Every worker saves (saving may run collectives); only the chief's copy is kept.
        _save_model(model, run_dir / "model")

        epochs_here = metrics_cb.epochs_run
        resumed = backup.restored_epoch is not None and backup.restored_epoch >= 0
        summary = {
            "name": cfg.name,
            "config_hash": config_hash(cfg),
            "mode": "multi_worker_mirrored",
            "cluster_source": spec.source,
            "num_workers": spec.num_workers,
            "replicas_in_sync": replicas,
            "per_replica_batch_size": cfg.dist.per_replica_batch_size,
            "global_batch_size": global_batch,
            "input_sharding": cfg.dist.input_sharding,
            "steps_per_epoch": steps,
            "epochs": cfg.dist.epochs,
            "epochs_run_this_attempt": len(epochs_here),
            "resumed": resumed,
            "resumed_at_epoch": (epochs_here[0] if epochs_here else cfg.dist.epochs + 1) if resumed else None,
            "resumed_at_step": (backup.restored_batch + 1) % steps if resumed else None,
            "train_examples": int(len(y)),
            "test_examples": int(len(y_test)),
            "weights_sha256": fingerprint,
            "test_loss": float(test_loss),
            "test_accuracy": float(test_acc),
            "train_seconds_this_attempt": round(train_seconds, 3),
            "examples_per_second": round(len(epochs_here) * steps * global_batch / max(train_seconds, 1e-9), 1),
            "mixed_precision": cfg.dist.mixed_precision,
            "gpus_per_worker": len(gpus),
            "devices": [d.name for d in tf.config.list_logical_devices() if d.device_type in ("GPU", "CPU")],
            "tensorflow": tf.__version__,
        }
        if spec.is_chief:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            shutil.rmtree(backup_dir / "chief", ignore_errors=True)  # the run is complete
            with contextlib.suppress(OSError):
                backup_dir.rmdir()
        summary["chief"] = spec.is_chief
        summary["worker_id"] = spec.worker_id
        return summary
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
