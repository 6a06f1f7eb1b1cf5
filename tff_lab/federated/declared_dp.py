"""Epsilon for a user's aggregator: from what it declares, checked against what it does.

A user aggregation factory that is differentially private declares what one round does as a
``dp_accounting`` event: an attribute ``dp_event(cfg, population) -> dp_accounting.DpEvent``
(sampling included, e.g. ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``). Before the first
round the declaration is checked against the aggregator itself where its mechanism can be
inspected (:func:`verify_declaration`: a TFF ``DifferentiallyPrivateFactory`` anywhere inside the
factory, whose tensorflow_privacy query states its own event, clip and noise stddev); a mismatch
is refused in one line (:class:`~tff_lab.errors.ConfigError` naming the aggregator). Where the
mechanism cannot be inspected, ``privacy.json`` says ``declared_unverified: true`` and why. The
event is composed once per round that ran by :mod:`tff_lab.privacy.accounting` (the one place
that computes epsilon); ``eps_rdp``/``eps_pld`` go to the metrics, and the run is published
under the same policy as tff_lab's own DP (:mod:`tff_lab.privacy.release`). Without a declaration
the run reports no epsilon, and ``privacy.json`` says why.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from tff_lab.training.hooks import RoundHook, RoundInfo, RunContext

_RTOL = 1e-6
_MAX_DEPTH = 12


# ------------------------------------------------------------------------------------------------
# What the aggregator does
# ------------------------------------------------------------------------------------------------


def find_dp_factories(aggregator: Any) -> list:
    """TFF DP factories (``DifferentiallyPrivateFactory``, ``DistributedDpSumFactory``) reachable
    from ``aggregator`` through its attributes (TFF's wrappers keep their inner factories there)."""
    import tensorflow_federated as tff
    from tensorflow_federated.python.aggregators import distributed_dp

    kinds = (tff.aggregators.DifferentiallyPrivateFactory, distributed_dp.DistributedDpSumFactory)
    found, seen = [], set()

    def walk(obj, depth):
        if id(obj) in seen or depth > _MAX_DEPTH:
            return
        seen.add(id(obj))
        if isinstance(obj, kinds):
            found.append(obj)
            if isinstance(obj, distributed_dp.DistributedDpSumFactory):
                return
        if isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, depth + 1)
            return
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v, depth + 1)
            return
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict) and type(obj).__module__.split(".")[0] in ("tensorflow_federated", "tff_lab"):
            # TFF's robust wrappers (clipping_factory, zeroing_factory) keep the inner factory in the
            # closure of their class's methods.
            values = list(attrs.values())
            for fn in vars(type(obj)).values():
                values += [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _cell_filled(c)]
            for v in values:
                if isinstance(
                    v,
                    (
                        tff.aggregators.UnweightedAggregationFactory,
                        tff.aggregators.WeightedAggregationFactory,
                        list,
                        tuple,
                        dict,
                    ),
                ):
                    walk(v, depth + 1)

    walk(aggregator, 0)
    return found


def _cell_filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def query_event(query) -> Any:
    """The ``DpEvent`` a tensorflow_privacy query emits for one aggregation (asked of the query
    itself, eagerly, on a one-element record), and its Gaussian sum queries' (clip, stddev)."""
    import tensorflow as tf

    global_state = query.initial_global_state()
    sample_state = query.initial_sample_state(tf.TensorSpec([1], tf.float32))
    _, _, event = query.get_noised_result(sample_state, global_state)
    from tff_lab.privacy.state_check import _pairs, flatten_with_paths  # pylint: disable=protected-access

    return event, sorted(_pairs(flatten_with_paths(global_state)).values())


def verify_declaration(aggregator: Any, event: Any, cfg, population: int, name: str) -> dict:
    """Check a declared round event against the aggregator's own mechanism.

    Returns ``{"verified": True, ...}`` when they agree, ``{"verified": False, "why": ...}`` when
    the mechanism cannot be inspected; raises ConfigError (``aggregation.builder``) on a mismatch.
    """
    import dp_accounting

    from tff_lab.errors import ConfigError
    from tff_lab.privacy.accounting import scale_gaussians
    from tff_lab.privacy.state_check import events_match

    where = "aggregation.builder"
    if aggregator is None:
        return {"verified": False, "why": "the aggregator object was not available to inspect"}
    factories = find_dp_factories(aggregator)
    if not factories:
        return {
            "verified": False,
            "why": f"{name} holds no TFF DP factory (DifferentiallyPrivateFactory) tff_lab "
            "can inspect; its noise and clip are taken on trust",
        }
    if len(factories) > 1:
        return {"verified": False, "why": f"{name} holds {len(factories)} DP factories; the declaration describes one"}
    factory = factories[0]
    query = getattr(factory, "_query", None)
    if query is None:
        return {
            "verified": False,
            "why": f"{name} uses {type(factory).__name__} (distributed DP): declare it as "
            "privacy.mechanism: ddp_secure, which tff_lab accounts itself",
        }
    try:
        ran, pairs = query_event(query)
    except Exception as e:  # noqa: BLE001 - a query tff_lab cannot evaluate is unverifiable, not an error
        return {"verified": False, "why": f"the query {type(query).__name__} could not be evaluated ({e})"}
    if isinstance(ran, dp_accounting.UnsupportedDpEvent):
        return {
            "verified": False,
            "why": f"the query {type(query).__name__} emits UnsupportedDpEvent (e.g. tree "
            "aggregation); use privacy.mechanism: tree, which tff_lab accounts itself",
        }
    observed = {
        "query": type(query).__name__,
        "query_event": repr(ran),
        "clip_and_stddev": [[float(c), float(s)] for c, s in pairs],
    }

    def refuse(msg: str):
        raise ConfigError(where, f"{name}.dp_event declares {event!r}, but {msg}; refused (epsilon would be wrong)")

    t = cfg.training
    inner, units = event, 1.0
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        if t.sampling != "poisson" or not _close(event.sampling_probability, t.sampling_rate):
            refuse(f"the run samples {_sampling(cfg)}, not Poisson with probability {event.sampling_probability}")
        inner = event.event
    elif isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent):
        if (
            t.sampling != "uniform"
            or int(event.source_dataset_size) != int(population)
            or int(event.sample_size) != int(t.clients_per_round)
        ):
            refuse(
                f"the run samples {_sampling(cfg)} from {population} clients, not {event.sample_size} of "
                f"{event.source_dataset_size} without replacement"
            )
        inner, units = event.event, 0.5
    expected = scale_gaussians(ran, units) if units != 1.0 else ran
    if not events_match(inner, expected, _RTOL):
        extra = (
            " (under sampling without replacement dp_accounting counts replace-one neighbours: a clipped update "
            "replaced by another moves the sum by 2 x clip, so the query's multiplier halves)"
            if units != 1.0
            else ""
        )
        clips = ", ".join(f"clip {c:.6g} with noise stddev {s:.6g}" for c, s in pairs)
        refuse(f"its query {type(query).__name__} ({clips}) emits {ran!r}, i.e. {expected!r} per round{extra}")
    return {"verified": True, **observed}


def _close(a, b) -> bool:
    return b is not None and math.isfinite(float(a)) and abs(float(a) - float(b)) <= _RTOL * max(abs(float(b)), 1e-12)


def _sampling(cfg) -> str:
    t = cfg.training
    return (
        f"Poisson with probability {t.sampling_rate}"
        if t.sampling == "poisson"
        else f"{t.clients_per_round} clients per round without replacement"
    )


# ------------------------------------------------------------------------------------------------
# The hook
# ------------------------------------------------------------------------------------------------


class DeclaredPrivacyHook(RoundHook):
    name = "declared_privacy"

    def __init__(self, aggregator_name: str, dp_event_fn=None, aggregator: Any = None):
        self.aggregator_name = aggregator_name
        self.dp_event_fn = dp_event_fn
        self.aggregator = aggregator
        self.event = None
        self.verification: dict = {}
        self.rounds = 0
        self.delta: Optional[float] = None
        self._eps: dict = {}

    @property
    def declares_dp(self) -> bool:
        """The run is private by declaration: published under tff_lab's DP policy."""
        return self.dp_event_fn is not None

    def on_start(self, ctx: RunContext) -> None:
        if self.dp_event_fn is None:
            return
        import dp_accounting

        from tff_lab.errors import PartTypeError
        from tff_lab.privacy.calibration import resolve_delta

        event = self.dp_event_fn(ctx.cfg, ctx.population)
        if not isinstance(event, dp_accounting.DpEvent):
            raise PartTypeError(
                "aggregator",
                f"{self.aggregator_name}.dp_event returned {type(event).__name__}, "
                "expected a dp_accounting.DpEvent for one round",
            )
        self.verification = verify_declaration(self.aggregator, event, ctx.cfg, ctx.population, self.aggregator_name)
        self.event = event
        self.delta = resolve_delta(ctx.cfg, ctx.population)

    def state_dict(self) -> dict:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.rounds = int(state.get("rounds", 0))

    def _epsilon(self) -> dict:
        """RDP and PLD epsilon of the declared event composed over the rounds that ran
        (:func:`tff_lab.privacy.accounting.epsilon_of`), under the neighbouring relation of its
        sampling: Poisson and unsampled events add/remove-one, sampling without replacement
        replace-one (the only relation dp_accounting accounts it under)."""
        import dp_accounting

        from tff_lab.errors import PrivacyAccountingError
        from tff_lab.privacy.accounting import epsilon_of

        nr = dp_accounting.NeighboringRelation
        relations = (
            (nr.REPLACE_ONE,)
            if isinstance(self.event, dp_accounting.SampledWithoutReplacementDpEvent)
            else (nr.ADD_OR_REMOVE_ONE, nr.REPLACE_ONE)
        )
        for relation in relations:
            if not dp_accounting.rdp.RdpAccountant(neighboring_relation=relation).supports(self.event):
                continue
            eps = epsilon_of(self.event, self.rounds, self.delta, relation)
            return {
                "rdp": eps.rdp,
                "rdp_optimal_order": eps.rdp_order,
                "pld": eps.pld,
                "pld_note": eps.pld_note,
                "pld_value_discretization_interval": eps.pld_value_discretization_interval,
                "neighbouring_relation": relation.name,
            }
        raise PrivacyAccountingError(
            f"{self.aggregator_name}.dp_event: dp_accounting's RDP accountant supports "
            f"this event under no neighbouring relation: {self.event!r}"
        )

    def after_round(self, ctx: RunContext, info: RoundInfo, row: dict) -> None:
        if self.event is None:
            return
        self.rounds += 1
        self._eps = self._epsilon()
        row["eps_rdp"] = _num(self._eps.get("rdp"))
        row["eps_pld"] = _num(self._eps.get("pld"))

    def progress_fields(self) -> dict:
        v = self._eps.get("rdp")
        return {"eps": f"{v:.3g}"} if v is not None and math.isfinite(v) else {}

    def on_end(self, ctx: RunContext, summary: dict) -> None:
        from tff_lab.fileio import atomic_write_text

        if self.event is None:
            report = {
                "mechanism": f"user aggregator {self.aggregator_name}",
                "epsilon": None,
                "why_no_epsilon": (
                    f"the aggregator {self.aggregator_name} declares no dp_accounting event "
                    "(an attribute dp_event(cfg, population) -> DpEvent for one round); tff_lab "
                    "never guesses an epsilon"
                ),
            }
        else:
            from tff_lab.privacy.release import coverage_report, publication_policy

            eps = self._eps or (self._epsilon() if self.rounds else {"rdp": 0.0, "pld": 0.0})
            unverified = not self.verification.get("verified", False)
            report = {
                "mechanism": f"user aggregator {self.aggregator_name}",
                "dp_event_per_round": repr(self.event),
                "rounds_run": self.rounds,
                "delta": self.delta,
                "epsilon": eps,
                "declared_unverified": unverified,
                "verification": self.verification,
                "source": (
                    "declared by the aggregator (dp_event), "
                    + (
                        "NOT checked against its mechanism (see verification.why), "
                        if unverified
                        else "checked against its DP query, "
                    )
                    + "composed over the rounds that ran with dp_accounting"
                ),
                "coverage": coverage_report(publication_policy(ctx.cfg, data=ctx.data, declared_dp=True), ctx.run_dir),
            }
        atomic_write_text(ctx.run_dir / "privacy.json", json.dumps(report, indent=1, default=repr))
        summary["privacy"] = {
            "mechanism": report["mechanism"],
            "epsilon": report.get("epsilon"),
            "delta": report.get("delta"),
            "why_no_epsilon": report.get("why_no_epsilon"),
            "declared_unverified": report.get("declared_unverified"),
        }


def _num(x) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)
