"""Extension points of the one training loop.

Capabilities (privacy accounting, communication cost, ...) attach to the loop as
hooks instead of forking it. A hook's state must be JSON-serializable: it is saved in
every checkpoint so a resumed run continues exactly where it stopped (e.g. the
privacy ledger accounts for every round exactly once).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from tff_lab.config.schema import ExperimentConfig


@dataclasses.dataclass
class RunContext:
    cfg: ExperimentConfig
    run_dir: Path
    population: int  # number of clients in the federated data
    noise_multiplier: Optional[float]  # the value the DP aggregator actually uses (after calibration)
    model_weight_shapes: list  # shapes of the trainable weights, in order
    model_weight_dtypes: list  # numpy dtype names of the trainable weights
    data: Any = None  # FederatedData
    initial_weights: Any = None  # the seeded initial trainable weights (list of arrays)


@dataclasses.dataclass
class RoundInfo:
    round_num: int  # 1-based
    sampled_clients: list  # the sampler's choice for this round
    participants: int  # clients whose updates were aggregated (== len(sampled_clients) unless it failed)
    trained: bool  # False for a Poisson round that sampled nobody (still a round for accounting)
    expected_examples: int  # examples the sampled clients hold x local epochs
    tff_metrics: dict  # the LearningProcess's metrics for the round ({} when not trained)
    state: Any = None  # the engine's server state after the round (TFF: the LearningProcess state)


class RoundHook:
    """Base class of the loop's public extension point; override what you need.

    The loop calls, in order: ``on_start`` once (RUN_DIR prepared), ``load_state_dict`` (the
    checkpoint's state, or ``{}`` for a fresh run), then per round ``before_round`` (return a
    reason to stop) and ``after_round`` (add columns to the round's row), ``progress_fields`` for
    the progress bar, ``state_dict`` at every checkpoint, and ``on_end`` with the summary.

    Example:
      >>> class LossLogger(RoundHook):
      ...     name = "loss_logger"
      ...     def after_round(self, ctx, info, row):
      ...         row["sampled"] = len(info.sampled_clients)
      >>> run_experiment(None, "runs/x", hooks=[LossLogger()])
    """

    name = "hook"

    def on_start(self, ctx: RunContext) -> None:
        pass

    def before_round(self, ctx: RunContext, round_num: int) -> Optional[str]:
        """Return a reason (string) to stop training before ``round_num`` runs."""
        return None

    def after_round(self, ctx: RunContext, info: RoundInfo, row: dict) -> None:
        """Add this hook's columns to the round's metrics ``row``."""

    def progress_fields(self) -> dict:
        """Short fields for the progress bar, e.g. {"eps": "1.23"}."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def on_end(self, ctx: RunContext, summary: dict) -> None:
        """Add to the summary and write this hook's own files into ``ctx.run_dir``."""
