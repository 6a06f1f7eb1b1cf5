"""What a private run may publish, and what its epsilon covers.

**What epsilon covers.** The DP mechanism releases one noised aggregate per round. Every global
model (each round's and the final one) is a function of those aggregates, the initial weights
and the configuration (data-independent), so epsilon covers: the models (``model/``, the
float32/dynamic/float16 ``.tflite`` exports), anything computed only from them and public data
(server-side evaluation on a global test set that is *not* cut from the clients' data; the
canary cosines of the privacy audit), the adaptive clip (it is updated from a noised count the
ledger accounts), and facts that depend on no client's data (epsilon itself, the round index,
the fixed cohort size of uniform sampling, the configuration and parts provenance).

**What it does not cover.** Numbers TFF aggregates without noise: the clients' training
loss/accuracy and example counts per round, the number of clients a Poisson round sampled (the
sample size changes when a client joins: the amplification analysis releases only the noised
sum), round timings (they grow with the sampled clients' data), per-client evaluation, client
statistics and label histograms (``client_stats.json``, ``plots/heterogeneity.png``), the
centralized baseline (trained on the union of client data, without noise unless DP-SGD ran,
which its own report accounts), evaluation on a "global" test set cut from the clients' own
examples (synthetic data, ``npz_dir``/``csv_dir`` without a ``test`` file: ``FederatedData.test_source
== "clients"``), int8 exports (their quantization ranges are calibrated on client examples) and
export parity reports (measured on client evaluation splits), and checkpoints (the aggregator
state inside them holds the DP noise's seed, or for DP-FTRL the tree's noise itself: with it the
noise can be subtracted from the model).

Under DP and without ``privacy.release_unprotected: true`` the loop publishes only what epsilon
covers (:class:`Policy`); ``privacy.json`` lists every artifact of the run directory with
``covered_by_epsilon`` and the reason (:meth:`Policy.artifact_coverage`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional

# Metric columns that depend on no client's data (epsilon depends on the sampling schedule only).
_PUBLIC_COLUMNS = ("round", "eps_rdp", "eps_pld")
_EVAL_COLUMNS = ("eval_loss", "eval_accuracy")

COVERED_STATEMENT = (
    "epsilon covers every global model (each round's noised aggregate and everything computed from it: the final "
    "model, its float32/dynamic/float16 exports), any computation on those models with public data only (server-side "
    "evaluation on a global test set that is not client data, the audit's canary cosines), the adaptive clip, and "
    "data-independent facts (epsilon, round numbers, the uniform cohort size, the configuration). It does not cover "
    "anything computed from client data without the DP noise: training loss/accuracy and example counts aggregated "
    "by TFF, Poisson sample sizes, round timings, per-client evaluation, client statistics, the centralized baseline, "
    "evaluation on a test set cut from client data, int8 calibration, checkpoints (they hold the DP noise state)"
)


@dataclasses.dataclass(frozen=True)
class Policy:
    """The publication rules of one run (see the module docstring)."""

    private: bool  # a DP mechanism ran
    release_unprotected: bool  # privacy.release_unprotected: publish uncovered numbers anyway (listed)
    test_set_is_client_data: bool  # the global test set was cut from the clients' data
    sampling: str  # "uniform" | "poisson"
    reproducible_noise: bool
    mechanism: str = "none"
    epsilon_claimed: bool = True  # False: a DP mechanism ran but no epsilon is claimed for it

    @property
    def restricted(self) -> bool:
        """Whether anything is withheld: a DP run without the opt-in."""
        return self.private and not self.release_unprotected

    # -- per round ---------------------------------------------------------------------------
    def covered_columns(self) -> tuple[str, ...]:
        cols = list(_PUBLIC_COLUMNS)
        if self.sampling == "uniform":
            cols.append("clients")  # the fixed cohort size, set by the config
        if not self.test_set_is_client_data:
            cols += _EVAL_COLUMNS
        return tuple(cols)

    def filter_row(self, row: dict) -> dict:
        """The round's metrics row as it may be published: under restriction only covered columns
        (an allow-list: a column added later by anyone is withheld until it is classified here)."""
        if not self.restricted:
            return dict(row)
        keep = self.covered_columns()
        return {k: v for k, v in row.items() if k in keep}

    def progress_fields(self, row: dict) -> dict:
        """Short progress-bar fields from a (filtered) row: under DP epsilon and server-side evaluation only."""
        out = {}
        r = self.filter_row(row)
        if self.restricted:
            if r.get("eps_rdp") is not None:
                out["eps"] = f"{r['eps_rdp']:.3g}"
        else:
            for k, label in (("train_loss", "loss"), ("train_accuracy", "acc")):
                if r.get(k) is not None:
                    out[label] = f"{r[k]:.3f}"
        if r.get("eval_accuracy") is not None:
            out["test_acc"] = f"{r['eval_accuracy']:.3f}"
        return out

    # -- end of run --------------------------------------------------------------------------
    def allow_client_stats(self) -> bool:
        """client_stats.json and plots/heterogeneity.png (per-client counts and label histograms)."""
        return not self.restricted

    def allow_per_client_eval(self) -> bool:
        """Per-client evaluation spreads (the final model on each client's own evaluation split)."""
        return not self.restricted

    def allow_global_eval(self) -> bool:
        """Evaluation on the global test set (withheld when that set is client data)."""
        return not (self.restricted and self.test_set_is_client_data)

    def allow_centralized_baseline(self) -> bool:
        """The centralized baseline (trained on the union of the clients' data)."""
        return not self.restricted

    def filter_summary(self, summary: dict) -> dict:
        """summary.json as it may be published: uncovered entries withheld (set to None, so the
        file keeps its shape), with ``withheld_by_privacy_policy`` naming them."""
        if not self.restricted:
            return dict(summary)
        out = dict(summary)
        withheld = []

        def drop(key, value=None):
            if key in out and out[key] not in (None, {}, []):
                withheld.append(key)
            out[key] = value

        for key in (
            "per_client_eval_accuracy",
            "centralized",
            "centralized_accuracy",
            "retention",
            "example_passes",
            "train_seconds",
            "wall_seconds",
            "seconds_per_round_median",
        ):
            if key in out:
                drop(key, {} if key == "per_client_eval_accuracy" else None)
        if not self.allow_global_eval():
            for key in ("final_test_accuracy", "final_test_loss"):
                if key in out:
                    drop(key)
        data = out.get("data")
        if isinstance(data, dict):
            kept = {k: v for k, v in data.items() if k in ("num_clients", "num_classes", "test_set")}
            if set(data) - set(kept):
                withheld.append("data." + ",".join(sorted(set(data) - set(kept))))
            out["data"] = kept
        out["withheld_by_privacy_policy"] = withheld
        return out

    # -- privacy.json ------------------------------------------------------------------------
    def artifact_coverage(self, run_dir_listing: Iterable[Any]) -> list[dict]:
        """Every artifact in ``run_dir_listing`` (paths relative to RUN_DIR, files or top-level
        directories) with ``covered_by_epsilon`` and the reason; an artifact not covered but
        present says why it was released (``privacy.release_unprotected``, or not private)."""
        out = []
        seen = set()
        for item in sorted(str(p).replace("\\", "/").rstrip("/") for p in run_dir_listing):
            if not item or item in seen:
                continue
            seen.add(item)
            covered, reason = self._classify(item)
            entry = {"artifact": item, "covered_by_epsilon": covered, "reason": reason}
            if not covered:
                entry["released_because"] = (
                    "privacy.release_unprotected: true"
                    if self.release_unprotected
                    else (
                        "no DP mechanism ran" if not self.private else "internal state for resuming; never publish it"
                    )
                )
            out.append(entry)
        return out

    def _classify(self, item: str) -> tuple[bool, str]:
        name = item.split("/")[-1]
        top = item.split("/")[0]
        if not self.private:
            return False, "no DP mechanism ran: no epsilon"
        if not self.epsilon_claimed:
            return False, (
                "no epsilon is claimed for this run (ddp_secure with adaptive zeroing, whose threshold "
                "moves by unnoised counts)"
            )
        rows = (
            "all columns, including ones epsilon does not cover (privacy.release_unprotected)"
            if self.release_unprotected
            else "only the columns epsilon covers: " + ", ".join(self.covered_columns())
        )
        if top == "model":
            return True, "the final model: a post-processing of the noised aggregates"
        if top == "export":
            if "int8" in name:
                return False, "int8 quantization ranges are calibrated on client training examples"
            if name.startswith("report"):
                return False, "the parity report evaluates on the clients' evaluation splits"
            return True, "a conversion of the final model (no data)"
        if top == "checkpoints":
            return False, (
                "checkpoints hold the aggregator state: the DP noise's seed (or the tree's noise), with "
                "which the noise can be subtracted; and unnoised counters"
            )
        if name == "config.yaml":
            if self.reproducible_noise:
                return False, (
                    "data-independent, but its seed fixes the DP noise (privacy.reproducible_noise) and the "
                    "client sampling: with it the noise can be recomputed (a simulation guarantee)"
                )
            return True, "data-independent settings (its seed fixes the client sampling: see epsilon_if_sampling_known)"
        if name == "parts.json":
            return True, "data-independent provenance of the run's parts"
        if name in ("privacy.json", "privacy_audit.json"):
            return True, (
                "epsilon, the mechanism and the audit's cosines depend on the sampling schedule and the "
                "final model only"
            )
        if name == "client_stats.json" or name == "heterogeneity.png":
            return False, "per-client example counts and label histograms, computed from client data without noise"
        if (
            name in ("metrics.csv", "metrics.jsonl")
            or top == "tb"
            or (top == "plots" and name in ("accuracy.png", "loss.png"))
        ):
            return (not self.release_unprotected), rows
        if name == "summary.json":
            if self.release_unprotected:
                return False, "includes uncovered numbers (training counts, per-client evaluation, baselines, timings)"
            return True, "uncovered entries are withheld (withheld_by_privacy_policy lists them)"
        if top == "plots" or name.endswith(".png"):
            return False, "a plot not classified by the privacy policy"
        return False, "not classified by the privacy policy: treat it as not covered"


def publication_policy(cfg, data: Optional[Any] = None, declared_dp: bool = False) -> Policy:
    """The publication policy of a run. ``data`` (the run's ``FederatedData``) tells whether the
    global test set is client data (``test_source``); without it this is decided from
    ``cfg.data.source`` conservatively: only bundled datasets (a test split held out before the
    partition) count as separate. ``declared_dp``: a user aggregator declares a DP event (its
    run is published under the same rules as tff_lab's own DP mechanisms)."""
    p = cfg.privacy
    source = getattr(data, "test_source", None) if data is not None else None
    if source is None:
        source = "separate" if cfg.data.source in ("digits", "breast_cancer") else "clients"
    return Policy(
        private=bool(p.enabled) or bool(declared_dp),
        release_unprotected=bool(p.release_unprotected),
        test_set_is_client_data=(source == "clients"),
        sampling=cfg.training.sampling,
        reproducible_noise=bool(p.reproducible_noise) if p.enabled else False,
        mechanism=p.mechanism if p.enabled else "declared",
        epsilon_claimed=not (p.mechanism == "ddp_secure" and cfg.aggregation.zeroing),
    )


def run_dir_listing(run_dir) -> list[str]:
    """The entries :meth:`Policy.artifact_coverage` classifies: files at the top level, and the
    files of ``plots/`` and ``export/``; other directories (``model``, ``checkpoints``, ``tb``) as one entry."""
    from pathlib import Path

    run_dir = Path(run_dir)
    out = []
    if not run_dir.exists():
        return out
    for p in sorted(run_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() and p.name in ("plots", "export"):
            out += [f"{p.name}/{q.name}" for q in sorted(p.iterdir()) if q.is_file() and not q.name.startswith(".")]
        else:
            out.append(p.name)
    return out


# Files the loop writes after the privacy hook's on_end (finalize), predicted so privacy.json lists them.
_WRITTEN_AFTER_PRIVACY_JSON = ("summary.json", "plots/accuracy.png", "plots/loss.png", "metrics.csv")


def coverage_report(policy: Policy, run_dir, *, final: bool = False) -> dict:
    """The ``coverage`` part of privacy.json. ``final``: the listing is complete (called after
    everything is written); otherwise the files the loop writes later are added by name."""
    listing = set(run_dir_listing(run_dir))
    if not final:
        listing |= set(_WRITTEN_AFTER_PRIVACY_JSON)
        if policy.allow_client_stats():
            listing.add("plots/heterogeneity.png")
    listing.add("privacy.json")
    return {
        "statement": COVERED_STATEMENT,
        "release_unprotected": policy.release_unprotected,
        "global_test_set": "client data" if policy.test_set_is_client_data else "separate from client data",
        "artifacts": policy.artifact_coverage(listing),
    }


def update_privacy_json(run_dir, policy: Policy) -> None:
    """Rewrites RUN_DIR/privacy.json's ``coverage`` from the final listing (call after the last
    artifact is written, e.g. at the end of finalize or after ``tff-lab export``)."""
    import json
    from pathlib import Path

    from tff_lab.fileio import atomic_write_text

    path = Path(run_dir) / "privacy.json"
    report = json.loads(path.read_text())
    report["coverage"] = coverage_report(policy, run_dir, final=True)
    atomic_write_text(path, json.dumps(report, indent=1, allow_nan=False))
