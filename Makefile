# The two commands README promises. Both bootstrap .venv from requirements.lock + requirements-dev.lock on first use.
.PHONY: run test test-fast lint bootstrap image-test

RUN_DIR ?= runs/default

bootstrap:
	@bash scripts/bootstrap.sh

run: bootstrap
	.venv/bin/tff-lab run --out $(RUN_DIR) --overwrite

test: bootstrap
	.venv/bin/python -m pytest -q

# Seconds, not minutes: the pure maths and checks (no TensorFlow training, no subprocess CLI runs).
test-fast: bootstrap
	.venv/bin/python -m pytest -q -m "not slow and not multiworker and not container" tests/inputs tests/training/test_run_dir.py \
		tests/privacy/test_accounting.py tests/aggregation/test_secagg_protocol.py -k "not cli and not real_cli"

# ruff (lint + format check) and mypy (strict on the modules listed in pyproject.toml); CI runs it first.
lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# Builds Dockerfile.gpu with podman (no Docker engine or registry needed) and runs the image as the
# manifests in k8s/ run it; results in runs/image-test/. Needs root. See README, "The image".
image-test:
	bash scripts/image_test.sh
