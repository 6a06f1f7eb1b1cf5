"""Privacy accounting: the DpEvent of the mechanism that ran -> epsilon at delta.

TFF adds the noise but computes no epsilon. This module states, as a ``dp_accounting``
``DpEvent``, exactly what one round of each private aggregation does, and asks
``dp_accounting``'s RDP and PLD accountants for epsilon. Nothing here re-derives a
privacy bound: every number comes from ``dp_accounting`` (or, for the adaptive clip's
noise split, from TFF's own ``adaptive_clip_noise_params``).

One round, per mechanism (``MechanismSpec.round_event``):

- ``gaussian_fixed``: ``GaussianDpEvent(z)`` on the clipped sum (TFF's
  ``DifferentiallyPrivateFactory.gaussian_fixed``, tensorflow_privacy's ``GaussianSumQuery``).
- ``gaussian_adaptive``: ``ComposedDpEvent([GaussianDpEvent(z_value), GaussianDpEvent(2 sigma_b)])``:
  the value query plus the noised clipped-count query of the quantile estimate (records
  are +-0.5, so its noise multiplier is ``sigma_b / 0.5``), as tensorflow_privacy's
  ``QuantileAdaptiveClipSumQuery`` emits it. TFF treats the configured ``z`` as the total:
  it raises the value noise to ``z_value = (z^-2 - (2 sigma_b)^-2)^-1/2`` so that the
  combined multiplier ``(z_value^-2 + (2 sigma_b)^-2)^-1/2`` equals ``z`` (Andrew et al. 2021).
- Client sampling wraps the round: ``PoissonSampledDpEvent(q, .)`` (add/remove-one
  neighbours) or ``SampledWithoutReplacementDpEvent(N, m, .)`` (replace-one neighbours: one
  client's clipped update replaced by another moves the sum by up to 2C, so the Gaussian
  multipliers inside are halved into dp_accounting's sensitivity-normalised units), composed
  over rounds. A Poisson round that sampled nobody is still a round.
- ``tree`` (DP-FTRL, TFF's ``tree_aggregation``): no amplification by sampling. Under DP every
  round calls the aggregator, so every round is one leaf of the tree, a round that sampled
  nobody included (its leaf releases the noise alone): :func:`tree_leaf` is that one rule, used
  by the ledger, the noise calibration and the ``max_epsilon`` look-ahead. Given the
  participation schedule (public randomness, independent of the data), the released tree
  nodes are a Gaussian mechanism whose L2 sensitivity is ``C * sqrt(S)`` with
  ``S = max_client sum_nodes n_node^2`` over the complete dyadic nodes of the tree
  (``n_node``: the client's participations under that node). The ledger holds
  ``GaussianDpEvent(z / sqrt(S))`` under the replace-with-zero relation (``REPLACE_SPECIAL``,
  Kairouz et al. 2021). For a client that participates at most once, ``S`` is the tree
  depth and this is exactly ``dp_accounting``'s ``SingleEpochTreeAggregationDpEvent``
  (checked in the tests).
- ``ddp_secure`` (TFF's distributed Skellam under SecAgg, :mod:`tff_lab.privacy.ddp`): the RDP
  bound of the Skellam mechanism (Agarwal, Kairouz & Liu, NeurIPS 2021, Theorem 3.5: for integer
  orders ``a > 1``, ``eps(a) <= a D2^2 / (2 mu) + min(((2a - 1) D2^2 + 6 D1) / (4 mu^2),
  3 D1 / (2 mu))``), a :class:`SkellamDpEvent` composed by :class:`SkellamRdpAccountant`
  (dp_accounting's ``RdpAccountant`` at integer orders, extended by that one event), with the L1/L2
  bounds the query asserts and the variance ``n_t (local stddev)^2`` of the ``n_t`` participants'
  noise, in the scaled integer domain, plus the adaptive clip's clipped-count Gaussian (added by
  the server). Neighbours: one client's update replaced by zeros (``REPLACE_SPECIAL``; its noise
  share is still added). dp_accounting has no amplification by sampling for a Skellam curve, so
  none is claimed: the ledger composes, for every client, the rounds it took part in (the
  schedule is public randomness), and reports the worst client. Adaptive zeroing (TFF's
  ``_default_zeroing``) estimates its threshold from unnoised counts, which no DP bound covers:
  with ``aggregation.zeroing: true`` no epsilon is claimed.

The PLD accountant of ``dp_accounting`` 0.4.3 supports Gaussian events and Poisson-sampled
Gaussians, but not ``SampledWithoutReplacementDpEvent``: with fixed-size sampling only the
RDP epsilon exists, and the PLD column says why it is empty.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
from typing import Any, Optional, Sequence

import dp_accounting
import numpy as np
from dp_accounting import NeighboringRelation
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

MECHANISMS = ("gaussian_fixed", "gaussian_adaptive", "tree", "ddp_secure")
SAMPLING_SCHEMES = ("poisson", "uniform")
ACCOUNTANTS = ("rdp", "pld")

# dp_accounting's PLDAccountant default; kept explicit so every PLD number is reproducible.
PLD_VALUE_DISCRETIZATION_INTERVAL = 1e-4

DDP_ZEROING = (
    "ddp_secure with aggregation.zeroing: true: TFF's adaptive zeroing (_default_zeroing) moves its "
    "threshold by unnoised counts of the clients' update norms, which no DP guarantee covers, so no "
    "epsilon is claimed; set aggregation.zeroing: false for the Skellam epsilon"
)
DDP_UNSUPPORTED = DDP_ZEROING  # kept for importers; the only case in which ddp_secure claims no epsilon
DDP_NO_PLD = (
    "dp_accounting has no PLD for the Skellam mechanism; its epsilon is the RDP bound of Agarwal, Kairouz "
    "& Liu (2021) without amplification by sampling"
)
PLD_WOR_UNSUPPORTED = (
    "dp_accounting 0.4.3's PLD accountant does not support sampling without replacement "
    "(SampledWithoutReplacementDpEvent); use training.sampling: poisson for a PLD epsilon"
)


# --------------------------------------------------------------------------------------------
# DpEvent <-> JSON (for the ledger in checkpoints and for privacy.json)
# --------------------------------------------------------------------------------------------


def event_to_json(event: dp_accounting.DpEvent) -> dict:
    """A DpEvent as plain JSON data: ``{"type": class name, fields...}`` (nested events too)."""
    import attr

    out: dict[str, Any] = {"type": type(event).__name__}
    for f in attr.fields(type(event)):
        value = getattr(event, f.name)
        if isinstance(value, dp_accounting.DpEvent):
            value = event_to_json(value)
        elif isinstance(value, (list, tuple)):
            value = [event_to_json(v) if isinstance(v, dp_accounting.DpEvent) else _plain(v) for v in value]
        else:
            value = _plain(value)
        out[f.name] = value
    return out


def event_from_json(data: dict) -> dp_accounting.DpEvent:
    """Inverse of :func:`event_to_json` (only ``dp_accounting``'s own event classes)."""
    import attr

    cls = (
        SkellamDpEvent
        if data.get("type") == "SkellamDpEvent"
        else getattr(dp_accounting.dp_event, str(data.get("type")), None)
    )
    if not (isinstance(cls, type) and issubclass(cls, dp_accounting.DpEvent)):
        raise ValueError(f"not a dp_accounting event type: {data.get('type')!r}")
    kwargs = {}
    for f in attr.fields(cls):
        value = data[f.name]
        if isinstance(value, dict) and "type" in value:
            value = event_from_json(value)
        elif isinstance(value, list):
            value = [event_from_json(v) if isinstance(v, dict) else v for v in value]
        kwargs[f.name] = value
    return cls(**kwargs)


def _plain(v):
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def _event_key(event: dp_accounting.DpEvent) -> str:
    return json.dumps(event_to_json(event), sort_keys=True)


# --------------------------------------------------------------------------------------------
# Epsilon of a composed event, from both accountants
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Epsilon:
    """Epsilon at ``delta`` from each accountant. ``pld`` is None when dp_accounting's PLD
    accountant does not support the event (``pld_note`` says why); both are None (with
    ``note``) for mechanisms that no accountant supports."""

    delta: float
    rdp: Optional[float]
    rdp_order: Optional[float]
    pld: Optional[float]
    pld_note: Optional[str] = None
    note: Optional[str] = None
    pld_value_discretization_interval: Optional[float] = None  # the PLD's spacing (bounded, see pld_epsilon)

    def get(self, accountant: str) -> Optional[float]:
        return self.rdp if accountant == "rdp" else self.pld

    def to_json(self) -> dict:
        return {
            "delta": self.delta,
            "rdp": _finite_or_none(self.rdp),
            "rdp_optimal_order": self.rdp_order,
            "pld": _finite_or_none(self.pld),
            "pld_note": self.pld_note,
            "note": self.note,
            "pld_value_discretization_interval": self.pld_value_discretization_interval,
        }


def _finite_or_none(x):
    return None if x is None or not math.isfinite(x) else float(x)


@functools.lru_cache(maxsize=256)
def _rdp_curve(event_key: str, relation: str) -> tuple[tuple, tuple]:
    """RDP (orders, values) of ONE application of the event, from dp_accounting's RdpAccountant."""
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=NeighboringRelation[relation])
    acc.compose(event_from_json(json.loads(event_key)))
    return tuple(acc.orders.tolist()), tuple(acc.rdp.tolist())


def rdp_epsilon(
    event: dp_accounting.DpEvent, count: int, delta: float, relation: NeighboringRelation
) -> tuple[float, float]:
    """(epsilon, optimal order) of ``count`` adaptive compositions of ``event``.

    Identical to ``RdpAccountant(relation).compose(SelfComposedDpEvent(event, count))``
    (which multiplies the single-event RDP by ``count``), with the single-event RDP cached:
    the sampled-without-replacement RDP costs ~0.3 s to evaluate, and the ledger asks every round.
    """
    if count == 0:
        return 0.0, float("nan")
    orders, rdp = _rdp_curve(_event_key(event), relation.name)
    eps, order = rdp_privacy_accountant.compute_epsilon(np.asarray(orders), count * np.asarray(rdp), delta)
    return float(eps), float(order)


# The PLD accountant's cost is set by the support of the privacy-loss pmf: building one round's
# PLD costs ~15 us per point (one round at z = 0.05 and 1e-4 spacing: ~4e6 points, ~2 minutes),
# composing k rounds ~1 us per point of the composed support. The spacing is therefore chosen per
# (noise, sampling, rounds) so that one round holds at most PLD_MAX_POINTS_ONE_ROUND points and the
# composition at most PLD_MAX_POINTS_COMPOSED (estimated from upper bounds of the Gaussian privacy
# loss), never finer than PLD_VALUE_DISCRETIZATION_INTERVAL. dp_accounting's discretisation is
# pessimistic, so every spacing gives a valid upper bound; a coarser one is only looser. The
# spacing used is reported with the number (``Epsilon.pld_value_discretization_interval``).
PLD_MAX_POINTS_ONE_ROUND = 2**15
PLD_MAX_POINTS_COMPOSED = 2**19
_PLD_TAIL_SD = 10.0  # one round's loss support: +- this many sd (dp_accounting truncates at mass e^-50)
_PLD_COMPOSED_SD = 8.0  # the composition's: +- this many sd (dp_accounting truncates at 1e-15)


def pld_value_discretization_interval(noise_multiplier: float, count: int, sampling_probability: float = 1.0) -> float:
    """The PLD spacing for ``count`` compositions of a (possibly Poisson-sampled) Gaussian of
    multiplier ``noise_multiplier``: the finest power-of-two multiple of
    ``PLD_VALUE_DISCRETIZATION_INTERVAL`` that keeps the supports within the bounds above. The
    one-round loss range, mean and sd are read from a coarse one-round PLD (cached); without it,
    from the unsampled Gaussian's (mean 1/(2 z^2), sd 1/z), which bound the sampled one's."""
    z = float(noise_multiplier)
    one, mean, sd = _loss_moments(z, float(sampling_probability))
    composed = min(count * one, count * abs(mean) + 2 * _PLD_COMPOSED_SD * math.sqrt(count) * sd + one)
    need = max(one / PLD_MAX_POINTS_ONE_ROUND, composed / PLD_MAX_POINTS_COMPOSED, PLD_VALUE_DISCRETIZATION_INTERVAL)
    steps = max(0, math.ceil(math.log2(need / PLD_VALUE_DISCRETIZATION_INTERVAL) - 1e-12))
    return PLD_VALUE_DISCRETIZATION_INTERVAL * 2.0**steps


@functools.lru_cache(maxsize=256)
def _loss_moments(z: float, q: float) -> tuple[float, float, float]:
    """(support width, mean, sd) of one round's privacy loss (remove direction, the wider one for
    dp_accounting's Gaussian), from a PLD at ~4096 points; analytic upper bounds as fallback."""
    width = 1.0 / z**2 + 2 * _PLD_TAIL_SD / z
    fallback = (width, 1.0 / (2 * z * z), 1.0 / z)
    try:
        coarse = privacy_loss_distribution.from_gaussian_mechanism(
            z, sampling_prob=q, value_discretization_interval=width / 4096
        )
        out = []
        for pmf in (coarse._pmf_remove, coarse._pmf_add):  # pylint: disable=protected-access
            # pylint: disable=protected-access
            if hasattr(pmf, "_loss_probs"):  # SparsePLDPmf: {loss index: probability}
                idx = np.fromiter(pmf._loss_probs.keys(), dtype=np.float64)
                probs = np.fromiter(pmf._loss_probs.values(), dtype=np.float64)
                order = np.argsort(idx)
                idx, probs = idx[order], probs[order]
            else:  # DensePLDPmf
                probs = np.asarray(pmf._probs, dtype=np.float64)
                idx = pmf._lower_loss + np.arange(len(probs), dtype=np.float64)
            losses = idx * pmf._discretization
            m = float(np.sum(probs * losses) / np.sum(probs))
            v = float(np.sum(probs * (losses - m) ** 2) / np.sum(probs))
            out.append((float(losses[-1] - losses[0]) + 2 * pmf._discretization, m, math.sqrt(max(v, 0.0))))  # pylint: disable=protected-access
        return (max(o[0] for o in out), max(abs(o[1]) for o in out), max(o[2] for o in out))
    except (AttributeError, ValueError):  # pragma: no cover - another dp_accounting layout
        return fallback


@functools.lru_cache(maxsize=64)
def _gaussian_pld(noise_multiplier: float, sampling_probability: float, interval: float):
    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=noise_multiplier, sampling_prob=sampling_probability, value_discretization_interval=interval
    )


def _reduce_to_gaussian(event: dp_accounting.DpEvent, relation: NeighboringRelation):
    """(noise multiplier, sampling probability, None) of an event that is one (possibly
    Poisson-sampled) Gaussian query, or (None, None, reason). A composition of Gaussian queries
    on the same sample is one Gaussian query with the effective noise multiplier (Mironov et al.
    2019, sec. 3), the reduction dp_accounting's RDP accountant applies too."""
    if isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent):
        return None, None, PLD_WOR_UNSUPPORTED
    q = 1.0
    inner = event
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        if relation is not NeighboringRelation.ADD_OR_REMOVE_ONE:
            return None, None, f"Poisson sampling is accounted with add/remove-one neighbours, not {relation.name}"
        q, inner = float(event.sampling_probability), event.event
    sigma = rdp_privacy_accountant._effective_gaussian_noise_multiplier(inner)  # pylint: disable=protected-access
    if not isinstance(sigma, float):
        return None, None, f"dp_accounting's PLD accountant does not support {type(sigma).__name__}"
    return float(sigma), q, None


def pld_epsilon(
    event: dp_accounting.DpEvent, count: int, delta: float, relation: NeighboringRelation
) -> tuple[Optional[float], Optional[str], Optional[float]]:
    """(epsilon, None, spacing) from dp_accounting's PLD, or (None, reason, None) if unsupported.

    Built the way ``PLDAccountant`` builds it (``from_gaussian_mechanism(z, sampling_prob=q)
    .self_compose(count)``, pessimistic), at the bounded spacing of
    :func:`pld_value_discretization_interval`; the one-round PLD is cached.
    """
    if count == 0:
        return 0.0, None, None
    sigma, q, why = _reduce_to_gaussian(event, relation)
    if why is not None:
        return None, why, None
    if q == 0:
        return 0.0, None, None
    if sigma == 0:
        return math.inf, None, None
    interval = pld_value_discretization_interval(sigma, count, q)
    pld = _gaussian_pld(sigma, q, interval).self_compose(count)
    return float(pld.get_epsilon_for_delta(delta)), None, interval


class BoundedPldAccountant(dp_accounting.PrivacyAccountant):
    """dp_accounting's PLD epsilon at the bounded spacing, as a ``PrivacyAccountant`` (for
    ``dp_accounting.calibrate_dp_mechanism``): one (self-)composed, possibly Poisson-sampled,
    Gaussian query."""

    def __init__(self, neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE):
        super().__init__(neighboring_relation)
        self._composed: Optional[tuple[dp_accounting.DpEvent, int]] = None

    def _maybe_compose(self, event, count, do_compose):
        base, n = event, count
        while isinstance(base, dp_accounting.SelfComposedDpEvent):
            base, n = base.event, n * base.count
        _, _, why = _reduce_to_gaussian(base, self.neighboring_relation)
        if why is not None or (self._composed is not None and do_compose and self._composed[0] != base):
            return self.CompositionErrorDetails(invalid_event=event, error_message=why or "one query only")
        if do_compose:
            self._composed = (base, n + (self._composed[1] if self._composed else 0))
        return None

    def get_epsilon(self, target_delta: float) -> float:
        if self._composed is None:
            return 0.0
        eps, why, _ = pld_epsilon(*self._composed, target_delta, self.neighboring_relation)
        if eps is None:  # pragma: no cover - refused by _maybe_compose
            raise dp_accounting.UnsupportedEventError(why)
        return eps

    def get_delta(self, target_epsilon: float) -> float:  # pragma: no cover - not used by tff_lab
        raise NotImplementedError


PLD_DEFERRED = (
    "computed at checkpoint rounds and at the end (the PLD costs more than a round; RDP, an "
    "upper bound too, is computed every round)"
)


def epsilon_of(
    event: dp_accounting.DpEvent, count: int, delta: float, relation: NeighboringRelation, with_pld: bool = True
) -> Epsilon:
    """Epsilon of ``count`` rounds of ``event`` from both accountants (``with_pld=False``: RDP only)."""
    if isinstance(event, dp_accounting.UnsupportedDpEvent):
        return Epsilon(delta, None, None, None, pld_note=DDP_UNSUPPORTED, note=DDP_UNSUPPORTED)
    if not with_pld:
        rdp, order = rdp_epsilon(event, count, delta, relation)
        return Epsilon(delta, rdp, order, None, pld_note=PLD_DEFERRED)
    rdp, order = rdp_epsilon(event, count, delta, relation)
    pld, note, interval = pld_epsilon(event, count, delta, relation)
    return Epsilon(delta, rdp, order, pld, pld_note=note, pld_value_discretization_interval=interval)


# --------------------------------------------------------------------------------------------
# The Skellam mechanism (ddp_secure)
# --------------------------------------------------------------------------------------------

import attr as _attr  # noqa: E402  (dp_accounting's events are attrs classes)


@_attr.s(frozen=True, slots=True, auto_attribs=True)
class SkellamDpEvent(dp_accounting.DpEvent):
    """The (multi-dimensional) Skellam mechanism on an integer vector: noise of per-coordinate
    ``variance`` (the sum of the participants' Skellam shares), a record's change bounded by
    ``l1_sensitivity`` and ``l2_sensitivity`` (integer domain). Agarwal, Kairouz & Liu (2021)."""

    l1_sensitivity: float
    l2_sensitivity: float
    variance: float


# Theorem 3.5 holds at integer orders only.
SKELLAM_RDP_ORDERS = tuple(range(2, 257)) + (320, 384, 448, 512, 768, 1024)


def skellam_rdp(l1: float, l2: float, variance: float, orders: Sequence[float]) -> np.ndarray:
    """RDP of the Skellam mechanism at integer ``orders`` (Agarwal, Kairouz & Liu, NeurIPS 2021,
    Theorem 3.5): ``a D2^2 / (2 mu) + min(((2a - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu))``."""
    a = np.asarray(orders, dtype=np.float64)
    if np.any(a != np.round(a)) or np.any(a <= 1):
        raise ValueError("the Skellam RDP bound holds at integer orders > 1 only")
    if variance <= 0:
        return np.full_like(a, np.inf)
    mu, d1, d2 = float(variance), float(l1), float(l2)
    return a * d2 * d2 / (2 * mu) + np.minimum(((2 * a - 1) * d2 * d2 + 6 * d1) / (4 * mu * mu), 3 * d1 / (2 * mu))


class SkellamRdpAccountant(dp_accounting.rdp.RdpAccountant):
    """dp_accounting's RDP accountant at integer orders, extended by :class:`SkellamDpEvent`.
    Everything else (Gaussians, compositions) is dp_accounting's own; a Skellam event inside a
    sampled event is refused (dp_accounting amplifies Gaussians only), so no amplified number
    is ever claimed for it."""

    def __init__(
        self,
        orders: Optional[Sequence[int]] = None,
        neighboring_relation: NeighboringRelation = NeighboringRelation.REPLACE_SPECIAL,
    ):
        super().__init__(list(orders or SKELLAM_RDP_ORDERS), neighboring_relation)

    def _maybe_compose(self, event, count, do_compose):
        if isinstance(event, SkellamDpEvent):
            if do_compose:
                self._rdp += count * skellam_rdp(
                    event.l1_sensitivity, event.l2_sensitivity, event.variance, self._orders
                )
            return None
        return super()._maybe_compose(event, count, do_compose)


@functools.lru_cache(maxsize=4096)
def _skellam_round_rdp(l1: float, l2: float, variance: float, count_noise: float) -> tuple:
    acc = SkellamRdpAccountant()
    acc.compose(ddp_round_event(l1, l2, variance, count_noise))
    return tuple(acc.rdp.tolist())


def ddp_round_event(l1: float, l2: float, variance: float, count_noise: float) -> dp_accounting.DpEvent:
    """One ddp_secure round for a participant: the Skellam sum of the values and the adaptive clip's
    noised clipped count (records +-0.5; zeroing the update moves it by at most 1, so its Gaussian
    multiplier under the zero-out relation is the count's stddev)."""
    return dp_accounting.ComposedDpEvent(
        [SkellamDpEvent(float(l1), float(l2), float(variance)), dp_accounting.GaussianDpEvent(float(count_noise))]
    )


def ddp_epsilon(spec: MechanismSpec, leaves: Sequence[Sequence[Any]], params: Sequence[Any], delta: float) -> Epsilon:
    """Epsilon of ddp_secure rounds: ``leaves[t]`` the participants of round t, ``params[t]`` the
    :class:`~tff_lab.privacy.ddp.SkellamParams` in effect. For every client, the rounds it took part
    in compose (RDP adds); the worst client's epsilon is reported."""
    if spec.zeroing:
        return Epsilon(delta, None, None, None, pld_note=DDP_ZEROING, note=DDP_ZEROING)
    if len(leaves) != len(params):
        raise ValueError(f"{len(leaves)} rounds of participants but {len(params)} rounds of parameters")
    count_noise = spec.noise_components()["clipped_count_stddev"]
    orders = np.asarray(SKELLAM_RDP_ORDERS, dtype=np.float64)
    per_client: dict = {}
    for leaf, p in zip(leaves, params):
        members = set(leaf)
        if not members:
            continue  # nobody's data: nothing released about anyone
        curve = np.asarray(
            _skellam_round_rdp(p.l1_norm_bound, p.l2_norm_bound, len(members) * p.local_stddev**2, count_noise)
        )
        for c in members:
            per_client[c] = per_client.get(c, 0.0) + curve
    if not per_client:
        return Epsilon(delta, 0.0, None, None, pld_note=DDP_NO_PLD)
    worst = None
    for curve in {tuple(np.asarray(v).tolist()) for v in per_client.values()}:
        eps, order = rdp_privacy_accountant.compute_epsilon(orders, np.asarray(curve), delta)
        if worst is None or eps > worst[0]:
            worst = (float(eps), float(order))
    return Epsilon(delta, worst[0], worst[1], None, pld_note=DDP_NO_PLD)


def planned_ddp_params(spec: MechanismSpec, rounds: int) -> list:
    """The Skellam parameters of ``rounds`` planned rounds at TFF's initial clip (the run's ledger
    uses the parameters the aggregator state holds each round: the adaptive clip moves them)."""
    from tff_lab.privacy import ddp

    p = ddp.skellam_params(
        ddp.DDP_INITIAL_L2_CLIP,
        spec.noise_components()["value_noise_multiplier"],
        spec.ddp_expected_clients,
        spec.ddp_bits,
        ddp.padded_dim(spec.model_dim, spec.ddp_rotation),
    )
    return [p] * rounds


# --------------------------------------------------------------------------------------------
# The headline: the smallest valid bound
# --------------------------------------------------------------------------------------------


def headline_epsilon(eps: Epsilon, sampling_known: Optional[Epsilon] = None) -> dict:
    """The smallest of the valid upper bounds computed for the run, and which it is.

    ``rdp`` / ``pld``: with amplification by sampling; ``*_sampling_known``: the same mechanism
    composed over the rounds the most-sampled client took part in, without amplification. The
    latter holds whoever knows the sample, so it also holds when the sample is secret: every one
    of them bounds the run's epsilon under the same neighbouring relation, and the smallest is
    the best guarantee (with fixed-size sampling, e.g., the replace-one amplification bound can
    exceed the unamplified one)."""
    cands = [("rdp", eps.rdp), ("pld", eps.pld)]
    if sampling_known is not None:
        cands += [("rdp_sampling_known", sampling_known.rdp), ("pld_sampling_known", sampling_known.pld)]
    cands = [(k, float(v)) for k, v in cands if v is not None and math.isfinite(v)]
    if not cands:
        return {"epsilon": None, "source": None, "delta": eps.delta}
    source, value = min(cands, key=lambda kv: kv[1])
    return {"epsilon": value, "source": source, "delta": eps.delta, "candidates": {k: v for k, v in cands}}


# --------------------------------------------------------------------------------------------
# Tree aggregation (DP-FTRL): sensitivity of the realised participation schedule
# --------------------------------------------------------------------------------------------


def tree_leaf(participants: Sequence[Any]) -> list[str]:
    """The leaf one private round adds to the tree: its participants as sorted strings.

    The one rule for DP-FTRL with Poisson sampling: every round is a leaf, a round that sampled
    nobody included. Under DP the loop runs the aggregator on every round (an empty round
    releases the tree's noise alone; skipping it would reveal that nobody was sampled), and
    TFF's tree advances one leaf per call, so an empty leaf shifts where every later
    participation sits in the tree. The ledger (:meth:`PrivacyLedger.record_round`), the noise
    calibration (:func:`tff_lab.privacy.calibration.planned_tree_leaves`) and the
    ``max_epsilon`` look-ahead (:meth:`PrivacyLedger.epsilon_if_next`) all build leaves here;
    the per-round state check counts the leaves TFF's tree holds against them.
    """
    return sorted(str(c) for c in participants)


def tree_sensitivity_squared(leaves: Sequence[Sequence[Any]]) -> int:
    """``max_client sum_nodes n_node^2`` for a binary tree over ``len(leaves)`` leaves.

    ``leaves[t]`` lists the clients aggregated at leaf ``t`` (the t-th call of the
    aggregator). Nodes are the complete dyadic intervals ``[k 2^l, (k+1) 2^l)`` inside
    ``[0, T)``: every node value tensorflow_privacy's (efficient or plain) tree aggregator
    can have released after T leaves is a post-processing of these, each carrying its own
    Gaussian noise of stddev ``z C``. A client with clipped contributions of norm <= C
    at its leaves moves node ``v`` by at most ``n_v C``; the L2 sensitivity of all nodes
    together is therefore ``C sqrt(sum_v n_v^2)``. For one participation this is the tree
    depth ``ceil(log2(T + 1))``, the quantity ``dp_accounting`` uses for
    ``SingleEpochTreeAggregationDpEvent``.
    """
    T = len(leaves)
    if T == 0:
        return 0
    ids: dict[Any, int] = {}
    cl, lf = [], []
    for t, members in enumerate(leaves):
        for c in set(members):
            cl.append(ids.setdefault(c, len(ids)))
            lf.append(t)
    if not cl:
        return 0
    cl_a = np.asarray(cl, dtype=np.int64)
    lf_a = np.asarray(lf, dtype=np.int64)
    totals = np.zeros(len(ids), dtype=np.int64)
    level = 0
    while (1 << level) <= T:
        bucket = lf_a >> level
        complete = ((bucket + 1) << level) <= T
        key = cl_a[complete] * (T + 1) + bucket[complete]
        uniq, counts = np.unique(key, return_counts=True)
        np.add.at(totals, uniq // (T + 1), counts.astype(np.int64) ** 2)
        level += 1
    return int(totals.max())


# --------------------------------------------------------------------------------------------
# What one round does
# --------------------------------------------------------------------------------------------


def scale_gaussians(event: dp_accounting.DpEvent, factor: float) -> dp_accounting.DpEvent:
    """The same event with every Gaussian noise multiplier times ``factor`` (a change of
    sensitivity units, e.g. 0.5 from add/remove-one to replace-one)."""
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return dp_accounting.GaussianDpEvent(float(event.noise_multiplier) * factor)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return dp_accounting.ComposedDpEvent([scale_gaussians(e, factor) for e in event.events])
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return dp_accounting.SelfComposedDpEvent(scale_gaussians(event.event, factor), event.count)
    raise ValueError(f"cannot rescale {type(event).__name__}")


def adaptive_noise_split(
    noise_multiplier: float, expected_clients: float, clipped_count_stddev: Optional[float]
) -> tuple[float, float]:
    """(value noise multiplier, clipped-count stddev) exactly as TFF's ``gaussian_adaptive`` sets them."""
    from tensorflow_federated.python.aggregators import differential_privacy as tff_dp

    return tff_dp.adaptive_clip_noise_params(
        float(noise_multiplier),
        float(expected_clients),
        None if clipped_count_stddev is None else float(clipped_count_stddev),
    )


@dataclasses.dataclass(frozen=True)
class MechanismSpec:
    """What a private run does each round, as far as privacy is concerned.

    ``noise_multiplier``: for ``gaussian_adaptive`` the *total* effective multiplier (TFF's
    meaning); ``clipped_count_stddev`` must then be the resolved value the aggregator uses.
    """

    mechanism: str
    noise_multiplier: float
    population: int
    sampling: str
    clients_per_round: Optional[int] = None  # uniform
    sampling_rate: Optional[float] = None  # poisson
    clipped_count_stddev: Optional[float] = None  # gaussian_adaptive, ddp_secure (resolved)
    clip: Optional[float] = None  # informational (fixed clip, or initial adaptive clip)
    model_dim: Optional[int] = None  # ddp_secure: elements of the model update (before padding)
    ddp_bits: Optional[int] = None  # ddp_secure: aggregation.ddp_bits
    ddp_rotation: Optional[str] = None  # ddp_secure: aggregation.ddp_rotation
    zeroing: Optional[bool] = None  # ddp_secure: aggregation.zeroing (adaptive zeroing: no epsilon)

    def __post_init__(self):
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"unknown mechanism {self.mechanism!r}; expected one of {MECHANISMS}")
        if self.sampling not in SAMPLING_SCHEMES:
            raise ValueError(f"unknown sampling {self.sampling!r}; expected one of {SAMPLING_SCHEMES}")
        if not (
            isinstance(self.noise_multiplier, (int, float))
            and self.noise_multiplier > 0
            and math.isfinite(self.noise_multiplier)
        ):
            raise ValueError(f"noise_multiplier must be a finite number > 0, got {self.noise_multiplier!r}")
        if self.population < 1:
            raise ValueError(f"population must be >= 1, got {self.population}")
        if self.sampling == "uniform":
            if self.clients_per_round is None or not 1 <= self.clients_per_round <= self.population:
                raise ValueError(
                    f"uniform sampling needs 1 <= clients_per_round <= population "
                    f"({self.population}), got {self.clients_per_round}"
                )
        else:
            if self.sampling_rate is None or not 0 < self.sampling_rate <= 1:
                raise ValueError(f"poisson sampling needs a rate in (0, 1], got {self.sampling_rate}")
        if self.mechanism == "gaussian_adaptive" and self.clipped_count_stddev is None:
            raise ValueError("gaussian_adaptive needs the resolved clipped_count_stddev")
        if self.mechanism == "ddp_secure":
            missing = [
                k
                for k in ("clipped_count_stddev", "model_dim", "ddp_bits", "ddp_rotation", "zeroing")
                if getattr(self, k) is None
            ]
            if missing:
                raise ValueError(f"ddp_secure needs {', '.join(missing)}")
            if int(self.model_dim) < 1:
                raise ValueError(f"model_dim must be >= 1, got {self.model_dim}")

    @property
    def expected_clients(self) -> float:
        if self.sampling == "poisson":
            return float(self.sampling_rate) * self.population
        return float(self.clients_per_round)

    @property
    def sampling_probability(self) -> float:
        if self.sampling == "poisson":
            return float(self.sampling_rate)
        return self.clients_per_round / self.population

    @property
    def ddp_expected_clients(self) -> int:
        """The integer client count TFF's DistributedDpSumFactory splits the noise over."""
        return max(1, int(round(self.expected_clients)))

    @property
    def per_client_schedule(self) -> bool:
        """Accounted over the participation schedule (no amplification): tree and ddp_secure."""
        return self.mechanism in ("tree", "ddp_secure")

    @property
    def amplified(self) -> bool:
        return self.mechanism in ("gaussian_fixed", "gaussian_adaptive")

    @property
    def neighbouring_relation(self) -> NeighboringRelation:
        if self.mechanism in ("tree", "ddp_secure"):
            return NeighboringRelation.REPLACE_SPECIAL
        if self.sampling == "poisson":
            return NeighboringRelation.ADD_OR_REMOVE_ONE
        return NeighboringRelation.REPLACE_ONE

    def noise_components(self) -> dict:
        """The noise multipliers the aggregator actually applies."""
        if self.mechanism == "gaussian_adaptive":
            value, count_stddev = adaptive_noise_split(
                self.noise_multiplier, self.expected_clients, self.clipped_count_stddev
            )
            return {
                "value_noise_multiplier": float(value),
                "clipped_count_stddev": float(count_stddev),
                "clipped_count_noise_multiplier": float(2.0 * count_stddev),
                "effective_noise_multiplier": float(self.noise_multiplier),
            }
        if self.mechanism == "ddp_secure":  # TFF's DistributedDpSumFactory(auto_l2_clip=True) split
            value, count_stddev = adaptive_noise_split(
                self.noise_multiplier, self.ddp_expected_clients, self.clipped_count_stddev
            )
            return {
                "value_noise_multiplier": float(value),
                "clipped_count_stddev": float(count_stddev),
                "clipped_count_noise_multiplier": float(count_stddev),
                "effective_noise_multiplier": float(self.noise_multiplier),
                "local_noise": "Skellam, stddev value_noise_multiplier * clip / sqrt(expected clients) per "
                "client, scaled; the clipped count's Gaussian is added by the server",
            }
        return {"value_noise_multiplier": float(self.noise_multiplier)}

    def query_event(self) -> dp_accounting.DpEvent:
        """The event tensorflow_privacy's query emits for one aggregation (before sampling)."""
        if self.mechanism == "gaussian_fixed":
            return dp_accounting.GaussianDpEvent(float(self.noise_multiplier))
        if self.mechanism == "gaussian_adaptive":
            c = self.noise_components()
            return dp_accounting.ComposedDpEvent(
                [
                    dp_accounting.GaussianDpEvent(c["value_noise_multiplier"]),
                    dp_accounting.GaussianDpEvent(c["clipped_count_noise_multiplier"]),
                ]
            )
        if self.mechanism == "tree":
            return dp_accounting.GaussianDpEvent(float(self.noise_multiplier))  # per tree node
        return dp_accounting.UnsupportedDpEvent()

    def round_event(self) -> dp_accounting.DpEvent:
        """One round including client sampling (Gaussian mechanisms; see ``tree_event`` for trees)."""
        if self.mechanism == "ddp_secure":
            raise ValueError("ddp_secure is accounted per client over the schedule: use ddp_epsilon")
        if self.mechanism == "tree":
            raise ValueError("tree aggregation is accounted over the whole schedule: use tree_event(leaves)")
        inner = self.query_event()
        if self.sampling == "poisson":
            return dp_accounting.PoissonSampledDpEvent(float(self.sampling_rate), inner)
        # dp_accounting's noise multiplier is relative to the L2 sensitivity under the event's
        # neighbouring relation. tensorflow_privacy's events use add/remove-one units (one clipped
        # record, norm <= C); replacing one client changes the sum by up to 2C, so under
        # REPLACE_ONE every Gaussian's multiplier halves (at q = 1 dp_accounting's WOR RDP is
        # alpha / (2 sigma^2), the replace-one Gaussian with sensitivity-normalised sigma).
        return dp_accounting.SampledWithoutReplacementDpEvent(
            int(self.population), int(self.clients_per_round), scale_gaussians(inner, 0.5)
        )

    def tree_event(self, leaves: Sequence[Sequence[Any]]) -> dp_accounting.DpEvent:
        """The whole tree so far as one Gaussian mechanism (see module docstring)."""
        s = tree_sensitivity_squared(leaves)
        if s == 0:
            return dp_accounting.NoOpDpEvent()
        return dp_accounting.GaussianDpEvent(float(self.noise_multiplier) / math.sqrt(s))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> MechanismSpec:
        return cls(**data)

    @classmethod
    def from_config(
        cls, cfg, population: int, noise_multiplier: float, model_dim: Optional[int] = None
    ) -> MechanismSpec:
        """The spec of a config's private aggregation at a known population and noise
        (``model_dim``: the update's element count, needed by ddp_secure)."""
        from tff_lab.federated.aggregators import resolve_clipped_count_stddev

        p, t = cfg.privacy, cfg.training
        kwargs: dict[str, Any] = dict(
            mechanism=p.mechanism,
            noise_multiplier=float(noise_multiplier),
            population=int(population),
            sampling=t.sampling,
            clip=float(p.clip),
        )
        if t.sampling == "poisson":
            kwargs["sampling_rate"] = float(t.sampling_rate)
            expected = float(t.sampling_rate) * population
        else:
            kwargs["clients_per_round"] = int(t.clients_per_round)
            expected = float(t.clients_per_round)
        if p.mechanism == "gaussian_adaptive":
            kwargs["clipped_count_stddev"] = float(
                resolve_clipped_count_stddev(p.clipped_count_stddev, expected, float(noise_multiplier))
            )
        if p.mechanism == "ddp_secure":
            a = cfg.aggregation
            n = max(1, int(round(expected)))
            kwargs.update(
                clipped_count_stddev=float(
                    resolve_clipped_count_stddev(p.clipped_count_stddev, n, float(noise_multiplier))
                ),
                model_dim=model_dim,
                ddp_bits=int(a.ddp_bits),
                ddp_rotation=str(a.ddp_rotation),
                zeroing=bool(a.zeroing),
            )
            from tff_lab.privacy.ddp import DDP_INITIAL_L2_CLIP

            kwargs["clip"] = DDP_INITIAL_L2_CLIP
        return cls(**kwargs)


def epsilon_for_rounds(
    spec: MechanismSpec,
    rounds: int,
    delta: float,
    leaves: Optional[Sequence[Sequence[Any]]] = None,
    ddp_params: Optional[Sequence[Any]] = None,
    *,
    with_pld: bool = True,
) -> Epsilon:
    """Epsilon after ``rounds`` rounds. Tree aggregation and ddp_secure need the participation
    ``leaves``; ddp_secure the Skellam parameters of each round (default: the planned ones)."""
    if spec.mechanism == "ddp_secure":
        if leaves is None:
            raise ValueError("ddp_secure needs the participation schedule (leaves)")
        if ddp_params is None:
            ddp_params = planned_ddp_params(spec, len(leaves)) if not spec.zeroing else [None] * len(leaves)
        return ddp_epsilon(spec, leaves, ddp_params, delta)
    if spec.mechanism == "tree":
        if leaves is None:
            raise ValueError("tree aggregation needs the participation schedule (leaves)")
        event = spec.tree_event(leaves)
        if isinstance(event, dp_accounting.NoOpDpEvent):
            return Epsilon(delta, 0.0, None, 0.0)
        return epsilon_of(event, 1, delta, spec.neighbouring_relation, with_pld)
    return epsilon_of(spec.round_event(), rounds, delta, spec.neighbouring_relation, with_pld)


def epsilon_sampling_known(spec: MechanismSpec, participations: int, delta: float) -> Epsilon:
    """Epsilon against someone who knows which clients each round sampled (no amplification).

    Amplification by sampling holds only while the sample is secret. tff_lab's sampler is a pure
    function of ``seed`` (written into ``config.yaml``): whoever knows the seed knows the
    sample. Against them a client is protected by the rounds it took part in, each the query's
    Gaussian mechanism without sampling, composed ``participations`` times (the most any client
    took part), under the ledger's neighbouring relation (replace-one halves the multipliers, as in
    :meth:`MechanismSpec.round_event`).
    """
    if not spec.amplified:
        raise ValueError("only the sampled Gaussian mechanisms are amplified by sampling")
    event = spec.query_event()
    if spec.sampling == "uniform":
        event = scale_gaussians(event, 0.5)
    return epsilon_of(event, int(participations), delta, spec.neighbouring_relation)


def default_delta(population: int) -> float:
    """``min(1e-5, population^-1.1)``: below 1/population by a polynomial factor (a delta near
    1/N allows releasing a random client's data outright), and never looser than the 1e-5 that
    TFF's and tensorflow_privacy's tutorials use. ``N^-1.1`` alone is 0.037 for 20 clients."""
    return float(min(1e-5, float(population) ** -1.1))


def library_versions() -> dict:
    out = {}
    for dist in ("dp-accounting", "tensorflow-privacy", "tensorflow-federated", "tensorflow"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            out[dist] = None
    return out


# --------------------------------------------------------------------------------------------
# The ledger: what ran, round by round (JSON state, lives in checkpoints)
# --------------------------------------------------------------------------------------------


class PrivacyLedger:
    """Rounds accounted so far for one run; epsilon from both accountants at any time.

    Gaussian mechanisms: one identical sampled event per round (a Poisson round that sampled
    nobody included). Tree: the participants of every aggregated leaf (clients as strings).
    """

    def __init__(self, spec: MechanismSpec, delta: float):
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.spec = spec
        self.delta = float(delta)
        self.rounds = 0
        self.leaves: list[list[str]] = []
        self.ddp_params: list = []  # ddp_secure: the SkellamParams in effect in each round
        self.ddp_next = None  # ddp_secure: the SkellamParams the next round uses (set by the hook)
        self._eps_cache: Optional[tuple[int, int, Epsilon, bool]] = None

    def record_round(self, participants: Sequence[Any], trained: bool) -> None:
        """One round. ``trained``: the aggregator ran (it must, for the tree: see :func:`tree_leaf`)."""
        if self.spec.mechanism == "tree":
            if not trained:
                from tff_lab.errors import PrivacyAccountingError

                raise PrivacyAccountingError(
                    f"round {self.rounds + 1}: the DP-FTRL aggregator did not run; every private round must call it "
                    "(an empty round adds an empty leaf to the tree), or the accounted tree is not the one that ran"
                )
            self.leaves.append(tree_leaf(participants))
        if self.spec.mechanism == "ddp_secure":
            params = self._ddp_current()  # raises before anything is recorded
            self.leaves.append(tree_leaf(participants))
            self.ddp_params.append(params)
        self.rounds += 1
        self._eps_cache = None

    def _ddp_current(self):
        if self.ddp_next is not None:
            return self.ddp_next
        if self.rounds and not self.spec.zeroing:
            from tff_lab.errors import PrivacyAccountingError

            raise PrivacyAccountingError(
                f"round {self.rounds + 1}: the Skellam parameters of ddp_secure's adaptive clip "
                "were not read from the aggregator state after the previous round; they "
                "cannot be accounted"
            )
        return planned_ddp_params(self.spec, 1)[0]

    def epsilon(self, with_pld: bool = True) -> Epsilon:
        """Epsilon after the rounds recorded; ``with_pld=False``: RDP only (cheap, for every round)."""
        key = (self.rounds, len(self.leaves))
        if self._eps_cache is not None and self._eps_cache[:2] == key and (self._eps_cache[3] or not with_pld):
            return self._eps_cache[2]
        eps = epsilon_for_rounds(
            self.spec,
            self.rounds,
            self.delta,
            self.leaves,
            self.ddp_params if self.spec.mechanism == "ddp_secure" else None,
            with_pld=with_pld,
        )
        self._eps_cache = (*key, eps, with_pld)
        return eps

    def epsilon_if_next(self, participants: Optional[Sequence[Any]] = None, with_pld: bool = True) -> Epsilon:
        """Epsilon after one more round (the tree needs that round's participants, [] for none)."""
        if self.spec.mechanism == "tree":
            if participants is None:
                raise ValueError("tree aggregation: the next round's participants are needed (the sampler's choice)")
            leaves = [*self.leaves, tree_leaf(participants)]
            return epsilon_for_rounds(self.spec, self.rounds + 1, self.delta, leaves, with_pld=with_pld)
        if self.spec.mechanism == "ddp_secure":
            if participants is None:
                raise ValueError("ddp_secure: the next round's participants are needed (the sampler's choice)")
            leaves = [*self.leaves, tree_leaf(participants)]
            params = None if self.spec.zeroing else [*self.ddp_params, self._ddp_current()]
            return epsilon_for_rounds(self.spec, self.rounds + 1, self.delta, leaves, params)
        return epsilon_for_rounds(self.spec, self.rounds + 1, self.delta, with_pld=with_pld)

    def ledger_events(self) -> dict:
        """The composed DpEvent of everything accounted (JSON), for privacy.json."""
        if self.spec.mechanism == "tree":
            ev = self.spec.tree_event(self.leaves)
            return {
                "event": event_to_json(ev),
                "tree_leaves": len(self.leaves),
                "tree_sensitivity_squared": tree_sensitivity_squared(self.leaves),
                "max_participations": max(_participations(self.leaves).values(), default=0),
            }
        if self.spec.mechanism == "ddp_secure":
            counts = _participations(self.leaves)
            worst = max(counts, key=counts.get, default=None)
            noise = self.spec.noise_components()["clipped_count_stddev"]
            events = [
                ddp_round_event(p.l1_norm_bound, p.l2_norm_bound, len(leaf) * p.local_stddev**2, noise)
                for leaf, p in zip(self.leaves, self.ddp_params)
                if worst is not None and worst in leaf
            ]
            return {
                "event_of_most_sampled_client": event_to_json(dp_accounting.ComposedDpEvent(events)),
                "rounds": self.rounds,
                "max_participations": counts.get(worst, 0),
                "skellam_params_per_round": [p.to_json() for p in self.ddp_params],
                "participants_per_round": [len(leaf) for leaf in self.leaves],
            }
        return {"event": event_to_json(dp_accounting.SelfComposedDpEvent(self.spec.round_event(), self.rounds))}

    def state_dict(self) -> dict:
        out = {"spec": self.spec.to_json(), "delta": self.delta, "rounds": self.rounds, "leaves": self.leaves}
        if self.spec.mechanism == "ddp_secure":
            out["ddp_params"] = [p.to_json() for p in self.ddp_params]
            out["ddp_next"] = self.ddp_next.to_json() if self.ddp_next is not None else None
        return out

    @classmethod
    def from_state_dict(cls, state: dict) -> PrivacyLedger:
        ledger = cls(MechanismSpec.from_json(state["spec"]), state["delta"])
        ledger.rounds = int(state["rounds"])
        ledger.leaves = [list(map(str, leaf)) for leaf in state.get("leaves", [])]
        if ledger.spec.mechanism == "ddp_secure":
            from tff_lab.errors import PrivacyAccountingError
            from tff_lab.privacy.ddp import SkellamParams

            ledger.ddp_params = [SkellamParams.from_json(p) for p in state.get("ddp_params", [])]
            nxt = state.get("ddp_next")
            ledger.ddp_next = SkellamParams.from_json(nxt) if nxt else None
            if not len(ledger.leaves) == len(ledger.ddp_params) == ledger.rounds:
                raise PrivacyAccountingError(
                    f"the checkpoint's ddp_secure ledger holds {len(ledger.leaves)} rounds of "
                    f"participants and {len(ledger.ddp_params)} of Skellam parameters for "
                    f"{ledger.rounds} rounds; start a new run"
                )
        if ledger.spec.mechanism == "tree" and len(ledger.leaves) != ledger.rounds:
            from tff_lab.errors import PrivacyAccountingError

            raise PrivacyAccountingError(
                f"the checkpoint's tree ledger holds {len(ledger.leaves)} leaves for {ledger.rounds} rounds: it was "
                "written when empty rounds added no leaf, which is not the tree TFF ran; start a new run"
            )
        return ledger


def _participations(leaves: Sequence[Sequence[Any]]) -> dict:
    counts: dict = {}
    for leaf in leaves:
        for c in set(leaf):
            counts[c] = counts.get(c, 0) + 1
    return counts
