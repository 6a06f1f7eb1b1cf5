#!/usr/bin/env python3
"""Builds the edge runner's environment: a venv with exactly ``tflite/requirements.txt`` (no TensorFlow).

    python tflite/make_env.py            # -> prints the venv's python, e.g. .venv-edge/3f2a.../bin/python
    .venv-edge/<key>/bin/python tflite/runner.py MODEL.tflite INPUT.npy

The venv lives in ``.venv-edge/<key>/`` at the repository root, where ``key`` hashes the
requirements file, the Python version and the machine: a second call reuses it, edited pins build
a new one. Packages are installed with ``--no-deps`` (the file pins the whole closure) and
``pip check`` proves nothing is missing. Standard library only; the tests and
``bench/edge_latency.py`` use it too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
DEFAULT_ROOT = HERE.parent / ".venv-edge"


def clean_env() -> dict:
    """The environment of a device: no PYTHONPATH, no active venv, no user site-packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def env_key(requirements: Path = REQUIREMENTS) -> str:
    h = hashlib.sha256(Path(requirements).read_bytes())
    h.update(f"{sys.version_info[0]}.{sys.version_info[1]} {platform.machine()}".encode())
    return h.hexdigest()[:16]


def build(root: Path = DEFAULT_ROOT, requirements: Path = REQUIREMENTS, quiet: bool = True) -> Path:
    """Returns the python of the cached venv, building it first when needed."""
    root, requirements = Path(root), Path(requirements)
    target = root / env_key(requirements)
    python = target / "bin" / "python"
    if (target / ".complete").is_file() and python.exists():
        return python
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    base = getattr(sys, "_base_executable", None) or sys.executable  # not the caller's venv
    out = subprocess.DEVNULL if quiet else None
    try:
        subprocess.run([base, "-m", "venv", str(tmp)], check=True, stdout=out, env=clean_env(), timeout=300)
        pip = [str(tmp / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        proc = subprocess.run(
            pip + ["install", "--no-deps", "-q", "-r", str(requirements)],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=900,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pip install -r {requirements} failed:\n{proc.stderr[-3000:]}")
        proc = subprocess.run(pip + ["check"], capture_output=True, text=True, env=clean_env(), timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{requirements} misses a dependency:\n{proc.stdout[-3000:]}")
        (tmp / ".complete").write_text(requirements.read_text())
        if not target.exists():
            # Renamed into place: a venv whose build was interrupted is never taken for a finished one.
            # (Its python finds its site-packages through pyvenv.cfg next to bin/, so renaming is safe.)
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return python


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where venvs are cached (default: %(default)s)")
    p.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    args = p.parse_args(argv)
    try:
        print(build(args.root, args.requirements, quiet=False))
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        print(f"make_env: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
