"""aggregation.kind: secagg sums exactly what aggregation.kind: secure (TFF's secure_aggregator) sums."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tff_lab.aggregation.secagg import field
from tff_lab.aggregation.secagg.aggregator import SecAggAggregator
from tff_lab.config import from_dict

SHAPES = [(5, 3), (3,)]


def test_quantisation_is_tffs_bit_for_bit():
    from tensorflow_federated.python.aggregators import primitives

    rng = np.random.default_rng(0)
    for lo, up in [(-100.0, 100.0), (-1.0, 1.0), (0.0, float(2**20 - 1)), (-3.5, 7.25), (2.0, 2.0)]:
        lo_t, up_t = tf.constant(lo, tf.float32), tf.constant(up, tf.float32)
        for scale in (0.01, 1.0, 300.0):
            v = (rng.normal(size=200) * scale).astype(np.float32)
            want = primitives._client_tensor_shift_for_secure_sum(tf.constant(v), lo_t, up_t).numpy()
            assert np.array_equal(field.quantize_float(v, lo_t, up_t), want)
            s = rng.integers(0, 7 * (2**32 - 1), size=50)
            want = primitives._server_tensor_shift_for_secure_sum(
                tf.constant(7), tf.constant(s), lo_t, up_t, tf.float32
            ).numpy()
            assert np.array_equal(field.dequantize_float(s, lo_t, up_t, 7, tf.float32), want)
    # n summands of b bits fit the ring without wrapping
    assert field.field_bits(32, 10) == 36 and field.field_bits(32, 1) == 32 and field.field_bits(16, 1024) == 26


def _secure_process(weighted: bool, zeroing: bool, clipping: bool):
    """tff_lab's aggregation.kind: secure, as the TFF engine builds it."""
    import tensorflow_federated as tff

    from tff_lab.federated import runtime
    from tff_lab.federated.aggregators import make_aggregator

    cfg = from_dict(
        {
            "aggregation": {"kind": "secure", "zeroing": zeroing, "clipping": clipping},
            "algorithm": {"weighting": "num_examples" if weighted else "uniform"},
        }
    )
    runtime.ensure_context(cfg.training, secure=True)
    factory = make_aggregator(cfg, population=20)
    value_type = tff.StructWithPythonType([tff.TensorType(np.float32, s) for s in SHAPES], list)
    return factory.create(value_type, tff.TensorType(np.float32)) if weighted else factory.create(value_type)


def _updates(rng, n):
    # norms spread over 3 orders of magnitude: zeroing, clipping and bound-clipping all happen
    return [
        (rng.normal(size=(n,) + s) * rng.choice([0.05, 1.0, 40.0], size=(n,) + (1,) * len(s))).astype(np.float32)
        for s in SHAPES
    ]


@pytest.mark.parametrize("weighted,zeroing,clipping", [(True, True, True), (False, False, False)])
def test_sum_equals_the_secure_kind_bit_for_bit(weighted, zeroing, clipping):
    """Rounds of the same client updates through TFF's secure aggregator and through the protocol
    (SecAgg+ with dropouts in the last round, compared with TFF on the clients that stayed): the
    means and the adaptive state (zeroing/clipping norms, secure-sum bounds) are equal bit for bit."""
    n = 7
    proc = _secure_process(weighted, zeroing, clipping)
    tff_state = proc.initialize()
    ours = SecAggAggregator(weighted=weighted, zeroing=zeroing, clipping=clipping, neighbors=None)
    state = ours.initial_state()
    rng = np.random.default_rng(1)
    saw_clipping = 0
    for r in range(1, 4):
        ups = _updates(rng, n)
        w = rng.integers(1, 60, n).astype(np.float32)
        dropouts = {1: "after_share_keys", 4: "after_masked_input"} if r == 3 else {}
        kept = [c for c in range(n) if dropouts.get(c) != "after_share_keys"]
        clients = [[u[c] for u in ups] for c in kept]
        out = proc.next(tff_state, clients, [w[c] for c in kept]) if weighted else proc.next(tff_state, clients)
        tff_state = out.state
        mine = ours.aggregate(state, ups, w, r, dropouts=dropouts)
        state = mine.state
        assert mine.participants == len(kept)
        for a, b in zip(out.result, mine.mean):
            assert np.array_equal(np.asarray(a), b), (r, np.max(np.abs(np.asarray(a) - b)))
        meas = mine.measurements
        tff_meas = tf.nest.flatten(out.measurements)
        assert meas["secure_upper_threshold"] in [float(x) for x in tff_meas]
        saw_clipping += meas["secure_upper_clipped_count"] + meas.get("clipped_count", 0)
    assert saw_clipping > 0
    ours_leaves = [np.asarray(x) for x in tf.nest.flatten(state)]
    tff_leaves = [np.asarray(x) for x in tf.nest.flatten(tff_state)]
    # every adaptive estimate TFF keeps is ours too, bit for bit
    estimates = [s.current_estimate for s in state.values()]
    for e in estimates:
        assert any(x.dtype == e.dtype and np.array_equal(x, e) for x in tff_leaves), (e, tff_leaves)
    assert len(ours_leaves) > 0


def test_fewer_bits_quantise_coarser_and_send_less():
    n = 6
    rng = np.random.default_rng(4)
    ups = [(rng.normal(size=(n,) + s) * 3).astype(np.float32) for s in SHAPES]
    ones = np.ones(n, np.float32)
    outs = {}
    for bits in (32, 16):
        agg = SecAggAggregator(weighted=False, zeroing=False, clipping=False, bits=bits, neighbors="all")
        outs[bits] = agg.aggregate(agg.initial_state(), ups, ones, 1, dropouts={})
    bound = outs[32].measurements["secure_upper_threshold"]  # 100: the initial bound, nothing clipped
    assert outs[32].measurements["secure_upper_clipped_count"] == 0
    step = 2 * bound / (2**16 - 1)
    exact = [u.astype(np.float64).mean(0) for u in ups]
    for e, m32, m16 in zip(exact, outs[32].mean, outs[16].mean):
        assert np.max(np.abs(m32 - e)) < 2 * bound / (2**32 - 1) + 1e-6
        assert np.max(np.abs(m16 - e)) <= step / 2 + 1e-6  # half a quantisation step per client, averaged
        assert np.max(np.abs(m16 - e)) > np.max(np.abs(m32 - e))
    d = sum(int(np.prod(s)) for s in SHAPES)
    assert outs[32].secagg.segments[0] == (d, 32 + 3) and outs[16].secagg.segments[0] == (d, 16 + 3)
    assert outs[32].secagg.sent[0, 2] - outs[16].secagg.sent[0, 2] == d * (5 - 3)  # 35 -> 5 bytes, 19 -> 3
