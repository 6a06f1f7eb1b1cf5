"""``aggregation.kind: secagg`` on the vectorised engine.

The engine's round graph computes every client's update in one ``tf.function``; for secure
aggregation the round is split at the one place the protocol needs: the clients' (zeroed,
non-finite-checked) updates and weights come out of the graph as numpy arrays, the protocol sums
them (:class:`~tff_lab.aggregation.secagg.aggregator.SecAggAggregator`, the server object never
seeing an unmasked update), and a second small graph applies the server optimizer to the mean as
TFF's ``apply_optimizer_finalizer`` does. Local training, metrics and the server step are the
engine's own (same functions, same order); only the aggregation in between differs.
"""

from __future__ import annotations

import collections
import logging

import numpy as np

from tff_lab.engines.base import RoundResult


class SecAggRounds:
    def __init__(self, engine):
        from tff_lab.aggregation.secagg.aggregator import from_config

        self.engine = engine
        self.aggregator = from_config(engine.cfg)
        self._client_fns: dict = {}
        self._server_fn = None

    def initial_state(self):
        return self.aggregator.initial_state()

    # -- graphs ----------------------------------------------------------------------------------
    def _clients(self, trainable, client_work, client_in, idx, client_mask):
        """The engine's local training and training metrics (``VectorizedEngine._train_round``)."""
        updates, weights, _, train = self.engine._train_round(trainable, client_work, client_in, idx, client_mask)
        return list(updates), weights, train

    def _server(self, trainable, server_state, mean):
        """The algorithm's server step (TFF's apply_optimizer_finalizer, as ``VectorizedEngine._round``);
        secagg runs only algorithms without per-client state (``check_supported``)."""
        from tff_lab.algorithms.optimizers import server_step

        new_server_state, new_weights, non_finite = server_step(
            self.engine._alg.server_optimizer, server_state, list(trainable), list(mean)
        )
        return new_weights, new_server_state, non_finite

    def _client_fn(self, slots: int):
        fn = self._client_fns.get(slots)
        if fn is None:
            import tensorflow as tf

            e = self.engine
            s = e._init_state
            graph_work, client_in = e._alg.split_state(s.client_work, np.zeros([0], np.int64), slots)
            cw_spec = e._spec_of(graph_work)
            ci_spec = e._spec_of(client_in)
            flat_cw, flat_ci = tf.nest.flatten(cw_spec), tf.nest.flatten(ci_spec)
            n_w = len(e._trainable_specs)

            def call(*args):
                trainable = list(args[:n_w])
                cw = tf.nest.pack_sequence_as(cw_spec, list(args[n_w : n_w + len(flat_cw)]))
                ci = tf.nest.pack_sequence_as(
                    ci_spec, list(args[n_w + len(flat_cw) : n_w + len(flat_cw) + len(flat_ci)])
                )
                return self._clients(trainable, cw, ci, args[-2], args[-1])

            sig = [
                *e._trainable_specs,
                *flat_cw,
                *flat_ci,
                tf.TensorSpec([slots, None, e._batch], tf.int32),
                tf.TensorSpec([slots], tf.float32),
            ]
            fn = tf.function(call, input_signature=sig)
            self._client_fns[slots] = fn
        return fn

    # -- the round -------------------------------------------------------------------------------
    def next(self, state, round_num: int, client_indices) -> RoundResult:
        import tensorflow as tf

        from tff_lab.engines.vectorized import _like, _scalar, _to_python

        e = self.engine
        idx, client_mask = e.cohort_indices(round_num, client_indices)
        trainable = [tf.convert_to_tensor(w) for w in state.global_model_weights.trainable]
        graph_work, client_in = e._alg.split_state(state.client_work, np.asarray(client_indices), idx.shape[0])
        cw = [tf.convert_to_tensor(a) for a in tf.nest.flatten((graph_work, client_in))]
        try:
            updates, weights, train = self._client_fn(idx.shape[0])(
                *trainable, *cw, tf.convert_to_tensor(idx), tf.convert_to_tensor(client_mask)
            )
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as err:
            if not e._compiled or "XLA" not in str(err):
                raise
            logging.getLogger(__name__).warning(
                "vectorized engine: XLA cannot compile this model (%s); running without XLA", str(err).splitlines()[0]
            )
            e._compiled = False
            self._client_fns.clear()
            return self.next(state, round_num, client_indices)
        n = len(client_indices)
        updates = [np.asarray(u.numpy())[:n] for u in updates]
        weights = np.asarray(weights.numpy())[:n]
        out = self.aggregator.aggregate(state.aggregator, updates, weights, round_num)  # raises SecAggAborted
        if self._server_fn is None:
            self._server_fn = tf.function(self._server)
        new_w, new_server, non_finite = self._server_fn(
            trainable,
            tf.nest.map_structure(tf.convert_to_tensor, state.finalizer),
            [tf.convert_to_tensor(m) for m in out.mean],
        )
        weights_out = state.global_model_weights._replace(trainable=[np.asarray(w.numpy()) for w in new_w])
        fin = tf.nest.map_structure(lambda t: np.asarray(t.numpy()), new_server)
        new_state = state._replace(
            global_model_weights=weights_out, finalizer=_like(state.finalizer, fin), aggregator=out.state
        )
        r = out.secagg
        agg_metrics = collections.OrderedDict(out.measurements)
        agg_metrics["secagg"] = collections.OrderedDict(
            clients=n,
            included=len(r.included),
            dropped_after_share_keys=sum(1 for s in r.dropped.values() if s == "after_share_keys"),
            dropped_after_masked_input=sum(1 for s in r.dropped.values() if s == "after_masked_input"),
            neighbors=r.degree,
            threshold=r.threshold,
            sent=r.sent,
            received=r.received,
            client_seconds=r.client_seconds,
            server_seconds=r.server_seconds,
        )
        metrics = {
            "distributor": (),
            "client_work": collections.OrderedDict(
                train=collections.OrderedDict((k, _scalar(v)) for k, v in _to_python(train).items())
            ),
            "aggregator": agg_metrics,
            "finalizer": collections.OrderedDict(update_non_finite=int(non_finite.numpy())),
        }
        return RoundResult(state=new_state, metrics=metrics)


def attach(engine) -> SecAggRounds:
    return SecAggRounds(engine)
