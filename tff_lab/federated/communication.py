"""Communication cost per round: bytes each client sends (uplink) and receives (downlink).

Counted from the model's tensors and the encoding the configured aggregator applies to them:

- uplink, model update, per tensor of ``n`` elements:
  - plain, robust and central-DP aggregation: ``n`` x the dtype's bytes (float32 deltas);
  - ``secure``: 4 bytes per element (TFF's ``SecureSumFactory`` clips floats and quantizes them
    to 32-bit integers for secure summation);
  - ``compression``: the bytes of the tensors TFF's encoder actually emits, measured by running
    that encoder (``tensor_encoding``'s uniform quantization: a bit-packed ``int32`` vector, 28
    payload bits per word, plus the float32 min and max) on a tensor of the model's shape (the
    Hadamard rotation first pads the flattened tensor to a power of two); tensors at or below
    ``quantization_threshold`` elements travel as float32;
  - ``ddp_secure``: the model concatenated into one vector, padded for the rotation (``hd``: next
    power of two; ``dft``: even), ``ddp_bits`` bits per element (SecAgg's field elements).
- an algorithm's own model-sized tensors, each way (SCAFFOLD: the control variate update up, the
  server's control variate down), counted in the side bytes;
- uplink side values (4 bytes each): the client weight (weighted mean) or count (unweighted
  non-DP mean), the adaptive clip's unclipped indicator, and the record and count of each
  adaptive clipping/zeroing stage TFF wraps around the aggregator.
- downlink: the model weights broadcast to each sampled client (float32), plus the scalars the
  aggregator broadcasts (clip norms, quantile estimates, secure-sum bounds, rotation seeds).

Training-metric aggregates (loss/accuracy sums, a few scalars per client) are not counted.
Totals per round multiply by the clients that took part (zero for a Poisson round that sampled
nobody); the summary holds the cumulative totals, which survive a resume through the hook state.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from tff_lab.training.hooks import RoundHook, RoundInfo, RunContext

_F32 = 4


def _nelem(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def quantized_tensor_bytes(num_elements: int, bits: int, stochastic: bool = True) -> int:
    """Bytes of the tensors TFF's uniform-quantization encoder emits for a vector of this size
    (measured by running the encoder)."""
    return _quantized_tensor_bytes(int(num_elements), int(bits), bool(stochastic))


_QCACHE: dict = {}


def _quantized_tensor_bytes(n: int, bits: int, stochastic: bool) -> int:
    key = (n, bits, stochastic)
    if key not in _QCACHE:
        import tensorflow as tf
        from tensorflow_model_optimization.python.core.internal import tensor_encoding as te

        enc = te.core.SimpleEncoder(
            te.encoders.uniform_quantization(bits, stochastic=stochastic), tf.TensorSpec([n], tf.float32)
        )
        encoded, _ = enc.encode(tf.linspace(-1.0, 1.0, n), enc.initial_state())
        _QCACHE[key] = int(sum(int(np.prod(t.shape)) * t.dtype.size for t in tf.nest.flatten(encoded)))
    return _QCACHE[key]


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def model_bytes(shapes, dtypes) -> int:
    return int(sum(_nelem(s) * _itemsize(d) for s, d in zip(shapes, dtypes)))


def per_client_bytes(cfg, shapes, dtypes) -> dict:
    """Uplink and downlink bytes of one participating client, with a breakdown."""
    a, p = cfg.aggregation, cfg.privacy
    weighted = cfg.algorithm.weighting == "num_examples"
    sizes = [_nelem(s) for s in shapes]
    up_side, down_side = 0, 0
    notes = []
    if p.enabled:
        if p.mechanism == "ddp_secure":
            d = sum(sizes)
            d_pad = _pow2(d) if a.ddp_rotation == "hd" else d + (d % 2)
            update = math.ceil(d_pad * a.ddp_bits / 8)
            encoding = f"ddp_secure: {d_pad} rotated elements x {a.ddp_bits} bits (SecAgg field)"
            up_side += _F32 * (1 + 2 + (2 if a.zeroing else 0))  # count, clip record+count, zeroing
            down_side += _F32 * (2 + (1 if a.zeroing else 0)) + 16  # clip, scale, zeroing norm, rotation seed
        else:
            update = sum(n * _itemsize(dt) for n, dt in zip(sizes, dtypes))
            encoding = f"{p.mechanism}: float32 clipped update"
            if p.mechanism == "gaussian_adaptive":
                up_side += _F32  # the unclipped indicator of the quantile estimate
                down_side += 2 * _F32  # clip norm and quantile estimate
            else:
                down_side += _F32  # clip norm
    else:
        up_side += _F32  # client weight (weighted mean) or count (unweighted mean)
        if a.kind in ("robust", "secure", "compression", "secagg"):
            if a.clipping:
                up_side += 2 * _F32
                down_side += _F32
            if a.zeroing:
                up_side += 2 * _F32
                down_side += _F32
        if a.kind == "compression":
            update = 0
            for n, dt in zip(sizes, dtypes):
                m = _pow2(n) if a.rotation == "hadamard" else n
                update += (
                    quantized_tensor_bytes(m, a.quantization_bits, a.stochastic_rounding)
                    if m > a.quantization_threshold
                    else m * _itemsize(dt)
                )
            rot = "Hadamard-rotated, " if a.rotation == "hadamard" else ""
            encoding = (
                f"compression: {rot}{a.quantization_bits}-bit uniform quantization of tensors with more than "
                f"{a.quantization_threshold} elements (bit-packed int32 + min/max)"
            )
            if a.rotation == "hadamard":
                down_side += 16  # the rotation seed
        elif a.kind == "secagg":
            # The masked vector of SecAgg's masked_input step: field elements of bits + ceil(log2 n)
            # bits, byte-aligned (tff_lab.aggregation.secagg.protocol). The protocol's key exchange,
            # shares and unmasking are counted per step in the secagg_* columns.
            from tff_lab.aggregation.secagg.field import field_bits

            n = max(
                1,
                int(
                    round(
                        cfg.training.clients_per_round
                        if cfg.training.sampling == "uniform"
                        else cfg.training.sampling_rate * max(1, cfg.data.num_clients)
                    )
                ),
            )
            width = -(-field_bits(a.secagg.bits, n) // 8)
            update = sum(sizes) * width
            encoding = (
                f"secagg: {a.secagg.bits}-bit quantized update masked in Z_2^{field_bits(a.secagg.bits, n)} "
                f"({width} bytes per element, {n} clients)"
            )
            down_side += 2 * _F32  # the secure-sum bounds
        elif a.kind == "secure":
            update = sum(sizes) * 4
            encoding = "secure: floats quantized to 32-bit integers for secure summation"
            down_side += 2 * _F32  # the secure-sum bounds
        else:
            update = sum(n * _itemsize(dt) for n, dt in zip(sizes, dtypes))
            encoding = f"{a.kind}: float32 update"
        if not weighted:
            notes.append("unweighted mean")
    down_model = model_bytes(shapes, dtypes)
    from tff_lab.algorithms.registry import algorithm_class

    extra = algorithm_class(cfg.algorithm.name).extra_model_copies  # e.g. SCAFFOLD's control variates
    if extra:
        up_side += extra * down_model
        down_side += extra * down_model
        encoding += f"; {cfg.algorithm.name}: {extra} more model-sized float32 tensor(s) each way"
    return {
        "uplink": int(update + up_side),
        "uplink_update": int(update),
        "uplink_side": int(up_side),
        "downlink": int(down_model + down_side),
        "downlink_model": int(down_model),
        "downlink_side": int(down_side),
        "uncompressed_update": model_bytes(shapes, dtypes),
        "encoding": encoding,
    }


class CommunicationHook(RoundHook):
    name = "communication"

    def __init__(self):
        self.per_client: Optional[dict] = None
        self.uplink_total = 0
        self.downlink_total = 0
        self.rounds = 0
        self._last_round: Optional[dict] = None

    def on_start(self, ctx: RunContext) -> None:
        self.per_client = per_client_bytes(ctx.cfg, ctx.model_weight_shapes, ctx.model_weight_dtypes)

    def after_round(self, ctx: RunContext, info: RoundInfo, row: dict) -> None:
        n = info.participants if info.trained else 0
        up = self.per_client["uplink"] * n
        down = self.per_client["downlink"] * n
        self.uplink_total += up
        self.downlink_total += down
        self.rounds += 1
        row["uplink_bytes"] = up
        row["downlink_bytes"] = down
        row["uplink_bytes_per_client"] = self.per_client["uplink"] if n else 0
        row["downlink_bytes_per_client"] = self.per_client["downlink"] if n else 0
        row["uplink_bytes_cumulative"] = self.uplink_total
        row["downlink_bytes_cumulative"] = self.downlink_total

    def progress_fields(self) -> dict:
        return {"up": _human(self.uplink_total)} if self.rounds else {}

    def state_dict(self) -> dict:
        return {"uplink_total": self.uplink_total, "downlink_total": self.downlink_total, "rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.uplink_total = int(state["uplink_total"])
            self.downlink_total = int(state["downlink_total"])
            self.rounds = int(state["rounds"])

    def on_end(self, ctx: RunContext, summary: dict) -> None:
        pc = self.per_client
        summary["communication"] = {
            "uplink_total_bytes": self.uplink_total,
            "downlink_total_bytes": self.downlink_total,
            "uplink_bytes_per_client": pc["uplink"],
            "downlink_bytes_per_client": pc["downlink"],
            "uplink_update_bytes_per_client": pc["uplink_update"],
            "uncompressed_update_bytes": pc["uncompressed_update"],
            "compression_ratio": (pc["uncompressed_update"] / pc["uplink_update"]) if pc["uplink_update"] else None,
            "encoding": pc["encoding"],
            "rounds": self.rounds,
        }


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"
