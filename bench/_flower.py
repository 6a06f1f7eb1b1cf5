"""Flower's environment (built on first use) and the parent side of a Flower run.

Flower needs its own environment: its simulation engine (Ray) and TFF pin incompatible
packages. ``ensure_flower_env`` builds ``.venv-flower/`` at the repo root (git-ignored) with pip
from the package registry, pinned below, and records what it installed in a marker file so a
changed pin rebuilds it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import _common
import numpy as np

FLOWER_VENV = _common.REPO / ".venv-flower"
# flwr 1.23.0 is the newest Flower that resolves with TF 2.14's protobuf < 5 (pip's choice here).
FLOWER_REQUIREMENTS = (
    "flwr[simulation]==1.23.0",
    "ray==2.31.0",
    "tensorflow-cpu==2.14.1",
    "numpy==1.26.4",
    "protobuf==4.25.9",
)
_MARKER = FLOWER_VENV / ".tff_lab_bench_requirements"


def flower_python() -> Path:
    return FLOWER_VENV / "bin" / "python"


def flower_env_ready() -> bool:
    return flower_python().exists() and _MARKER.exists() and _MARKER.read_text() == "\n".join(FLOWER_REQUIREMENTS)


def ensure_flower_env(quiet: bool = False) -> Path:
    """Creates .venv-flower with pip on first use (a few minutes, ~1.5 GB); returns its python."""
    if flower_env_ready():
        return flower_python()
    log = None if not quiet else subprocess.DEVNULL
    print(f"building Flower's environment in {FLOWER_VENV} (first use; a few minutes) ...", flush=True)
    if not flower_python().exists():
        # The base interpreter, not this venv's: a venv made from a venv would inherit nothing useful.
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(FLOWER_VENV)], check=True, stdout=log)
    pip = [str(flower_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, *FLOWER_REQUIREMENTS], check=True, stdout=log)
    _MARKER.write_text("\n".join(FLOWER_REQUIREMENTS))
    return flower_python()


def measure_flower(
    task: str,
    rounds: int,
    *,
    cpus_per_client: float = 1.0,
    model_per_call: bool = False,
    overrides=(),
    timeout: float = 3600,
) -> dict:
    """Runs the task on Flower in a fresh process of Flower's environment; returns its result.

    ``model_per_call``: build the Keras model in every client fit (Flower's quickstart style)
    instead of once per simulated-client process."""
    from tff_lab.config import to_dict
    from tff_lab.data import load_federated_data
    from tff_lab.models import initial_weights

    python = ensure_flower_env()
    cfg = _common.task_config(task, rounds, overrides)
    data = load_federated_data(cfg)
    init = initial_weights(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    with tempfile.TemporaryDirectory(prefix="tff_lab_bench_flower_") as tmp:
        arrays = {"test_x": data.test[0], "test_y": data.test[1]}
        for k, cid in enumerate(data.client_ids):
            arrays[f"x{k}"], arrays[f"y{k}"] = data.train[cid]
        for j, w in enumerate(init):
            arrays[f"w{j}"] = w
        np.savez(Path(tmp) / "data.npz", **arrays)
        spec = {
            "config": to_dict(cfg),
            "data": str(Path(tmp) / "data.npz"),
            "population": data.num_clients,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "num_weights": len(init),
            "cpus_per_client": cpus_per_client,
            "model_per_call": model_per_call,
        }
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        env = _common.worker_env(
            {
                "TFF_LAB_FLOWER_SPEC": str(spec_file),
                "RAY_DEDUP_LOGS": "0",
                "RAY_USAGE_STATS_ENABLED": "0",
                "FLWR_TELEMETRY_ENABLED": "0",
            }
        )
        return _common.run_isolated(
            _common.BENCH / "flower_app.py",
            {"kind": "flower", "task": task, "spec_file": str(spec_file)},
            python=str(python),
            env=env,
            timeout=timeout,
            sample_every=0.25,
        )
