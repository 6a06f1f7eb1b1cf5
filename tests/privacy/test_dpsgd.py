"""The centralized DP-SGD baseline: tensorflow_privacy's optimizer, Poisson batches, exact epsilon."""

from __future__ import annotations

import pytest

from tff_lab.config import load_config
from tff_lab.errors import ConfigError


@pytest.fixture(scope="module")
def setup():
    from tff_lab.data import load_federated_data

    cfg = load_config(None, ["data.num_clients=8", "training.clients_per_round=4"])
    return cfg, load_federated_data(cfg)


def test_dp_sgd_learns_and_reports_both_accountants(setup):
    from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib

    from tff_lab.privacy.dpsgd import train_dp_sgd

    cfg, data = setup
    n = len(data.union_train()[1])
    epochs = 64 * 30 / n  # exactly 30 steps of expected batch 64
    r = train_dp_sgd(cfg, data, epochs, noise_multiplier=1.0, batch_size=64, learning_rate=0.5)
    assert r["steps"] == 30 and r["dp_unit"] == "example" and r["train_examples"] == n
    assert r["accuracy"] > 0.5  # 10 classes: chance is 0.1
    # tensorflow_privacy's own calculator (Poisson-sampled Gaussian, RDP, its coarser order grid;
    # it takes ceil(epochs * N / B) steps, so give it a hair under 30).
    ref, _ = compute_dp_sgd_privacy_lib.compute_dp_sgd_privacy(n, 64, 1.0, (30 - 1e-6) * 64 / n, r["delta"])
    assert 0.99 * ref <= r["epsilon_rdp"] <= ref
    assert r["epsilon_pld"] < r["epsilon_rdp"]
    again = train_dp_sgd(cfg, data, epochs, noise_multiplier=1.0, batch_size=64, learning_rate=0.5)
    assert again["loss"] == r["loss"]  # a seed fixes batches and noise


def test_dp_sgd_noise_is_applied_and_target_epsilon_is_met(setup):
    from tff_lab.privacy.dpsgd import train_dp_sgd

    cfg, data = setup
    loud = train_dp_sgd(cfg, data, 1, noise_multiplier=300.0, batch_size=64, learning_rate=0.5)
    assert loud["accuracy"] < 0.35  # the noise dominates the clipped gradients
    t = train_dp_sgd(cfg, data, 1, target_epsilon=2.0, batch_size=64, learning_rate=0.5)
    assert t["epsilon_rdp"] <= 2.0 and t["epsilon_rdp"] == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(ConfigError):
        train_dp_sgd(cfg, data, 1, noise_multiplier=1.0, target_epsilon=1.0)
    with pytest.raises(ConfigError, match="delta"):
        train_dp_sgd(cfg, data, 1, noise_multiplier=1.0, delta=0.5)
