"""Differential privacy: exact epsilon accounting (dp_accounting RDP and PLD), noise
calibration, the per-round privacy ledger hook and its check against the DP aggregator's state
(``state_check``), seeded DP queries, what a private run may publish (``release``), the canary
audit's empirical epsilon (``audit``) and the DP-SGD baseline."""

from tff_lab.privacy.accounting import (
    Epsilon,
    MechanismSpec,
    PrivacyLedger,
    default_delta,
    epsilon_for_rounds,
    tree_sensitivity_squared,
)

__all__ = [
    "Epsilon",
    "MechanismSpec",
    "PrivacyLedger",
    "default_delta",
    "epsilon_for_rounds",
    "tree_sensitivity_squared",
]
