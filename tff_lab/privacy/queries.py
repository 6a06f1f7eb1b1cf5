"""tensorflow_privacy DP queries whose Gaussian noise is reproducible from a seed in the query state.

Why: tensorflow_privacy 0.9.0's ``GaussianSumQuery`` draws its noise with an unseeded
``tf.random_normal_initializer``. Inside TFF's ``tf_computation`` that is a stateful random
op in a freshly instantiated graph on every call: the noise differs from run to run, so a
seed cannot fix it and a resumed run cannot end where an uninterrupted one does. (Setting
a graph-level seed inside the computation would be worse: every round would draw the *same*
noise.) TFF's tree aggregation already does it right: its ``GaussianNoiseGenerator`` keeps
the seed in the aggregator state and uses stateless ops. These queries do the same for
fixed and adaptive clipping:

- :class:`SeededNoiseQuery` wraps a query and keeps ``(seed, round)`` in its global state, so
  the noise of round r is a pure function of the seed and r, and checkpoints of the
  learning-process state carry it.
- :class:`SeededGaussianSumQuery` is tensorflow_privacy's ``GaussianSumQuery`` (same clipping,
  same stddev, same ``GaussianDpEvent``) drawing ``tf.random.stateless_normal`` from that seed.
- :class:`SeededQuantileAdaptiveClipSumQuery` is tensorflow_privacy's
  ``QuantileAdaptiveClipSumQuery`` with both of its Gaussian sums (the values and the
  clipped-count of the quantile estimate) seeded.

Everything else (clipping, the adaptive clip update, normalisation, the ``DpEvent`` each
round emits) is tensorflow_privacy's code. Caveat, documented in the README: noise that a
seed determines is known to whoever knows the seed. That is what reproducible simulation
needs; a deployment must keep the seed secret or use ``privacy.reproducible_noise: false``
(TFF's stock factories, fresh randomness each call).
"""

from __future__ import annotations

import collections

import dp_accounting
import tensorflow as tf
import tensorflow_privacy as tfp
from tensorflow_privacy.privacy.dp_query import normalized_query, quantile_estimator_query

_SALT = 0x7FF1AB  # separates the DP-noise stream from other uses of the experiment seed


class SeedScope:
    """Carries the current round's seed tensor from :class:`SeededNoiseQuery` to the seeded
    sum queries it wraps while TFF traces ``get_noised_result`` (one graph, one trace)."""

    def __init__(self):
        self.current = None

    def seed_for(self, stream: int) -> tf.Tensor:
        if self.current is None:
            raise RuntimeError("a seeded DP query must be wrapped in SeededNoiseQuery")
        return tf.random.experimental.stateless_fold_in(self.current, stream)


class SeededGaussianSumQuery(tfp.GaussianSumQuery):
    """``GaussianSumQuery`` with noise from ``tf.random.stateless_normal`` (seed from the scope)."""

    def __init__(self, l2_norm_clip, stddev, scope: SeedScope, stream: int):
        super().__init__(l2_norm_clip, stddev)
        self._scope = scope
        self._stream = stream

    def get_noised_result(self, sample_state, global_state):
        seed = self._scope.seed_for(self._stream)
        flat = tf.nest.flatten(sample_state)
        noised = []
        for i, v in enumerate(flat):
            noise = tf.random.stateless_normal(
                tf.shape(v),
                seed=tf.random.experimental.stateless_fold_in(seed, i),
                stddev=global_state.stddev,
                dtype=tf.float32,
            )
            noised.append(v + tf.cast(noise, v.dtype))
        result = tf.nest.pack_sequence_as(sample_state, noised)
        # Exactly tensorflow_privacy's event for this query.
        event = dp_accounting.GaussianDpEvent(global_state.stddev / global_state.l2_norm_clip)
        return result, global_state, event


class _SeededQuantileEstimatorQuery(quantile_estimator_query.QuantileEstimatorQuery):
    def __init__(self, *args, scope: SeedScope, **kwargs):
        self._scope = scope
        super().__init__(*args, **kwargs)

    def _construct_below_estimate_query(self, below_estimate_stddev, expected_num_records):
        # tensorflow_privacy's construction (records are +-0.5, hence clip 0.5), seeded.
        return normalized_query.NormalizedQuery(
            SeededGaussianSumQuery(l2_norm_clip=0.5, stddev=below_estimate_stddev, scope=self._scope, stream=1),
            denominator=expected_num_records,
        )


class SeededQuantileAdaptiveClipSumQuery(tfp.QuantileAdaptiveClipSumQuery):
    """``QuantileAdaptiveClipSumQuery`` whose value noise and clipped-count noise are seeded."""

    def __init__(
        self,
        initial_l2_norm_clip,
        noise_multiplier,
        target_unclipped_quantile,
        learning_rate,
        clipped_count_stddev,
        expected_num_records,
        geometric_update=True,
        *,
        scope: SeedScope,
    ):
        super().__init__(
            initial_l2_norm_clip,
            noise_multiplier,
            target_unclipped_quantile,
            learning_rate,
            clipped_count_stddev,
            expected_num_records,
            geometric_update,
        )
        self._sum_query = SeededGaussianSumQuery(
            initial_l2_norm_clip, noise_multiplier * initial_l2_norm_clip, scope=scope, stream=0
        )
        self._quantile_estimator_query = _SeededQuantileEstimatorQuery(
            initial_l2_norm_clip,
            target_unclipped_quantile,
            learning_rate,
            clipped_count_stddev,
            expected_num_records,
            geometric_update,
            scope=scope,
        )


class SeededNoiseQuery(tfp.SumAggregationDPQuery):
    """Wraps a query built on :class:`SeededGaussianSumQuery`; its state holds ``(seed, round)``."""

    _GlobalState = collections.namedtuple("_GlobalState", ["inner", "seed", "round"])

    def __init__(self, inner: tfp.SumAggregationDPQuery, scope: SeedScope, seed: int):
        self._inner = inner
        self._scope = scope
        self._seed = int(seed)

    def initial_global_state(self):
        return self._GlobalState(
            self._inner.initial_global_state(),
            tf.constant([self._seed, _SALT], dtype=tf.int64),
            tf.constant(0, dtype=tf.int64),
        )

    def derive_sample_params(self, global_state):
        return self._inner.derive_sample_params(global_state.inner)

    def initial_sample_state(self, template=None):
        return self._inner.initial_sample_state(template)

    def preprocess_record(self, params, record):
        return self._inner.preprocess_record(params, record)

    def get_noised_result(self, sample_state, global_state):
        self._scope.current = tf.random.experimental.stateless_fold_in(global_state.seed, global_state.round)
        try:
            result, new_inner, event = self._inner.get_noised_result(sample_state, global_state.inner)
        finally:
            self._scope.current = None
        return result, self._GlobalState(new_inner, global_state.seed, global_state.round + 1), event

    def derive_metrics(self, global_state):
        return self._inner.derive_metrics(global_state.inner)


def seeded_gaussian_fixed_query(noise_multiplier: float, clients_per_round: float, clip: float, seed: int):
    """The query of TFF's ``DifferentiallyPrivateFactory.gaussian_fixed``, seeded."""
    scope = SeedScope()
    query = tfp.NormalizedQuery(
        SeededGaussianSumQuery(clip, clip * noise_multiplier, scope=scope, stream=0), denominator=clients_per_round
    )
    return SeededNoiseQuery(query, scope, seed)


def seeded_gaussian_adaptive_query(
    value_noise_multiplier: float,
    clients_per_round: float,
    initial_l2_norm_clip: float,
    target_unclipped_quantile: float,
    learning_rate: float,
    clipped_count_stddev: float,
    seed: int,
):
    """The query of TFF's ``DifferentiallyPrivateFactory.gaussian_adaptive``, seeded.

    ``value_noise_multiplier`` is the value query's own multiplier (TFF's
    ``adaptive_clip_noise_params`` computes it from the total).
    """
    scope = SeedScope()
    query = SeededQuantileAdaptiveClipSumQuery(
        initial_l2_norm_clip=initial_l2_norm_clip,
        noise_multiplier=value_noise_multiplier,
        target_unclipped_quantile=target_unclipped_quantile,
        learning_rate=learning_rate,
        clipped_count_stddev=clipped_count_stddev,
        expected_num_records=clients_per_round,
        geometric_update=True,
        scope=scope,
    )
    return SeededNoiseQuery(tfp.NormalizedQuery(query, denominator=clients_per_round), scope, seed)
