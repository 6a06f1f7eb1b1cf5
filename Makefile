# The two commands README promises. Both bootstrap .venv from requirements.lock on first use.
.PHONY: run test bootstrap

RUN_DIR ?= runs/default

bootstrap:
	@bash scripts/bootstrap.sh

run: bootstrap
	.venv/bin/tff-lab run --out $(RUN_DIR) --overwrite

test: bootstrap
	.venv/bin/python -m pytest -q
