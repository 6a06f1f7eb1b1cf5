"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", Algorithm 1 with option II): local SGD corrected by control variates.

Client i, starting from the global model x with its variate c_i and the server's c, takes K local
steps ``y <- y - lr * (g_i(y) - c_i + c)``, then sets ``c_i+ = c_i - c + (x - y) / (K * lr)``
(option II) and sends ``x - y`` (the model update, as every algorithm here) and
``c_i+ - c_i``. The server applies its optimizer to the mean model update (``algorithm.weighting``;
the paper's is uniform) and sets ``c <- c + sum(c_i+ - c_i) / N`` over the sampled clients, N the
population, so that c stays the mean of all clients' variates.

State: the server's c is ``client_work["control"]``; the clients' c_i are kept by the simulation
in ``client_work["clients"]`` (the indices of clients that have one, sorted) and
``client_work["client_controls"]`` (one row per such client). A client never sampled has
``c_i = 0`` and no row. Both are engine state, so checkpoints save and restore them bit for bit.

Only the vectorised engine runs it: TFF 0.87 has no learning process whose clients keep state
across rounds. K is the number of local steps the client actually took (its batches this round).
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from tff_lab.algorithms.base import GradFn
from tff_lab.algorithms.fedavg import FedAvg


class Scaffold(FedAvg):
    name = "scaffold"
    tff_refusal = "scaffold runs on the vectorised engine (TFF has no stateful-client process)"
    dp_refusal = (
        "scaffold's control variates leave the clients unclipped and un-noised, so no DP mechanism "
        "covers them; use fedavg or fedprox for DP"
    )
    extra_model_copies = 1  # c_i+ - c_i up, c down

    def learning_process(self, model_fn: Callable[..., Any], *, aggregator: Any, loop_implementation: Any) -> Any:
        from tff_lab.errors import ConfigError

        raise ConfigError("algorithm.name", self.tff_refusal)

    # -- state (numpy) ---------------------------------------------------------------------------
    def initial_client_work(self) -> Any:
        zeros = [np.zeros(s.shape, s.dtype.as_numpy_dtype) for s in self.specs]
        return collections.OrderedDict(
            control=zeros,
            clients=np.zeros([0], np.int64),
            client_controls=[np.zeros((0, *s.shape), s.dtype.as_numpy_dtype) for s in self.specs],
        )

    def split_state(self, client_work: Any, client_indices: npt.NDArray[Any], slots: int) -> tuple[Any, Any]:
        ids, idx = client_work["clients"], np.asarray(client_indices, np.int64)
        pos = np.searchsorted(ids, idx)
        found = pos < len(ids)
        found[found] = ids[pos[found]] == idx[found]
        c_in = []
        for table in client_work["client_controls"]:
            c = np.zeros((slots, *table.shape[1:]), table.dtype)
            c[: len(idx)][found] = table[pos[found]]
            c_in.append(c)
        return collections.OrderedDict(control=list(client_work["control"])), c_in

    def merge_state(
        self, client_work: Any, graph_client_work: Any, client_indices: npt.NDArray[Any], client_out: Any
    ) -> Any:
        new_c, _ = client_out
        ids, idx = client_work["clients"], np.asarray(client_indices, np.int64)
        all_ids = np.union1d(ids, idx).astype(np.int64)
        tables = []
        for table, rows in zip(client_work["client_controls"], new_c):
            out = np.zeros((len(all_ids), *table.shape[1:]), table.dtype)
            out[np.searchsorted(all_ids, ids)] = table
            out[np.searchsorted(all_ids, idx)] = rows[: len(idx)]
            tables.append(out)
        return collections.OrderedDict(
            control=[np.asarray(c) for c in graph_client_work["control"]], clients=all_ids, client_controls=tables
        )

    # -- the round's graph -----------------------------------------------------------------------
    def client_init(self, initial: list[Any], client_work: Any) -> Any:
        return list(initial), self.client_optimizer.initialize(tuple(self.specs)), list(client_work["control"])

    def client_step(
        self, carry: Any, client_in: Any, initial: list[Any], grad_fn: GradFn, n: Any
    ) -> tuple[Any, Any, Any]:
        weights, opt_state, control = carry
        grads, preds, loss = grad_fn(weights)
        corrected = [g - ci + c for g, ci, c in zip(grads, client_in, control)]
        opt_state, weights = self.client_optimizer.next(opt_state, tuple(weights), tuple(corrected))
        return (list(weights), opt_state, control), preds, loss

    def client_end(
        self, carry: Any, client_in: Any, initial: list[Any], num_examples: Any, num_steps: Any
    ) -> tuple[list[Any], Any]:
        import tensorflow as tf

        weights, _, control = carry
        update = [x - y for x, y in zip(initial, weights)]
        lr = float(self.cfg.client_optimizer.learning_rate)
        steps = tf.maximum(num_steps, 1.0)
        new_c = [ci - c + u / (steps * lr) for ci, c, u in zip(client_in, control, update)]
        keep = tf.logical_and(num_steps > 0, tf.reduce_all([tf.reduce_all(tf.math.is_finite(c)) for c in new_c]))
        new_c = [tf.where(keep, n, ci) for n, ci in zip(new_c, client_in)]
        return update, (new_c, [n - ci for n, ci in zip(new_c, client_in)])

    def server_step(
        self,
        finalizer: Any,
        client_work: Any,
        weights: list[Any],
        aggregate: list[Any],
        client_out: Any,
        client_mask: Any,
    ) -> tuple[Any, Any, list[Any], Any]:
        import tensorflow as tf

        finalizer, _, weights, non_finite = super().server_step(
            finalizer, client_work, weights, aggregate, client_out, client_mask
        )
        _, deltas = client_out
        mask = [tf.reshape(client_mask, [-1] + [1] * (d.shape.rank - 1)) for d in deltas]
        control = [
            c + tf.reduce_sum(d * m, 0) / float(self.population)
            for c, d, m in zip(client_work["control"], deltas, mask)
        ]
        return finalizer, collections.OrderedDict(control=control), weights, non_finite
