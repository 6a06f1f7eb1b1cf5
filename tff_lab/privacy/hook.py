"""The privacy ledger as a training-loop hook: epsilon after every round, checked against what ran.

Per round: checks that the round did what the accountant assumes (the sampler's clients, all of
them aggregated, the examples TFF reports equal to what those clients hold), records the round
in the :class:`~tff_lab.privacy.accounting.PrivacyLedger`, and adds ``eps_rdp`` / ``eps_pld`` to
the metrics row. Before a round it stops training when that round would take epsilon past
``privacy.max_epsilon``. Its JSON state (the ledger) lives in every checkpoint, so a resumed
run accounts for every round exactly once; a checkpoint whose ledger was accounted with other
settings (e.g. another noise multiplier) is refused. At the end it writes ``RUN_DIR/privacy.json``.
"""

from __future__ import annotations

import json
import math
from typing import Optional

from tff_lab.errors import PrivacyAccountingError
from tff_lab.privacy.accounting import (
    DDP_ZEROING,
    Epsilon,
    PrivacyLedger,
    epsilon_sampling_known,
    headline_epsilon,
    library_versions,
)
from tff_lab.privacy.calibration import resolve_delta, spec_for
from tff_lab.privacy.release import coverage_report, publication_policy
from tff_lab.training.hooks import RoundHook, RoundInfo, RunContext


def ctx_audit(hook) -> bool:
    return bool(getattr(hook, "_audit", False))


class PrivacyHook(RoundHook):
    name = "privacy"

    def __init__(self):
        self.ledger: Optional[PrivacyLedger] = None
        self.stop_reason: Optional[str] = None
        self._last: Optional[Epsilon] = None
        self.checked_rounds = 0  # rounds whose aggregator state was compared with the ledger
        self.unchecked_rounds = 0  # rounds whose engine passed no state (RoundInfo.state)
        self.clip_history: list[float] = []  # adaptive clip after each checked round
        self._audit = False  # privacy.audit is on: keep the last model weights for the estimate
        self._final_weights = None

    # -- set-up ---------------------------------------------------------------------------------
    def on_start(self, ctx: RunContext) -> None:
        cfg = ctx.cfg
        if not cfg.privacy.enabled:
            raise ValueError("PrivacyHook needs privacy.mechanism")
        if ctx.noise_multiplier is None:
            raise PrivacyAccountingError("the run has no resolved noise multiplier to account")
        configured = cfg.privacy.noise_multiplier
        if configured is not None and float(ctx.noise_multiplier) != float(configured):
            raise PrivacyAccountingError(
                f"the aggregator runs with noise multiplier {ctx.noise_multiplier} but "
                f"privacy.noise_multiplier is {configured}"
            )
        k = cfg.privacy.audit.canaries
        ids = getattr(ctx.data, "client_ids", None)
        if k and ids is not None and ctx.population != len(ids) + k:
            raise PrivacyAccountingError(
                f"privacy.audit inserts {k} canary clients, but the run's population is "
                f"{ctx.population} for {len(ids)} clients: the canaries must be sampled "
                "like everyone (population = clients + canaries)"
            )
        self._final_weights = None
        dim = sum(int(math.prod(s)) for s in ctx.model_weight_shapes) if cfg.privacy.mechanism == "ddp_secure" else None
        spec = spec_for(cfg, ctx.population, ctx.noise_multiplier, dim)
        self.ledger = PrivacyLedger(spec, resolve_delta(cfg, ctx.population))
        self._last = None
        self.checked_rounds, self.unchecked_rounds, self.clip_history = 0, 0, []
        self._audit = bool(cfg.privacy.audit.canaries)

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return  # a fresh run; before_round checks that no rounds went unaccounted
        if self.ledger is None:
            raise PrivacyAccountingError("privacy state loaded before on_start")
        saved = PrivacyLedger.from_state_dict(state["ledger"])
        now = self.ledger
        if saved.spec != now.spec or saved.delta != now.delta:
            diffs = [
                f"{k}: checkpoint {v!r}, now {getattr(now.spec, k)!r}"
                for k, v in saved.spec.to_json().items()
                if getattr(now.spec, k) != v
            ]
            if saved.delta != now.delta:
                diffs.append(f"delta: checkpoint {saved.delta!r}, now {now.delta!r}")
            raise PrivacyAccountingError(
                "the checkpoint's privacy ledger was accounted with other settings ("
                + "; ".join(diffs)
                + "); resuming would mix two mechanisms in one "
                "epsilon. Start a new run instead."
            )
        self.ledger = saved
        self.stop_reason = state.get("stop_reason")
        check = state.get("state_check", {})
        self.checked_rounds = int(check.get("checked_rounds", 0))
        self.unchecked_rounds = int(check.get("unchecked_rounds", 0))
        self.clip_history = [float(c) for c in check.get("clip_history", [])]
        self._last = None

    def state_dict(self) -> dict:
        if not self.ledger:
            return {}
        return {
            "ledger": self.ledger.state_dict(),
            "stop_reason": self.stop_reason,
            "state_check": {
                "checked_rounds": self.checked_rounds,
                "unchecked_rounds": self.unchecked_rounds,
                "clip_history": self.clip_history,
            },
        }

    # -- rounds ---------------------------------------------------------------------------------
    def _sampler_choice(self, ctx: RunContext, round_num: int) -> list:
        from tff_lab.privacy.audit import client_name
        from tff_lab.sampling import sample_clients

        idx = sample_clients(ctx.cfg, ctx.population, round_num)
        ids = getattr(ctx.data, "client_ids", None)
        return [client_name(ids, i) for i in idx] if ids is not None else [str(int(i)) for i in idx]

    def before_round(self, ctx: RunContext, round_num: int) -> Optional[str]:
        ledger = self.ledger
        if ledger.rounds != round_num - 1:
            raise PrivacyAccountingError(
                f"round {round_num} is next but the privacy ledger holds {ledger.rounds} "
                "rounds: rounds ran unaccounted (or twice); epsilon would be wrong"
            )
        p = ctx.cfg.privacy
        if p.max_epsilon is None:
            return None
        nxt = self._sampler_choice(ctx, round_num) if ledger.spec.per_client_schedule else None
        eps = ledger.epsilon_if_next(nxt, with_pld=p.accountant == "pld").get(p.accountant)
        if eps is not None and eps > p.max_epsilon:
            self.stop_reason = (
                f"privacy budget: round {round_num} would reach epsilon {eps:.4g} ({p.accountant}, "
                f"delta {ledger.delta:.3g}) > privacy.max_epsilon {p.max_epsilon:g}"
            )
            return self.stop_reason
        return None

    def after_round(self, ctx: RunContext, info: RoundInfo, row: dict) -> None:
        ledger = self.ledger
        r = info.round_num
        if ledger.rounds != r - 1:
            raise PrivacyAccountingError(f"round {r} reported but the ledger holds {ledger.rounds} rounds")
        chosen = self._sampler_choice(ctx, r)
        if sorted(map(str, info.sampled_clients)) != sorted(map(str, chosen)):
            raise PrivacyAccountingError(
                f"round {r}: the clients that ran ({len(info.sampled_clients)}) are not the "
                f"sampler's choice ({len(chosen)}); the sampling accounted for did not run"
            )
        if info.participants != len(chosen):
            raise PrivacyAccountingError(
                f"round {r}: {info.participants} client updates were aggregated but the "
                f"sampler chose {len(chosen)}; the accounting assumes every sampled client "
                "contributes (a dropped client changes the mechanism)"
            )
        if chosen and not info.trained:
            raise PrivacyAccountingError(f"round {r}: {len(chosen)} clients sampled but the round did not run")
        # An empty Poisson round may run the aggregator on no clients (it then releases pure noise,
        # as the accounted mechanism does) or skip it; both are one sampled round.
        spec = ledger.spec
        if spec.sampling == "uniform" and len(chosen) != spec.clients_per_round:
            raise PrivacyAccountingError(
                f"round {r}: {len(chosen)} clients sampled, the accounting assumes exactly {spec.clients_per_round}"
            )
        if info.trained:
            seen = _num_examples(info.tff_metrics)
            if seen is None:
                raise PrivacyAccountingError(
                    f"round {r}: TFF reported no client_work.train.num_examples; cannot "
                    "check that the sampled clients' data is what was aggregated"
                )
            if seen != info.expected_examples:
                raise PrivacyAccountingError(
                    f"round {r}: TFF processed {seen} examples, the sampled clients hold "
                    f"{info.expected_examples}; what ran departs from what is accounted"
                )
        ledger.record_round(info.sampled_clients, info.trained)
        if spec.mechanism == "ddp_secure":
            # The adaptive clip sets the next round's scale and norm bounds: read them where they are.
            from tff_lab.privacy.ddp import params_from_state

            state = getattr(info, "state", None)
            ledger.ddp_next = params_from_state(state) if state is not None else None
            if ledger.ddp_next is None and not spec.zeroing and r < ctx.cfg.training.rounds:
                raise PrivacyAccountingError(
                    f"round {r}: the engine passed no distributed Skellam query state; "
                    "ddp_secure's next round cannot be accounted (its adaptive clip sets the "
                    "Skellam parameters)"
                )
        self._check_state(info, r)
        # RDP every round; the PLD (dearer than a round) at checkpoints, at the end, and every round
        # only when it is the accountant a budget is held to.
        t = ctx.cfg.training
        p = ctx.cfg.privacy
        with_pld = (
            r % t.rounds_per_checkpoint == 0 or r == t.rounds or (p.accountant == "pld" and p.max_epsilon is not None)
        )
        eps = ledger.epsilon(with_pld=with_pld)
        self._last = eps
        row["eps_rdp"] = _num(eps.rdp)
        row["eps_pld"] = _num(eps.pld)
        if p.max_epsilon is not None:
            e = eps.get(p.accountant)
            if e is not None and e > p.max_epsilon * (1 + 1e-9):
                raise PrivacyAccountingError(f"round {r} took epsilon to {e:.6g} > privacy.max_epsilon {p.max_epsilon}")

    def _check_state(self, info: RoundInfo, r: int) -> None:
        """The ledger against the DP aggregator's own state after the round (``info.state``, the
        engine's server state: for the TFF engine TFF's LearningProcess state). Rounds whose
        engine passes no state are counted as unchecked in privacy.json."""
        from tff_lab.privacy.state_check import check_aggregator_state

        state = getattr(info, "state", None)
        if state is None:
            self.unchecked_rounds += 1
            return
        observed = check_aggregator_state(self.ledger.spec, self.ledger.rounds, state, round_num=r)
        if ctx_audit(self):
            weights = getattr(state, "global_model_weights", None)
            if weights is not None:
                import numpy as np

                self._final_weights = [np.array(w) for w in weights.trainable]
        self.checked_rounds += 1
        if self.ledger.spec.mechanism == "gaussian_adaptive" and "clip" in observed:
            self.clip_history.append(round(float(observed["clip"]), 7))

    def progress_fields(self) -> dict:
        if self.ledger is None:
            return {}
        eps = self.ledger.epsilon()  # with the PLD (cached when the last round computed it)
        value = eps.rdp
        return {"eps": f"{value:.3g}" if value is not None else "-"}

    # -- end ------------------------------------------------------------------------------------
    def report(self, ctx: RunContext) -> dict:
        """The content of privacy.json."""
        cfg, ledger = ctx.cfg, self.ledger
        spec, p, t = ledger.spec, ctx.cfg.privacy, ctx.cfg.training
        eps = ledger.epsilon()
        sampling = {
            "scheme": "poisson" if spec.sampling == "poisson" else "uniform_without_replacement",
            "expected_clients_per_round": spec.expected_clients,
            "sampling_probability": spec.sampling_probability,
            "amplification_by_sampling": spec.amplified,
        }
        if spec.sampling == "poisson":
            sampling["rate"] = spec.sampling_rate
        else:
            sampling["clients_per_round"] = spec.clients_per_round
        clip: dict = {"kind": "adaptive" if spec.mechanism == "gaussian_adaptive" else "fixed"}
        if spec.mechanism == "gaussian_adaptive":
            clip.update(
                initial=p.clip,
                target_quantile=p.target_quantile,
                learning_rate=p.clip_learning_rate,
                clipped_count_stddev=spec.clipped_count_stddev,
            )
        elif spec.mechanism == "ddp_secure":
            clip = {
                "kind": "adaptive (TFF ddp_secure_aggregator, initial 0.1)",
                "clipped_count_stddev": spec.noise_components()["clipped_count_stddev"],
            }
        else:
            clip["norm"] = p.clip
        notes = []
        if spec.mechanism == "ddp_secure":
            if spec.zeroing:
                notes.append(DDP_ZEROING)
            else:
                notes.append(
                    "ddp_secure: epsilon is the Skellam RDP bound (Agarwal, Kairouz & Liu 2021, Thm 3.5) with "
                    "the L1/L2 bounds the distributed Skellam query asserts and the participants' summed noise, "
                    "in TFF's scaled integer domain, read from the aggregator state each round; neighbours: "
                    "one client's update replaced by zeros (REPLACE_SPECIAL); composed over the rounds each "
                    "client took part in, without amplification by sampling (dp_accounting has none for "
                    "Skellam), worst client reported"
                )
                notes.append(
                    "ddp_secure: the adaptive clip's clipped count is noised by the server (a central Gaussian); "
                    "against the server itself only the clients' Skellam noise protects the values"
                )
        if eps.pld_note and spec.mechanism != "ddp_secure":
            notes.append(eps.pld_note)
        if eps.pld_value_discretization_interval:
            notes.append(
                f"the PLD epsilon uses dp_accounting's pessimistic discretisation at spacing "
                f"{eps.pld_value_discretization_interval:g} (bounded so that its cost stays small; a valid "
                "upper bound, looser than a finer spacing)"
            )
        if spec.mechanism == "tree":
            notes.append(
                "DP-FTRL (tree aggregation): no amplification by sampling; epsilon is for the realised "
                "participation schedule (public, data-independent randomness), replace-with-zero neighbours"
            )
        sampling_known = None
        known = None
        if spec.amplified:
            k = _max_participations(ctx, ledger.rounds)
            known = epsilon_sampling_known(spec, k, ledger.delta)
            sampling_known = {
                "max_participations": k,
                "epsilon": known.to_json(),
                "why": "amplification by sampling assumes the sample is secret",
            }
            notes.append(
                "amplification by sampling assumes the server's choice of clients is secret; here it is a "
                "pure function of the experiment seed, which config.yaml records: anyone who knows the seed "
                "knows who was sampled each round, and against them the guarantee is "
                f"epsilon_if_sampling_known (the {k} rounds the most-sampled client took part in, without "
                "amplification), not epsilon. A deployment must draw the sample from secret randomness"
            )
        if p.reproducible_noise and spec.mechanism != "ddp_secure":
            notes.append(
                "DP noise is drawn from a seed derived from the experiment seed (reproducible simulation); "
                "anyone who knows the seed knows the noise, so this is a simulation guarantee"
            )
        return {
            "mechanism": spec.mechanism,
            "dp_unit": "client (user-level DP)",
            "neighbouring_relation": spec.neighbouring_relation.name,
            "noise_multiplier": spec.noise_multiplier,
            "noise_multiplier_source": (
                "calibrated from privacy.target_epsilon" if p.target_epsilon is not None else "privacy.noise_multiplier"
            ),
            "noise": spec.noise_components(),
            "noise_rng": ("seeded (privacy.reproducible_noise)" if p.reproducible_noise else "TFF default (unseeded)"),
            "clip": clip,
            "sampling": sampling,
            "population": spec.population,
            "rounds_run": ledger.rounds,
            "rounds_planned": t.rounds,
            "delta": ledger.delta,
            "delta_source": "privacy.delta" if p.delta is not None else "default min(1e-5, population^-1.1)",
            "epsilon": eps.to_json(),
            "epsilon_headline": headline_epsilon(eps, known),
            "epsilon_if_sampling_known": sampling_known,
            "accountant_for_budget": p.accountant,
            "target_epsilon": p.target_epsilon,
            "max_epsilon": p.max_epsilon,
            "stopped_by_budget": self.stop_reason,
            "ledger": ledger.ledger_events(),
            "aggregator_state_check": self._state_check_report(),
            "coverage": coverage_report(publication_policy(cfg, data=ctx.data), ctx.run_dir),
            "epsilon_empirical": self._empirical(ctx, eps),
            "notes": notes,
            "versions": library_versions(),
        }

    def _empirical(self, ctx: RunContext, eps: Epsilon) -> Optional[dict]:
        """The canary audit's estimate (privacy.audit), computed once at the end of the run."""
        if not self._audit:
            return None
        if getattr(self, "_empirical_cache", None) is not None:
            return self._empirical_cache
        from tff_lab.privacy.audit import empirical_report

        initial = getattr(ctx, "initial_weights", None)
        if initial is None or self._final_weights is None:
            return {
                "epsilon": None,
                "note": "not computed: the loop passed no initial weights (RunContext."
                "initial_weights) or no engine state (RoundInfo.state)",
            }
        theory = eps.pld if eps.pld is not None else eps.rdp
        self._empirical_cache = empirical_report(
            ctx.cfg, len(ctx.data.client_ids), initial, self._final_weights, self.ledger.delta, theory, ctx.run_dir
        )
        return self._empirical_cache

    def _state_check_report(self) -> dict:
        out = {
            "checked_rounds": self.checked_rounds,
            "unchecked_rounds": self.unchecked_rounds,
            "what": (
                "after every round the DP aggregator's own state (TFF's DPAggregatorState: the DpEvent its "
                "query emitted, the query's clip and noise stddev, the tree's leaf count, the seeded "
                "query's call count) is compared with the ledger; a difference stops the run "
                "(PrivacyAccountingError)"
            ),
        }
        if self.unchecked_rounds:
            out["note"] = (
                f"{self.unchecked_rounds} rounds ran on an engine that passed no server state to the "
                "privacy hook; their aggregator state was not compared with the ledger"
            )
        if self.clip_history:
            out["adaptive_clip_after_round"] = self.clip_history
        return out

    def on_end(self, ctx: RunContext, summary: dict) -> None:
        from tff_lab.fileio import atomic_write_text

        report = self.report(ctx)
        atomic_write_text(ctx.run_dir / "privacy.json", json.dumps(report, indent=1, allow_nan=False))
        summary["privacy"] = {
            "mechanism": report["mechanism"],
            "noise_multiplier": report["noise_multiplier"],
            "delta": report["delta"],
            "epsilon": {"rdp": report["epsilon"]["rdp"], "pld": report["epsilon"]["pld"]},
            "epsilon_headline": report["epsilon_headline"],
            "rounds": report["rounds_run"],
            "stopped_by_budget": report["stopped_by_budget"],
        }
        if report.get("epsilon_empirical"):
            summary["privacy"]["epsilon_empirical"] = report["epsilon_empirical"].get("epsilon")


def _max_participations(ctx: RunContext, rounds: int) -> int:
    from tff_lab.sampling import sample_clients

    counts = {}
    for r in range(1, rounds + 1):
        for i in sample_clients(ctx.cfg, ctx.population, r):
            counts[int(i)] = counts.get(int(i), 0) + 1
    return max(counts.values(), default=0)


def _num_examples(metrics: dict) -> Optional[int]:
    try:
        return int(metrics["client_work"]["train"]["num_examples"])
    except (KeyError, TypeError):
        return None


def _num(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)
