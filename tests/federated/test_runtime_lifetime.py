"""No TFF worker_binary outlives ``tff-lab run``: success, exit 2, SIGTERM, SIGKILL of the parent.

Each case runs the real CLI in a subprocess with a unique tag in its environment; every worker it
starts (ours, or one TFF would start itself) inherits the tag, so the workers are found even after
they were re-parented. A watcher records them while the run lives, which proves they existed.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import psutil
import pytest
from helpers import REPO, cli_env

pytestmark = pytest.mark.slow

TAG = "TFF_LAB_TEST_WORKER_TAG"


def _tagged_workers(tag):
    found = []
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] == "worker_binary" and p.environ().get(TAG) == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


class _Run:
    def __init__(self, out, *sets):
        self.tag = uuid.uuid4().hex
        env = {**cli_env(), TAG: self.tag}
        args = [sys.executable, "-m", "tff_lab.cli", "run", "--out", str(out), "--quiet"]
        for s in ("centralized.enabled=false", *sets):
            args += ["--set", s]
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self):
        while not self._stop.is_set():
            self.seen.update(_tagged_workers(self.tag))
            self._stop.wait(0.1)

    def wait_for(self, predicate, timeout=300):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, f"run ended early ({self.proc.returncode}): {self.proc.stderr.read()}"
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.1)

    def finish(self, timeout=600):
        try:
            _, err = self.proc.communicate(timeout=timeout)
        finally:
            self._stop.set()
            self._watcher.join()
        return self.proc.returncode, err

    def leftover_workers(self, grace_s=10.0):
        deadline = time.monotonic() + grace_s  # the kernel's kill is immediate; teardown is not
        while (left := _tagged_workers(self.tag)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def kill_leftovers(self):
        for pid in _tagged_workers(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _rows(out):
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


LONG = ["training.rounds=400", "training.eval_every_rounds=400", "training.rounds_per_checkpoint=400"]


@pytest.mark.parametrize(
    "path,workers",
    [
        ("success", 2),
        ("exit2", 2),
        ("sigterm", 2),
        ("sigkill", 0),  # TFF's own local context leaked its worker here before tff_lab started it itself
        ("sigkill", 2),
    ],
)
def test_no_worker_outlives_the_run(tmp_path, path, workers):
    out = tmp_path / "run"
    sets = ["training.engine=tff", f"training.workers={workers}"]  # TFF's runtime and its workers
    if path == "success":
        sets.append("training.rounds=2")
    elif path == "exit2":
        # A user error raised after the workers were started: the aggregation builder is called
        # once the TFF context exists, and json.dumps() is not an aggregator factory.
        sets += ["training.rounds=2", "aggregation.builder=json:dumps"]
    else:
        sets += LONG
    run = _Run(out, *sets)
    try:
        if path in ("sigterm", "sigkill"):
            run.wait_for(lambda: _rows(out) >= 1)  # inside the rounds, the workers busy
            run.proc.send_signal(signal.SIGTERM if path == "sigterm" else signal.SIGKILL)
        code, err = run.finish()
        expected_code = {"success": 0, "exit2": 2, "sigterm": 143, "sigkill": -signal.SIGKILL}[path]
        assert code == expected_code, err[-3000:]
        if path == "exit2":
            assert "Traceback" not in err and "json:dumps" in err, err
            assert len(err.strip().splitlines()) == 1, err
        if path == "success":
            assert json.loads((out / "summary.json").read_text())["rounds"] == 2
        # The workers existed (one for TFF's local context, N for training.workers=N) ...
        assert len(run.seen) >= (1 if path == "exit2" else max(1, workers)), run.seen
        # ... and none survived the run, however it ended.
        assert run.leftover_workers() == []
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        run.kill_leftovers()
