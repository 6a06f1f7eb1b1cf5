"""Target epsilon -> noise multiplier -> epsilon round trips, delta defaults and refusals."""

from __future__ import annotations

import pytest

from tff_lab.config import load_config
from tff_lab.errors import ConfigError
from tff_lab.privacy.accounting import MechanismSpec, default_delta, epsilon_for_rounds
from tff_lab.privacy.calibration import (
    calibrate_noise_multiplier,
    planned_tree_leaves,
    resolve_delta,
    resolve_noise_multiplier,
)


@pytest.mark.parametrize(
    "spec,rounds,target,accountant",
    [
        (MechanismSpec("gaussian_fixed", 1.0, 3383, "poisson", sampling_rate=120 / 3383), 100, 1.0, "rdp"),
        (MechanismSpec("gaussian_fixed", 1.0, 1000, "uniform", clients_per_round=20), 50, 4.0, "rdp"),
    ],
    ids=["poisson-rdp", "uniform-rdp"],
)
def test_round_trip_meets_target_tightly(spec, rounds, target, accountant):
    z = calibrate_noise_multiplier(spec, rounds, 1e-5, target, accountant=accountant)
    import dataclasses

    at = epsilon_for_rounds(dataclasses.replace(spec, noise_multiplier=z), rounds, 1e-5).get(accountant)
    below = epsilon_for_rounds(dataclasses.replace(spec, noise_multiplier=z * 0.999), rounds, 1e-5).get(accountant)
    assert at <= target < below  # meets the target, and 0.1% less noise would not
    assert at == pytest.approx(target, rel=1e-3)


def test_pld_calibration_needs_less_noise_than_rdp():
    spec = MechanismSpec("gaussian_fixed", 1.0, 3383, "poisson", sampling_rate=120 / 3383)
    z_rdp = calibrate_noise_multiplier(spec, 100, 1e-5, 1.7074713, accountant="rdp")
    z_pld = calibrate_noise_multiplier(spec, 100, 1e-5, 1.7074713, accountant="pld")
    assert z_pld == pytest.approx(1.2, abs=2e-4)  # inverts the TFF tutorial's PLD epsilon
    assert z_rdp > z_pld
    import dataclasses

    assert epsilon_for_rounds(dataclasses.replace(spec, noise_multiplier=z_pld), 100, 1e-5).pld <= 1.7074713


def test_resolve_noise_for_adaptive_and_tree_configs():
    base = [
        "algorithm.weighting=uniform",
        "data.num_clients=50",
        "training.clients_per_round=5",
        "training.rounds=20",
        "privacy.target_epsilon=5.0",
    ]
    cfg = load_config(
        None, base + ["privacy.mechanism=gaussian_adaptive", "training.sampling=poisson", "training.sampling_rate=0.1"]
    )
    z = resolve_noise_multiplier(cfg, 50)
    spec = MechanismSpec.from_config(cfg, 50, z)
    assert epsilon_for_rounds(spec, 20, default_delta(50)).rdp <= 5.0
    tree = load_config(None, base + ["privacy.mechanism=tree"])
    zt = resolve_noise_multiplier(tree, 50)
    leaves = planned_tree_leaves(tree, 50)
    eps = epsilon_for_rounds(MechanismSpec.from_config(tree, 50, zt), 20, default_delta(50), leaves)
    assert eps.rdp == pytest.approx(5.0, rel=1e-3) and eps.rdp <= 5.0
    assert zt > z  # no amplification for the tree


def test_resolve_noise_passes_configured_value_through():
    cfg = load_config(
        None, ["algorithm.weighting=uniform", "privacy.mechanism=gaussian_fixed", "privacy.noise_multiplier=0.7"]
    )
    assert resolve_noise_multiplier(cfg, 20) == 0.7
    assert resolve_noise_multiplier(load_config(None, []), 20) is None


def test_delta_default_and_refusal():
    cfg = load_config(
        None, ["algorithm.weighting=uniform", "privacy.mechanism=gaussian_fixed", "privacy.noise_multiplier=1.0"]
    )
    assert resolve_delta(cfg, 20) == default_delta(20) == 1e-5
    # A natural source learns its population at load time: delta must still be below 1/population.
    cfg = load_config(
        None,
        [
            "algorithm.weighting=uniform",
            "privacy.mechanism=gaussian_fixed",
            "privacy.noise_multiplier=1.0",
            "data.source=npz_dir",
            "data.path=/nowhere",
            "privacy.delta=0.01",
        ],
    )
    with pytest.raises(ConfigError, match="privacy.delta"):
        resolve_delta(cfg, 200)
    assert resolve_delta(cfg, 99) == 0.01


@pytest.mark.parametrize("target,match", [(1e-4, "above"), (1e6, "vacuous")])
def test_unreachable_targets_are_config_errors(target, match):
    spec = MechanismSpec("gaussian_fixed", 1.0, 100, "poisson", sampling_rate=1.0)  # no sampling: fast RDP
    with pytest.raises(ConfigError, match=match):
        calibrate_noise_multiplier(spec, 10, 1e-5, target)


def test_ddp_and_pld_without_replacement_cannot_be_calibrated():
    with pytest.raises(ConfigError, match="zeroing"):  # TFF's adaptive zeroing is not DP: nothing to calibrate
        calibrate_noise_multiplier(
            MechanismSpec(
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
            ),
            10,
            1e-5,
            1.0,
            leaves=[["a"]] * 10,
        )
    with pytest.raises(ConfigError, match="privacy.accountant"):
        calibrate_noise_multiplier(
            MechanismSpec("gaussian_fixed", 1.0, 100, "uniform", clients_per_round=10), 10, 1e-5, 1.0, accountant="pld"
        )
