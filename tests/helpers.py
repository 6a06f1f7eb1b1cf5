"""Shared test helpers (import with `from helpers import ...`): run the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli_env() -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args, cwd=None, timeout=600, check=False) -> subprocess.CompletedProcess:
    """Runs ``tff-lab ARGS`` as a user would (a fresh Python process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tff_lab.cli", *map(str, args)],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tff-lab {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, a one-line message naming what is wrong, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    err_lines = [
        l for l in proc.stderr.strip().splitlines() if l.startswith("tff-lab: error") or "usage:" in l or "error:" in l
    ]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert err_lines, proc.stderr
    msg = err_lines[-1]
    if "usage:" not in proc.stderr:  # argparse's own errors print usage first; ours are one line
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for n in needles:
        assert n in msg, (n, msg)


TINY = [
    "training.rounds=3",
    "training.clients_per_round=4",
    "data.num_clients=8",
    "training.eval_every_rounds=2",
    "training.rounds_per_checkpoint=2",
    "centralized.enabled=true",
]
