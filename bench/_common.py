"""Shared pieces of the benchmark scripts: tasks, isolated runs, memory sampling, tables.

Every measured run happens in a fresh Python process (``run_isolated``): each system pays its
own start-up, memory is measured per run, and TFF's process-wide execution context cannot leak
from one system into the next. The parent samples the resident memory of the child's whole
process tree (TFF computes in a C++ ``worker_binary`` subprocess; Flower in Ray processes).

A worker process is the bench script itself, started as ``script --worker SPEC_JSON``; it
prints one line ``BENCH_RESULT {json}`` at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from tff_lab.training.hooks import RoundHook  # light: no TensorFlow

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
RESULT_MARK = "BENCH_RESULT "
WARMUP_ROUNDS = 2  # TFF traces and the C++ worker starts in the first rounds

# The lead's DP setting: TFF's gaussian_fixed aggregator (unweighted), clip 1.0.
DP_OVERRIDES = ("privacy.mechanism=gaussian_fixed", "privacy.noise_multiplier=0.3", "algorithm.weighting=uniform")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    config: Optional[str]  # experiment YAML relative to the repo; None = tff_lab's default experiment
    overrides: tuple[str, ...] = ()
    description: str = ""


TASKS = {
    "digits": Task("digits", None, (), "digits MLP 64-64, 20 clients, 10/round, 1 epoch, batch 16"),
    "digits_dp": Task("digits_dp", None, DP_OVERRIDES, "digits + DP (gaussian_fixed, noise 0.3, clip 1, uniform)"),
    "synthetic": Task(
        "synthetic",
        "experiments/synthetic_fedprox.yaml",
        (),
        "FedProx synthetic(1,1) logreg, 1,000 clients, 50/round, batch 10",
    ),
    "synthetic_dp": Task(
        "synthetic_dp",
        "experiments/synthetic_fedprox.yaml",
        DP_OVERRIDES,
        "synthetic + DP (gaussian_fixed, noise 0.3, clip 1, uniform)",
    ),
}

# Settings that only change what a run writes or evaluates at its end, never a round's work.
# These benches measure TFF's runtime (tff_lab over bare TFF, TFF workers, the TFF engine's cost curves,
# the reference side of engine_speed.py, which builds both engines itself): pin the TFF engine, which
# `training.engine: auto` would otherwise replace by the vectorised one.
BENCH_OVERRIDES = ("centralized.enabled=false", "training.engine=tff")


def task_config(task: str, rounds: int, extra: Sequence[str] = ()):
    """The task's ExperimentConfig with ``rounds`` rounds (and the bench overrides)."""
    from tff_lab.config import load_config

    t = TASKS[task]
    path = str(REPO / t.config) if t.config else None
    return load_config(path, [*t.overrides, *BENCH_OVERRIDES, f"training.rounds={rounds}", *extra])


def privacy_available() -> bool:
    """Whether tff_lab's privacy module (calibration + ledger hook) can be imported yet."""
    try:
        import tff_lab.privacy.calibration  # noqa: F401
        import tff_lab.privacy.hook  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Statistics and fingerprints


def steady(seconds: Sequence[float], warmup: int = WARMUP_ROUNDS) -> list[float]:
    secs = list(seconds)
    return secs[warmup:] if len(secs) > warmup + 1 else secs


def round_stats(seconds: Sequence[float], warmup: int = WARMUP_ROUNDS) -> dict:
    """Median and mean seconds per round after the warm-up rounds."""
    s = steady(seconds, warmup)
    return {"median_s": float(np.median(s)), "mean_s": float(np.mean(s)), "rounds_timed": len(s)}


def weights_digest(weights: Sequence[np.ndarray]) -> str:
    """A short hash of the exact bytes of a model's weights (bit-identity check)."""
    h = hashlib.sha256()
    for w in weights:
        a = np.ascontiguousarray(np.asarray(w, dtype=np.float32))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def slope_per_100(rounds: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against ``rounds``, per 100 rounds."""
    if len(rounds) < 2:
        return float("nan")
    return float(np.polyfit(np.asarray(rounds, float), np.asarray(values, float), 1)[0] * 100.0)


# ---------------------------------------------------------------------------------------------
# Memory


def tree_rss_mb(pid: int) -> dict:
    """Resident memory (MB) of a process and each of its descendants, by pid."""
    import psutil

    out = {}
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return out
    for p in procs:
        try:
            out[p.pid] = p.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return out


def self_rss_mb() -> dict:
    """This process's RSS and its TFF worker's (MB): {"main": .., "worker": .., "total": ..}."""
    probe = probe_self(0)
    return {k: probe[k] for k in ("main", "worker", "total")}


def probe_self(round_num: int) -> dict:
    """One sample of this process and its children (TFF's worker): RSS in MB and CPU seconds so far.

    Every measured system takes the same sample each round, so its few ms cost them alike."""
    import psutil

    me = psutil.Process()
    main = me.memory_info().rss / 2**20
    t = me.cpu_times()
    cpu, worker = t.user + t.system, 0.0
    for p in me.children(recursive=True):
        try:
            worker += p.memory_info().rss / 2**20
            t = p.cpu_times()
            cpu += t.user + t.system
        except psutil.Error:
            continue
    return {
        "round": round_num,
        "t": time.perf_counter(),
        "cpu": cpu,
        "main": main,
        "worker": worker,
        "total": main + worker,
    }


def cpu_per_round(samples: Sequence[dict], warmup: int = WARMUP_ROUNDS, skip_every: int = 10) -> Optional[float]:
    """Mean CPU seconds per round from per-round samples {"round", "cpu"}, over the rounds after
    the warm-up that are not a multiple of ``skip_every`` nor the last (tff_lab evaluates and
    checkpoints in those by default; the same rounds are left out for every system). A mean,
    not a median: CPU times tick in 10 ms steps, comparable to a round."""
    last = max((m["round"] for m in samples), default=0)
    diffs = [
        b["cpu"] - a["cpu"]
        for a, b in zip(samples, samples[1:])
        if "cpu" in a
        and "cpu" in b
        and b["round"] == a["round"] + 1
        and a["round"] >= warmup
        and b["round"] % skip_every
        and b["round"] != last
    ]
    return float(np.mean(diffs)) if diffs else None


def _kill(pids) -> None:
    import psutil

    for pid in pids:
        try:
            p = psutil.Process(pid)
            p.kill()
        except psutil.Error:
            continue


# ---------------------------------------------------------------------------------------------
# Isolated runs


def worker_env(extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(BENCH), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.update(extra or {})
    return env


def run_isolated(
    script: Path,
    spec: dict,
    *,
    python: str = sys.executable,
    timeout: float = 1800,
    sample_every: float = 0.1,
    env: Optional[dict] = None,
) -> dict:
    """Runs ``python script --worker SPEC`` in a fresh process and returns its result dict.

    Adds ``peak_rss_mb`` (the largest sum of RSS over the child's process tree, sampled every
    ``sample_every`` s), ``process_seconds`` (wall time of the whole child) and ``tree_pids``. Output goes to
    temp files, not pipes: an orphaned TFF ``worker_binary`` inherits the child's stdout and
    would hold a pipe open forever. Every process of the tree still alive at the end is killed.
    """
    import psutil

    with tempfile.TemporaryDirectory(prefix="tff_lab_bench_") as tmp:
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        seen: set[int] = set()
        peak = 0.0
        t0 = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [python, str(script), "--worker", json.dumps(spec)],
                stdout=out,
                stderr=err,
                cwd=REPO,
                env=env or worker_env(),
                start_new_session=True,
            )
            try:
                while proc.poll() is None:
                    rss = tree_rss_mb(proc.pid)
                    seen.update(rss)
                    peak = max(peak, sum(rss.values()))
                    if time.perf_counter() - t0 > timeout:
                        _kill(list(tree_rss_mb(proc.pid)))
                        raise TimeoutError(f"{script.name} worker ran past {timeout:.0f} s")
                    time.sleep(sample_every)
            finally:
                _kill(p for p in seen if p != proc.pid and psutil.pid_exists(p) and _is_ours(p))
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        elapsed = time.perf_counter() - t0
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
    lines = [l for l in stdout.splitlines() if l.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{script.name} worker failed (exit {proc.returncode}) for {spec.get('kind')}:\n"
            f"{stderr[-4000:]}\n{stdout[-2000:]}"
        )
    result = json.loads(lines[-1][len(RESULT_MARK) :])
    result["peak_rss_mb"] = round(peak, 1)
    result["process_seconds"] = round(elapsed, 2)
    result["tree_pids"] = sorted(seen)
    return result


def _is_ours(pid: int) -> bool:
    """A descendant we saw that is still a TFF worker or a Ray/Python helper (not a recycled pid)."""
    import psutil

    try:
        name = " ".join(psutil.Process(pid).cmdline()[:2])
    except psutil.Error:
        return False
    return any(k in name for k in ("worker_binary", "ray", "python", "raylet", "gcs_server"))


def worker_main(workers: dict[str, Callable[[dict], dict]]) -> bool:
    """If started as ``--worker SPEC``: runs the worker named by spec['kind'], prints its result."""
    if len(sys.argv) < 3 or sys.argv[1] != "--worker":
        return False
    spec = json.loads(sys.argv[2])
    result = workers[spec["kind"]](spec)
    print(RESULT_MARK + json.dumps(result), flush=True)
    return True


# ---------------------------------------------------------------------------------------------
# The tff_lab side: the real runner, with a hook that records memory


class MemoryHook(RoundHook):
    """Records this process's and the TFF worker's RSS (MB) and the time before round 1, every
    ``every`` rounds and after the last round."""

    name = "bench_memory"

    def __init__(self, every: int = 1):
        self.every = every
        self.samples: list[dict] = []

    def on_start(self, ctx) -> None:
        self.samples.append(probe_self(0))

    def after_round(self, ctx, info, row) -> None:
        if info.round_num % self.every == 0 or info.round_num == ctx.cfg.training.rounds:
            self.samples.append(probe_self(info.round_num))


def measure_tff_lab(spec: dict, extra_hooks: Sequence = ()) -> dict:
    """One tff_lab run (``tff_lab.run_experiment``): per-round seconds, accuracy, weights, memory.

    ``spec["fixed"]``: with the proposed fixes patched in (``install_proposed_fixes``)."""
    import tensorflow as tf

    if spec.get("fixed"):
        install_proposed_fixes()
    from tff_lab import run_experiment

    cfg = task_config(spec["task"], spec["rounds"], spec.get("overrides", ()))
    hook = MemoryHook(spec.get("memory_every", 1))
    with tempfile.TemporaryDirectory(prefix="tff_lab_bench_run_") as tmp:
        t0 = time.perf_counter()
        summary = run_experiment(cfg, Path(tmp) / "run", hooks=[hook, *extra_hooks], quiet=True)
        t_end = time.perf_counter()
        run_seconds = t_end - t0
        rows = [json.loads(l) for l in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        model = tf.keras.models.load_model(Path(tmp) / "run" / "model" / "model.keras", compile=False)
        digest = weights_digest(model.get_weights())
    seconds = [r["round_seconds"] for r in rows]
    return {
        "system": "tff_lab",
        "task": spec["task"],
        "overrides": list(spec.get("overrides", ())),
        "round_seconds": seconds,
        **round_stats(seconds),
        "cpu_median_s": cpu_per_round(hook.samples),
        "accuracy": summary["final_test_accuracy"],
        "weights": digest,
        "train_seconds": summary["train_seconds"],
        "run_seconds": round(run_seconds, 2),
        # Phases: load data + build the process | rounds | final evaluation, model export, plots.
        "setup_seconds": round(hook.samples[0]["t"] - t0, 2),
        "finish_seconds": round(t_end - hook.samples[-1]["t"], 2),
        "memory": hook.samples,
        "load": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------------
# Prototypes of the fixes proposed for tff_lab (BENCHMARKS.md); patched in, tff_lab/ untouched


def install_proposed_fixes() -> None:
    """Applies the three proposed changes to this process (before ``run_experiment``)."""
    _fix_evaluate()
    _fix_worker_arenas()
    _fix_metrics_writer()


def _fix_evaluate() -> None:
    """tff_lab.centralized.baseline.evaluate: evaluate on a tf.data pipeline built once per array
    pair instead of ``model.evaluate(x, y)``, whose per-call pipeline from arrays leaks ~0.3 MB a
    call in TF 2.14's Keras. Same batches (1024, in order), so the same numbers."""
    import tensorflow as tf

    from tff_lab.centralized import baseline

    cache: dict = {}
    original = baseline.evaluate

    def evaluate(model, x, y):
        if len(y) == 0:
            return original(model, x, y)
        key = (id(x), id(y))
        if key not in cache:
            cache[key] = (x, y, tf.data.Dataset.from_tensor_slices((x, y)).batch(1024))  # keeps x, y alive
        loss, acc = model.evaluate(cache[key][2], verbose=0)
        return float(loss), float(acc)

    baseline.evaluate = evaluate


def _fix_worker_arenas() -> None:
    """tff_lab.federated.runtime.ensure_context: TFF's C++ worker inherits MALLOC_ARENA_MAX=2. Set
    after this process started, it reaches only the children (the worker), as the proposed change
    would; glibc then stops adding per-thread arenas whose fragmentation is the worker's growth."""
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")


def _fix_metrics_writer() -> None:
    """tff_lab.training.metrics.MetricsWriter.append: one TensorBoard write per round (a Summary
    proto holding every scalar) instead of one eager ``tf.summary.scalar`` op per value."""
    import tensorflow as tf
    from tensorboard.compat.proto import summary_pb2

    from tff_lab.training import metrics

    def append(self, row: dict) -> None:
        row = {k: metrics._clean(v) for k, v in row.items()}
        self.rows.append(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        values = [
            summary_pb2.Summary.Value(tag=k, simple_value=float(v))
            for k, v in row.items()
            if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        with self._writer().as_default():
            tf.summary.experimental.write_raw_pb(
                summary_pb2.Summary(value=values).SerializeToString(), step=int(row["round"])
            )

    metrics.MetricsWriter.append = append


# ---------------------------------------------------------------------------------------------
# Reporting


def machine_info() -> dict:
    import psutil

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata

    versions = {}
    for pkg in ("tensorflow", "tensorflow-federated", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        **versions,
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub-markdown table (prints well in a terminal too)."""

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join(
        [line([str(h) for h in headers]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in body)]
    )


def save_json(path: Path, data) -> Path:
    """Writes ``data`` as JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path


def save_figure(fig, path: Path) -> Path:
    """Saves a matplotlib figure as PNG atomically and closes it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp_" + path.name)
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def load_now() -> str:
    return "load avg (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg())
