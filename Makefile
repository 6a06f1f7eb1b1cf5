# The two commands README promises. Both bootstrap .venv from requirements.lock + requirements-dev.lock on first use.
.PHONY: run test test-fast lint bootstrap image-test

RUN_DIR ?= runs/default

bootstrap:
	@bash scripts/bootstrap.sh

run: bootstrap
	.venv/bin/tff-lab run --out $(RUN_DIR) --overwrite

test: bootstrap
	.venv/bin/python -m pytest -q

# ~30 s: the pure maths and checks (accounting, the SecAgg protocol, YAML limits, the RUN_DIR transaction and
# manifest checks); no training runs.
test-fast: bootstrap
	.venv/bin/python -m pytest -q tests/privacy/test_accounting.py tests/aggregation/test_secagg_protocol.py \
		tests/inputs/test_yaml_limits.py tests/training/test_run_dir.py::test_replacement_rolls_back_on_failure_and_after_a_crash \
		tests/training/test_run_dir.py::test_every_hand_edited_manifest_is_refused_and_the_previous_checkpoint_used

# ruff (lint + format check) and mypy (strict on the modules listed in pyproject.toml); CI runs it first.
lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# Builds Dockerfile.gpu with podman (no Docker engine or registry needed) and runs the image as the
# manifests in k8s/ run it; results in runs/image-test/. Needs root. See README, "The image".
image-test:
	bash scripts/image_test.sh
