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
- ``ddp_secure`` (distributed Skellam under SecAgg): ``dp_accounting`` 0.4.3 has no
  Skellam accountant and TFF itself leaves DDP accounting open (b/221465205), so no
  epsilon is reported for it (``UnsupportedDpEvent``) rather than an invented one.

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

import numpy as np

import dp_accounting
from dp_accounting import NeighboringRelation
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

MECHANISMS = ("gaussian_fixed", "gaussian_adaptive", "tree", "ddp_secure")
SAMPLING_SCHEMES = ("poisson", "uniform")
ACCOUNTANTS = ("rdp", "pld")

# dp_accounting's PLDAccountant default; kept explicit so every PLD number is reproducible.
PLD_VALUE_DISCRETIZATION_INTERVAL = 1e-4

DDP_UNSUPPORTED = ("distributed DP (TFF's ddp_secure_aggregator: distributed Skellam under SecAgg) has no "
                   "accountant in dp_accounting 0.4.3 and TFF leaves its accounting open (b/221465205); "
                   "no epsilon is claimed")
PLD_WOR_UNSUPPORTED = ("dp_accounting 0.4.3's PLD accountant does not support sampling without replacement "
                       "(SampledWithoutReplacementDpEvent); use training.sampling: poisson for a PLD epsilon")


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

    cls = getattr(dp_accounting.dp_event, str(data.get("type")), None)
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

    def get(self, accountant: str) -> Optional[float]:
        return self.rdp if accountant == "rdp" else self.pld

    def to_json(self) -> dict:
        return {"delta": self.delta, "rdp": _finite_or_none(self.rdp), "rdp_optimal_order": self.rdp_order,
                "pld": _finite_or_none(self.pld), "pld_note": self.pld_note, "note": self.note}


def _finite_or_none(x):
    return None if x is None or not math.isfinite(x) else float(x)


@functools.lru_cache(maxsize=256)
def _rdp_curve(event_key: str, relation: str) -> tuple[tuple, tuple]:
    """RDP (orders, values) of ONE application of the event, from dp_accounting's RdpAccountant."""
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=NeighboringRelation[relation])
    acc.compose(event_from_json(json.loads(event_key)))
    return tuple(acc.orders.tolist()), tuple(acc.rdp.tolist())


def rdp_epsilon(event: dp_accounting.DpEvent, count: int, delta: float,
                relation: NeighboringRelation) -> tuple[float, float]:
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


@functools.lru_cache(maxsize=64)
def _poisson_gaussian_pld(noise_multiplier: float, sampling_probability: float):
    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=noise_multiplier, sampling_prob=sampling_probability,
        value_discretization_interval=PLD_VALUE_DISCRETIZATION_INTERVAL)


def pld_epsilon(event: dp_accounting.DpEvent, count: int, delta: float,
                relation: NeighboringRelation) -> tuple[Optional[float], Optional[str]]:
    """(epsilon, None) from dp_accounting's PLD accountant, or (None, reason) if unsupported.

    A Poisson-sampled Gaussian (or composition of Gaussians on the same sample) is built the
    way ``PLDAccountant`` builds it (``from_gaussian_mechanism(..., sampling_prob=q)
    .self_compose(count)``) with the one-round PLD cached: building it costs ~0.5 s, composing
    it ~0.1 s. A composition of Gaussian queries on the same sample is one Gaussian query with
    the effective noise multiplier (Mironov et al. 2019, sec. 3); dp_accounting's RDP accountant
    applies the same reduction (``_effective_gaussian_noise_multiplier``), its PLD accountant
    only accepts the reduced form.
    """
    if count == 0:
        return 0.0, None
    if isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent):
        return None, PLD_WOR_UNSUPPORTED
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        if relation is not NeighboringRelation.ADD_OR_REMOVE_ONE:
            return None, f"Poisson sampling is accounted with add/remove-one neighbours, not {relation.name}"
        sigma = rdp_privacy_accountant._effective_gaussian_noise_multiplier(event.event)  # pylint: disable=protected-access
        if not isinstance(sigma, float):
            return None, f"PLD accountant does not support the sampled event {type(sigma).__name__}"
        if event.sampling_probability == 0:
            return 0.0, None
        if sigma == 0:
            return math.inf, None
        pld = _poisson_gaussian_pld(float(sigma), float(event.sampling_probability)).self_compose(count)
        return float(pld.get_epsilon_for_delta(delta)), None
    acc = dp_accounting.pld.PLDAccountant(neighboring_relation=relation,
                                          value_discretization_interval=PLD_VALUE_DISCRETIZATION_INTERVAL)
    composed = dp_accounting.SelfComposedDpEvent(event, count)
    if not acc.supports(composed):
        return None, f"dp_accounting's PLD accountant does not support {type(event).__name__}"
    acc.compose(composed)
    return float(acc.get_epsilon(delta)), None


def epsilon_of(event: dp_accounting.DpEvent, count: int, delta: float, relation: NeighboringRelation) -> Epsilon:
    """Epsilon of ``count`` rounds of ``event`` from both accountants."""
    if isinstance(event, dp_accounting.UnsupportedDpEvent):
        return Epsilon(delta, None, None, None, pld_note=DDP_UNSUPPORTED, note=DDP_UNSUPPORTED)
    rdp, order = rdp_epsilon(event, count, delta, relation)
    pld, note = pld_epsilon(event, count, delta, relation)
    return Epsilon(delta, rdp, order, pld, pld_note=note)


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


def adaptive_noise_split(noise_multiplier: float, expected_clients: float,
                         clipped_count_stddev: Optional[float]) -> tuple[float, float]:
    """(value noise multiplier, clipped-count stddev) exactly as TFF's ``gaussian_adaptive`` sets them."""
    from tensorflow_federated.python.aggregators import differential_privacy as tff_dp

    return tff_dp.adaptive_clip_noise_params(float(noise_multiplier), float(expected_clients),
                                             None if clipped_count_stddev is None else float(clipped_count_stddev))


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
    clipped_count_stddev: Optional[float] = None  # gaussian_adaptive
    clip: Optional[float] = None  # informational (fixed clip, or initial adaptive clip)

    def __post_init__(self):
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"unknown mechanism {self.mechanism!r}; expected one of {MECHANISMS}")
        if self.sampling not in SAMPLING_SCHEMES:
            raise ValueError(f"unknown sampling {self.sampling!r}; expected one of {SAMPLING_SCHEMES}")
        if not (isinstance(self.noise_multiplier, (int, float)) and self.noise_multiplier > 0
                and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier must be a finite number > 0, got {self.noise_multiplier!r}")
        if self.population < 1:
            raise ValueError(f"population must be >= 1, got {self.population}")
        if self.sampling == "uniform":
            if self.clients_per_round is None or not 1 <= self.clients_per_round <= self.population:
                raise ValueError(f"uniform sampling needs 1 <= clients_per_round <= population "
                                 f"({self.population}), got {self.clients_per_round}")
        else:
            if self.sampling_rate is None or not 0 < self.sampling_rate <= 1:
                raise ValueError(f"poisson sampling needs a rate in (0, 1], got {self.sampling_rate}")
        if self.mechanism == "gaussian_adaptive" and self.clipped_count_stddev is None:
            raise ValueError("gaussian_adaptive needs the resolved clipped_count_stddev")

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
    def amplified(self) -> bool:
        return self.mechanism in ("gaussian_fixed", "gaussian_adaptive")

    @property
    def neighbouring_relation(self) -> NeighboringRelation:
        if self.mechanism == "tree":
            return NeighboringRelation.REPLACE_SPECIAL
        if self.sampling == "poisson":
            return NeighboringRelation.ADD_OR_REMOVE_ONE
        return NeighboringRelation.REPLACE_ONE

    def noise_components(self) -> dict:
        """The noise multipliers the aggregator actually applies."""
        if self.mechanism == "gaussian_adaptive":
            value, count_stddev = adaptive_noise_split(self.noise_multiplier, self.expected_clients,
                                                       self.clipped_count_stddev)
            return {"value_noise_multiplier": float(value), "clipped_count_stddev": float(count_stddev),
                    "clipped_count_noise_multiplier": float(2.0 * count_stddev),
                    "effective_noise_multiplier": float(self.noise_multiplier)}
        return {"value_noise_multiplier": float(self.noise_multiplier)}

    def query_event(self) -> dp_accounting.DpEvent:
        """The event tensorflow_privacy's query emits for one aggregation (before sampling)."""
        if self.mechanism == "gaussian_fixed":
            return dp_accounting.GaussianDpEvent(float(self.noise_multiplier))
        if self.mechanism == "gaussian_adaptive":
            c = self.noise_components()
            return dp_accounting.ComposedDpEvent([
                dp_accounting.GaussianDpEvent(c["value_noise_multiplier"]),
                dp_accounting.GaussianDpEvent(c["clipped_count_noise_multiplier"]),
            ])
        if self.mechanism == "tree":
            return dp_accounting.GaussianDpEvent(float(self.noise_multiplier))  # per tree node
        return dp_accounting.UnsupportedDpEvent()

    def round_event(self) -> dp_accounting.DpEvent:
        """One round including client sampling (Gaussian mechanisms; see ``tree_event`` for trees)."""
        if self.mechanism == "ddp_secure":
            return dp_accounting.UnsupportedDpEvent()
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
        return dp_accounting.SampledWithoutReplacementDpEvent(int(self.population), int(self.clients_per_round),
                                                              scale_gaussians(inner, 0.5))

    def tree_event(self, leaves: Sequence[Sequence[Any]]) -> dp_accounting.DpEvent:
        """The whole tree so far as one Gaussian mechanism (see module docstring)."""
        s = tree_sensitivity_squared(leaves)
        if s == 0:
            return dp_accounting.NoOpDpEvent()
        return dp_accounting.GaussianDpEvent(float(self.noise_multiplier) / math.sqrt(s))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "MechanismSpec":
        return cls(**data)

    @classmethod
    def from_config(cls, cfg, population: int, noise_multiplier: float) -> "MechanismSpec":
        """The spec of a config's private aggregation at a known population and noise."""
        from tff_lab.federated.aggregators import resolve_clipped_count_stddev

        p, t = cfg.privacy, cfg.training
        kwargs: dict[str, Any] = dict(mechanism=p.mechanism, noise_multiplier=float(noise_multiplier),
                                      population=int(population), sampling=t.sampling, clip=float(p.clip))
        if t.sampling == "poisson":
            kwargs["sampling_rate"] = float(t.sampling_rate)
            expected = float(t.sampling_rate) * population
        else:
            kwargs["clients_per_round"] = int(t.clients_per_round)
            expected = float(t.clients_per_round)
        if p.mechanism == "gaussian_adaptive":
            kwargs["clipped_count_stddev"] = float(resolve_clipped_count_stddev(
                p.clipped_count_stddev, expected, float(noise_multiplier)))
        return cls(**kwargs)


def epsilon_for_rounds(spec: MechanismSpec, rounds: int, delta: float,
                       leaves: Optional[Sequence[Sequence[Any]]] = None) -> Epsilon:
    """Epsilon after ``rounds`` rounds. Tree aggregation needs the participation ``leaves``."""
    if spec.mechanism == "tree":
        if leaves is None:
            raise ValueError("tree aggregation needs the participation schedule (leaves)")
        event = spec.tree_event(leaves)
        if isinstance(event, dp_accounting.NoOpDpEvent):
            return Epsilon(delta, 0.0, None, 0.0)
        return epsilon_of(event, 1, delta, spec.neighbouring_relation)
    return epsilon_of(spec.round_event(), rounds, delta, spec.neighbouring_relation)


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
        self._eps_cache: Optional[tuple[int, int, Epsilon]] = None

    def record_round(self, participants: Sequence[Any], trained: bool) -> None:
        """One round. ``trained``: the aggregator ran (it must, for the tree: see :func:`tree_leaf`)."""
        if self.spec.mechanism == "tree":
            if not trained:
                from tff_lab.errors import PrivacyAccountingError

                raise PrivacyAccountingError(
                    f"round {self.rounds + 1}: the DP-FTRL aggregator did not run; every private round must call it "
                    "(an empty round adds an empty leaf to the tree), or the accounted tree is not the one that ran")
            self.leaves.append(tree_leaf(participants))
        self.rounds += 1
        self._eps_cache = None

    def epsilon(self) -> Epsilon:
        key = (self.rounds, len(self.leaves))
        if self._eps_cache is not None and self._eps_cache[:2] == key:
            return self._eps_cache[2]
        eps = epsilon_for_rounds(self.spec, self.rounds, self.delta, self.leaves)
        self._eps_cache = (*key, eps)
        return eps

    def epsilon_if_next(self, participants: Optional[Sequence[Any]] = None) -> Epsilon:
        """Epsilon after one more round (the tree needs that round's participants, [] for none)."""
        if self.spec.mechanism == "tree":
            if participants is None:
                raise ValueError("tree aggregation: the next round's participants are needed (the sampler's choice)")
            leaves = [*self.leaves, tree_leaf(participants)]
            return epsilon_for_rounds(self.spec, self.rounds + 1, self.delta, leaves)
        return epsilon_for_rounds(self.spec, self.rounds + 1, self.delta)

    def ledger_events(self) -> dict:
        """The composed DpEvent of everything accounted (JSON), for privacy.json."""
        if self.spec.mechanism == "tree":
            ev = self.spec.tree_event(self.leaves)
            return {"event": event_to_json(ev), "tree_leaves": len(self.leaves),
                    "tree_sensitivity_squared": tree_sensitivity_squared(self.leaves),
                    "max_participations": max(_participations(self.leaves).values(), default=0)}
        return {"event": event_to_json(dp_accounting.SelfComposedDpEvent(self.spec.round_event(), self.rounds))}

    def state_dict(self) -> dict:
        return {"spec": self.spec.to_json(), "delta": self.delta, "rounds": self.rounds, "leaves": self.leaves}

    @classmethod
    def from_state_dict(cls, state: dict) -> "PrivacyLedger":
        ledger = cls(MechanismSpec.from_json(state["spec"]), state["delta"])
        ledger.rounds = int(state["rounds"])
        ledger.leaves = [list(map(str, leaf)) for leaf in state.get("leaves", [])]
        if ledger.spec.mechanism == "tree" and len(ledger.leaves) != ledger.rounds:
            from tff_lab.errors import PrivacyAccountingError

            raise PrivacyAccountingError(
                f"the checkpoint's tree ledger holds {len(ledger.leaves)} leaves for {ledger.rounds} rounds: it was "
                "written when empty rounds added no leaf, which is not the tree TFF ran; start a new run")
        return ledger


def _participations(leaves: Sequence[Sequence[Any]]) -> dict:
    counts: dict = {}
    for leaf in leaves:
        for c in set(leaf):
            counts[c] = counts.get(c, 0) + 1
    return counts
