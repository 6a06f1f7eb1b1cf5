"""Quantisation into SecAgg's field, exactly as TFF's secure sum does it.

TFF's ``SecureSumFactory`` (``tensorflow_federated/python/aggregators/secure.py``) turns a float
tensor into integers for ``tff.federated_secure_sum_bitwidth`` with
``primitives._client_tensor_shift_for_secure_sum``: clip to ``[lower, upper]`` (in the value's
dtype), scale by ``(2**32 - 1) / (upper - lower)`` in float64, round half to even, saturate-cast
to int64, subtract the rounded scaled lower bound, clip to ``[0, 2**32 - 1]``. After summing ``n``
such integers the server undoes it with ``primitives._server_tensor_shift_for_secure_sum``. Integer
tensors (the counts of TFF's secure estimation) are clipped and shifted by ``-lower``.

The functions here are those same TF operations, with the quantisation width ``bits`` as a
parameter (TFF fixes 32: ``_SECAGG_MAX = 2**32 - 1``); at 32 bits they are TFF's functions
bit for bit (tested against them). The protocol sums the integers modulo ``2**m`` with
``m = bits + ceil(log2 n)``: ``n`` summands below ``2**bits`` never reach ``2**m``, so the
modular sum is the plain integer sum TFF's (simulated) secure sum computes.
"""

from __future__ import annotations

import math

import numpy as np

TFF_BITS = 32  # TFF's secure sum: primitives._SECAGG_MAX = 2**32 - 1
MAX_FIELD_BITS = 62  # masks are uint64 arithmetic; TFF's test runtime also caps secure sums at 62 bits


def max_value(bits: int) -> int:
    return (1 << int(bits)) - 1


def field_bits(bits: int, num_summands: int) -> int:
    """Bits ``m`` of the ring Z_{2^m} in which ``num_summands`` values of ``bits`` bits sum without
    wrapping around."""
    m = int(bits) + max(0, math.ceil(math.log2(max(1, int(num_summands)))))
    if m > MAX_FIELD_BITS:
        raise ValueError(f"{num_summands} summands of {bits} bits need a {m}-bit field (at most {MAX_FIELD_BITS})")
    return m


def quantize_float(value, lower, upper, bits: int = TFF_BITS) -> np.ndarray:
    """``primitives._client_tensor_shift_for_secure_sum`` for a float tensor (int64 in [0, 2**bits-1])."""
    import tensorflow as tf

    value = tf.convert_to_tensor(value)
    lower = tf.cast(lower, value.dtype)
    upper = tf.cast(upper, value.dtype)
    top = max_value(bits)
    clipped = tf.clip_by_value(value, lower, upper)
    scale = tf.math.divide_no_nan(tf.constant(top, tf.float64), tf.cast(upper - lower, tf.float64))
    rounded = tf.saturate_cast(tf.round(tf.cast(clipped, tf.float64) * scale), tf.int64)
    shifted = rounded - tf.saturate_cast(tf.round(tf.cast(lower, tf.float64) * scale), tf.int64)
    return tf.clip_by_value(shifted, tf.constant(0, tf.int64), tf.constant(top, tf.int64)).numpy()


def dequantize_float(summed, lower, upper, num_summands: int, dtype, bits: int = TFF_BITS) -> np.ndarray:
    """``primitives._server_tensor_shift_for_secure_sum`` for a float tensor: the float sum of the
    ``num_summands`` values whose quantised integers sum to ``summed``."""
    import tensorflow as tf

    dtype = tf.as_dtype(dtype)
    lower = tf.cast(lower, dtype)
    upper = tf.cast(upper, dtype)
    top = max_value(bits)
    value = tf.convert_to_tensor(np.asarray(summed, np.int64))
    n = tf.constant(int(num_summands), tf.int64)
    if int(np.min(summed, initial=0)) < 0 or int(np.max(summed, initial=0)) > top * int(num_summands):
        raise ValueError("secure sum out of range: the protocol's sum is not a sum of quantised values")
    scale = tf.math.divide_no_nan(tf.constant(top, tf.float64), tf.cast(upper - lower, tf.float64))
    value = value + tf.saturate_cast(tf.round(tf.cast(lower, tf.float64) * scale), tf.int64) * n
    value = tf.cast(value, tf.float64) * (tf.cast(upper - lower, tf.float64) / top)
    shifted = value + tf.cast(n, tf.float64) * tf.cast(lower, tf.float64)
    value = tf.cond(tf.equal(lower, upper), lambda: shifted, lambda: value)
    return tf.cast(value, dtype).numpy()


def shift_int(value, lower: int, upper: int) -> np.ndarray:
    """``secure._client_shift`` (SecureSumFactory's integer mode): clip, then subtract ``lower``."""
    v = np.clip(np.asarray(value, np.int64), lower, upper)
    return v - np.int64(lower)


def unshift_int(summed, lower: int, num_summands: int, dtype=np.int32) -> np.ndarray:
    """``secure._server_shift``: add ``lower * num_summands``."""
    return (np.asarray(summed, np.int64) + np.int64(lower) * np.int64(num_summands)).astype(dtype)


def int_bits(lower: int, upper: int) -> int:
    """SecureSumFactory's integer bit width: ``ceil(log2(upper - lower + 1))``."""
    return math.ceil(math.log2(upper - lower + 1))
