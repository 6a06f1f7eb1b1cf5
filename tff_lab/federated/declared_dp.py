"""Epsilon for a user's aggregator: only from what it declares, never guessed.

A user aggregation factory that is differentially private declares what one round does as a
``dp_accounting`` event: an attribute ``dp_event(cfg, population) -> dp_accounting.DpEvent``
(sampling included, e.g. ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``). This hook composes
that event once per round that ran, with dp_accounting's RDP and PLD accountants, adds
``eps_rdp``/``eps_pld`` to the metrics and writes ``privacy.json``. Without a declaration the
run reports no epsilon, and ``privacy.json`` says why.
"""

from __future__ import annotations

import json
import math
from typing import Optional

from tff_lab.training.hooks import RoundHook, RoundInfo, RunContext

_RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512, 1024]


class DeclaredPrivacyHook(RoundHook):
    name = "declared_privacy"

    def __init__(self, aggregator_name: str, dp_event_fn=None):
        self.aggregator_name = aggregator_name
        self.dp_event_fn = dp_event_fn
        self.event = None
        self.rounds = 0
        self.delta: Optional[float] = None
        self._eps: dict = {}

    def on_start(self, ctx: RunContext) -> None:
        if self.dp_event_fn is None:
            return
        import dp_accounting

        from tff_lab.errors import PartTypeError

        event = self.dp_event_fn(ctx.cfg, ctx.population)
        if not isinstance(event, dp_accounting.DpEvent):
            raise PartTypeError("aggregator", f"{self.aggregator_name}.dp_event returned {type(event).__name__}, "
                                "expected a dp_accounting.DpEvent for one round")
        self.event = event
        p = ctx.population
        self.delta = ctx.cfg.privacy.delta or min(1e-5, p ** -1.1)

    def state_dict(self) -> dict:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.rounds = int(state.get("rounds", 0))

    def _epsilon(self) -> dict:
        """RDP and PLD epsilon of the declared event composed over the rounds that ran, under the
        first neighbouring relation dp_accounting supports for it (add/remove, else replace-one:
        fixed-size sampling without replacement is only accounted under replace-one)."""
        import dp_accounting
        from dp_accounting import pld, rdp

        nr = dp_accounting.NeighboringRelation
        for relation in (nr.ADD_OR_REMOVE_ONE, nr.REPLACE_ONE):
            acc = rdp.RdpAccountant(_RDP_ORDERS, neighboring_relation=relation)
            if not acc.supports(self.event):
                continue
            acc.compose(self.event, self.rounds)
            out = {"rdp": float(acc.get_epsilon(self.delta)), "pld": None, "neighbouring_relation": relation.name}
            try:
                pacc = pld.PLDAccountant(neighboring_relation=relation, value_discretization_interval=1e-3)
                if pacc.supports(self.event):
                    pacc.compose(self.event, self.rounds)
                    out["pld"] = float(pacc.get_epsilon(self.delta))
            except (ValueError, dp_accounting.UnsupportedEventError):
                pass
            return out
        from tff_lab.errors import PrivacyAccountingError

        raise PrivacyAccountingError(f"{self.aggregator_name}.dp_event: dp_accounting's RDP accountant supports "
                                     f"this event under no neighbouring relation: {self.event!r}")

    def after_round(self, ctx: RunContext, info: RoundInfo, row: dict) -> None:
        if self.event is None:
            return
        self.rounds += 1
        self._eps = self._epsilon()
        row["eps_rdp"] = self._eps.get("rdp")
        row["eps_pld"] = self._eps.get("pld")

    def progress_fields(self) -> dict:
        v = self._eps.get("rdp")
        return {"eps": f"{v:.3g}"} if v is not None and math.isfinite(v) else {}

    def on_end(self, ctx: RunContext, summary: dict) -> None:
        from tff_lab.fileio import atomic_write_text

        if self.event is None:
            report = {"mechanism": f"user aggregator {self.aggregator_name}", "epsilon": None,
                      "why_no_epsilon": (f"the aggregator {self.aggregator_name} declares no dp_accounting event "
                                         "(an attribute dp_event(cfg, population) -> DpEvent for one round); tff_lab "
                                         "never guesses an epsilon")}
        else:
            eps = self._eps or (self._epsilon() if self.rounds else {"rdp": 0.0, "pld": 0.0})
            report = {"mechanism": f"user aggregator {self.aggregator_name}", "dp_event_per_round": repr(self.event), "rounds_run": self.rounds, "delta": self.delta, "epsilon": eps,
                      "source": "declared by the aggregator (dp_event), composed over the rounds that ran with "
                                "dp_accounting"}
        atomic_write_text(ctx.run_dir / "privacy.json", json.dumps(report, indent=1, default=repr))
        summary["privacy"] = {"mechanism": report["mechanism"], "epsilon": report.get("epsilon"),
                              "delta": report.get("delta"), "why_no_epsilon": report.get("why_no_epsilon")}
