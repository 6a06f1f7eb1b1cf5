"""The distributed Skellam mechanism of ``privacy.mechanism: ddp_secure``, in the units it runs in.

TFF's ``DistributedDpSumFactory(mechanism="distributed_skellam")`` (what
``tff.learning.ddp_secure_aggregator`` and tff_lab's ``ddp_secure`` build) concatenates the
update into one vector of ``dim`` elements, pads it for the rotation (``hd``: the next power of
two; ``dft``: even), clips it to L2 norm ``c`` (adaptively), rotates it, scales it by ``s`` and
rounds it stochastically to integers; each client adds Skellam noise of stddev
``local_stddev * s`` (the difference of two Poissons of mean ``(local_stddev s)^2 / 2``);
SecAgg sums modulo ``2^bits``. The query (tensorflow_privacy's ``DistributedSkellamSumQuery``)
*asserts* that every integer record has ``L1 <= l1_norm_bound`` and ``L2 <= l2_norm_bound``
before noising, so these two bounds are the mechanism's sensitivities under the zero-out
relation (one client's update replaced by zeros; its noise share is still added), in the scaled
integer domain, and the summed noise of ``n`` participants is Skellam with variance
``n (local_stddev s)^2``. :func:`skellam_params` derives those three numbers exactly as TFF 0.87
does (``_build_aggregation_factory`` / ``_update_dp_params``, with TFF's own helpers); the run's
ledger reads them from the aggregator state every round instead (the adaptive clip changes the
scale and with it the rounding's inflation of the norm).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

# tff_lab's ddp_secure aggregator (like tff.learning.ddp_secure_aggregator) starts the adaptive
# L2 clip at 0.1 and keeps DistributedDpSumFactory's defaults for these two.
DDP_INITIAL_L2_CLIP = 0.1
DDP_MODCLIP_PROB = 1e-4
DDP_BETA = 0.0


@dataclasses.dataclass(frozen=True)
class SkellamParams:
    """One round's distributed Skellam query, in the scaled integer domain."""

    l1_norm_bound: float  # integer: the record's L1 bound (asserted by the query)
    l2_norm_bound: float  # the record's L2 bound (asserted by the query)
    local_stddev: float  # each client's Skellam noise stddev

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> SkellamParams:
        return cls(float(d["l1_norm_bound"]), float(d["l2_norm_bound"]), float(d["local_stddev"]))


def padded_dim(dim: int, rotation: str) -> int:
    dim = max(1, int(dim))
    if rotation == "hd":
        return 2 ** math.ceil(math.log2(dim))
    return math.ceil(dim / 2.0) * 2


def skellam_params(
    clip: float,
    value_noise_multiplier: float,
    expected_clients: int,
    bits: int,
    dim_padded: int,
    beta: float = DDP_BETA,
    modclip_prob: float = DDP_MODCLIP_PROB,
) -> SkellamParams:
    """The query's (l1, l2, local stddev) for L2 clip ``clip``, as TFF 0.87 computes them (float32
    like the aggregator state)."""
    import numpy as np
    from tensorflow_federated.python.aggregators import discretization, distributed_dp

    n = int(expected_clients)
    local_stddev = clip * value_noise_multiplier / math.sqrt(n)
    k = distributed_dp._clip_prob_to_num_stddevs(modclip_prob)  # pylint: disable=protected-access
    scale = float(
        distributed_dp._heuristic_scale_factor(  # pylint: disable=protected-access
            local_stddev, clip, bits, n, dim_padded, k
        ).numpy()
    )
    scale = min(scale, distributed_dp.MAX_SCALE_FACTOR)
    inflated = float(
        discretization.inflated_l2_norm_bound(l2_norm_bound=clip, gamma=1.0 / scale, beta=beta, dim=dim_padded).numpy()
    )
    l2 = (inflated + 1e-5) * scale
    l1 = math.ceil(l2 * min(math.sqrt(dim_padded), l2))
    # The aggregator state holds them as int32 / float32 / float32.
    return SkellamParams(float(np.int32(l1)), float(np.float32(l2)), float(np.float32(local_stddev * scale)))


def params_from_state(state: Any) -> Optional[SkellamParams]:
    """The DistributedSkellamSumQuery's global state inside an engine's server state (the
    parameters the NEXT round uses), or None when the state holds none."""
    import numpy as np

    from tff_lab.privacy.state_check import flatten_with_paths

    flat = flatten_with_paths(getattr(state, "aggregator", state))
    hits = [
        p[:-1]
        for p in flat
        if p and p[-1] == "l1_norm_bound" and p[:-1] + ("l2_norm_bound",) in flat and p[:-1] + ("local_stddev",) in flat
    ]
    if len(hits) != 1:
        return None
    base = hits[0]
    return SkellamParams(
        float(np.asarray(flat[base + ("l1_norm_bound",)])),
        float(np.asarray(flat[base + ("l2_norm_bound",)])),
        float(np.asarray(flat[base + ("local_stddev",)])),
    )
