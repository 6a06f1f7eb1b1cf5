"""The engine interface and the TFF engine.

An engine owns how a round's sampled clients are trained and aggregated; everything else
(which clients, when to evaluate/checkpoint, the privacy ledger, metrics) belongs to the loop.

Contract (what the loop relies on):

- ``initialize() -> state``: a nest of arrays/tensors. Checkpoints store
  ``tf.nest.flatten(state)`` as NPZ and restore it with ``tf.nest.pack_sequence_as`` onto a
  fresh ``initialize()``: the state must round-trip through numpy bit for bit.
- ``set_model_weights(state, trainable) -> state`` and ``get_model_weights(state) ->
  tff.learning.models.ModelWeights`` (trainable and non-trainable lists, Keras order).
- ``next(state, round_num, client_indices) -> RoundResult``: trains the clients
  ``data.client_ids[i] for i in client_indices`` (indices into the population, from
  :func:`tff_lab.sampling.sample_clients`) for one round. ``client_indices`` may be empty
  (an empty Poisson round under DP still releases the aggregator's noise).
  ``RoundResult.metrics`` has TFF's structure: ``{"client_work": {"train": {"loss": ...,
  "accuracy": ..., "num_examples": ...}}, "aggregator": {...}, ...}``.
- ``close()``: releases threads, processes and contexts.

Determinism: the client data of round r is :func:`tff_lab.sampling.client_dataset` (seeded
shuffles); an engine must consume exactly those batches in that order, so that engines agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import numpy as np


@dataclasses.dataclass
class RoundResult:
    state: Any
    metrics: dict


class Engine(Protocol):
    name: str
    choice: Any  # tff_lab.engines.factory.EngineChoice: which engine runs and why (set by the factory)

    def initialize(self) -> Any: ...

    def set_model_weights(self, state: Any, trainable: Sequence[np.ndarray]) -> Any: ...

    def get_model_weights(self, state: Any) -> Any: ...

    def next(self, state: Any, round_num: int, client_indices: np.ndarray) -> RoundResult: ...

    def close(self) -> None: ...


class TFFEngine:
    """Runs a ``tff.learning.templates.LearningProcess`` (built-in or a user's) on TFF's runtime."""

    name = "tff"
    choice = None

    def __init__(self, cfg, process, data):
        self.cfg = cfg
        self.process = process
        self.data = data

    def initialize(self):
        return self.process.initialize()

    def set_model_weights(self, state, trainable):
        import tensorflow_federated as tff

        current = self.process.get_model_weights(state)
        weights = tff.learning.models.ModelWeights(trainable=list(trainable), non_trainable=list(current.non_trainable))
        return self.process.set_model_weights(state, weights)

    def get_model_weights(self, state):
        return self.process.get_model_weights(state)

    def next(self, state, round_num: int, client_indices) -> RoundResult:
        from tff_lab.sampling import client_dataset

        ids = self.data.client_ids
        datasets = [client_dataset(self.cfg, *self.data.train[ids[i]], int(i), round_num) for i in client_indices]
        out = self.process.next(state, datasets)
        return RoundResult(state=out.state, metrics=dict(out.metrics))

    def close(self) -> None:
        pass
