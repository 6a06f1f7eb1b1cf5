"""``tff-lab privacy epsilon|noise|audit``: privacy of a planned run, and the empirical audit.

``epsilon``: what epsilon do these settings give after the planned rounds (both accountants).
``noise``: what noise multiplier reaches a target epsilon (searching the chosen accountant).
``audit``: a run with canary clients; its empirical epsilon beside the theoretical one.
Settings come from an experiment YAML (plus ``--set`` overrides) and/or flags; the flags win.
"""

from __future__ import annotations

import contextlib
import json

from tff_lab.inputs import INT32_MAX, float_in, int_in, open_fraction, positive_float, probability

_KNOWN_POPULATION_SOURCES = ("digits", "breast_cancer", "synthetic")

# Bounds of what these commands compute, refused up front rather than run for hours:
MAX_ACCOUNTING_ROUNDS = 1_000_000  # the RDP of one round is cached; PLD and tree schedules grow with rounds
# Tree aggregation: the planned schedule draws every round's sample (population draws per round with
# Poisson sampling, clients_per_round draws with uniform sampling).
MAX_TREE_SCHEDULE_DRAWS = 20_000_000
MAX_TREE_SCHEDULE_ROUNDS = 200_000  # one Python-level leaf per round
# dp_accounting's PLD of one Gaussian of noise sigma takes ~1 s at 0.3, 8 s at 0.1, 57 s at 0.03
# (discretisation 1e-4): below this the tree's PLD epsilon is not computed (RDP is).
TREE_PLD_MIN_SIGMA = 0.1
# `privacy noise --accountant pld` evaluates the composed PLD ~30 times (Brent's search); at 100,000
# Poisson rounds that already takes about a minute.
MAX_PLD_SEARCH_ROUNDS = 100_000
MAX_NOISE_MULTIPLIER = 1e6
MAX_EPSILON = 1e6
MAX_AUDIT_DIM = 1_000_000
MAX_AUDIT_CANARY_BYTES = 2 << 30  # (canaries, dim) float64 directions
MAX_AUDIT_WORK = 20_000_000_000  # rounds x expected clients x dim multiply-adds of the simulation

# Which flag sets which config field: an error about that field names the flag the user typed.
_FLAG_FIELDS = {
    "mechanism": ("privacy.mechanism", "--mechanism"),
    "rounds": ("training.rounds", "--rounds"),
    "population": ("data.num_clients", "--population"),
    "clients_per_round": ("training.clients_per_round", "--clients-per-round"),
    "sampling_rate": ("training.sampling_rate", "--sampling-rate"),
    "delta": ("privacy.delta", "--delta"),
    "clipped_count_stddev": ("privacy.clipped_count_stddev", "--clipped-count-stddev"),
    "noise_multiplier": ("privacy.noise_multiplier", "--noise-multiplier"),
    "target_epsilon": ("privacy.target_epsilon", "--target-epsilon"),
    "accountant": ("privacy.accountant", "--accountant"),
}


@contextlib.contextmanager
def _flags_named(args):
    """A ConfigError about a config field that a flag set names the flag (``--population``, not
    ``data.num_clients``); the message is kept."""
    from tff_lab.errors import ConfigError

    try:
        yield
    except ConfigError as e:
        where = e.where
        experiment = getattr(args, "experiment", None)
        if experiment and where.startswith(f"{experiment}: "):
            where = where[len(experiment) + 2 :]
        for attr, (field, flag) in _FLAG_FIELDS.items():
            if getattr(args, attr, None) is not None and where == field:
                raise ConfigError(flag, e.message) from None
        if (
            where == "training.clients_per_round"
            and getattr(args, "population", None) is not None
            and getattr(args, "clients_per_round", None) is None
        ):
            raise ConfigError(
                "--population",
                f"too small for training.clients_per_round ({e.message}); pass "
                "--clients-per-round or a larger --population",
            ) from None
        raise


def _yaml_float(x: float) -> str:
    """A float as a YAML 1.1 float literal (PyYAML reads ``1e-05`` as a string; ``1.0e-05`` as a float)."""
    s = repr(float(x))
    mantissa, _, exp = s.partition("e")
    if exp and "." not in mantissa:
        s = f"{mantissa}.0e{exp}"
    return s


def register(sub) -> None:
    p = sub.add_parser(
        "privacy",
        help="epsilon of a planned private run, or the noise for a target epsilon",
        description="Privacy accounting without training (dp_accounting's RDP and PLD accountants).",
    )
    psub = p.add_subparsers(dest="privacy_command", metavar="{epsilon,noise,audit}")
    psub.required = True
    e = psub.add_parser(
        "epsilon",
        help="epsilon after the planned rounds",
        description="Epsilon at delta after training.rounds rounds of the configured mechanism.",
    )
    _common(e)
    e.add_argument(
        "--noise-multiplier",
        type=float_in(0.0, MAX_NOISE_MULTIPLIER, lo_open=True),
        help="noise multiplier (privacy.noise_multiplier)",
    )
    e.set_defaults(func=_epsilon)
    n = psub.add_parser(
        "noise",
        help="noise multiplier for a target epsilon",
        description="The smallest noise multiplier whose epsilon after training.rounds rounds is "
        "at most the target (dp_accounting.calibrate_dp_mechanism).",
    )
    _common(n)
    n.add_argument(
        "--target-epsilon", type=float_in(0.0, MAX_EPSILON, lo_open=True), required=True, help="the epsilon to reach"
    )
    n.add_argument("--accountant", choices=("rdp", "pld"), help="accountant to search (privacy.accountant)")
    n.set_defaults(func=_noise)
    a = psub.add_parser(
        "audit",
        help="empirical epsilon of a run with canary clients, beside the theoretical one",
        description="One-shot empirical privacy estimation (Andrew et al., ICLR 2024): runs the "
        "experiment with privacy.audit canaries (default 50 inserted, 50 unseen) and "
        "prints the empirical epsilon, its interval and the theoretical epsilon. "
        "--simulate runs the experiment's exact DP aggregation on synthetic updates "
        "instead of training.",
    )
    a.add_argument("experiment", help="experiment YAML (privacy.mechanism: gaussian_fixed)")
    a.add_argument(
        "--out",
        default=None,
        help="RUN_DIR of the audited run (default runs/<name>_audit); like "
        "`run`, an earlier run there is kept unless --overwrite or --resume",
    )
    a.add_argument("--overwrite", action="store_true", help="replace an earlier run in RUN_DIR (as `run --overwrite`)")
    a.add_argument("--resume", action="store_true", help="continue RUN_DIR's audit run from its last checkpoint")
    a.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )
    a.add_argument("--simulate", action="store_true", help="simulate the aggregation instead of training")
    a.add_argument(
        "--dim",
        type=int_in(1, MAX_AUDIT_DIM),
        default=20000,
        help=f"update-space dimension of --simulate (at most {MAX_AUDIT_DIM:,})",
    )
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=_audit)


def _common(p) -> None:
    p.add_argument("experiment", nargs="?", default=None, help="experiment YAML (optional)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )
    p.add_argument(
        "--mechanism", choices=("gaussian_fixed", "gaussian_adaptive", "tree", "ddp_secure"), help="privacy.mechanism"
    )
    p.add_argument(
        "--rounds", type=int_in(1, MAX_ACCOUNTING_ROUNDS), help=f"training.rounds (at most {MAX_ACCOUNTING_ROUNDS:,})"
    )
    p.add_argument(
        "--population",
        type=int_in(1, INT32_MAX),
        help="number of clients (default: data.num_clients for bundled and "
        "synthetic sources; required for directory/natural sources)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--clients-per-round",
        type=int_in(1, INT32_MAX),
        help="uniform sampling without replacement of this many clients",
    )
    g.add_argument("--sampling-rate", type=probability, help="Poisson sampling with this probability per client")
    p.add_argument("--delta", type=open_fraction, help="privacy.delta (default: min(1e-5, population^-1.1))")
    p.add_argument(
        "--clipped-count-stddev", type=positive_float, help="privacy.clipped_count_stddev (adaptive clipping)"
    )
    p.add_argument(
        "--model-dim",
        type=int_in(1, INT32_MAX),
        help="ddp_secure: number of trainable parameters of the "
        "model (the Skellam mechanism's scale and norm bounds "
        "depend on it)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def _config(args, extra: list[str]):
    from tff_lab.config import load_config
    from tff_lab.config.io import read_yaml
    from tff_lab.errors import ConfigError

    flags = []
    if args.mechanism:
        flags.append(f"privacy.mechanism={args.mechanism}")
    if args.rounds is not None:
        flags.append(f"training.rounds={args.rounds}")
    if args.clients_per_round is not None:
        flags += [
            "training.sampling=uniform",
            f"training.clients_per_round={args.clients_per_round}",
            "training.sampling_rate=null",
        ]
    if args.sampling_rate is not None:
        flags += ["training.sampling=poisson", f"training.sampling_rate={_yaml_float(args.sampling_rate)}"]
    if args.delta is not None:
        flags.append(f"privacy.delta={_yaml_float(args.delta)}")
    if args.clipped_count_stddev is not None:
        flags.append(f"privacy.clipped_count_stddev={_yaml_float(args.clipped_count_stddev)}")
    if args.population is not None:
        if args.population < 1:
            raise ConfigError("--population", f"expected an integer >= 1, got {args.population}")
        source = "digits"
        if args.experiment:
            source = (read_yaml(args.experiment).get("data") or {}).get("source", "digits")
        for o in args.overrides:
            if o.startswith("data.source="):
                source = o.split("=", 1)[1].strip()
        if source in _KNOWN_POPULATION_SOURCES:
            flags.append(f"data.num_clients={args.population}")
    if args.experiment is None:
        # Without an experiment file the defaults are this command's own: DP aggregation is
        # unweighted. An experiment file with weighted aggregation is refused, as `run` would.
        flags.insert(0, "algorithm.weighting=uniform")
    cfg = load_config(args.experiment, [*args.overrides, *flags, *extra])
    if not cfg.privacy.enabled:
        raise ConfigError("privacy.mechanism", "no DP mechanism: pass --mechanism or set privacy.mechanism")
    if cfg.training.rounds > MAX_ACCOUNTING_ROUNDS:
        raise ConfigError(
            "--rounds" if args.rounds is not None else "training.rounds",
            f"expected at most {MAX_ACCOUNTING_ROUNDS:,} rounds for accounting, got {cfg.training.rounds:,}",
        )
    population = args.population
    if population is None:
        if cfg.data.source not in _KNOWN_POPULATION_SOURCES:
            raise ConfigError(
                "--population", f"source '{cfg.data.source}' knows its population only after loading; pass --population"
            )
        population = cfg.data.num_clients
    return cfg, population


def _describe(cfg, population: int, noise: float, delta: float, eps, model_dim=None) -> dict:
    from tff_lab.privacy.calibration import spec_for

    spec = spec_for(cfg, population, noise, model_dim)
    return {
        "mechanism": spec.mechanism,
        "noise_multiplier": noise,
        "noise": spec.noise_components(),
        "population": population,
        "rounds": cfg.training.rounds,
        "sampling": spec.sampling,
        "clients_per_round": spec.clients_per_round,
        "sampling_rate": spec.sampling_rate,
        "neighbouring_relation": spec.neighbouring_relation.name,
        "delta": delta,
        "epsilon": eps.to_json(),
    }


def _print(info: dict, as_json: bool, headline: str) -> None:
    if as_json:
        print(json.dumps(info, indent=1))
        return
    eps = info["epsilon"]
    sampling = (
        f"{info['clients_per_round']} of {info['population']} clients per round (without replacement)"
        if info["sampling"] == "uniform"
        else f"Poisson rate {info['sampling_rate']} over {info['population']} clients"
    )
    lines = [
        headline,
        f"mechanism        {info['mechanism']}  ({info['neighbouring_relation']} neighbours)",
        f"noise            {info['noise_multiplier']:.6g}"
        + (
            f"  (value {info['noise']['value_noise_multiplier']:.6g}, clipped count "
            f"{info['noise']['clipped_count_noise_multiplier']:.6g})"
            if "clipped_count_stddev" in info["noise"]
            else ""
        ),
        f"sampling         {sampling}",
        f"rounds           {info['rounds']}",
        f"delta            {info['delta']:.3g}",
        "epsilon (RDP)    "
        + (f"{eps['rdp']:.4f}  (order {eps['rdp_optimal_order']:g})" if eps["rdp"] is not None else "n/a"),
        "epsilon (PLD)    " + (f"{eps['pld']:.4f}" if eps["pld"] is not None else f"n/a: {eps['pld_note']}"),
    ]
    print("\n".join(lines))


def _model_dim(args):
    from tff_lab.errors import ConfigError

    dim = getattr(args, "model_dim", None)
    if dim is not None and dim < 1:
        raise ConfigError("--model-dim", f"expected an integer >= 1, got {dim}")
    return dim


def _plan(cfg, population, noise, delta, model_dim=None):
    from tff_lab.errors import ConfigError
    from tff_lab.privacy.accounting import DDP_ZEROING, epsilon_for_rounds
    from tff_lab.privacy.calibration import spec_for

    spec = spec_for(cfg, population, noise, model_dim)
    if spec.mechanism == "ddp_secure" and spec.zeroing:
        raise ConfigError("aggregation.zeroing", DDP_ZEROING)
    if spec.mechanism != "tree":
        return epsilon_for_rounds(spec, cfg.training.rounds, delta)
    return _tree_epsilon(cfg, spec, population, delta)


def _check_tree_schedule(cfg, population: int) -> None:
    """The tree's planned schedule draws every round's sample: refused up front when it would
    take longer than an accounting query should."""
    from tff_lab.errors import ConfigError

    t = cfg.training
    per_round = population if t.sampling == "poisson" else t.clients_per_round
    draws = t.rounds * per_round
    if t.rounds > MAX_TREE_SCHEDULE_ROUNDS or draws > MAX_TREE_SCHEDULE_DRAWS:
        raise ConfigError(
            "training.rounds",
            f"tree aggregation is accounted over the planned schedule of every "
            f"round's sample: {t.rounds:,} rounds x {per_round:,} "
            f"{'clients' if t.sampling == 'poisson' else 'clients per round'} is beyond the "
            f"{MAX_TREE_SCHEDULE_ROUNDS:,} rounds / {MAX_TREE_SCHEDULE_DRAWS:,} draws this command "
            "computes; plan fewer rounds",
        )


def _tree_epsilon(cfg, spec, population: int, delta: float):
    """epsilon_for_rounds of the tree, with the PLD left out (and said so) where the tree's
    effective noise is so small that dp_accounting's PLD would take minutes to hours."""
    import math

    import dp_accounting

    from tff_lab.privacy.accounting import Epsilon, epsilon_for_rounds, rdp_epsilon, tree_sensitivity_squared
    from tff_lab.privacy.calibration import planned_tree_leaves

    _check_tree_schedule(cfg, population)
    leaves = planned_tree_leaves(cfg, population)
    s = tree_sensitivity_squared(leaves)
    sigma = spec.noise_multiplier / math.sqrt(s) if s else math.inf
    if sigma >= TREE_PLD_MIN_SIGMA:
        return epsilon_for_rounds(spec, cfg.training.rounds, delta, leaves)
    rdp, order = rdp_epsilon(dp_accounting.GaussianDpEvent(sigma), 1, delta, spec.neighbouring_relation)
    return Epsilon(
        delta,
        rdp,
        order,
        None,
        pld_note=f"not computed: the tree's effective noise multiplier {sigma:.3g} is below "
        f"{TREE_PLD_MIN_SIGMA} (dp_accounting's PLD would take minutes); RDP is an upper bound",
    )


def _epsilon(args) -> int:
    with _flags_named(args):
        return _epsilon_impl(args)


def _epsilon_impl(args) -> int:
    from tff_lab.errors import ConfigError
    from tff_lab.privacy.calibration import resolve_delta

    extra = []
    if args.noise_multiplier is not None:
        extra += [f"privacy.noise_multiplier={_yaml_float(args.noise_multiplier)}", "privacy.target_epsilon=null"]
    cfg, population = _config(args, extra)
    if cfg.privacy.noise_multiplier is None:
        raise ConfigError(
            "privacy.noise_multiplier", "pass --noise-multiplier (or use 'tff-lab privacy noise' for a target epsilon)"
        )
    delta = resolve_delta(cfg, population)
    noise = float(cfg.privacy.noise_multiplier)
    dim = _model_dim(args)
    eps = _plan(cfg, population, noise, delta, dim)
    _print(_describe(cfg, population, noise, delta, eps, dim), args.json, "what these settings give:")
    return 0


def _noise(args) -> int:
    with _flags_named(args):
        return _noise_impl(args)


def _noise_impl(args) -> int:
    from tff_lab.privacy.calibration import resolve_delta, resolve_noise_multiplier

    extra = [
        "privacy.noise_multiplier=null",
        f"privacy.target_epsilon={_yaml_float(args.target_epsilon)}",
        "privacy.max_epsilon=null",
    ]
    if args.accountant:
        extra.append(f"privacy.accountant={args.accountant}")
    cfg, population = _config(args, extra)
    delta = resolve_delta(cfg, population)
    dim = _model_dim(args)
    if cfg.privacy.mechanism == "ddp_secure" and cfg.aggregation.zeroing:
        from tff_lab.errors import ConfigError
        from tff_lab.privacy.accounting import DDP_ZEROING

        raise ConfigError("aggregation.zeroing", DDP_ZEROING)
    if cfg.privacy.mechanism == "tree":
        _check_tree_schedule(cfg, population)  # calibration plans the schedule first
    if cfg.privacy.accountant == "pld" and cfg.training.rounds > MAX_PLD_SEARCH_ROUNDS:
        from tff_lab.errors import ConfigError

        raise ConfigError(
            "training.rounds",
            f"searching the PLD accountant over {cfg.training.rounds:,} rounds "
            f"composes its PLD ~30 times at that length; at most {MAX_PLD_SEARCH_ROUNDS:,} rounds "
            "(or --accountant rdp)",
        )
    noise = resolve_noise_multiplier(cfg, population, dim)
    eps = _plan(cfg, population, noise, delta, dim)
    info = _describe(cfg, population, noise, delta, eps, dim)
    info["target_epsilon"] = args.target_epsilon
    info["accountant"] = cfg.privacy.accountant
    _print(info, args.json, f"noise for epsilon <= {args.target_epsilon} ({cfg.privacy.accountant}):")
    return 0


def _check_simulation_cost(cfg, dim: int) -> None:
    """``privacy audit --simulate`` holds (canaries, dim) directions and adds every sampled
    client's dim-vector each round: refused up front beyond MAX_AUDIT_CANARY_BYTES / MAX_AUDIT_WORK."""
    from tff_lab.errors import ConfigError

    a, t = cfg.privacy.audit, cfg.training
    canary_bytes = (a.canaries + a.unseen) * dim * 8
    if canary_bytes > MAX_AUDIT_CANARY_BYTES:
        raise ConfigError(
            "--dim",
            f"{a.canaries + a.unseen:,} canaries of dimension {dim:,} need "
            f"{canary_bytes / 2**30:.1f} GiB; at most {MAX_AUDIT_CANARY_BYTES / 2**30:.0f} GiB: lower "
            "--dim or privacy.audit.canaries/unseen",
        )
    if t.rounds > MAX_ACCOUNTING_ROUNDS:
        raise ConfigError("training.rounds", f"expected at most {MAX_ACCOUNTING_ROUNDS:,} rounds, got {t.rounds:,}")
    expected = float(t.sampling_rate or 0.0) * (cfg.data.num_clients + a.canaries + a.unseen)
    work = t.rounds * (expected + 1.0) * dim
    if work > MAX_AUDIT_WORK:
        raise ConfigError(
            "--dim",
            f"the simulation would add {work:.3g} update coordinates ({t.rounds:,} rounds x "
            f"{expected:.0f} expected clients x {dim:,} dimensions); at most {MAX_AUDIT_WORK:.0e}: "
            "lower --dim, training.rounds or training.sampling_rate",
        )


def _audit(args) -> int:
    from pathlib import Path

    from tff_lab.config import load_config
    from tff_lab.errors import ConfigError, PrivacyAccountingError

    cfg = load_config(args.experiment, list(args.overrides))
    extra = []
    if not cfg.privacy.audit.canaries:
        extra = ["privacy.audit.canaries=50", "privacy.audit.unseen=50"]
        cfg = load_config(args.experiment, [*args.overrides, *extra])
    if cfg.privacy.mechanism != "gaussian_fixed":
        raise ConfigError(
            "privacy.mechanism", f"the canary audit needs gaussian_fixed (a fixed clip), got '{cfg.privacy.mechanism}'"
        )
    if args.simulate:
        from tff_lab.privacy.audit import audit_simulation

        if cfg.training.sampling != "poisson":
            raise ConfigError(
                "training.sampling", "--simulate follows Poisson sampling; set training.sampling: poisson"
            )
        a = cfg.privacy.audit
        _check_simulation_cost(cfg, args.dim)
        res = audit_simulation(
            noise_multiplier=float(cfg.privacy.noise_multiplier),
            clip=cfg.privacy.clip,
            population=cfg.data.num_clients,
            sampling_rate=cfg.training.sampling_rate,
            rounds=cfg.training.rounds,
            seen=a.canaries,
            unseen=a.unseen,
            dim=args.dim,
            seed=cfg.seed,
            delta=cfg.privacy.delta,
        )
        emp, th = res["epsilon_empirical"], res["epsilon_theoretical"]
        theory = th["pld"] if th["pld"] is not None else th["rdp"]
        where = f"simulated ({args.dim}-dimensional updates)"
    else:
        from tff_lab import run_experiment

        out = Path(args.out or f"runs/{cfg.name}_audit")
        try:
            run_experiment(
                args.experiment, out, overrides=[*args.overrides, *extra], overwrite=args.overwrite, resume=args.resume
            )
        except PrivacyAccountingError as e:
            raise ConfigError(
                "privacy.audit",
                f"{e} (the training loop must insert the canaries; 'tff-lab "
                "privacy audit --simulate' runs the mechanism without it)",
            ) from None
        from tff_lab.run_dir import read_verified

        report = json.loads(read_verified(out, "privacy.json"))
        emp = report["epsilon_empirical"]
        theory = emp.get("theoretical_epsilon")
        where = f"run {out}"
    if args.json:
        print(json.dumps({"epsilon_empirical": emp, "theoretical_epsilon": theory, "source": where}, indent=1))
        return 0
    lo, hi = emp["interval"]
    print(
        "\n".join(
            [
                f"privacy audit of {cfg.name} ({where})",
                f"canaries         {emp['canaries']['seen']} inserted, {emp['canaries']['unseen']} unseen",
                f"delta            {emp['delta']:.3g}",
                f"epsilon (theory) {theory:.4f}" if theory is not None else "epsilon (theory) n/a",
                f"epsilon (audit)  {emp['epsilon']:.4f}  [{lo:.4f}, {hi:.4f}] ({emp['confidence']:.0%} bootstrap interval)",
                f"resolution       {emp['resolution_epsilon']:.4f}  (estimates below it cannot be told from no leakage)",
            ]
        )
    )
    return 0
