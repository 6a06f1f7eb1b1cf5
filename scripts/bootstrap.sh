#!/usr/bin/env bash
# Creates (or reuses) .venv with the exact locked stack (requirements.lock: what tff_lab needs at run
# time, the set the image holds; requirements-dev.lock: pytest, linters, grpcio-tools and the rest that
# only tests, benchmarks and CI need), then installs tff_lab into it; then .venv-checkov with the
# security scanner (checkov), which the test suite runs.
#
#   bash scripts/bootstrap.sh            # both (make run / make test call this)
#   bash scripts/bootstrap.sh scanners   # only .venv-checkov
#
# Why not `pip install tensorflow-federated`? TFF 0.87 pins jaxlib==0.4.14, which is no
# longer on PyPI. requirements.lock holds every package at an exact version (jax/jaxlib
# 0.4.13 instead), installed with --no-deps so pip never resolves TFF's stale pin; so does
# requirements-dev.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || { echo "tff_lab needs Python 3.11 (TensorFlow Federated 0.87 supports <3.12); found $("$PY" --version)" >&2; exit 1; }

if [ "${1:-}" != "scanners" ]; then
  stamp=".venv/.lock-$(sha256sum requirements.lock requirements-dev.lock pyproject.toml | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "bootstrap: installing the locked environment into .venv (first run only, a few minutes)" >&2
    rm -rf .venv
    "$PY" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade "pip==24.2"
    .venv/bin/python -m pip install --quiet --no-deps -r requirements.lock -r requirements-dev.lock
    .venv/bin/python -m pip install --quiet --no-deps -e .
    .venv/bin/python -m pip check >/dev/null 2>&1 || .venv/bin/python -m pip check | grep -v -E "jax(lib)?==0.4.14" || true
    touch "$stamp"
  fi
fi

# checkov's dependency tree (boto3, pydantic 2, numpy 2, ...) conflicts with TensorFlow 2.14's pins:
# it gets its own venv, every package pinned in requirements-checkov.lock, wheels only, --no-deps.
# The venv has no pip of its own: pip installs into it with --python (~30 s, ~200 MB).
scan_stamp=".venv-checkov/.lock-$(sha256sum requirements-checkov.lock | cut -c1-16)"
if [ ! -f "$scan_stamp" ]; then
  echo "bootstrap: installing the security scanner (checkov) into .venv-checkov (first run only, ~30 s)" >&2
  PIP_PY="$PY"
  [ -x .venv/bin/python ] && PIP_PY=.venv/bin/python
  rm -rf .venv-checkov
  "$PY" -m venv --without-pip .venv-checkov
  "$PIP_PY" -m pip --python .venv-checkov/bin/python install --quiet --no-deps --only-binary :all: \
    --no-compile -r requirements-checkov.lock
  touch "$scan_stamp"
fi
