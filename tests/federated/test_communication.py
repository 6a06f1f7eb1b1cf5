"""Bytes per round from the model's tensors and the encodings the aggregator uses."""

from __future__ import annotations

import json
import math

import pytest

from tff_lab.config import load_config
from tff_lab.federated.communication import CommunicationHook, per_client_bytes, quantized_tensor_bytes
from tff_lab.training.hooks import RoundInfo, RunContext

SHAPES = [[64, 64], [64], [64, 10], [10]]
DTYPES = ["float32"] * 4
N = 64 * 64 + 64 + 640 + 10


def test_plain_mean_sends_float32_updates_and_a_weight():
    pc = per_client_bytes(load_config(None, []), SHAPES, DTYPES)
    assert pc["uplink_update"] == 4 * N and pc["uplink"] == 4 * N + 4
    assert pc["downlink"] == 4 * N


@pytest.mark.parametrize("n,bits", [(4096, 8), (4096, 2), (640, 4), (1000, 16), (7, 3)])
def test_quantized_bytes_are_the_bitpacked_encoding(n, bits):
    """TFF's encoder packs `bits`-bit integers into int32 words of 28 payload bits and sends the
    float32 min and max; the measured size must be exactly that."""
    assert quantized_tensor_bytes(n, bits) == 4 * math.ceil(n * bits / 28) + 8


def test_compression_threshold_rotation_and_ratio():
    base = ["aggregation.kind=compression", "aggregation.zeroing=false", "aggregation.clipping=false"]
    q8 = per_client_bytes(load_config(None, base), SHAPES, DTYPES)
    expected = sum(4 * math.ceil(n * 8 / 28) + 8 for n in (4096, 64, 640, 10))
    assert q8["uplink_update"] == expected
    assert 3.0 < q8["uncompressed_update"] / q8["uplink_update"] < 3.6
    # Tensors at or below the threshold travel as float32.
    th = per_client_bytes(load_config(None, base + ["aggregation.quantization_threshold=100"]), SHAPES, DTYPES)
    assert th["uplink_update"] == (4 * math.ceil(4096 * 8 / 28) + 8) + 4 * 64 + (4 * math.ceil(640 * 8 / 28) + 8) + 40
    # The Hadamard rotation pads each flattened tensor to a power of two before quantizing.
    hd = per_client_bytes(load_config(None, base + ["aggregation.rotation=hadamard"]), SHAPES, DTYPES)
    assert hd["uplink_update"] == sum(4 * math.ceil(m * 8 / 28) + 8 for m in (4096, 64, 1024, 16))
    q2 = per_client_bytes(load_config(None, base + ["aggregation.quantization_bits=2"]), SHAPES, DTYPES)
    assert q2["uplink_update"] < q8["uplink_update"] / 3


def test_ddp_secure_sends_bits_per_rotated_element():
    cfg = load_config(
        None,
        [
            "algorithm.weighting=uniform",
            "privacy.mechanism=ddp_secure",
            "privacy.noise_multiplier=1.0",
            "aggregation.ddp_bits=16",
        ],
    )
    pc = per_client_bytes(cfg, SHAPES, DTYPES)
    assert pc["uplink_update"] == 8192 * 16 // 8  # 4810 elements padded to 8192


def test_hook_columns_totals_and_resume():
    cfg = load_config(None, ["training.sampling=poisson", "training.sampling_rate=0.2"])
    ctx = RunContext(
        cfg=cfg,
        run_dir=None,
        population=20,
        noise_multiplier=None,
        model_weight_shapes=SHAPES,
        model_weight_dtypes=DTYPES,
    )
    hook = CommunicationHook()
    hook.on_start(ctx)
    per = hook.per_client
    rows = []
    for r, k in enumerate([3, 0, 5], start=1):
        row = {}
        hook.after_round(ctx, RoundInfo(r, [f"c{i}" for i in range(k)], k, bool(k), 0, {}), row)
        rows.append(row)
    assert [r["uplink_bytes"] for r in rows] == [3 * per["uplink"], 0, 5 * per["uplink"]]
    assert rows[-1]["downlink_bytes_cumulative"] == 8 * per["downlink"]
    resumed = CommunicationHook()
    resumed.on_start(ctx)
    resumed.load_state_dict(json.loads(json.dumps(hook.state_dict())))
    summary = {}
    resumed.on_end(ctx, summary)
    assert summary["communication"]["uplink_total_bytes"] == 8 * per["uplink"]
    assert summary["communication"]["rounds"] == 3
