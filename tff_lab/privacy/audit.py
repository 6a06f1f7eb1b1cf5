"""One-shot empirical privacy estimation with canary clients (Andrew et al., ICLR 2024).

Idea (ported, not the authors' code): ``K`` canary clients join the population and are sampled
like everyone; a canary's update is a fixed random direction of norm = the clip, so clipping
leaves it unchanged and it is the worst case the clip allows. ``K2`` more directions are drawn
the same way but never inserted. After training, the cosine between the model's change and each
direction is measured. In the high-dimensional model space an unseen direction is nearly
orthogonal to everything: its cosines are ~ N(0, sigma^2) (the null). A seen canary pulls the
model towards itself: its cosines are ~ N(mu, sigma^2). Telling the two apart from one
observation is then a Gaussian mechanism with sensitivity mu / sigma, whose epsilon at the run's
delta is the estimate (dp_accounting's ``GaussianPrivacyLoss`` gives delta(eps) exactly; eps is
the root of delta(eps) = delta). It is an *estimate* of how much a worst-case client's presence
shows in the final model, not a certified bound: the paper's argument is that a one-shot
membership test on these canaries at that epsilon is as good as the Gaussian model says. It
uses only the final model (the paper's "final model" variant); the adversary of the theoretical
epsilon also sees every intermediate model, so the empirical value is expected to sit below it.

Confidence: the canaries are resampled (bootstrap, seeded): the interval of mu / sigma, mapped
through the monotone eps(mu / sigma), is the interval of the estimate.

Engine interface: :class:`CanarySet` says which population indices are canaries and what each
one's model update is (``update_for(client_index)`` -> per-weight arrays). An engine running an
audit must, for a sampled canary, hand the DP aggregator that update as the client's model delta
(TFF's convention: ``initial - trained`` weights) instead of training, and the population the
sampler and the ledger see is ``canaries.total_population``. Without an engine that does this,
:func:`simulate_dp_fedavg` runs the exact DP-FedAvg aggregation (tff_lab's seeded Gaussian query:
clip, sum, noise, divide by the expected clients) on synthetic updates, which is what the
tests and ``experiments/privacy_audit.py`` use.

Also considered: tensorflow_privacy's membership-inference attacks (not in its 0.9.0 wheel;
they audit example-level membership from losses, not a client's contribution to the update);
the Clopper-Pearson / thresholded-test lower bounds of Jagielski et al. 2020 and Nasr et al.
2021 (need hundreds to thousands of training runs for a meaningful bound; the one-shot method
needs one run); and a two-variance Gaussian fit (no closed-form dp_accounting mechanism for it).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

CANARY_STREAM = 0xCA7A  # separates canary directions from other uses of the seed
METHOD = (
    "one-shot empirical privacy estimate (Andrew et al., ICLR 2024): cosines of the final model delta with "
    "inserted vs unseen canary directions, both modelled as Gaussians of one variance (unseen mean 0); "
    "epsilon of the Gaussian mechanism with sensitivity mu/sigma at the run's delta (dp_accounting "
    "GaussianPrivacyLoss); bootstrap interval over canaries"
)


# --------------------------------------------------------------------------------------------
# Canaries
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CanarySet:
    """``seen`` canary clients at population indices ``population .. population + seen - 1`` and
    ``unseen`` held-back directions, all unit directions in the flattened update space (seeded)
    scaled to norm ``clip`` (times ``1 - 1e-6``, so that float32 rounding never triggers clipping)."""

    shapes: Sequence[Sequence[int]]
    clip: float
    seen: int
    unseen: int
    seed: int
    population: int  # real clients; canaries come after them

    def __post_init__(self):
        if self.seen < 1 or self.unseen < 1:
            raise ValueError(f"an audit needs seen >= 1 and unseen >= 1 canaries, got {self.seen}, {self.unseen}")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ValueError(f"clip must be > 0, got {self.clip}")
        self.shapes = [tuple(int(d) for d in s) for s in self.shapes]
        self._dirs: Optional[np.ndarray] = None

    @property
    def dim(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes))

    @property
    def total_population(self) -> int:
        return self.population + self.seen

    def directions(self) -> np.ndarray:
        """(seen + unseen, dim) unit vectors (float64); the first ``seen`` rows are inserted."""
        if self._dirs is None:
            rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), CANARY_STREAM]))
            g = rng.standard_normal((self.seen + self.unseen, self.dim))
            self._dirs = g / np.linalg.norm(g, axis=1, keepdims=True)
        return self._dirs

    def is_canary(self, client_index: int) -> bool:
        return self.population <= int(client_index) < self.total_population

    def canary_indices(self) -> np.ndarray:
        return np.arange(self.population, self.total_population)

    def update_for(self, client_index: int) -> list[np.ndarray]:
        """The model update (TFF's client delta) a sampled canary client sends, per weight, float32."""
        if not self.is_canary(client_index):
            raise ValueError(
                f"client {client_index} is not a canary (canaries are {self.population}..{self.total_population - 1})"
            )
        vec = self.directions()[int(client_index) - self.population] * (self.clip * (1 - 1e-6))
        return unflatten(vec.astype(np.float32), self.shapes)

    def cosines(self, delta_flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(seen, unseen) cosines between ``delta_flat`` and the directions."""
        cos = cosines(delta_flat, self.directions())
        return cos[: self.seen], cos[self.seen :]


def flatten(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def unflatten(vec: np.ndarray, shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    out, i = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(vec[i : i + n].reshape(s))
        i += n
    return out


def model_delta(initial: Sequence[np.ndarray], final: Sequence[np.ndarray]) -> np.ndarray:
    """``initial - final`` trainable weights, flattened: the direction of the aggregated client
    updates in TFF's convention (a client's update is ``initial - trained``)."""
    return flatten(initial) - flatten(final)


def cosines(delta_flat: np.ndarray, directions: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(delta_flat))
    if norm == 0:
        raise ValueError("the model did not change: no cosine is defined")
    return directions @ (np.asarray(delta_flat, dtype=np.float64) / norm) / np.linalg.norm(directions, axis=1)


# --------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------


def gaussian_epsilon(sensitivity_over_sigma: float, delta: float) -> float:
    """Epsilon at ``delta`` of the Gaussian mechanism with sensitivity / stddev = ``sensitivity_over_sigma``.

    delta(eps) is dp_accounting's exact ``GaussianPrivacyLoss.get_delta_for_epsilon``; eps is its
    root (scipy's brentq). Equal to dp_accounting's PLD accountant on ``GaussianDpEvent(1 / mu)``
    (checked in the tests), without its cost for tiny noise."""
    from dp_accounting.pld import privacy_loss_mechanism
    from scipy.optimize import brentq

    mu = float(sensitivity_over_sigma)
    if not mu > 0:
        return 0.0
    if not math.isfinite(mu):
        return math.inf
    loss = privacy_loss_mechanism.GaussianPrivacyLoss(standard_deviation=1.0 / mu, sensitivity=1.0)

    def f(eps):
        return loss.get_delta_for_epsilon(eps) - delta

    if f(0.0) <= 0:
        return 0.0
    hi = 1.0
    while f(hi) > 0:
        hi *= 2
        if hi > 1e12:  # pragma: no cover
            return math.inf
    return float(brentq(f, hi / 2 if hi > 1 else 0.0, hi, xtol=1e-12, rtol=1e-10))


@dataclasses.dataclass(frozen=True)
class EmpiricalEpsilon:
    epsilon: float
    ci_low: float
    ci_high: float
    confidence: float
    mu: float  # mean cosine of the seen canaries
    sigma: float  # stddev of the null (unseen) cosines, mean 0
    delta: float
    seen: int
    unseen: int
    bootstrap: int

    def to_json(self) -> dict:
        return {
            "epsilon": _fin(self.epsilon),
            "interval": [_fin(self.ci_low), _fin(self.ci_high)],
            "confidence": self.confidence,
            "delta": self.delta,
            "mu_seen_cosine": self.mu,
            "sigma_unseen_cosine": self.sigma,
            "mu_over_sigma": self.mu / self.sigma if self.sigma > 0 else None,
            "canaries": {"seen": self.seen, "unseen": self.unseen},
            "bootstrap_resamples": self.bootstrap,
            "resolution_epsilon": self.resolution,
            "resolution_note": (
                "with this many inserted canaries the mean cosine is known to about "
                "sigma/sqrt(seen): estimates below resolution_epsilon (mu/sigma = 2/sqrt(seen)) "
                "cannot be told from no leakage"
            ),
            "method": METHOD,
        }

    @property
    def resolution(self) -> float:
        return gaussian_epsilon(2.0 / math.sqrt(self.seen), self.delta)


def _fin(x):
    return float(x) if math.isfinite(x) else None


def _ratio(seen: np.ndarray, unseen: np.ndarray) -> float:
    sigma = math.sqrt(float(np.mean(np.square(unseen))))  # MLE of N(0, sigma^2)
    return float(np.mean(seen)) / sigma if sigma > 0 else math.inf


def estimate_epsilon(
    seen_cosines: Sequence[float],
    unseen_cosines: Sequence[float],
    delta: float,
    *,
    confidence: float = 0.95,
    bootstrap: int = 1000,
    seed: int = 0,
) -> EmpiricalEpsilon:
    """The one-shot estimate from the canaries' cosines, with a bootstrap interval (see module doc)."""
    seen = np.asarray(seen_cosines, dtype=np.float64)
    unseen = np.asarray(unseen_cosines, dtype=np.float64)
    if len(seen) < 2 or len(unseen) < 2:
        raise ValueError("the estimate needs at least 2 seen and 2 unseen canaries")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    sigma = math.sqrt(float(np.mean(np.square(unseen))))
    mu = float(np.mean(seen))
    ratio = mu / sigma if sigma > 0 else math.inf
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), CANARY_STREAM, 1]))
    ratios = np.array(
        [_ratio(rng.choice(seen, len(seen)), rng.choice(unseen, len(unseen))) for _ in range(int(bootstrap))]
    )
    lo_q, hi_q = np.quantile(ratios, [(1 - confidence) / 2, (1 + confidence) / 2])
    return EmpiricalEpsilon(
        epsilon=gaussian_epsilon(ratio, delta),
        ci_low=gaussian_epsilon(lo_q, delta),
        ci_high=gaussian_epsilon(hi_q, delta),
        confidence=float(confidence),
        mu=mu,
        sigma=sigma,
        delta=float(delta),
        seen=len(seen),
        unseen=len(unseen),
        bootstrap=int(bootstrap),
    )


# --------------------------------------------------------------------------------------------
# The plot
# --------------------------------------------------------------------------------------------


def plot_cosines(
    seen: Sequence[float],
    unseen: Sequence[float],
    path,
    *,
    title: str = "",
    estimate: Optional[EmpiricalEpsilon] = None,
    theoretical: Optional[float] = None,
):
    """Histograms of the seen and unseen canary cosines with the fitted Gaussians."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    from tff_lab.fileio import atomic_path

    seen, unseen = np.asarray(seen), np.asarray(unseen)
    fig, ax = plt.subplots(figsize=(6, 4))
    lo, hi = float(min(seen.min(), unseen.min())), float(max(seen.max(), unseen.max()))
    pad = 0.1 * (hi - lo or 1.0)
    bins = np.linspace(lo - pad, hi + pad, 31)
    ax.hist(unseen, bins=bins, alpha=0.5, density=True, label=f"unseen canaries ({len(unseen)})")
    ax.hist(seen, bins=bins, alpha=0.5, density=True, label=f"inserted canaries ({len(seen)})")
    if estimate is not None and estimate.sigma > 0:
        xs = np.linspace(bins[0], bins[-1], 400)
        ax.plot(xs, norm.pdf(xs, 0, estimate.sigma), color="C0")
        ax.plot(xs, norm.pdf(xs, estimate.mu, estimate.sigma), color="C1")
    text = []
    if estimate is not None:
        text.append(f"empirical eps {estimate.epsilon:.3g} [{estimate.ci_low:.3g}, {estimate.ci_high:.3g}]")
    if theoretical is not None:
        text.append(f"theoretical eps {theoretical:.3g}")
    ax.set_xlabel("cosine(final model delta, canary direction)")
    ax.set_ylabel("density")
    ax.set_title((title + "\n" if title else "") + "; ".join(text), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Simulation of the exact DP-FedAvg aggregation (for engines without canary support)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SimulationResult:
    delta_flat: np.ndarray  # initial - final, flattened (sum of the released aggregates, server lr 1)
    canaries: CanarySet
    rounds: int
    participations: np.ndarray  # per inserted canary
    events: list  # the DpEvent the query emitted each round


def simulate_dp_fedavg(
    *,
    noise_multiplier: float,
    clip: float,
    population: int,
    sampling_rate: float,
    rounds: int,
    canaries: CanarySet,
    seed: int,
    real_update_norm: float = 2.0,
    real_drift: float = 0.1,
) -> SimulationResult:
    """DP-FedAvg's aggregation, exactly as tff_lab runs it, over synthetic client updates.

    Each round Poisson-samples the ``canaries.total_population`` clients at ``sampling_rate``
    (:func:`tff_lab.sampling.sample_clients`'s rule: each independently); a sampled canary sends
    ``canaries.update_for(i)``, a real client a random update of norm ``real_update_norm`` around
    a shared drift direction (so that real clients agree, as training does); the updates go
    through :func:`tff_lab.privacy.queries.seeded_gaussian_fixed_query` (clip, sum, Gaussian noise
    of stddev ``noise_multiplier * clip``, divide by the expected clients), and the released
    aggregates add up to the model change (server SGD, learning rate 1). ``noise_multiplier`` 0
    gives the same run without noise (a non-private baseline the audit must flag).
    """
    import tensorflow as tf

    from tff_lab.privacy.queries import seeded_gaussian_fixed_query

    n = canaries.total_population
    expected = sampling_rate * n
    query = seeded_gaussian_fixed_query(float(noise_multiplier), float(expected), float(clip), int(seed))
    gs = query.initial_global_state()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), CANARY_STREAM, 2]))
    d = canaries.dim
    drift = rng.standard_normal(d)
    drift /= np.linalg.norm(drift)
    template = [tf.zeros(s, tf.float32) for s in canaries.shapes]

    @tf.function(reduce_retracing=True)
    def add_all(sample, params, records):
        # The query's own per-record clipping and summing, over the round's stacked updates.
        def body(acc, record):
            return query.accumulate_preprocessed_record(acc, query.preprocess_record(params, record))

        return tf.foldl(body, records, initializer=sample)

    total = np.zeros(d)
    part = np.zeros(canaries.seen, dtype=np.int64)
    events = []
    for _ in range(int(rounds)):
        chosen = np.flatnonzero(rng.random(n) < sampling_rate)
        params = query.derive_sample_params(gs)
        sample = query.initial_sample_state(template)
        updates = []
        for i in chosen:
            if canaries.is_canary(i):
                updates.append(flatten(canaries.update_for(i)).astype(np.float32))
                part[int(i) - canaries.population] += 1
            else:
                v = real_drift * drift + rng.standard_normal(d) / math.sqrt(d)
                updates.append((v / np.linalg.norm(v) * real_update_norm).astype(np.float32))
        if updates:
            stacked = np.stack(updates)
            records = [
                tf.constant(stacked[:, off : off + int(np.prod(s))].reshape((len(updates), *s)))
                for off, s in zip(np.cumsum([0] + [int(np.prod(s)) for s in canaries.shapes])[:-1], canaries.shapes)
            ]
            sample = add_all(sample, params, records)
        result, gs, event = query.get_noised_result(sample, gs)
        events.append(event)
        total += flatten([r.numpy() for r in result])
    return SimulationResult(delta_flat=total, canaries=canaries, rounds=int(rounds), participations=part, events=events)


def audit_simulation(
    *,
    noise_multiplier: float,
    clip: float,
    population: int,
    sampling_rate: float,
    rounds: int,
    seen: int,
    unseen: int,
    dim: int,
    seed: int,
    delta: Optional[float] = None,
    bootstrap: int = 1000,
) -> dict:
    """Simulate, estimate, and put the ledger's theoretical epsilon beside the empirical one."""
    from tff_lab.privacy.accounting import MechanismSpec, default_delta, epsilon_for_rounds

    canaries = CanarySet(shapes=[(dim,)], clip=clip, seen=seen, unseen=unseen, seed=seed, population=population)
    sim = simulate_dp_fedavg(
        noise_multiplier=noise_multiplier,
        clip=clip,
        population=population,
        sampling_rate=sampling_rate,
        rounds=rounds,
        canaries=canaries,
        seed=seed,
    )
    delta = float(delta if delta is not None else default_delta(canaries.total_population))
    s, u = canaries.cosines(sim.delta_flat)
    est = estimate_epsilon(s, u, delta, bootstrap=bootstrap, seed=seed)
    theory = None
    if noise_multiplier > 0:
        spec = MechanismSpec(
            "gaussian_fixed",
            float(noise_multiplier),
            canaries.total_population,
            "poisson",
            sampling_rate=float(sampling_rate),
            clip=float(clip),
        )
        theory = epsilon_for_rounds(spec, rounds, delta).to_json()
    return {
        "noise_multiplier": noise_multiplier,
        "rounds": rounds,
        "sampling_rate": sampling_rate,
        "population": canaries.total_population,
        "dim": dim,
        "delta": delta,
        "epsilon_theoretical": theory,
        "epsilon_empirical": est.to_json(),
        "mean_canary_participations": float(sim.participations.mean()),
        "seen_cosines": s.tolist(),
        "unseen_cosines": u.tolist(),
    }


# --------------------------------------------------------------------------------------------
# Canaries inside the DP aggregation (engine-agnostic: both engines run the aggregator's query)
# --------------------------------------------------------------------------------------------

AUDIT_MECHANISMS = ("gaussian_fixed",)


def canaries_for(cfg, population: int, shapes: Sequence[Sequence[int]]) -> Optional[CanarySet]:
    """The run's canaries from ``privacy.audit`` (None when off): seeded by the experiment seed,
    norm = ``privacy.clip``, at population indices ``population ..``."""
    from tff_lab.errors import ConfigError

    a, p = cfg.privacy.audit, cfg.privacy
    if not a.canaries:
        return None
    if p.mechanism not in AUDIT_MECHANISMS:
        raise ConfigError(
            "privacy.audit",
            f"the canary audit supports {', '.join(AUDIT_MECHANISMS)} (a fixed clip: "
            f"the canary's norm is the clip), not '{p.mechanism}'",
        )
    return CanarySet(
        shapes=[tuple(s) for s in shapes],
        clip=float(p.clip),
        seen=int(a.canaries),
        unseen=int(a.unseen),
        seed=int(cfg.seed),
        population=int(population),
    )


def participation_mask(cfg, canaries: CanarySet, rounds: Optional[int] = None) -> np.ndarray:
    """(rounds, seen) float32: whether :func:`tff_lab.sampling.sample_clients` over the population
    with the canaries picks each canary in each round (row r-1 is round r)."""
    from tff_lab.sampling import sample_clients

    rounds = int(rounds or cfg.training.rounds)
    mask = np.zeros((rounds, canaries.seen), dtype=np.float32)
    for r in range(1, rounds + 1):
        idx = sample_clients(cfg, canaries.total_population, r)
        idx = idx[idx >= canaries.population] - canaries.population
        mask[r - 1, idx] = 1.0
    return mask


def audit_population(cfg, num_clients: int) -> int:
    """The population the sampler and the ledger see: the clients plus the canaries of a private audit."""
    return int(num_clients) + (int(cfg.privacy.audit.canaries) if cfg.privacy.enabled else 0)


def round_clients(cfg, client_ids: Sequence[str], round_num: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(sampled indices over the audit population, the real ones among them, names of all sampled).

    What the loop does each round of a run (audit or not): the engine trains the real clients;
    :class:`~tff_lab.training.hooks.RoundInfo` gets every sampled name and ``participants`` = all
    sampled (a canary's update enters the aggregator's sum, see :func:`canary_query`)."""
    from tff_lab.sampling import sample_clients

    idx = sample_clients(cfg, audit_population(cfg, len(client_ids)), round_num)
    return idx, idx[idx < len(client_ids)], [client_name(client_ids, i) for i in idx]


def client_name(client_ids: Sequence[str], index: int) -> str:
    """A client's name; canaries (indices past the real clients) are ``canary_<k>``."""
    i = int(index)
    return str(client_ids[i]) if i < len(client_ids) else f"canary_{i - len(client_ids)}"


def canary_query(inner, canaries: CanarySet, mask: np.ndarray):
    """``inner`` (a tensorflow_privacy sum-aggregation query, e.g. tff_lab's seeded Gaussian query)
    with the round's sampled canaries' updates added to the clipped sum before the noise.

    A canary's update has norm below the clip, so the query's clipping would leave it as it is:
    adding it to the sum of the real clients' clipped records is exactly what the aggregator
    computes when the canary client sends it. Its state is ``(inner, audit_round)``; round r
    (1-based) adds ``mask[r - 1] @ canaries``; the DpEvent is the inner query's.
    """
    import tensorflow as tf
    import tensorflow_privacy as tfp

    class CanaryQuery(tfp.SumAggregationDPQuery):
        _GlobalState = collections.namedtuple("_CanaryGlobalState", ["inner", "audit_round"])

        def __init__(self):
            self._inner = inner
            self._vectors = [
                np.stack([canaries.update_for(canaries.population + k)[w] for k in range(canaries.seen)])
                for w in range(len(canaries.shapes))
            ]
            self._mask = np.asarray(mask, dtype=np.float32)

        def initial_global_state(self):
            return self._GlobalState(self._inner.initial_global_state(), tf.constant(0, dtype=tf.int64))

        def derive_sample_params(self, global_state):
            return self._inner.derive_sample_params(global_state.inner)

        def initial_sample_state(self, template=None):
            return self._inner.initial_sample_state(template)

        def preprocess_record(self, params, record):
            return self._inner.preprocess_record(params, record)

        def get_noised_result(self, sample_state, global_state):
            r = global_state.audit_round
            rows = tf.constant(self._mask)
            inside = r < tf.cast(tf.shape(rows)[0], tf.int64)
            row = tf.where(
                inside,
                tf.gather(rows, tf.minimum(r, tf.cast(tf.shape(rows)[0] - 1, tf.int64))),
                tf.zeros([self._mask.shape[1]], tf.float32),
            )
            flat = tf.nest.flatten(sample_state)
            added = [
                s + tf.cast(tf.tensordot(row, tf.constant(v), axes=1), s.dtype) for s, v in zip(flat, self._vectors)
            ]
            result, new_inner, event = self._inner.get_noised_result(
                tf.nest.pack_sequence_as(sample_state, added), global_state.inner
            )
            return result, self._GlobalState(new_inner, r + 1), event

        def derive_metrics(self, global_state):
            return self._inner.derive_metrics(global_state.inner)

    return CanaryQuery()


def canary_aggregator(cfg, *, population: int, noise_multiplier: float, record_specs, build):
    """The experiment's DP aggregator (``build``: :func:`tff_lab.federated.aggregators._dp_aggregator`)
    over the population with the canaries, its query wrapped by :func:`canary_query`."""
    import tensorflow_federated as tff

    from tff_lab.errors import ConfigError

    if record_specs is None:
        raise ConfigError("privacy.audit", "the canary audit needs the model's record_specs")
    canaries = canaries_for(cfg, population, [tuple(s.shape) for s in record_specs])
    factory = build(
        cfg, population=canaries.total_population, noise_multiplier=noise_multiplier, record_specs=record_specs
    )
    inner = factory._query  # pylint: disable=protected-access
    query = canary_query(inner, canaries, participation_mask(cfg, canaries))
    return tff.aggregators.DifferentiallyPrivateFactory(query)


def empirical_report(
    cfg,
    population: int,
    initial: Sequence[np.ndarray],
    final: Sequence[np.ndarray],
    delta: float,
    theoretical: Optional[float],
    run_dir,
) -> dict:
    """The estimate of an audit run: cosines of ``initial - final`` with the canaries, the estimate
    beside the theoretical epsilon, ``plots/privacy_audit.png`` and ``privacy_audit.json`` (the
    cosines) in ``run_dir``; returns privacy.json's ``epsilon_empirical``."""
    import json
    from pathlib import Path

    from tff_lab.fileio import atomic_write_text

    canaries = canaries_for(cfg, population, [np.shape(w) for w in initial])
    seen, unseen = canaries.cosines(model_delta(initial, final))
    est = estimate_epsilon(seen, unseen, delta, seed=int(cfg.seed))
    out = est.to_json()
    out.update(
        theoretical_epsilon=theoretical,
        plot="plots/privacy_audit.png",
        cosines="privacy_audit.json",
        reading=(
            "the empirical epsilon estimates what the final model shows about a worst-case client (a "
            "canary whose update is as large as the clip allows, in a random direction); the theoretical "
            "epsilon bounds every client against an adversary who sees every round. Far below theory: "
            "the bound is loose for this final model; near or above it: the run leaks about as much as "
            "the mechanism allows (or the estimate is within its interval of it); large with no noise: "
            "a non-private run"
        ),
    )
    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    plot_cosines(
        seen,
        unseen,
        run_dir / "plots" / "privacy_audit.png",
        estimate=est,
        theoretical=theoretical,
        title=f"privacy audit: {cfg.name}",
    )
    atomic_write_text(
        run_dir / "privacy_audit.json",
        json.dumps({"estimate": out, "seen_cosines": seen.tolist(), "unseen_cosines": unseen.tolist()}, indent=1),
    )
    return out
