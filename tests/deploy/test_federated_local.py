"""The federated overlay's pods run locally: the StatefulSet's TFF worker command (the real
worker_binary from .venv via `tff-lab tff-worker`), the driver's init container (`tff-lab k8s wait`)
and the driver's `tff-lab run` against the workers, their DNS names mapped to localhost ports."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tff_lab.deploy import render
from tff_lab.deploy.local import LocalIndexedJob, LocalStatefulSet, find

TINY = """\
name: fed_tiny
seed: 3
data: {source: digits, num_clients: 4}
model: {name: mlp, hidden_units: [8]}
training: {rounds: 2, clients_per_round: 2, eval_every_rounds: 1, rounds_per_checkpoint: 1}
centralized: {enabled: false}
"""
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def _params(workers: int) -> render.RenderParams:
    return render.RenderParams(
        experiment_name="fed_tiny",
        experiment_yaml=TINY,
        workers=1,
        gpus_per_worker=0,
        image="r.example/tff-lab:1",
        tff_workers=workers,
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / __import__("os").sysconf("SC_CLK_TCK")  # utime + stime


def _cli(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tff_lab.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, **ENV},
    )


def test_worker_pods_serve_and_the_init_container_waits_for_them(tmp_path):
    objs = render.render_overlay(_params(2), "federated")
    workers = LocalStatefulSet(objs, "tff-lab-worker", tmp_path, extra_env=ENV)
    wait = find(objs, "Job")["spec"]["template"]["spec"]["initContainers"][0]
    wait_args = [workers.address_map.get(a, a) for a in wait["args"]]
    assert wait_args[2:4] == list(workers.address_map.values())  # both workers, mapped
    # Before the workers start, the init container times out naming what it waited for.
    out = _cli(*wait_args[:4], "--timeout", "1")
    assert out.returncode == 1 and "not reachable after 1 s" in out.stderr and wait_args[2] in out.stderr
    workers.start_all()
    try:
        out = _cli(*wait_args)
        assert out.returncode == 0, out.stderr
        workers.wait_ready(5)
        # The pod's process is TFF's worker_binary itself (tff-lab tff-worker execs it: PID 1 gets SIGTERM).
        for proc in workers.procs.values():
            assert Path(f"/proc/{proc.pid}/exe").resolve().name == "worker_binary"
        workers.stop(0)
        assert workers.alive() == [False, True]
        with pytest.raises(OSError):
            socket.create_connection(("localhost", workers.local_ports[0]), timeout=1).close()
    finally:
        workers.stop()


def test_tff_worker_and_wait_bad_input_is_one_line_exit_2():
    for args, words in (
        (["tff-worker", "--port", "0"], "argument --port: expected an integer >= 1 and <= 65535"),
        (["tff-worker", "--port", "70000"], "argument --port: expected an integer >= 1"),
        (["k8s", "wait", "nohostport"], "expected host:port"),
    ):
        out = _cli(*args)
        lines = out.stderr.strip().splitlines()
        # one line, or argparse's usage then one error line for a flag refused by its type
        assert out.returncode == 2 and (len(lines) == 1 or lines[0].startswith("usage:")), lines
        assert "Traceback" not in out.stderr and words in lines[-1], lines


@pytest.mark.slow
def test_driver_pod_trains_on_the_worker_pods(tmp_path):
    """The whole overlay, as processes: 2 worker pods, then the driver Job (init container, then
    `tff-lab run ... --set training.worker_addresses=[...]`), which ends with a complete run."""
    objs = render.render_overlay(_params(2), "federated")
    workers = LocalStatefulSet(objs, "tff-lab-worker", tmp_path / "workers", extra_env=ENV)
    job = LocalIndexedJob(objs, "tff-lab-driver", tmp_path / "cluster", extra_env=ENV, address_map=workers.address_map)
    workers.start_all()
    try:
        job.start_all()  # the init container returns once both workers listen
        idle = [_cpu_seconds(p.pid) for p in workers.procs.values()]
        states = job.run(timeout_s=600)
        busy = [_cpu_seconds(p.pid) for p in workers.procs.values()]
        print("worker CPU seconds during the run:", [round(b - i, 2) for b, i in zip(busy, idle)])
        # Both workers computed clients' rounds: ~0.2 s each here; an idle worker_binary uses 0.0 s in 15 s.
        assert states == {0: "Succeeded"}, job.log_text(0)[-3000:]
        run = job.mounts["/artifacts"] / "runs" / "fed_tiny-federated"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["rounds"] == 2 and 0.0 <= summary["final_test_accuracy"] <= 1.0
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["training"]["worker_addresses"] == list(workers.address_map.values())
        assert all(b - i > 0.05 for b, i in zip(busy, idle)), (idle, busy)
        assert workers.alive() == [True, True]  # served the rounds, still up for the next driver
    finally:
        job.kill_all()
        workers.stop()
