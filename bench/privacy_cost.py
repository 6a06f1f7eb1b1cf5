"""Cost of the per-round epsilon (RDP + bounded PLD) at small noise: seconds per round and spacing.

PYTHONPATH=. python bench/privacy_cost.py
"""

import time

from tff_lab.privacy.accounting import MechanismSpec, PrivacyLedger

for z in (0.05, 0.3, 1.0):
    ledger = PrivacyLedger(MechanismSpec("gaussian_fixed", z, 100, "poisson", sampling_rate=0.2, clip=1.0), 1e-5)
    times = []
    for r in range(1, 31):
        ledger.record_round([str(r)], True)
        t0 = time.perf_counter()
        eps = ledger.epsilon()
        times.append(time.perf_counter() - t0)
    print(
        f"z={z}: first round {times[0]:.3f} s, median later {sorted(times[1:])[len(times) // 2]:.3f} s, "
        f"max {max(times):.3f} s; after 30 rounds rdp {eps.rdp:.4g} pld {eps.pld:.4g} "
        f"(spacing {eps.pld_value_discretization_interval:g})"
    )
