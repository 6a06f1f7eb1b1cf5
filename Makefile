# The two commands README promises. Both bootstrap .venv from requirements.lock + requirements-dev.lock on first use.
.PHONY: run test bootstrap image-test

RUN_DIR ?= runs/default

bootstrap:
	@bash scripts/bootstrap.sh

run: bootstrap
	.venv/bin/tff-lab run --out $(RUN_DIR) --overwrite

test: bootstrap
	.venv/bin/python -m pytest -q

# Builds Dockerfile.gpu with podman (no Docker engine or registry needed) and runs the image as the
# manifests in k8s/ run it; results in runs/image-test/. Needs root. See README, "The image".
image-test:
	bash scripts/image_test.sh
