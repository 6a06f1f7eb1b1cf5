"""Epsilon from the ledger against independent values: published settings, closed forms, brute force."""

from __future__ import annotations

import json
import math

import dp_accounting as dpa
import numpy as np
import pytest
from scipy import optimize, stats

from tff_lab.privacy.accounting import (
    DDP_UNSUPPORTED,
    PLD_WOR_UNSUPPORTED,
    MechanismSpec,
    PrivacyLedger,
    default_delta,
    epsilon_for_rounds,
    epsilon_of,
    event_from_json,
    event_to_json,
    rdp_epsilon,
    tree_sensitivity_squared,
)

NR = dpa.NeighboringRelation


def gaussian_exact_epsilon(noise_multiplier: float, delta: float) -> float:
    """The tight (epsilon, delta) of one Gaussian mechanism (Balle & Wang 2018, Theorem 8)."""
    mu = 1.0 / noise_multiplier

    def delta_of(eps):
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)

    return optimize.brentq(lambda e: delta_of(e) - delta, 0.0, 500.0, xtol=1e-12)


def poisson_spec(z, population, rate, mechanism="gaussian_fixed", **kw):
    return MechanismSpec(mechanism, z, population, "poisson", sampling_rate=rate, **kw)


# -- published settings --------------------------------------------------------------------


def test_tff_dp_tutorial_setting():
    """TFF's DP tutorial: 3,383 clients, 120 expected per round, noise 1.2, 100 rounds, delta 1e-5."""
    eps = epsilon_for_rounds(poisson_spec(1.2, 3383, 120 / 3383), 100, 1e-5)
    assert round(eps.rdp, 2) == 1.99
    assert round(eps.pld, 2) == 1.71
    # The cached PLD path is exactly dp_accounting's PLDAccountant at the (bounded) spacing it reports,
    # and within 1e-3 of the accountant's default spacing.
    acc = dpa.pld.PLDAccountant(value_discretization_interval=eps.pld_value_discretization_interval)
    acc.compose(dpa.PoissonSampledDpEvent(120 / 3383, dpa.GaussianDpEvent(1.2)), 100)
    assert eps.pld == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    default = dpa.pld.PLDAccountant()
    default.compose(dpa.PoissonSampledDpEvent(120 / 3383, dpa.GaussianDpEvent(1.2)), 100)
    assert abs(eps.pld - default.get_epsilon(1e-5)) < 1e-3
    rdp = dpa.rdp.RdpAccountant()
    rdp.compose(dpa.PoissonSampledDpEvent(120 / 3383, dpa.GaussianDpEvent(1.2)), 100)
    assert eps.rdp == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-12)


@pytest.mark.parametrize("noise,epochs,documented", [(1.12, 60, 2.92), (0.6, 30, 9.74), (1.2, 10, 1.20)])
def test_tensorflow_privacy_documented_mnist_settings(noise, epochs, documented):
    """tensorflow_privacy's tutorials/README table (MNIST, N=60,000, batch 256, delta 1e-5).

    Those epsilons used the classical RDP conversion eps = min_a rdp(a) - log(delta)/(a-1) on
    the orders of the time; applying it to dp_accounting's RDP curve reproduces them, and
    dp_accounting's own (tighter) conversion must give less.
    """
    q, steps, delta = 256 / 60000, int(math.ceil(epochs * 60000 / 256)), 1e-5
    event = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(noise))
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    acc = dpa.rdp.RdpAccountant(orders=orders)
    acc.compose(event, steps)
    classical = float(np.min(acc.rdp - math.log(delta) / (np.asarray(orders) - 1)))
    assert classical == pytest.approx(documented, abs=0.015)
    eps = epsilon_for_rounds(MechanismSpec("gaussian_fixed", noise, 60000, "poisson", sampling_rate=q), steps, delta)
    assert eps.rdp < documented and eps.pld < eps.rdp


def test_tensorflow_privacy_compute_dp_sgd_privacy_value():
    """tensorflow_privacy's own test value: N=60,000, batch 150, noise 1.3, 15 epochs, delta 1e-5."""
    steps = int(math.ceil(15 * 60000 / 150))
    eps, order = rdp_epsilon(
        dpa.PoissonSampledDpEvent(150 / 60000, dpa.GaussianDpEvent(1.3)), steps, 1e-5, NR.ADD_OR_REMOVE_ONE
    )
    assert eps == pytest.approx(0.7242234026109595, abs=1e-9)
    assert order == 19.0


# -- closed forms -----------------------------------------------------------------------------


@pytest.mark.parametrize("z,rounds", [(0.8, 1), (2.0, 10), (5.0, 100)])
def test_gaussian_without_sampling_closed_form(z, rounds):
    """T Gaussian mechanisms = one with z / sqrt(T): RDP is alpha / (2 sigma^2) at every order,
    the PLD epsilon sits just above the exact (tight) epsilon, the RDP one above both."""
    delta = 1e-5
    ev = dpa.GaussianDpEvent(z)
    acc = dpa.rdp.RdpAccountant()
    acc.compose(ev, rounds)
    np.testing.assert_allclose(acc.rdp, acc.orders * rounds / (2 * z * z), rtol=1e-12)
    eps = epsilon_of(ev, rounds, delta, NR.ADD_OR_REMOVE_ONE)
    exact = gaussian_exact_epsilon(z / math.sqrt(rounds), delta)
    assert exact <= eps.pld <= exact + 2e-3
    assert eps.rdp >= eps.pld
    # The RDP bound is within the known gap of the exact value (loose but bounded).
    assert eps.rdp <= exact * 1.6 + 0.5


def test_full_participation_without_replacement_is_replace_one_gaussian():
    """m = N: every client every round; replacing one client moves the sum by 2C, so the run is
    a Gaussian with multiplier z/2 (sensitivity-normalised): closed form alpha*4/(2 z^2)."""
    z, n, rounds, delta = 2.0, 50, 10, 1e-5
    spec = MechanismSpec("gaussian_fixed", z, n, "uniform", clients_per_round=n)
    eps = epsilon_for_rounds(spec, rounds, delta)
    ref = epsilon_of(dpa.GaussianDpEvent(z / 2), rounds, delta, NR.ADD_OR_REMOVE_ONE)
    assert eps.rdp == pytest.approx(ref.rdp, rel=1e-12)
    assert eps.pld is None and eps.pld_note == PLD_WOR_UNSUPPORTED


def test_sampling_amplifies_and_relations_are_right():
    z, n, m, delta = 1.0, 1000, 10, 1e-5
    uniform = epsilon_for_rounds(MechanismSpec("gaussian_fixed", z, n, "uniform", clients_per_round=m), 50, delta)
    poisson = epsilon_for_rounds(poisson_spec(z, n, m / n), 50, delta)
    full = epsilon_for_rounds(poisson_spec(z, n, 1.0), 50, delta)
    assert poisson.rdp < full.rdp / 5
    # Replace-one (sensitivity 2C) costs more than add/remove at the same sampling fraction.
    assert uniform.rdp > poisson.rdp
    assert MechanismSpec("gaussian_fixed", z, n, "uniform", clients_per_round=m).neighbouring_relation is NR.REPLACE_ONE


def test_adaptive_clipping_costs_exactly_the_total_noise_multiplier():
    """TFF keeps the configured multiplier as the total over value and clipped-count queries:
    the composed event (z_value, 2 sigma_b) has effective multiplier z, i.e. the same epsilon
    as fixed clipping at z, and z_value = (z^-2 - (2 sigma_b)^-2)^-1/2 > z."""
    z, n, q = 1.1, 2000, 0.01
    adaptive = poisson_spec(z, n, q, "gaussian_adaptive", clipped_count_stddev=1.0)
    comps = adaptive.noise_components()
    assert comps["value_noise_multiplier"] == pytest.approx((z**-2 - 2.0**-2) ** -0.5, rel=1e-12)
    assert comps["clipped_count_noise_multiplier"] == 2.0
    ev = adaptive.query_event()
    assert isinstance(ev, dpa.ComposedDpEvent) and len(ev.events) == 2
    a = epsilon_for_rounds(adaptive, 200, 1e-6)
    f = epsilon_for_rounds(poisson_spec(z, n, q), 200, 1e-6)
    assert a.rdp == pytest.approx(f.rdp, rel=1e-9)
    assert a.pld == pytest.approx(f.pld, rel=1e-6)
    # With a clipped-count noise of the same size as the value noise, the cost is much higher
    # than a fixed clip at the value noise alone.
    value_only = epsilon_for_rounds(poisson_spec(comps["value_noise_multiplier"], n, q), 200, 1e-6)
    assert value_only.rdp < a.rdp


# -- tree aggregation -------------------------------------------------------------------------


def brute_force_tree_s(leaves):
    T = len(leaves)
    clients = {c for leaf in leaves for c in leaf}
    best = 0
    for c in clients:
        total, level = 0, 0
        while 2**level <= T:
            width = 2**level
            for k in range(T // width):
                n = sum(1 for t in range(k * width, (k + 1) * width) if c in leaves[t])
                total += n * n
            level += 1
        best = max(best, total)
    return best


@pytest.mark.parametrize("T", [1, 2, 3, 4, 7, 8, 9, 100, 1000])
def test_tree_single_participation_is_dp_accounting_tree_event(T):
    leaves = [[f"c{t}"] for t in range(T)]
    assert tree_sensitivity_squared(leaves) == math.ceil(math.log2(T + 1))
    spec = MechanismSpec("tree", 1.3, 5000, "uniform", clients_per_round=1)
    eps = epsilon_for_rounds(spec, T, 1e-5, leaves)
    acc = dpa.rdp.RdpAccountant(neighboring_relation=NR.REPLACE_SPECIAL)
    acc.compose(dpa.SingleEpochTreeAggregationDpEvent(1.3, T))
    assert eps.rdp == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


def test_tree_sensitivity_matches_brute_force_on_random_schedules():
    rng = np.random.default_rng(0)
    for trial in range(25):
        T = int(rng.integers(1, 40))
        pop = int(rng.integers(2, 12))
        leaves = [list(map(str, rng.choice(pop, size=int(rng.integers(1, pop + 1)), replace=False))) for _ in range(T)]
        assert tree_sensitivity_squared(leaves) == brute_force_tree_s(leaves), (trial, leaves)


def test_tree_repeated_participation_costs_more_and_no_amplification():
    spec = MechanismSpec("tree", 1.0, 100, "uniform", clients_per_round=1)
    once = epsilon_for_rounds(spec, 8, 1e-5, [[str(t)] for t in range(8)])
    twice = epsilon_for_rounds(spec, 8, 1e-5, [["a"], ["b"], ["a"], ["c"], ["d"], ["e"], ["f"], ["g"]])
    assert twice.rdp > once.rdp
    # Same schedule, bigger population: no amplification by sampling.
    big = MechanismSpec("tree", 1.0, 10**6, "uniform", clients_per_round=1)
    assert epsilon_for_rounds(big, 8, 1e-5, [[str(t)] for t in range(8)]).rdp == pytest.approx(once.rdp)


# -- ledger -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        poisson_spec(1.0, 500, 0.02),
        MechanismSpec("gaussian_fixed", 1.0, 500, "uniform", clients_per_round=10),
        MechanismSpec("tree", 2.0, 50, "uniform", clients_per_round=5),
    ],
    ids=["poisson", "uniform", "tree"],
)
def test_ledger_resume_accounts_each_round_once(spec):
    rng = np.random.default_rng(1)
    schedule = [list(map(str, rng.choice(50, size=5, replace=False))) for _ in range(12)]
    full = PrivacyLedger(spec, 1e-5)
    for leaf in schedule:
        full.record_round(leaf, trained=True)
    part = PrivacyLedger(spec, 1e-5)
    for leaf in schedule[:5]:
        part.record_round(leaf, trained=True)
    state = json.loads(json.dumps(part.state_dict()))  # what a checkpoint holds
    resumed = PrivacyLedger.from_state_dict(state)
    for leaf in schedule[5:]:
        resumed.record_round(leaf, trained=True)
    assert resumed.rounds == full.rounds == 12
    assert resumed.epsilon() == full.epsilon()
    assert full.epsilon_if_next(schedule[0]).rdp > full.epsilon().rdp


def test_empty_poisson_round_is_still_a_round():
    ledger = PrivacyLedger(poisson_spec(1.0, 100, 0.05), 1e-6)
    ledger.record_round([], trained=False)
    ledger.record_round(["a"], trained=True)
    assert ledger.epsilon() == epsilon_for_rounds(ledger.spec, 2, 1e-6)


def test_ddp_secure_with_adaptive_zeroing_claims_no_epsilon():
    spec = MechanismSpec(
        "ddp_secure",
        1.0,
        100,
        "uniform",
        clients_per_round=10,
        clipped_count_stddev=1.0,
        model_dim=100,
        ddp_bits=20,
        ddp_rotation="hd",
        zeroing=True,
    )
    eps = epsilon_for_rounds(spec, 10, 1e-5, leaves=[["a"]] * 10)
    assert eps.rdp is None and eps.pld is None and eps.note == DDP_UNSUPPORTED and "zeroing" in eps.note


def test_event_json_round_trip_and_privacy_json_ledger():
    spec = poisson_spec(1.2, 3383, 120 / 3383, "gaussian_adaptive", clipped_count_stddev=6.0)
    ev = dpa.SelfComposedDpEvent(spec.round_event(), 7)
    data = json.loads(json.dumps(event_to_json(ev)))
    assert data["type"] == "SelfComposedDpEvent" and data["event"]["type"] == "PoissonSampledDpEvent"
    assert event_from_json(data) == ev
    with pytest.raises(ValueError):
        event_from_json({"type": "os.system"})


def test_default_delta_is_below_one_over_population():
    for n in (2, 20, 1000, 10**5, 10**7):
        d = default_delta(n)
        assert 0 < d < 1 / n and d <= 1e-5
    assert default_delta(10**7) == pytest.approx(10**-7.7)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mechanism="laplace"),
        dict(noise_multiplier=0.0),
        dict(noise_multiplier=-1.0),
        dict(noise_multiplier=float("nan")),
        dict(sampling="uniform", clients_per_round=200),
        dict(sampling_rate=0.0),
        dict(sampling_rate=1.5),
    ],
)
def test_spec_rejects_bad_values(kwargs):
    base = dict(mechanism="gaussian_fixed", noise_multiplier=1.0, population=100, sampling="poisson", sampling_rate=0.1)
    base.update(kwargs)
    with pytest.raises(ValueError):
        MechanismSpec(**base)
