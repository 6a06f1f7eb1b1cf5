"""The TFF runtime over real worker_binary processes: N local workers, remote addresses, lost workers."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from helpers import REPO

from tff_lab.errors import WorkerLost
from tff_lab.federated import runtime


@pytest.fixture(scope="module")
def fedavg():
    import tensorflow as tf
    import tensorflow_federated as tff

    def model_fn():
        model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Dense(3)])
        model.set_weights([np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), np.zeros(3, np.float32)])
        return tff.learning.models.from_keras_model(
            model,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            input_spec=(tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32)),
        )

    rng = np.random.default_rng(0)
    data = [
        tf.data.Dataset.from_tensor_slices(
            (rng.normal(size=(12 + 4 * i, 4)).astype("float32"), rng.integers(0, 3, 12 + 4 * i).astype("int32"))
        ).batch(4)
        for i in range(5)
    ]
    process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1)
    )
    return process, data


@pytest.fixture(autouse=True)
def _clean():
    runtime.shutdown()
    yield
    runtime.shutdown()


def _rounds(process, data, n=2, state=None):
    state = process.initialize() if state is None else state
    for _ in range(n):
        state = process.next(state, data).state
    return state


def _weights(process, state):
    return [np.asarray(w) for w in process.get_model_weights(state).trainable]


def _max_diff(a, b):
    assert len(a) == len(b)
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def reference(fedavg):
    """Two rounds on TFF's own local context (what tff_lab used before it started its workers)."""
    import tensorflow_federated as tff

    process, data = fedavg
    tff.backends.native.set_sync_local_cpp_execution_context()
    try:
        return _weights(process, _rounds(process, data))
    finally:
        runtime.shutdown()  # TFF's own worker: found as a child worker_binary and stopped


def _marked_workers(parent_pid=None):
    out = []
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] == "worker_binary":
                mark = p.environ().get(runtime.WORKER_ENV_MARKER)
                if mark is not None and (parent_pid is None or mark == str(parent_pid)):
                    out.append(p.pid)
        except psutil.Error:
            continue
    return sorted(out)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_workers_run_a_round_as_tffs_local_context_does(fedavg, reference, workers):
    process, data = fedavg
    runtime.ensure_context(0, workers=workers)
    pids = runtime.worker_pids()
    assert len(pids) == max(1, workers) and len(set(runtime.addresses())) == len(pids)
    assert sorted(pids) == _marked_workers(os.getpid())  # started by us, marked with our pid
    got = _weights(process, _rounds(process, data))
    # TFF merges the workers' partial sums in another order than one worker sums them.
    assert _max_diff(got, reference) <= (0.0 if workers <= 1 else 1e-6)
    if workers:
        assert _max_diff(got, reference) < 1e-6
    runtime.ensure_context(0, workers=workers)  # idempotent: the same processes
    assert runtime.worker_pids() == pids
    runtime.shutdown()
    assert runtime.worker_pids() == [] and _marked_workers(os.getpid()) == []
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)


def test_training_config_is_read_for_the_worker_fields(fedavg):
    from tff_lab.config.schema import TrainingConfig

    runtime.ensure_context(TrainingConfig(workers=2, client_concurrency=1))
    assert len(runtime.worker_pids()) == 2
    cmdlines = [" ".join(psutil.Process(p).cmdline()) for p in runtime.worker_pids()]
    assert all("--max_concurrent_computation_calls=1" in c for c in cmdlines), cmdlines


def test_a_killed_worker_is_reported_as_lost_and_reset_restarts_it(fedavg, reference):
    process, data = fedavg
    runtime.ensure_context(0, workers=2)
    state = _rounds(process, data, n=1)
    victim = runtime.worker_pids()[1]
    victim_address = runtime.addresses()[1]
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(Exception) as raised:
        process.next(state, data)
    lost = runtime.classify_failure(raised.value)
    assert time.monotonic() - t0 < 30  # TFF alone would retry the dead worker forever
    assert isinstance(lost, WorkerLost) and lost.address == victim_address
    assert victim_address in str(lost) and f"pid {victim}" in str(lost)
    # While a worker is dead, whatever the round raised is put down to it.
    assert isinstance(runtime.classify_failure(ValueError("e.g. a broken channel")), WorkerLost)

    runtime.reset()
    pids = runtime.worker_pids()
    assert len(pids) == 2 and victim not in pids
    not_ours = ValueError("not a worker problem")
    assert runtime.classify_failure(not_ours) is not_ours
    state = process.next(state, data).state  # the round that failed, run again
    assert _max_diff(_weights(process, state), reference) < 1e-6


class _RemoteWorker:
    """A worker_binary that is not our child (started through a shell that exits), as a pod's would be."""

    def __init__(self, port, via_cli=False):
        cmd = (
            f"'{sys.executable}' -m tff_lab.cli tff-worker --port {port}"
            if via_cli
            else f"'{runtime.worker_binary_path()}' --port={port}"
        )
        out = subprocess.run(
            ["sh", "-c", f"{cmd} >/dev/null 2>&1 & echo $!"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            stdin=subprocess.DEVNULL,
        )
        self.proc = psutil.Process(int(out.stdout.strip()))
        deadline = time.monotonic() + 60
        while via_cli and self.proc.name() != "worker_binary":  # the CLI execs the binary once parsed
            assert time.monotonic() < deadline and self.alive()
            time.sleep(0.1)

    def alive(self):
        return self.proc.is_running() and self.proc.status() != psutil.STATUS_ZOMBIE

    def kill(self):
        try:
            self.proc.kill()
            self.proc.wait(10)
        except psutil.NoSuchProcess:
            pass


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_remote_addresses_lost_and_reconnected(fedavg, reference, monkeypatch):
    monkeypatch.setattr(runtime, "CONNECT_TIMEOUT_S", 3.0)
    process, data = fedavg
    ports = [_free_port(), _free_port()]
    remote = [_RemoteWorker(p) for p in ports]
    try:
        addresses = [f"localhost:{p}" for p in ports]
        runtime.ensure_context(0, worker_addresses=addresses)
        assert runtime.addresses() == addresses and runtime.worker_pids() == []  # not ours to stop
        state = _rounds(process, data, n=1)

        remote[0].kill()
        with pytest.raises(Exception) as raised:
            process.next(state, data)
        lost = runtime.classify_failure(raised.value)
        assert isinstance(lost, WorkerLost) and lost.address == addresses[0], repr(lost)

        with pytest.raises(WorkerLost, match=addresses[0]):
            runtime.reset()  # still down: reconnecting fails, naming it

        remote[0] = _RemoteWorker(ports[0], via_cli=True)  # the pod came back, running `tff-lab tff-worker`
        assert remote[0].proc.name() == "worker_binary"  # the CLI became the worker (exec, same pid)
        runtime.ensure_context(0, worker_addresses=addresses)
        state = process.next(state, data).state
        assert _max_diff(_weights(process, state), reference) < 1e-6
        runtime.shutdown()
        assert all(w.alive() for w in remote)  # shutdown leaves other people's workers alone
    finally:
        for w in remote:
            w.kill()


def test_unreachable_address_is_a_lost_worker_naming_it(monkeypatch):
    monkeypatch.setattr(runtime, "CONNECT_TIMEOUT_S", 1.0)
    address = f"localhost:{_free_port()}"
    with pytest.raises(WorkerLost, match=f"TFF worker {address} not reachable"):
        runtime.ensure_context(0, worker_addresses=[address])
    assert runtime.addresses() == []


def test_workers_die_with_a_thread_that_started_them_never(fedavg):
    """The kernel's parent-death signal follows the forking thread: a caller's thread ending must
    not take the workers with it (they are forked from one long-lived spawner thread)."""
    import threading

    process, data = fedavg
    t = threading.Thread(target=runtime.ensure_context, args=(0,), kwargs={"workers": 2})
    t.start()
    t.join()
    time.sleep(0.5)
    pids = runtime.worker_pids()
    assert len(pids) == 2
    runtime.ensure_context(0, workers=2)  # TFF's context stack is per thread: install it here too
    assert runtime.worker_pids() == pids  # the same workers, alive after their starter thread ended
    _rounds(process, data, n=1)


def test_secure_sums_run_on_two_workers_as_on_tffs_test_context(fedavg):
    """Secure-sum intrinsics are compiled to plain sums (TFF's test runtime) on the mergeable path too,
    and the result keeps its Python containers (LearningProcessOutput)."""
    import tensorflow as tf
    import tensorflow_federated as tff

    _, data = fedavg

    def model_fn():
        model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Dense(3)])
        model.set_weights([np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), np.zeros(3, np.float32)])
        return tff.learning.models.from_keras_model(
            model,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            input_spec=(tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32)),
        )

    process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1),
        model_aggregator=tff.learning.secure_aggregator(zeroing=False, clipping=False),
    )
    tff.backends.test.set_sync_test_cpp_execution_context()
    try:
        reference = _weights(process, _rounds(process, data))
    finally:
        runtime.shutdown()
    runtime.ensure_context(0, secure=True, workers=2)
    got = _weights(process, _rounds(process, data))
    assert _max_diff(got, reference) < 1e-6
