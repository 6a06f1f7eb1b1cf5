"""``aggregation.kind: secagg``: TFF's secure aggregator, with its secure sums done by the protocol.

``tff.learning.secure_aggregator(zeroing, clipping, weighted)`` (what ``aggregation.kind: secure``
runs) composes, outermost first:

- adaptive zeroing (``robust.zeroing_factory``: a client whose update's max-abs norm exceeds the
  zeroing norm sends zeros; the norm, ``2 C + 1`` of the 0.98 quantile ``C`` of those norms, is
  estimated with a secure count);
- adaptive L2 clipping (``robust.clipping_factory``: clipped to the 0.8 quantile of the norms);
- the weighted (``MeanFactory``: value x weight, and the weights, each securely summed; weights in
  ``[0, 2^20 - 1]``) or unweighted mean (``UnweightedMeanFactory``: a secure count);
- ``SecureSumFactory`` with adaptive bounds ``±2 C`` (``C`` the 0.95 quantile of the clients'
  max-abs values, from 50): each coordinate clipped to the bounds and quantised to 32 bits.

The quantile estimates are tensorflow_privacy's ``NoPrivacyQuantileEstimatorQuery`` (geometric
updates), each fed by a secure sum of the clients' ``(below - 0.5, 1)`` records in ``[-1, 1]``.

This module does the same arithmetic with the same objects and TF operations (the query objects,
TFF's own norm and clip helpers, :mod:`.field` = TFF's quantisation), one client at a time, and
puts EVERYTHING TFF sums securely into one vector per client (the quantised update, the weight or
count, the quantile records, the clip and zero counts, the bound-clipping counts), which one run
of the protocol (:mod:`.protocol`) sums. The server then dequantises as TFF does. With every
client answering, the mean and the new state equal TFF's bit for bit; clients that vanish before
sending their masked input are simply not in any of the sums (weights, counts and records alike).

``bits`` (default 32, TFF's) quantises the model update; side values always use 32 bits. Each part
of the vector lives in Z_{2^m} with ``m = bits + ceil(log2 n)``, where ``n`` summands never wrap.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from tff_lab.aggregation.secagg import field, protocol
from tff_lab.aggregation.secagg import graph as graph_lib

WEIGHT_UPPER = float(2**20 - 1)  # tff.learning.secure_aggregator's weight bound


@dataclasses.dataclass
class AggregateOutput:
    mean: list  # per tensor, the aggregate the server optimizer applies
    state: collections.OrderedDict
    measurements: collections.OrderedDict
    secagg: protocol.SecAggResult
    participants: int


def _queries():
    import tensorflow_privacy as tfp

    return collections.OrderedDict(
        # (query, report multiplier, report increment): model_update_aggregator's processes.
        zeroing=(
            tfp.NoPrivacyQuantileEstimatorQuery(
                initial_estimate=10.0, target_quantile=0.98, learning_rate=math.log(10.0), geometric_update=True
            ),
            2.0,
            1.0,
        ),
        clipping=(
            tfp.NoPrivacyQuantileEstimatorQuery(
                initial_estimate=1.0, target_quantile=0.8, learning_rate=0.2, geometric_update=True
            ),
            1.0,
            0.0,
        ),
        value_bound=(
            tfp.NoPrivacyQuantileEstimatorQuery(
                initial_estimate=50.0, target_quantile=0.95, learning_rate=1.0, geometric_update=True
            ),
            2.0,
            0.0,
        ),
    )


def _np(nest):
    import tensorflow as tf

    return tf.nest.map_structure(lambda t: np.asarray(t.numpy() if hasattr(t, "numpy") else t), nest)


class SecAggAggregator:
    """Args mirror ``tff.learning.secure_aggregator`` plus the protocol's parameters."""

    def __init__(
        self,
        *,
        weighted: bool,
        zeroing: bool = True,
        clipping: bool = True,
        bits: int = field.TFF_BITS,
        neighbors: graph_lib.Neighbors = None,
        threshold_fraction: float = 0.5,
        dropout_rate: float = 0.0,
        seed: int = 0,
    ):
        self.weighted, self.zeroing, self.clipping = bool(weighted), bool(zeroing), bool(clipping)
        self.bits, self.neighbors = int(bits), neighbors
        self.threshold_fraction, self.dropout_rate, self.seed = (
            float(threshold_fraction),
            float(dropout_rate),
            int(seed),
        )
        self._q = _queries()
        if not self.zeroing:
            del self._q["zeroing"]
        if not self.clipping:
            del self._q["clipping"]

    def initial_state(self) -> collections.OrderedDict:
        return collections.OrderedDict((k, _np(q.initial_global_state())) for k, (q, _, _) in self._q.items())

    def _report(self, name: str, state):
        import tensorflow as tf

        q, mult, inc = self._q[name]
        est = tf.convert_to_tensor(state[name].current_estimate)
        if mult == 1.0 and inc == 0.0:
            return est
        return mult * est + inc  # quantile_estimation._affine_transform, in float32

    def _state_tensors(self, state):
        import tensorflow as tf

        return collections.OrderedDict((k, tf.nest.map_structure(tf.convert_to_tensor, v)) for k, v in state.items())

    # -- one client -------------------------------------------------------------------------------
    def _client(self, state, value: list, weight: float, bounds: dict):
        """Everything this client contributes to the secure sums: ordered (name, int64 vector) pairs
        for the model update (``bits``) and for the 32-bit side values."""
        import tensorflow as tf
        from tensorflow_federated.python.aggregators import robust

        side = collections.OrderedDict()

        def record(name, norm):
            q = self._q[name][0]
            rec = q.preprocess_record(q.derive_sample_params(state[name]), norm)
            for i, leaf in enumerate(tf.nest.flatten(rec)):  # SecureSumFactory(1.0): bounds [-1, 1]
                side[f"{name}_record_{i}"] = field.quantize_float(tf.reshape(leaf, [1]), -1.0, 1.0)

        value = [tf.convert_to_tensor(v) for v in value]
        if self.zeroing:
            norm = robust._global_inf_norm(value)  # pylint: disable=protected-access
            should_zero = bool((norm > bounds["zeroing"]).numpy())
            if should_zero:
                value = [tf.zeros_like(v) for v in value]
            record("zeroing", norm)
            side["zeroed_count"] = field.shift_int([int(should_zero)], 0, 1)
        if self.clipping:
            value, norm = robust._clip_by_global_l2_norm(value, bounds["clipping"])  # pylint: disable=protected-access
            value = list(value)
            record("clipping", norm)
            side["clipped_count"] = field.shift_int([int(bool((norm > bounds["clipping"]).numpy()))], 0, 1)
        if self.weighted:
            w = tf.constant(weight, tf.float32)
            value = [v * tf.cast(w, v.dtype) for v in value]  # mean._mul
            side["weight"] = field.quantize_float(tf.reshape(w, [1]), 0.0, WEIGHT_UPPER)
            side["weight_upper_clipped"] = np.array([int(WEIGHT_UPPER < float(w))], np.int64)
            side["weight_lower_clipped"] = np.array([int(0.0 > float(w))], np.int64)
        else:
            side["count"] = field.shift_int([1], 0, 1)
        vmax = tf.reduce_max(tf.stack([tf.reduce_max(v) for v in value]))  # secure._reduce_nest_max
        vmin = tf.reduce_min(tf.stack([tf.reduce_min(v) for v in value]))
        upper, lower = bounds["value_upper"], bounds["value_lower"]
        record("value_bound", tf.cast(tf.maximum(tf.abs(vmin), tf.abs(vmax)), tf.float32))
        side["value_upper_clipped"] = np.array([int(bool((upper < vmax).numpy()))], np.int64)
        side["value_lower_clipped"] = np.array([int(bool((lower > vmin).numpy()))], np.int64)
        update = np.concatenate([field.quantize_float(v, lower, upper, self.bits).reshape(-1) for v in value])
        return update, side

    # -- the round -------------------------------------------------------------------------------
    def aggregate(
        self, state, updates: Sequence[np.ndarray], weights: np.ndarray, round_num: int, dropouts: Optional[dict] = None
    ) -> AggregateOutput:
        """``updates``: per model tensor, the stacked client updates ``[clients, ...]``; ``weights``:
        ``[clients]``. ``dropouts`` (position -> stage) overrides the seeded draw. Raises
        :class:`~tff_lab.aggregation.secagg.protocol.SecAggAborted`."""
        import tensorflow as tf

        n = int(np.shape(weights)[0])
        shapes = [np.shape(u)[1:] for u in updates]
        dtypes = [tf.as_dtype(np.asarray(u).dtype) for u in updates]
        st = self._state_tensors(state)
        bounds = {}
        if self.zeroing:
            bounds["zeroing"] = self._report("zeroing", st)
        if self.clipping:
            bounds["clipping"] = self._report("clipping", st)
        bounds["value_upper"] = tf.cast(self._report("value_bound", st), tf.float32)  # _get_bounds_from_state
        bounds["value_lower"] = bounds["value_upper"] * -1.0

        contributions = [self._client(st, [u[c] for u in updates], float(weights[c]), bounds) for c in range(n)]
        side_names = list(contributions[0][1]) if n else []
        d_update = int(sum(int(np.prod(s)) for s in shapes))
        m_update = field.field_bits(self.bits, n)
        m_side = field.field_bits(field.TFF_BITS, n)
        segments = [(d_update, m_update), (len(side_names), m_side)]
        inputs = [np.concatenate([u, *side.values()]).astype(np.uint64) for u, side in contributions]

        k = graph_lib.resolve_degree(n, self.neighbors)
        t = graph_lib.threshold(k + 1, self.threshold_fraction)
        if dropouts is None:
            dropouts = protocol.draw_dropouts(
                n, self.dropout_rate, np.random.default_rng([self.seed, int(round_num), 0x5ECA66])
            )
        result, _ = protocol.run(
            inputs,
            segments,
            degree=k,
            t=t,
            dropouts=dropouts,
            seed=int(np.random.default_rng([self.seed, int(round_num), 0x6AA9]).integers(2**32)),
            tag=b"round %d" % int(round_num),
        )
        total = result.sum.astype(np.int64)
        n_in = len(result.included)
        sums = {name: total[d_update + i : d_update + i + 1] for i, name in enumerate(side_names)}

        # Server: TFF's inverse shifts, the means and the estimates' updates.
        value_sum, off = [], 0
        for shape, dtype in zip(shapes, dtypes):
            size = int(np.prod(shape))
            part = total[off : off + size].reshape(shape)
            value_sum.append(
                field.dequantize_float(part, bounds["value_lower"], bounds["value_upper"], n_in, dtype, self.bits)
            )
            off += size
        if self.weighted:
            denom = field.dequantize_float(sums["weight"], 0.0, WEIGHT_UPPER, n_in, tf.float32)[0]
        else:
            denom = field.unshift_int(sums["count"], 0, n_in)[0]
        mean = [tf.math.divide(tf.constant(v), tf.cast(denom, v.dtype)).numpy() for v in value_sum]  # mean._div

        new_state = collections.OrderedDict()
        for name, (q, _, _) in self._q.items():
            leaves = [
                field.dequantize_float(sums[f"{name}_record_{i}"], -1.0, 1.0, n_in, tf.float32)[0]
                for i in range(len([s for s in side_names if s.startswith(f"{name}_record_")]))
            ]
            template = q.preprocess_record(q.derive_sample_params(st[name]), tf.constant(0.0))
            summed = tf.nest.pack_sequence_as(template, [tf.constant(v) for v in leaves])
            _, new_q, _ = q.get_noised_result(summed, st[name])
            new_state[name] = _np(new_q)

        meas = collections.OrderedDict()
        meas["secure_upper_threshold"] = float(bounds["value_upper"].numpy())
        meas["secure_upper_clipped_count"] = int(sums["value_upper_clipped"][0])
        meas["secure_lower_clipped_count"] = int(sums["value_lower_clipped"][0])
        if self.clipping:
            meas["clipping_norm"] = float(bounds["clipping"].numpy())
            meas["clipped_count"] = int(sums["clipped_count"][0])
        if self.zeroing:
            meas["zeroing_norm"] = float(bounds["zeroing"].numpy())
            meas["zeroed_count"] = int(sums["zeroed_count"][0])
        return AggregateOutput(mean=mean, state=new_state, measurements=meas, secagg=result, participants=n_in)


def from_config(cfg) -> SecAggAggregator:
    a, s = cfg.aggregation, cfg.aggregation.secagg
    return SecAggAggregator(
        weighted=cfg.algorithm.weighting == "num_examples" or cfg.algorithm.name == "fedsgd",
        zeroing=a.zeroing,
        clipping=a.clipping,
        bits=s.bits,
        neighbors=s.neighbors,
        threshold_fraction=s.threshold_fraction,
        dropout_rate=s.dropout_rate,
        seed=cfg.seed,
    )
