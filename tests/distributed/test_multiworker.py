"""The rendered Indexed Job's pod command, run as 2 local MWMS workers with the env each pod gets.

`LocalIndexedJob` starts every pod's exact command and env from the kustomize-built manifest
(JOB_COMPLETION_INDEX, the job-name label via the downward API, volumes as local dirs) with the
pods' DNS names mapped to free localhost ports, and replaces failed pods as the Job controller
does under the manifest's podFailurePolicy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tff_lab.deploy import render
from tff_lab.deploy.local import LocalIndexedJob
from tff_lab.distributed import EXIT_RETRIABLE

pytestmark = pytest.mark.multiworker

TINY = """\
name: tiny_dist
seed: 1
data: {source: digits, num_clients: 4}
model: {name: mlp, hidden_units: [16]}
training: {clients_per_round: 2}
dist: {epochs: EPOCHS, per_replica_batch_size: 64, learning_rate: 0.5, input_sharding: SHARDING}
"""


def tiny(epochs: int, sharding: str = "data") -> str:
    return TINY.replace("EPOCHS", str(epochs)).replace("SHARDING", sharding)


def rendered_objects(tmp_path: Path, epochs: int, sharding: str) -> list[dict]:
    """The gpu overlay (the default) rendered for a tiny experiment, built with kustomize."""
    p = render.RenderParams(
        experiment_name="tiny_dist",
        experiment_yaml=tiny(epochs, sharding),
        workers=2,
        gpus_per_worker=1,
        image="registry.example.com/tff-lab/tff-lab-gpu:0.1.0",
    )
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # equal by test_manifests.test_kustomize_output_equals_the_renderers_objects
        return render.render_overlay(p, "gpu")
    render.write_tree(p, tmp_path / "k8s", overlays=("gpu",))
    out = subprocess.run(
        [kubectl, "kustomize", str(tmp_path / "k8s/overlays/gpu")], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def make_job(tmp_path: Path, epochs: int, sharding: str = "data") -> LocalIndexedJob:
    objs = rendered_objects(tmp_path, epochs, sharding)
    return LocalIndexedJob(
        objs, "tff-lab-train", tmp_path / "cluster", extra_env={"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    )


def run_dir(job: LocalIndexedJob) -> Path:
    return job.root / "volumes" / "artifacts" / "runs" / "tiny_dist"


def worker_lines(job: LocalIndexedJob, index: int) -> dict:
    """The JSON line each worker prints at the end of its last attempt."""
    for line in reversed(job.log_text(index).splitlines()):
        if line.startswith("{") and "weights_sha256" in line:
            return json.loads(line)
    raise AssertionError(f"worker {index} printed no summary:\n{job.log_text(index)[-3000:]}")


def metrics_rows(job) -> int:
    path = run_dir(job) / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def wait_for(cond, timeout_s, what):
    t_end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > t_end:
            raise TimeoutError(what)
        time.sleep(0.2)


def assert_finished_in_sync(job: LocalIndexedJob, epochs: int) -> dict:
    lines = [worker_lines(job, i) for i in range(2)]
    assert [ln["chief"] for ln in lines] == [True, False]
    assert lines[0]["weights_sha256"] == lines[1]["weights_sha256"]  # MWMS kept the replicas identical
    out = run_dir(job)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_workers"] == 2 and summary["replicas_in_sync"] == 2
    assert summary["global_batch_size"] == 2 * 64 and summary["cluster_source"] == "indexed_job"
    assert summary["weights_sha256"] == lines[0]["weights_sha256"]
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert (out / "model" / "model.keras").is_file() and (out / "model" / "saved_model" / "saved_model.pb").is_file()
    assert not (out / "backup").exists()  # BackupAndRestore's checkpoint is gone after success
    # Only the chief wrote: nothing else in the run dir, the other worker's temp dirs are gone.
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "metrics.csv",
        "metrics.jsonl",
        "model",
        "summary.json",
    ]
    # (A SIGKILLed attempt cannot clean up; its /tmp is an emptyDir that goes with the pod.)
    tmp = job.tmp_dir(1)
    assert tmp.is_dir() and not list(tmp.glob("tff-lab-worker*")), list(tmp.iterdir())
    return summary


@pytest.mark.slow
def test_two_workers_from_the_manifest_train_in_sync(tmp_path):
    job = make_job(tmp_path, epochs=3)
    env0 = job.pod_env(0, tmp_path)
    assert env0["TFF_LAB_JOB_NAME"] == "tff-lab-train" and env0["TFF_LAB_NUM_WORKERS"] == "2"
    assert env0["TFF_LAB_SERVICE"] == "tff-lab-workers"
    job.start_all()
    states = job.run(timeout_s=240)
    assert states == {0: "Succeeded", 1: "Succeeded"}, job.log_text(0)[-3000:]
    assert [h.exit_code for h in job.history] in ([0, 0],)
    summary = assert_finished_in_sync(job, 3)
    assert summary["resumed"] is False and summary["test_accuracy"] > 0.5
    # The chief's saved model holds the synced weights.
    import tensorflow as tf

    from tff_lab.distributed.trainer import weights_fingerprint

    model = tf.keras.models.load_model(run_dir(job) / "model" / "model.keras")
    assert weights_fingerprint(model.get_weights()) == summary["weights_sha256"]

    # Global batch = per-replica batch x replicas, each worker a distinct part of every global
    # batch: 2 workers x 64 train exactly like 1 worker x 128 on the same seeded data order.
    exp = tmp_path / "tiny.yaml"
    exp.write_text(tiny(3))
    single = tmp_path / "single"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tff_lab.cli",
            "train-dist",
            str(exp),
            "--out",
            str(single),
            "--set",
            "dist.per_replica_batch_size=128",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
    )
    one = [json.loads(r) for r in (single / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(r) for r in (run_dir(job) / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(one, two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["accuracy"] == pytest.approx(b["accuracy"])
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert json.loads((single / "summary.json").read_text())["global_batch_size"] == 128


@pytest.mark.slow
def test_killed_worker_is_replaced_and_the_job_resumes_from_the_backup(tmp_path):
    epochs = 4
    job = make_job(tmp_path, epochs)
    killed = []

    def kill_worker_1_after_first_epoch(j):
        # Two rows: epoch 1's backup is written (the row of epoch 2 is logged after it).
        if not killed and metrics_rows(j) >= 2:
            j.kill(1)  # SIGKILL: a node lost, an OOM kill
            killed.append(time.monotonic())

    job.start_all()
    states = job.run(timeout_s=300, on_poll=kill_worker_1_after_first_epoch)
    assert states == {0: "Succeeded", 1: "Succeeded"}
    outcomes = [(h.index, h.exit_code, h.action) for h in job.history]
    assert (1, 137, "Count") in outcomes  # the kill counts against worker 1's backoffLimitPerIndex
    assert (0, EXIT_RETRIABLE, "Ignore") in outcomes  # the chief lost its peer and asked to be retried
    assert job.attempts[0] >= 2 and job.attempts[1] >= 2
    summary = assert_finished_in_sync(job, epochs)
    assert summary["resumed"] is True and summary["resumed_at_epoch"] >= 2  # from the backup, not from scratch
    assert summary["epochs_run_this_attempt"] == epochs - summary["resumed_at_epoch"] + 1
    assert "lost a peer worker" in job.log_text(0, 1)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_retriable_then_resumes(tmp_path):
    job = make_job(tmp_path, epochs=3, sharding="explicit")  # also covers Dataset.shard per worker
    job.start_all()
    wait_for(lambda: metrics_rows(job) >= 1, 180, "first epoch")
    job.kill(1, signal.SIGTERM)  # kubectl delete pod / preemption of the non-chief worker
    codes = [job.procs[i].wait(timeout=90) for i in range(2)]
    assert codes == [EXIT_RETRIABLE, EXIT_RETRIABLE]  # both workers checkpointed at the same step
    backup = run_dir(job) / "backup"
    assert (backup / "chief" / "checkpoint").is_file() and list((backup / "chief").glob("ckpt-*.index"))
    assert sorted(p.name for p in backup.iterdir()) == ["chief"]  # worker 1's temp copy removed
    assert "checkpoint saved" in job.log_text(0) and "checkpoint saved" in job.log_text(1)
    assert job.classify(EXIT_RETRIABLE) == "Ignore"  # the manifest's podFailurePolicy retries it
    states = job.run(timeout_s=240)  # the controller replaces both pods
    assert states == {0: "Succeeded", 1: "Succeeded"}
    summary = assert_finished_in_sync(job, 3)
    assert summary["resumed"] is True
    # Resumed where the SIGTERM checkpoint was taken: mid-epoch 2 (or the start of epoch 3).
    assert (summary["resumed_at_epoch"], summary["resumed_at_step"] > 0) in ((2, True), (3, False))
