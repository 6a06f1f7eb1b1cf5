"""Engines run the rounds; the loop (sampling, checkpoints, metrics, privacy ledger, export) does
not care which one ran. See :mod:`tff_lab.engines.base` for the interface."""

from tff_lab.engines.base import Engine, RoundResult, TFFEngine
from tff_lab.engines.vectorized import VectorizedEngine, check_supported  # noqa: F401  (training.engine: vectorized)

__all__ = ["Engine", "RoundResult", "TFFEngine"]
