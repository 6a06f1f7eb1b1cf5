"""Target epsilon -> noise multiplier, by searching dp_accounting's accountant.

The search is ``dp_accounting.calibrate_dp_mechanism`` (Brent's method on epsilon minus
the target, which guarantees the returned noise meets the target) over the event of the
planned run: ``training.rounds`` sampled rounds, or, for tree aggregation, the tree over the
participation schedule the run's sampler will draw (the sampler is a pure function of the
seed and the round, :func:`tff_lab.sampling.sample_clients`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import dp_accounting

from tff_lab.errors import ConfigError
from tff_lab.privacy.accounting import (
    MechanismSpec,
    default_delta,
    epsilon_for_rounds,
    tree_leaf,
    tree_sensitivity_squared,
)

NOISE_MIN = 0.1  # below this RDP evaluation crawls, and any epsilon it gives is vacuous
NOISE_MAX = 1e3


def _bracket(eps, target_epsilon: float, delta: float, where: str) -> tuple[float, float]:
    """(lo, hi) with eps(hi) <= target < eps(lo), hi = 2 lo, found by doubling/halving from 1 (eps
    decreases in the noise multiplier); refused past NOISE_MAX or below NOISE_MIN."""
    hi = 1.0
    while eps(hi) > target_epsilon:
        hi *= 2
        if hi > NOISE_MAX:
            raise ConfigError(
                where,
                f"epsilon {target_epsilon} at delta {delta} needs a noise multiplier above "
                f"{NOISE_MAX:g} for these rounds and sampling; raise the target or sample less",
            )
    lo = hi / 2
    while eps(lo) <= target_epsilon:
        hi, lo = lo, lo / 2
        if lo < NOISE_MIN:
            raise ConfigError(
                where,
                f"epsilon {target_epsilon} is met even with noise multiplier {NOISE_MIN}; such "
                "a guarantee is vacuous; set privacy.noise_multiplier directly",
            )
    return lo, hi


def resolve_delta(cfg, population: int) -> float:
    """``privacy.delta`` or its default; refuses a delta not below 1/population."""
    delta = cfg.privacy.delta if cfg.privacy.delta is not None else default_delta(population)
    if not delta < 1.0 / population:
        raise ConfigError(
            "privacy.delta",
            f"delta {delta} is not below 1/population (1/{population}): a mechanism that publishes one "
            "random client's data outright meets such a delta; use a delta well below 1/population",
        )
    return float(delta)


def planned_tree_leaves(
    cfg, population: int, rounds: Optional[int] = None, client_ids: Optional[Sequence[Any]] = None
) -> list[list[str]]:
    """The leaf of every round the run will do (:func:`~tff_lab.privacy.accounting.tree_leaf`:
    a round that samples nobody is an empty leaf). Clients are named by ``client_ids[i]``, or by
    their index; the tree's sensitivity does not depend on the names."""
    from tff_lab.sampling import sample_clients

    leaves = []
    for r in range(1, (rounds or cfg.training.rounds) + 1):
        idx = sample_clients(cfg, population, r)
        leaves.append(tree_leaf([client_ids[i] for i in idx] if client_ids is not None else [int(i) for i in idx]))
    return leaves


def _search_event(spec: MechanismSpec, z: float, rounds: int, s_tree: int) -> dp_accounting.DpEvent:
    """The planned run at noise ``z``. For adaptive clipping TFF keeps ``z`` as the total over the
    value and clipped-count queries, so the composed event is one Gaussian of multiplier ``z``
    on the same sample; searching on that form keeps the PLD accountant usable."""
    if spec.mechanism == "tree":
        return dp_accounting.GaussianDpEvent(z / math.sqrt(s_tree))
    inner = dp_accounting.GaussianDpEvent(z)
    if spec.sampling == "poisson":
        one = dp_accounting.PoissonSampledDpEvent(float(spec.sampling_rate), inner)
    else:  # replace-one units: see MechanismSpec.round_event
        one = dp_accounting.SampledWithoutReplacementDpEvent(
            spec.population, spec.clients_per_round, dp_accounting.GaussianDpEvent(z / 2)
        )
    return dp_accounting.SelfComposedDpEvent(one, rounds)


def _accountant_factory(spec: MechanismSpec, accountant: str):
    relation = spec.neighbouring_relation
    if accountant == "pld":
        # dp_accounting's PLD at the ledger's bounded spacing (accounting.pld_epsilon): the same
        # numbers the ledger reports, at a cost that stays bounded at small noise.
        from tff_lab.privacy.accounting import BoundedPldAccountant

        return lambda: BoundedPldAccountant(neighboring_relation=relation)
    return lambda: dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)


def _calibrate_ddp(spec: MechanismSpec, rounds: int, delta: float, target_epsilon: float, leaves, where: str) -> float:
    """ddp_secure: the smallest noise multiplier (bisection to a relative 1e-6) whose planned
    Skellam epsilon (:func:`~tff_lab.privacy.accounting.ddp_epsilon` over the planned schedule at
    TFF's initial clip) is <= the target; epsilon decreases in the noise."""
    if spec.zeroing:
        from tff_lab.privacy.accounting import DDP_ZEROING

        raise ConfigError("aggregation.zeroing", DDP_ZEROING)
    if not any(leaves):
        raise ConfigError(where, "the planned schedule aggregates nobody; there is nothing to calibrate")

    def eps(z: float) -> float:
        return epsilon_for_rounds(_exact_spec(spec, z, None), rounds, delta, leaves).rdp

    lo, hi = _bracket(eps, target_epsilon, delta, where)
    while hi - lo > 1e-6 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if eps(mid) <= target_epsilon else (mid, hi)
    return float(hi)


def calibrate_noise_multiplier(
    spec: MechanismSpec,
    rounds: int,
    delta: float,
    target_epsilon: float,
    *,
    accountant: str = "rdp",
    leaves: Optional[Sequence[Sequence[Any]]] = None,
    clipped_count_stddev: Optional[float] = None,
    where: str = "privacy.target_epsilon",
) -> float:
    """The smallest noise multiplier (to ~1e-6) whose epsilon after ``rounds`` is <= the target.

    ``spec.noise_multiplier`` is ignored. ``clipped_count_stddev``: the configured value for
    adaptive clipping (None: the default, which depends on the noise). The result is checked
    with the ledger's own computation for the exact mechanism (e.g. the composed adaptive
    event) and nudged up if rounding put it a hair over the target.
    """
    if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(where, f"expected a finite epsilon > 0, got {target_epsilon!r}")
    if spec.mechanism == "ddp_secure":
        if accountant == "pld":
            raise ConfigError(
                "privacy.accountant",
                "ddp_secure is accounted with the Skellam RDP bound only "
                "(dp_accounting has no PLD for it); use the rdp accountant",
            )
        if leaves is None:
            raise ValueError("ddp_secure calibration needs the planned participation schedule")
        return _calibrate_ddp(spec, rounds, delta, target_epsilon, leaves, where)
    if accountant == "pld" and spec.sampling == "uniform" and spec.mechanism != "tree":
        raise ConfigError(
            "privacy.accountant",
            "dp_accounting 0.4.3's PLD accountant does not support fixed-size "
            "sampling without replacement; use the rdp accountant or Poisson sampling",
        )
    s_tree = 0
    if spec.mechanism == "tree":
        if leaves is None:
            raise ValueError("tree calibration needs the planned participation schedule")
        s_tree = tree_sensitivity_squared(leaves)
        if s_tree == 0:
            raise ConfigError(where, "the planned schedule aggregates nobody; there is nothing to calibrate")
    make_acc = _accountant_factory(spec, accountant)

    def eps(z: float) -> float:
        acc = make_acc()
        acc.compose(_search_event(spec, z, rounds, s_tree))
        return acc.get_epsilon(delta)

    # Bracket: eps decreases in z. Start where the RDP accountant is cheap and well defined.
    lo, hi = _bracket(eps, target_epsilon, delta, where)
    z = dp_accounting.calibrate_dp_mechanism(
        make_acc,
        lambda x: _search_event(spec, x, rounds, s_tree),
        target_epsilon,
        delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(lo, hi),
    )
    z = float(z)
    # Check with the exact per-round event the ledger will use; step up past float rounding.
    for _ in range(60):
        exact = _exact_spec(spec, z, clipped_count_stddev)
        e = epsilon_for_rounds(exact, rounds, delta, leaves).get(accountant)
        if e is not None and e <= target_epsilon:
            return z
        z *= 1 + 1e-9
    raise RuntimeError(f"calibration did not converge for {spec}")  # pragma: no cover


def _exact_spec(spec: MechanismSpec, z: float, clipped_count_stddev: Optional[float]) -> MechanismSpec:
    from tff_lab.federated.aggregators import resolve_clipped_count_stddev

    exact = dataclasses.replace(spec, noise_multiplier=z)
    if spec.mechanism == "ddp_secure":
        exact = dataclasses.replace(
            exact, clipped_count_stddev=resolve_clipped_count_stddev(clipped_count_stddev, spec.ddp_expected_clients, z)
        )
    if spec.mechanism == "gaussian_adaptive":
        exact = dataclasses.replace(
            exact, clipped_count_stddev=resolve_clipped_count_stddev(clipped_count_stddev, spec.expected_clients, z)
        )
    return exact


def spec_for(cfg, population: int, noise_multiplier: Optional[float], model_dim: Optional[int] = None) -> MechanismSpec:
    """:meth:`MechanismSpec.from_config` with population checks that name the config field.

    ``noise_multiplier`` None gives the template a calibration starts from (noise 1, and for
    adaptive clipping no constraint from the clipped-count noise yet).
    """
    t = cfg.training
    if t.sampling == "uniform" and t.clients_per_round > population:
        raise ConfigError(
            "training.clients_per_round", f"expected at most the population ({population}), got {t.clients_per_round}"
        )
    if cfg.privacy.mechanism == "ddp_secure" and model_dim is None:
        raise ConfigError(
            "--model-dim",
            "ddp_secure's epsilon depends on the model update's size (the rotation pads "
            "it, the scale and the norm bounds follow): give the number of trainable "
            "parameters",
        )
    if noise_multiplier is None:
        template = dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, clipped_count_stddev=None))
        spec = MechanismSpec.from_config(template, population, 1.0, model_dim)
        if spec.mechanism == "gaussian_adaptive":
            spec = dataclasses.replace(spec, clipped_count_stddev=math.inf)
        return spec
    return MechanismSpec.from_config(cfg, population, noise_multiplier, model_dim)


def resolve_noise_multiplier(cfg, population: int, model_dim: Optional[int] = None) -> Optional[float]:
    """The noise multiplier a run uses: ``privacy.noise_multiplier``, or calibrated from
    ``privacy.target_epsilon`` over ``training.rounds``. None without privacy.

    Also checks, now that the population is known, what the config could not: delta below
    1/population, the adaptive clip's clipped-count noise against the noise multiplier.
    """
    p = cfg.privacy
    if not p.enabled:
        return None
    delta = resolve_delta(cfg, population)
    if p.noise_multiplier is not None:
        if p.mechanism != "ddp_secure" or model_dim is not None:
            spec_for(cfg, population, p.noise_multiplier, model_dim)  # raises ConfigError on inconsistent settings
        return float(p.noise_multiplier)
    spec = spec_for(cfg, population, None, model_dim)
    leaves = planned_tree_leaves(cfg, population) if p.mechanism in ("tree", "ddp_secure") else None
    return calibrate_noise_multiplier(
        spec,
        cfg.training.rounds,
        delta,
        p.target_epsilon,
        accountant=p.accountant,
        leaves=leaves,
        clipped_count_stddev=p.clipped_count_stddev,
    )
