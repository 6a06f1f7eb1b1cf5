"""The vectorised client engine: a round's sampled clients trained together in one TF graph.

TFF's runtime sets up one computation per client per round (~6-8 ms each on this machine); the
arithmetic of a small model is microseconds. This engine runs the same round as ONE
``tf.function`` call: every sampled client's local SGD runs in lock step (``tf.vectorized_map``
over clients inside a ``tf.while_loop`` over local steps, masked where a client has no batch),
then the aggregation (weighted/unweighted mean, or tensorflow_privacy's DP query) and the server
optimizer step. The cohort size is static (a Poisson cohort is padded with masked-out clients to
a power of two) and the step count dynamic, so a run traces one graph per cohort size class. The
local training is compiled with XLA by default (``jit_compile``; ~25% faster here, same parity).

The algorithm is an object (:mod:`tff_lab.algorithms`): this engine owns the data, the cohort,
the model's forward/backward pass, the lock step over local steps and the vectorisation over
clients, the masking of clients without a batch, the per-client zeroing of non-finite updates and
the aggregation; the algorithm's ``client_init``/``client_step``/``client_end``/``client_weights``
and ``server_step`` (pure TF) say what a client does with a batch and what the server does with the
aggregate. FedAvg, FedProx and FedSGD follow TFF 0.87's ``model_delta_client_work``,
``proximal_client_work`` and ``build_fed_sgd`` (see their files); SCAFFOLD keeps per-client state.

What is reused, not re-implemented (so that the numbers are TFF's):

- client and server optimizers: ``tff.learning.optimizers`` (``initialize``/``next``, plain TF),
  built by :func:`tff_lab.algorithms.optimizers.build_optimizer` exactly as for the TFF engine;
- the model: the Keras builder's own layers, called on per-client weight tensors with TFF's
  ``functional_model_from_keras`` technique (a ``variable_creator_scope`` that hands the layers
  tensors instead of variables);
- loss and metrics: the model spec's Keras loss (per-element values, reduced as Keras'
  ``SUM_OVER_BATCH_SIZE`` over the real examples) and Keras metrics;
- DP: the very query object of tff_lab's DP aggregator
  (:func:`tff_lab.federated.aggregators.make_aggregator`, i.e. :mod:`tff_lab.privacy.queries`'
  seeded queries or TFF's stock ones), driven as TFF's ``DifferentiallyPrivateFactory`` drives
  it (``derive_sample_params`` -> ``preprocess_record`` per client -> sum ->
  ``get_noised_result``), so the clip, the noise draws, the adaptive clip's evolution and the
  ``DpEvent`` are TFF's.

Client updates are ``initial - final``, zeroed with weight 0 when not finite; the server optimizer
takes the aggregate as its gradient and rejects a non-finite one (``apply_optimizer_finalizer``).
The state is TFF's ``LearningAlgorithmState`` with the same leaves as the TFF engine's process
state for TFF's algorithms (checkpoints are interchangeable in layout).

Known difference: a FedAvg client whose update is not finite has its loss/num_examples/num_batches
dropped from the training metrics as TFF does, but its Keras metrics (accuracy) still count.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Callable, Optional

import numpy as np

from tff_lab.algorithms.base import to_numpy
from tff_lab.engines.base import RoundResult
from tff_lab.errors import ConfigError

ENGINE = "the vectorized engine (training.engine: vectorized)"


def _refuse(field: str, what: str) -> None:
    raise ConfigError(field, f"{ENGINE} cannot run {what}; use training.engine: tff")


def check_supported(cfg) -> None:
    """Raises :class:`ConfigError` (one line, naming the engine and the field) for what this
    engine cannot run exactly as TFF does."""
    a, p, alg, t = cfg.aggregation, cfg.privacy, cfg.algorithm, cfg.training
    if alg.builder is not None:
        _refuse("algorithm.builder", f"a user's TFF learning process ({alg.builder})")
    if a.builder is not None:
        _refuse("aggregation.builder", f"a user's TFF aggregator ({a.builder})")
    if a.kind not in ("mean", "secagg"):
        _refuse("aggregation.kind", f"'{a.kind}' aggregation (TFF aggregators it does not vectorise)")
    if p.mechanism not in ("none", "gaussian_fixed", "gaussian_adaptive"):
        _refuse("privacy.mechanism", f"'{p.mechanism}' (only gaussian_fixed and gaussian_adaptive are vectorised)")
    if t.workers or t.worker_addresses:
        _refuse("training.workers", "on TFF worker processes (it trains in this process)")
    if cfg.model.dropout > 0:
        _refuse("model.dropout", "dropout (random per-client masks inside one vectorised graph)")
    from tff_lab.algorithms.optimizers import vectorized_client_refusal

    why = vectorized_client_refusal(cfg)
    if why is not None:
        _refuse(
            "algorithm.client_optimizer.name",
            f"client optimizer '{alg.client_optimizer.name}' (it runs sgd clients with TFF's exact maths)",
        )
    if a.kind == "secagg" and alg.name == "scaffold":
        _refuse("aggregation.kind", "secagg with scaffold (the protocol sums model updates only, not control variates)")


class VectorizedEngine:
    """Runs FedAvg / FedProx / FedSGD rounds (optionally DP) with all sampled clients in one graph.

    Args:
      cfg: the experiment config (``algorithm``, ``training``, ``privacy`` are read).
      data: a :class:`~tff_lab.data.FederatedData` (numpy arrays per client).
      model_builder: ``() -> tf.keras.Model``, a fresh model per call.
      loss_builder: ``() -> Keras loss`` (default sparse categorical cross-entropy on probabilities).
      metrics_builder: ``() -> [Keras metrics]`` (default sparse categorical accuracy named
        ``accuracy``); reported under their names as TFF does.
      noise_multiplier: the DP noise multiplier to use (after calibration); default
        ``privacy.noise_multiplier``.
      jit_compile: compile the clients' local training with XLA (not the aggregation, so DP noise
        is drawn by the same kernels as TFF's). Step counts are then padded to 2 classes per octave
        so that few shapes are compiled. A model XLA cannot compile falls back to the plain graph.
    """

    name = "vectorized"
    choice = None  # set by tff_lab.engines.factory

    def __init__(
        self,
        cfg,
        data,
        *,
        model_builder: Callable[[], Any],
        loss_builder: Optional[Callable] = None,
        metrics_builder: Optional[Callable] = None,
        noise_multiplier: Optional[float] = None,
        jit_compile: bool = True,
    ):
        import tensorflow as tf
        import tensorflow_federated as tff

        from tff_lab.algorithms import create

        check_supported(cfg)
        self.cfg, self.data = cfg, data
        self._model_builder = model_builder
        self._batch = int(cfg.training.batch_size)

        probe = self._check_model(model_builder)
        self._trainable_specs = [tf.TensorSpec(w.shape, w.dtype) for w in probe.trainable_weights]
        self._init_weights = tff.learning.models.ModelWeights(
            trainable=[np.asarray(w.numpy()) for w in probe.trainable_weights],
            non_trainable=[np.asarray(w.numpy()) for w in probe.non_trainable_weights],
        )
        self._has_reg_losses = bool(probe.losses)
        del probe
        self._loss = loss_builder() if loss_builder is not None else tf.keras.losses.SparseCategoricalCrossentropy()
        self._metrics = (
            list(metrics_builder())
            if metrics_builder is not None
            else [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        )

        # The algorithm (tff_lab.algorithms): its client and server steps run inside this engine's graph.
        self._alg = create(cfg.algorithm)
        self._alg.setup(self._trainable_specs, data.num_clients)
        self._query = None
        if cfg.privacy.enabled:
            from tff_lab.federated.aggregators import make_aggregator

            factory = make_aggregator(
                cfg, population=data.num_clients, noise_multiplier=noise_multiplier, record_specs=self._trainable_specs
            )
            # The DifferentiallyPrivateFactory's own query: the one the TFF engine runs.
            self._query = factory._query  # pylint: disable=protected-access

        # aggregation.kind: secagg: the protocol sums the updates outside the graph (tff_lab.aggregation.secagg.engine).
        self._secagg = None
        if cfg.aggregation.kind == "secagg":
            from tff_lab.aggregation.secagg.engine import attach

            self._secagg = attach(self)

        # Client data resident in the graph (on the GPU when TF places it there); rounds send indices.
        ids = data.client_ids
        sizes = np.array([len(data.train[c][1]) for c in ids], dtype=np.int64)
        self._sizes = sizes
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        xs = np.concatenate([np.asarray(data.train[c][0]) for c in ids])
        ys = np.concatenate([np.asarray(data.train[c][1]) for c in ids])
        self._x_all = tf.convert_to_tensor(xs)
        self._y_all = tf.convert_to_tensor(ys)
        if len(xs) >= 2**31:
            raise ConfigError("data", f"{ENGINE} indexes examples with int32; {len(xs)} are too many")

        self._init_state = self._initial_state()
        self._functions = {}
        self._out_structure = None
        self._compiled = bool(jit_compile)
        self._train_compiled = tf.function(self._train, jit_compile=True)

    # -- model -----------------------------------------------------------------------------------
    def _check_model(self, model_builder):
        import tensorflow as tf

        created = []

        def record(next_creator, **kwargs):
            v = next_creator(**kwargs)
            created.append(v)
            return v

        with tf.variable_creator_scope(record):
            model = model_builder()
        if not isinstance(model, tf.keras.Model):
            raise ConfigError(
                "model", f"{ENGINE} needs a builder returning a tf.keras.Model, got {type(model).__name__}"
            )
        if len(model.outputs) != 1:
            _refuse("model.name", f"model '{model.name}': {len(model.outputs)} outputs (one is vectorised)")
        self._output_dtype = model.outputs[0].dtype
        if model.non_trainable_weights:
            _refuse(
                "model.name",
                f"model '{model.name}': it has non-trainable weights that training updates (e.g. BatchNormalization)",
            )
        recurrent = [
            layer.name
            for layer in model.submodules
            if isinstance(layer, (tf.keras.layers.RNN, tf.keras.layers.Bidirectional))
        ]
        if recurrent:
            _refuse(
                "model.name",
                f"model '{model.name}': recurrent layers {recurrent} (the while loop of their "
                "gradient does not vectorise over clients)",
            )
        random_layers = [
            l.name
            for l in model.submodules
            if isinstance(l, tf.keras.layers.Layer)
            and isinstance(
                l,
                (
                    tf.keras.layers.Dropout,
                    tf.keras.layers.GaussianNoise,
                    tf.keras.layers.GaussianDropout,
                    tf.keras.layers.AlphaDropout,
                ),
            )
            and getattr(l, "rate", getattr(l, "stddev", 0)) > 0
        ]
        if random_layers:
            _refuse("model.name", f"model '{model.name}': random layers {random_layers} in training")
        # (Initialisers may create helper variables, e.g. RNG states; only the model's weights count.)
        weight_ids = {id(v) for v in model.weights}
        order = [id(v) for v in created if id(v) in weight_ids]
        if order != [id(v) for v in model.trainable_weights]:
            _refuse("model.name", f"model '{model.name}': its weights are not listed in creation order")
        return model

    def _call_model(self, trainable, x):
        """The Keras model's forward pass with ``trainable`` tensors as its weights (TFF's
        ``functional_model_from_keras`` technique). Returns (predictions, regularisation losses)."""
        import tensorflow as tf

        pool = list(trainable)

        def swap(_, **kwargs):
            if not kwargs.get("trainable", True):
                raise ValueError("non-trainable weights are not supported")
            return pool.pop(0)

        with tf.variable_creator_scope(swap):
            model = self._model_builder()
        # tf.identity drops Keras' cached softmax logits (``_keras_logits``): TFF's model calls Keras
        # inside a tf.function (``predict_on_batch``), so its loss never sees them and takes the
        # probabilities' path (log of probabilities clipped to [1e-7, 1 - 1e-7]). Without this the
        # loss of a confidently wrong example differs (parity broke by 3e-2 in one round).
        return tf.identity(model(x, training=True)), list(model.losses)

    def _batch_loss(self, y, preds, m):
        """Keras' SUM_OVER_BATCH_SIZE loss over the real rows (``m`` = 1) of a padded batch."""
        import tensorflow as tf

        loss = self._loss
        per = loss.call(y, preds) if isinstance(loss, tf.keras.losses.Loss) else loss(y, preds)
        per = tf.cast(per, tf.float32)
        mb = tf.reshape(m, tf.concat([tf.shape(m), tf.ones([tf.rank(per) - 1], tf.int32)], 0)) * tf.ones_like(per)
        total = tf.reduce_sum(per * mb)
        reduction = getattr(loss, "reduction", "sum_over_batch_size")
        if reduction == tf.keras.losses.Reduction.SUM:
            return total
        return tf.math.divide_no_nan(total, tf.reduce_sum(mb))

    # -- state -----------------------------------------------------------------------------------
    def _initial_state(self):
        import tensorflow_federated as tff

        alg = self._alg
        if self._secagg is not None:
            agg = self._secagg.initial_state()
        elif self._query is None:
            agg = collections.OrderedDict(value_sum_process=(), weight_sum_process=()) if alg.weighted else ((), ())
        else:
            from tensorflow_federated.python.aggregators.differential_privacy import DPAggregatorState

            q = self._query

            # As TFF's DifferentiallyPrivateFactory initialises: the event of a noised result of the
            # initial state (the query's own state is not advanced by it).
            gs = q.initial_global_state()
            _, _, event = q.get_noised_result(q.initial_sample_state(list(self._trainable_specs)), gs)
            event = event.to_named_tuple()
            agg = DPAggregatorState(to_numpy(gs), (), to_numpy(event), np.bool_(True))
        return tff.learning.templates.LearningAlgorithmState(
            global_model_weights=self._init_weights,
            distributor=(),
            client_work=alg.initial_client_work(),
            aggregator=agg,
            finalizer=alg.initial_finalizer(),
        )

    def initialize(self):
        return self._init_state

    def set_model_weights(self, state, trainable):
        import tensorflow_federated as tff

        weights = tff.learning.models.ModelWeights(
            trainable=[np.asarray(w) for w in trainable], non_trainable=list(state.global_model_weights.non_trainable)
        )
        return state._replace(global_model_weights=weights)

    def get_model_weights(self, state):
        import tensorflow_federated as tff

        w = state.global_model_weights
        return tff.learning.models.ModelWeights(trainable=list(w.trainable), non_trainable=list(w.non_trainable))

    # -- the round -------------------------------------------------------------------------------
    def cohort_indices(self, round_num: int, client_indices) -> tuple[np.ndarray, np.ndarray]:
        """``[clients, steps, batch]`` row indices into the resident data (-1 = padding), in exactly
        the order :func:`tff_lab.sampling.client_dataset` batches them, and the client mask."""
        from tff_lab.sampling import client_permutations

        b = self._batch
        per_client = []
        for i in client_indices:
            i = int(i)
            n = int(self._sizes[i])
            rows = []
            for perm in client_permutations(self.cfg, n, i, round_num):
                steps = -(-n // b)
                padded = np.full(steps * b, -1, dtype=np.int64)
                padded[:n] = perm + self._offsets[i]
                rows.append(padded.reshape(steps, b))
            per_client.append(np.concatenate(rows) if rows else np.full((0, b), -1, np.int64))
        # Cohorts of varying size (Poisson sampling) are padded with masked-out clients to a power
        # of two, so that only a few graphs are ever traced; a fixed-size cohort is not padded.
        n = len(per_client)
        slots = max(1, n) if self.cfg.training.sampling == "uniform" else 1 << max(0, (n - 1).bit_length())
        steps = max([1] + [len(r) for r in per_client])
        if self._compiled:  # XLA compiles per shape: step counts in a few classes (2 per octave)
            steps = -(-steps // (1 << max(0, steps.bit_length() - 2))) * (1 << max(0, steps.bit_length() - 2))
        idx = np.full((slots, steps, b), -1, dtype=np.int32)
        for c, r in enumerate(per_client):
            idx[c, : len(r)] = r
        mask = np.zeros([slots], np.float32)
        mask[:n] = 1.0
        return idx, mask

    def next(self, state, round_num: int, client_indices) -> RoundResult:
        import tensorflow as tf

        if self._secagg is not None:  # may raise tff_lab.aggregation.secagg.SecAggAborted
            return self._secagg.next(state, round_num, client_indices)

        idx, client_mask = self.cohort_indices(round_num, client_indices)
        agg = state.aggregator
        query_state = agg.query_state if self._query is not None else ()
        graph_work, client_in = self._alg.split_state(state.client_work, client_indices, idx.shape[0])
        inputs = (list(state.global_model_weights.trainable), graph_work, client_in, state.finalizer, query_state)
        args = [tf.convert_to_tensor(a) for a in tf.nest.flatten(inputs)]
        try:
            flat = self._round_fn(idx.shape[0])(*args, tf.convert_to_tensor(idx), tf.convert_to_tensor(client_mask))
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
            if not self._compiled or "XLA" not in str(e):
                raise
            # A model with operations XLA cannot compile: the same graph, not compiled.
            logging.getLogger(__name__).warning(
                "vectorized engine: XLA cannot compile this model (%s); running the round graph without XLA",
                str(e).splitlines()[0],
            )
            self._compiled = False
            self._functions.clear()
            return self.next(state, round_num, client_indices)
        out = tf.nest.pack_sequence_as(self._out_structure, [t.numpy() for t in flat])
        (trainable, graph_work, client_out, fin, new_query_state, event, train, agg_metrics, non_finite) = out
        weights = state.global_model_weights._replace(trainable=list(trainable))
        if self._query is not None:
            new_agg = agg._replace(query_state=new_query_state, dp_event=event, is_init_state=np.bool_(False))
        else:
            new_agg = agg
        client_work = self._alg.merge_state(state.client_work, graph_work, client_indices, client_out)
        new_state = state._replace(
            global_model_weights=weights,
            finalizer=_like(state.finalizer, fin),
            client_work=_like(state.client_work, client_work),
            aggregator=new_agg,
        )
        train = collections.OrderedDict((k, _scalar(v)) for k, v in train.items())
        metrics = {
            "distributor": (),
            "client_work": collections.OrderedDict(train=train),
            "aggregator": _to_python(agg_metrics),
            "finalizer": collections.OrderedDict(update_non_finite=int(non_finite)),
        }
        return RoundResult(state=new_state, metrics=metrics)

    def close(self) -> None:
        self._functions.clear()

    def trace(self) -> None:
        """Builds the round graph of the run's cohort size now (a graph that cannot be built raises
        here, not in round 1; ``training.engine: auto`` then falls back to TFF's runtime)."""
        t = self.cfg.training
        if t.sampling == "uniform":
            slots = max(1, t.clients_per_round)
        else:
            expected = max(1, int(round(t.sampling_rate * self.data.num_clients)))
            slots = 1 << max(0, (expected - 1).bit_length())
        self._round_fn(slots)

    # -- the graph -------------------------------------------------------------------------------
    def _spec_of(self, nest):
        import tensorflow as tf

        return tf.nest.map_structure(lambda a: tf.TensorSpec(np.shape(a), tf.as_dtype(np.asarray(a).dtype)), nest)

    def _round_fn(self, num_clients: int):
        """The round's concrete function for a cohort of ``num_clients`` (static, so that grappler
        folds the vectorised graph's shape arithmetic); the local step count stays dynamic."""
        fn = self._functions.get(num_clients)
        if fn is None:
            import tensorflow as tf

            s = self._init_state
            q_state = s.aggregator.query_state if self._query is not None else ()
            graph_work, client_in = self._alg.split_state(s.client_work, np.zeros([0], np.int64), num_clients)
            template = (
                list(self._trainable_specs),
                self._spec_of(graph_work),
                self._spec_of(client_in),
                self._spec_of(s.finalizer),
                self._spec_of(q_state),
            )
            flat_specs = tf.nest.flatten(template)

            def flat_round(*args):
                inputs = tf.nest.pack_sequence_as(template, list(args[: len(flat_specs)]))
                out = self._round(*inputs, *args[len(flat_specs) :])
                self._out_structure = out
                return tf.nest.flatten(out)

            signature = [
                *flat_specs,
                tf.TensorSpec([num_clients, None, self._batch], tf.int32),
                tf.TensorSpec([num_clients], tf.float32),
            ]
            fn = tf.function(flat_round, input_signature=signature).get_concrete_function()
            self._functions[num_clients] = fn
        return fn

    def _train(self, trainable, client_work, client_in, idx):
        """Every client's local training, in lock step over the local steps (the part XLA may
        compile): the algorithm's ``client_step`` vectorised over clients, in a ``tf.while_loop``
        over local steps. Returns (updates, client weights, metrics-reset flags, client outputs,
        loss sums, example counts, batch counts, predictions [steps, clients, batch, ...])."""
        import tensorflow as tf

        alg = self._alg
        num_clients = tf.shape(idx)[0]
        num_steps = tf.shape(idx)[1]
        example_mask = tf.cast(idx >= 0, tf.float32)
        rows = tf.maximum(idx, 0)

        def per_client(t):
            return tf.broadcast_to(t, tf.concat([[num_clients], tf.shape(t)], 0))

        def batch_at(step):
            r = rows[:, step]
            return tf.gather(self._x_all, r), tf.gather(self._y_all, r), example_mask[:, step]

        def client_step(args):
            carry, c_in, x, y, m = args
            n = tf.reduce_sum(m)

            def grad_fn(w):
                w = list(w)
                with tf.GradientTape() as tape:
                    tape.watch(w)
                    preds, reg = self._call_model(w, x)
                    loss = self._batch_loss(y, preds, m)
                    total = loss + tf.add_n(reg) if reg else loss
                grads = tape.gradient(total, w, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                return grads, preds, loss

            new_carry, preds, loss = alg.client_step(carry, c_in, trainable, grad_fn, n)
            active = n > 0  # a client without a batch at this step keeps its carry
            new_carry = tf.nest.map_structure(lambda a, b: tf.where(active, a, b), _like(carry, new_carry), carry)
            return new_carry, preds, loss, n

        def body(step, carry, loss_sum, n_sum, batches, predictions):
            x, y, m = batch_at(step)
            carry, preds, loss, n = tf.vectorized_map(client_step, (carry, client_in, x, y, m))
            return (
                step + 1,
                carry,
                loss_sum + loss * n,
                n_sum + n,
                batches + tf.cast(n > 0, tf.float32),
                predictions.write(step, preds),
            )

        zeros_c = tf.zeros([num_clients], tf.float32)
        preds0 = tf.TensorArray(self._output_dtype, size=num_steps)
        carry0 = tf.nest.map_structure(per_client, alg.client_init(trainable, client_work))
        _, carry, loss_sum, n_sum, batches, predictions = tf.while_loop(
            lambda step, *_: step < num_steps, body, (tf.constant(0), carry0, zeros_c, zeros_c, zeros_c, preds0)
        )
        updates, client_out = tf.vectorized_map(
            lambda a: alg.client_end(a[0], a[1], trainable, a[2], a[3]), (carry, client_in, n_sum, batches)
        )
        updates, finite = _zero_non_finite(list(updates))
        weights = alg.client_weights(n_sum, finite)
        reset = tf.logical_not(finite) if alg.resets_metrics_of_non_finite else tf.zeros_like(finite)
        return updates, weights, reset, client_out, loss_sum, n_sum, batches, predictions.stack()

    def _train_round(self, trainable, client_work, client_in, idx, client_mask):
        """Local training of the cohort and the round's training metrics (TFF's ``client_work.train``):
        (updates, client weights, client outputs, metrics). Shared by :meth:`_round` and SecAgg's round."""
        import tensorflow as tf

        for m in self._metrics:
            m.reset_state()
        trainable = [tf.convert_to_tensor(w) for w in trainable]
        train_fn = self._train_compiled if self._compiled else self._train
        updates, weights, reset, client_out, loss_sum, n_sum, batches, preds = train_fn(
            trainable, client_work, client_in, idx
        )
        # Keras metrics once per round over every step's predictions (not per step; not compiled).
        rows, example_mask = tf.maximum(idx, 0), tf.cast(idx >= 0, tf.float32)
        flat = lambda t: tf.reshape(t, tf.concat([[-1], tf.shape(t)[3:]], 0))  # noqa: E731
        y = tf.gather(self._y_all, tf.transpose(rows, [1, 0, 2]))
        m = tf.reshape(tf.transpose(example_mask, [1, 0, 2]), [-1])
        for metric in self._metrics:
            metric.update_state(flat(y), flat(preds), sample_weight=m)
        keep = tf.where(reset, 0.0, 1.0) * client_mask
        train = collections.OrderedDict()
        for metric in self._metrics:
            train[metric.name] = metric.result()
        train["loss"] = tf.math.divide_no_nan(tf.reduce_sum(loss_sum * keep), tf.reduce_sum(n_sum * keep))
        train["num_examples"] = tf.cast(tf.reduce_sum(n_sum * keep), tf.int64)
        train["num_batches"] = tf.cast(tf.reduce_sum(batches * keep), tf.int64)
        return updates, weights, client_out, train

    def _round(self, trainable, client_work, client_in, server_state, query_state, idx, client_mask):
        import tensorflow as tf

        trainable = [tf.convert_to_tensor(w) for w in trainable]
        updates, weights, client_out, train = self._train_round(trainable, client_work, client_in, idx, client_mask)

        # Aggregation.
        if self._query is None:
            if self._alg.weighted:
                w_c = weights * client_mask
                mean = [tf.reduce_sum(u * _expand(w_c, u), 0) / tf.reduce_sum(w_c) for u in updates]
                agg_metrics = collections.OrderedDict(mean_value=(), mean_weight=())
            else:
                mean = [tf.reduce_sum(u * _expand(client_mask, u), 0) / tf.reduce_sum(client_mask) for u in updates]
                agg_metrics = collections.OrderedDict(mean_value=(), mean_count=())
            new_query_state, event = query_state, ()
        else:
            q = self._query
            params = q.derive_sample_params(query_state)
            records = tf.vectorized_map(lambda u: q.preprocess_record(params, list(u)), updates)
            summed = tf.nest.map_structure(lambda r: tf.reduce_sum(r * _expand(client_mask, r), 0), records)
            mean, new_query_state, dp_event = q.get_noised_result(summed, query_state)
            mean = list(mean)
            event = dp_event.to_named_tuple()
            agg_metrics = collections.OrderedDict(dp_query_metrics=q.derive_metrics(new_query_state), dp=())

        # The algorithm's server step (TFF's apply_optimizer_finalizer: a non-finite aggregate is rejected).
        new_server_state, client_work, new_weights, non_finite = self._alg.server_step(
            server_state, client_work, list(trainable), list(mean), client_out, client_mask
        )
        return (
            new_weights,
            client_work,
            client_out,
            new_server_state,
            new_query_state,
            event,
            train,
            agg_metrics,
            non_finite,
        )


def _expand(v, like):
    """``v`` ([clients]) reshaped to broadcast against ``like`` ([clients, ...])."""
    import tensorflow as tf

    return tf.reshape(v, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))


def _zero_non_finite(updates):
    """Per client (leading axis): TFF's ``zero_all_if_any_non_finite``. Returns (updates, finite[clients])."""
    import tensorflow as tf

    finite = None
    for u in updates:
        f = tf.reduce_all(tf.reshape(tf.math.is_finite(u), [tf.shape(u)[0], -1]), axis=1)
        finite = f if finite is None else tf.logical_and(finite, f)
    return [tf.where(tf.reshape(finite, [-1] + [1] * (u.shape.rank - 1)), u, tf.zeros_like(u)) for u in updates], finite


def _like(template, value):
    """``value`` packed in ``template``'s containers (TFF optimizers may return tuples for lists)."""
    import tensorflow as tf

    return tf.nest.pack_sequence_as(template, tf.nest.flatten(value))


def _to_python(nest):
    import tensorflow as tf

    return tf.nest.map_structure(_scalar, nest)


def _scalar(v):
    a = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
    if a.shape == ():
        return a.item() if a.dtype.kind in "iub" else a[()]
    return a


__all__ = ["VectorizedEngine", "check_supported"]
