"""Differential privacy: exact epsilon accounting (dp_accounting RDP and PLD), noise
calibration, the per-round privacy ledger hook, seeded DP queries and the DP-SGD baseline."""

from tff_lab.privacy.accounting import (Epsilon, MechanismSpec, PrivacyLedger, default_delta, epsilon_for_rounds,
                                        tree_sensitivity_squared)

__all__ = ["Epsilon", "MechanismSpec", "PrivacyLedger", "default_delta", "epsilon_for_rounds",
           "tree_sensitivity_squared"]
