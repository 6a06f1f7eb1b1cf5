"""The one-shot empirical privacy estimate: canaries, the estimator, and audits that can fail."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from tff_lab.privacy.audit import (
    CanarySet,
    audit_simulation,
    estimate_epsilon,
    gaussian_epsilon,
    model_delta,
    plot_cosines,
)


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.5])
def test_gaussian_epsilon_is_dp_accountings_gaussian(mu):
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.GaussianDpEvent(1.0 / mu))
    assert gaussian_epsilon(mu, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-3)
    assert gaussian_epsilon(0.0, 1e-5) == 0.0 and gaussian_epsilon(-1.0, 1e-5) == 0.0


def test_canaries_have_norm_clip_and_are_seeded():
    c = CanarySet(shapes=[(20, 30), (30,)], clip=0.7, seen=4, unseen=6, seed=3, population=50)
    assert c.dim == 630 and c.total_population == 54
    assert [c.is_canary(i) for i in (49, 50, 53, 54)] == [False, True, True, False]
    upd = c.update_for(51)
    assert [u.shape for u in upd] == [(20, 30), (30,)] and all(u.dtype == np.float32 for u in upd)
    norm = math.sqrt(sum(float(np.sum(u.astype(np.float64) ** 2)) for u in upd))
    assert norm == pytest.approx(0.7, rel=1e-5) and norm <= 0.7  # clipping leaves it unchanged
    again = CanarySet(shapes=[(20, 30), (30,)], clip=0.7, seen=4, unseen=6, seed=3, population=50)
    np.testing.assert_array_equal(again.update_for(51)[0], upd[0])
    other = CanarySet(shapes=[(20, 30), (30,)], clip=0.7, seen=4, unseen=6, seed=4, population=50)
    assert not np.allclose(other.update_for(51)[0], upd[0])
    with pytest.raises(ValueError, match="not a canary"):
        c.update_for(3)
    # A model that moved exactly along canary 1 (TFF's convention: initial - final).
    initial = [np.zeros((20, 30)), np.zeros(30)]
    final = [-u for u in c.update_for(51)]
    seen, unseen = c.cosines(model_delta(initial, final))
    assert seen[1] == pytest.approx(1.0, abs=1e-6) and np.all(np.abs(unseen) < 0.3)


def test_estimator_recovers_a_known_gaussian_pair():
    rng = np.random.default_rng(0)
    sigma, mu = 0.01, 1.5
    est = estimate_epsilon(rng.normal(mu * sigma, sigma, 4000), rng.normal(0, sigma, 4000), 1e-5, bootstrap=300)
    truth = gaussian_epsilon(mu, 1e-5)
    assert est.ci_low <= truth <= est.ci_high
    assert est.epsilon == pytest.approx(truth, rel=0.1)
    # no shift: nothing to see
    none = estimate_epsilon(rng.normal(0, sigma, 4000), rng.normal(0, sigma, 4000), 1e-5, bootstrap=300)
    assert none.epsilon < 0.3 and none.ci_low == 0.0
    assert none.to_json()["resolution_epsilon"] == pytest.approx(gaussian_epsilon(2 / math.sqrt(4000), 1e-5))


def test_plot_is_written(tmp_path):
    rng = np.random.default_rng(1)
    s, u = rng.normal(0.02, 0.01, 30), rng.normal(0, 0.01, 30)
    path = plot_cosines(
        s, u, tmp_path / "cos.png", estimate=estimate_epsilon(s, u, 1e-5, bootstrap=50), theoretical=3.0
    )
    assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_audit_flags_no_noise_and_stays_below_theory_with_noise():
    """DP-FedAvg's exact aggregation (tff_lab's seeded Gaussian query), 100 clients + 50 canaries,
    Poisson q = 0.2, 30 rounds, a 20,000-dimensional update space, seed 0."""
    kw = dict(
        clip=1.0, population=100, sampling_rate=0.2, rounds=30, seen=50, unseen=50, dim=20000, seed=0, bootstrap=300
    )
    none = audit_simulation(noise_multiplier=0.0, **kw)
    noisy = audit_simulation(noise_multiplier=1.0, **kw)
    strong = audit_simulation(noise_multiplier=8.0, **kw)
    e0, e1, e8 = (r["epsilon_empirical"]["epsilon"] for r in (none, noisy, strong))
    assert none["epsilon_theoretical"] is None
    # No noise: far beyond what any of these noise levels can give (theory at noise 0.5 is ~30).
    assert e0 > 80 and none["epsilon_empirical"]["interval"][0] > 50
    # A correct mechanism: at or below the ledger's epsilon (both accountants).
    theory = noisy["epsilon_theoretical"]
    assert 1.0 < e1 <= min(theory["rdp"], theory["pld"])
    assert e1 == pytest.approx(5.23, abs=0.05) and theory["pld"] == pytest.approx(7.93, abs=0.01)
    # Strong noise: small, and its interval reaches 0 (the audit cannot tell it from no leakage).
    assert e8 < 1.2 and strong["epsilon_empirical"]["interval"][0] == 0.0
    assert e0 > e1 > e8
