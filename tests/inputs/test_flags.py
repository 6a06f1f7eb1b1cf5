"""CLI flags validated and named as flags: every numeric flag of every command has a bounded argparse
type (checked structurally over the real parser), and for each such flag many generated bad values
(NaN, inf, text, overflow, each side of every bound) are refused by argparse naming the flag, while
the bounds themselves parse. Config errors about a field that a flag set name the flag. A few cases
go through the real CLI; the long computations a user can ask for are refused up front, fast."""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pytest
from helpers import REPO, assert_user_error, run_cli

from tff_lab.cli import build_parser, main

RNG = np.random.default_rng(2026)


def _subparsers(parser, path=()):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from _subparsers(sp, (*path, name))
    yield path, parser


PARSERS = {path: p for path, p in _subparsers(build_parser()) if path}


def _numeric_flags():
    for path, p in PARSERS.items():
        for a in p._actions:
            if a.option_strings and getattr(a.type, "kind", None) in ("int", "float"):
                yield path, p, a


FLAGS = list(_numeric_flags())


def test_every_numeric_flag_is_bounded():
    raw = [(path, a.option_strings) for path, p in PARSERS.items() for a in p._actions if a.type in (int, float)]
    assert not raw, f"numeric flags without a bounded type: {raw}"
    names = {a.option_strings[-1] for _, _, a in FLAGS}
    for expected in (
        "--dim",
        "--rounds",
        "--population",
        "--noise-multiplier",
        "--timeout",
        "--workers",
        "--port",
        "--batch-size",
        "--target-epsilon",
        "--delta",
        "--sampling-rate",
    ):
        assert expected in names, expected


def _base_argv(path, parser, skip) -> list[str]:
    """The command with placeholder positionals and valid values of its other required options."""
    argv = list(path)
    for a in parser._actions:
        if a is skip or isinstance(a, argparse._SubParsersAction):
            continue
        if not a.option_strings and a.nargs not in ("?", "*"):
            argv.append(_placeholder(a.type))
        elif a.option_strings and a.required:
            t = a.type
            ok = _placeholder(t) if getattr(t, "kind", None) is None else str(_inside(t))
            argv += [a.option_strings[-1], ok]
    return argv


def _placeholder(t) -> str:
    """A value the type accepts: host:port for plain strings, a real file or a writable path for path types."""
    from tff_lab.inputs import output_file_arg

    if t is None:
        return "h:1"
    if t is output_file_arg:
        return str(REPO / "tests" / "_no_such_output.npz")
    return str(REPO / "README.md")


def _inside(t):
    lo = t.lo if t.lo is not None else 0
    if t.kind == "int":
        return max(lo, 1) if t.hi is None or t.hi >= 1 else lo
    v = lo + (1e-3 if t.lo_open or lo == 0 else 0)
    return v if t.hi is None or v <= t.hi else t.hi


def _bad_values(t) -> list[str]:
    bad = ["nan", "NaN", "inf", "-inf", "+inf", "abc", "", " ", "1e999", "-1e999", "0x10", "1,5", "1 2", "½"]
    if t.kind == "int":
        bad += ["1.5", "1e3", "2.0", str(RNG.normal())]
        bad += ["9" * 45, "-" + "9" * 45]
    if t.lo is not None:
        if t.kind == "int":
            bad += [str(t.lo - 1), str(t.lo - int(RNG.integers(2, 10**6))), str(-(2**63))]
        else:
            bad += [repr(t.lo - 1e-9 * max(1, abs(t.lo))), repr(t.lo - float(RNG.uniform(1, 1e6)))]
            if t.lo_open:
                bad.append(repr(float(t.lo)))
    if t.hi is not None:
        if t.kind == "int":
            bad += [str(t.hi + 1), str(t.hi + int(RNG.integers(2, 10**9))), str(2**64)]
        else:
            bad += [repr(t.hi * (1 + 1e-9) + 1e-12), repr(t.hi + float(RNG.uniform(1, 1e6)))]
            if t.hi_open:
                bad.append(repr(float(t.hi)))
    return bad


def _good_values(t) -> list[str]:
    good = [str(_inside(t))]
    if t.lo is not None and not t.lo_open:
        good.append(str(t.lo))
    if t.hi is not None and not t.hi_open:
        good.append(str(t.hi))
    return good


def _parse(argv, capsys):
    try:
        build_parser().parse_args(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "path,parser,action", FLAGS, ids=[f"{' '.join(p)} {a.option_strings[-1]}" for p, _, a in FLAGS]
)
def test_bad_flag_values_name_the_flag(path, parser, action, capsys):
    flag = action.option_strings[-1]
    base = _base_argv(path, parser, action)
    code, err = _parse([*base, f"{flag}={_good_values(action.type)[0]}"], capsys)
    assert code == 0, (base, err)
    for value in _bad_values(action.type):
        code, err = _parse([*base, f"{flag}={value}"], capsys)
        lines = err.strip().splitlines()
        assert code == 2, (flag, value, err)
        assert "Traceback" not in err and lines[0].startswith("usage:"), err
        assert sum("error:" in line for line in lines) == 1 and f"argument {flag}: expected" in lines[-1], (
            flag,
            value,
            lines[-1],
        )
    for value in _good_values(action.type):
        code, err = _parse([*base, f"{flag}={value}"], capsys)
        assert code == 0, (flag, value, err)


def _main(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    _main.out = captured.out
    return code, captured.err.strip().splitlines()


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--population", "3"], "--population"),
        (["--population", "5", "--clients-per-round", "6"], "--clients-per-round"),
        (["--population", "20", "--delta", "0.06"], "--delta"),
        (["--population", "30", "--delta", "0.2"], "--delta"),
        (["--clients-per-round", "21"], "--clients-per-round"),
    ],
)
def test_config_errors_about_a_flag_name_the_flag(argv, flag, capsys):
    code, err = _main(["privacy", "epsilon", "--mechanism", "gaussian_fixed", "--noise-multiplier", "1", *argv], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"tff-lab: error: {flag}: "), err


def test_rounds_from_yaml_bounded_too(tmp_path, capsys):
    exp = tmp_path / "e.yaml"
    exp.write_text(
        "algorithm: {weighting: uniform}\ntraining: {rounds: 2000000000, clients_per_round: 5}\n"
        "privacy: {mechanism: tree, noise_multiplier: 1.0}\n"
    )
    t0 = time.monotonic()
    code, err = _main(["privacy", "epsilon", str(exp)], capsys)
    assert code == 2 and len(err) == 1 and "training.rounds" in err[0] and "1,000,000" in err[0], err
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize(
    "rounds,extra",
    [
        (300_000, []),
        (1_000_000, []),
        (50_000, ["--sampling-rate", "0.5", "--population", "5000"]),
    ],
)
def test_tree_schedule_refused_up_front(rounds, extra, capsys):
    t0 = time.monotonic()
    code, err = _main(
        ["privacy", "epsilon", "--mechanism", "tree", "--noise-multiplier", "1", "--rounds", str(rounds), *extra],
        capsys,
    )
    assert code == 2 and len(err) == 1 and err[0].startswith("tff-lab: error: --rounds: tree aggregation"), err
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("rounds", [100_001, 500_000, 1_000_000])
def test_pld_noise_search_bounded(rounds, capsys):
    t0 = time.monotonic()
    code, err = _main(
        [
            "privacy",
            "noise",
            "--mechanism",
            "gaussian_fixed",
            "--target-epsilon",
            "1",
            "--accountant",
            "pld",
            "--sampling-rate",
            "0.1",
            "--rounds",
            str(rounds),
        ],
        capsys,
    )
    assert code == 2 and len(err) == 1 and err[0].startswith("tff-lab: error: --rounds: searching the PLD"), err
    assert time.monotonic() - t0 < 10


def test_tree_at_tiny_effective_noise_reports_rdp_not_a_hang(capsys):
    import json

    t0 = time.monotonic()
    code, _ = _main(
        [
            "privacy",
            "epsilon",
            "--mechanism",
            "tree",
            "--noise-multiplier",
            "1",
            "--rounds",
            "20000",
            "--clients-per-round",
            "5",
            "--json",
        ],
        capsys,
    )
    out = _main.out
    assert code == 0
    eps = json.loads(out)["epsilon"]
    assert eps["pld"] is None and "not computed" in eps["pld_note"] and math.isfinite(eps["rdp"]) and eps["rdp"] > 0
    assert time.monotonic() - t0 < 60


@pytest.mark.parametrize(
    "dim,overrides,word",
    [
        (1_000_000, ["privacy.audit.canaries=600", "privacy.audit.unseen=600"], "GiB"),
        (1_000_000, ["training.rounds=100000"], "update coordinates"),
    ],
)
def test_audit_simulation_cost_refused_up_front(tmp_path, dim, overrides, word, capsys):
    exp = tmp_path / "a.yaml"
    exp.write_text(
        "algorithm: {weighting: uniform}\ntraining: {rounds: 10, sampling: poisson, sampling_rate: 0.5}\n"
        "data: {num_clients: 100}\nprivacy: {mechanism: gaussian_fixed, noise_multiplier: 1.0}\n"
    )
    sets = [x for o in overrides for x in ("--set", o)]
    t0 = time.monotonic()
    code, err = _main(["privacy", "audit", str(exp), "--simulate", "--dim", str(dim), *sets], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("tff-lab: error: --dim: ") and word in err[0], err
    assert time.monotonic() - t0 < 20


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["privacy", "audit", "experiments/privacy_audit.yaml", "--simulate", "--dim", "-1"], ["--dim", ">= 1"]),
        (["k8s", "wait", "localhost:1", "--timeout", "-1"], ["--timeout", "> 0"]),
        (["privacy", "epsilon", "--mechanism", "tree", "--noise-multiplier", "nan"], ["--noise-multiplier", "finite"]),
        (
            ["privacy", "epsilon", "--mechanism", "tree", "--rounds", "2000000000", "--noise-multiplier", "1"],
            ["--rounds", "1000000"],
        ),
    ],
)
def test_real_cli(argv, needles):
    t0 = time.monotonic()
    assert_user_error(run_cli(*argv, timeout=60), *needles)
    assert time.monotonic() - t0 < 60
