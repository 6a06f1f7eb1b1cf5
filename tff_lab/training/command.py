"""``tff-lab run``: one federated experiment end to end."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a federated experiment (default: digits, 20 clients, Dirichlet 0.5, FedAvg)",
        description="Run a federated experiment end to end. RUN_DIR receives the resolved config, metrics.csv/"
        "metrics.jsonl, TensorBoard events (tb/), plots/, client_stats.json, parts.json (the model, data, "
        "algorithm and aggregator that ran, with source hashes), the model (.keras and SavedModel), "
        "checkpoints/ and summary.json (privacy.json for private runs). Exit codes: 0 done, 2 bad input, "
        "3 training diverged (last good checkpoint kept), 75 a TFF worker was lost, 143 SIGTERM "
        "(checkpoint saved; --resume continues).",
    )
    p.add_argument(
        "experiment",
        nargs="?",
        default=None,
        help="experiment YAML (experiments/*.yaml); omit for the default experiment",
    )
    p.add_argument("--out", default="runs/default", metavar="RUN_DIR", help="output directory (default: %(default)s)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set training.rounds=20 (repeatable)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue RUN_DIR's run from its last checkpoint (starts fresh if there is none)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in RUN_DIR (kept until the new run's first checkpoint)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary lines")
    p.set_defaults(func=_run)


def _fmt(v, spec=".4f"):
    return "n/a" if v is None else format(v, spec)


def privacy_line(priv) -> str:
    """The summary's privacy line; a run without epsilon (a user aggregator that declares no
    dp_event, ddp_secure, ...) says so and why, instead of numbers it does not have."""
    priv = priv if isinstance(priv, dict) else {}
    eps = priv.get("epsilon")
    nums = (
        {k: v for k, v in eps.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if isinstance(eps, dict)
        else ({"": eps} if isinstance(eps, (int, float)) and not isinstance(eps, bool) else {})
    )
    if not nums:
        why = priv.get("why_no_epsilon") or priv.get("reason") or "no epsilon is reported for this mechanism"
        return f"privacy         no epsilon ({priv.get('mechanism') or 'mechanism unknown'}): {why} (see privacy.json)"
    return (
        "privacy         "
        + "  ".join(f"eps_{k} {v:.3f}" if k else f"eps {v:.3f}" for k, v in nums.items())
        + f"  at delta {priv.get('delta')}"
    )


def _run(args) -> int:
    from tff_lab.run_dir import precheck

    precheck(args.out, args.out)  # before TensorFlow is even imported
    from tff_lab.training.loop import run_experiment

    s = run_experiment(
        args.experiment,
        args.out,
        overrides=args.overrides,
        resume=args.resume,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )
    if not args.quiet:
        lines = [
            f"experiment      {s.get('experiment')}  (seed {s.get('seed')}, {s.get('rounds')}/{s.get('rounds_planned')} "
            f"rounds, {s.get('population')} clients)",
            f"test accuracy   {_fmt(s.get('final_test_accuracy'))}  (loss {_fmt(s.get('final_test_loss'))})",
            f"centralized     {_fmt(s.get('centralized_accuracy'))}  retention {_fmt(s.get('retention'), '.3f')}",
        ]
        spread = s.get("per_client_eval_accuracy") or {}
        if spread:
            lines.append(
                f"per-client acc  min {spread['min']:.3f}  median {spread['median']:.3f}  max {spread['max']:.3f}"
            )
        if s.get("privacy"):
            lines.append(privacy_line(s["privacy"]))
        if s.get("stopped_reason"):
            lines.append(f"stopped early   {s['stopped_reason']}")
        if s.get("engine_choice"):
            lines.append(f"engine          {s['engine']}  ({s['engine_choice']['reason']})")
        lines.append(
            f"wall time       {_fmt(s.get('wall_seconds'), '.1f')} s  "
            f"({_fmt(s.get('seconds_per_round_median'), '.3f')} s/round)"
        )
        if s.get("withheld_by_privacy_policy"):
            lines.append(
                "withheld        "
                + ", ".join(map(str, s["withheld_by_privacy_policy"]))
                + " (not covered by epsilon; privacy.release_unprotected: true publishes them)"
            )
        lines.append(f"results         {args.out}/ (summary.json, metrics.csv, plots/, model/)")
        print("\n".join(lines))
    return 0
