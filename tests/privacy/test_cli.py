"""`tff-lab privacy epsilon|noise` and the privacy/aggregation bad-input rules, through the real CLI."""

from __future__ import annotations

import json

import pytest
from helpers import assert_user_error, run_cli

from tff_lab.cli import main

TUTORIAL = ["--population", "3383", "--sampling-rate", "0.0354715", "--rounds", "100", "--delta", "1e-5"]


def test_epsilon_of_the_tff_tutorial_setting():
    proc = run_cli(
        "privacy", "epsilon", "--mechanism", "gaussian_fixed", "--noise-multiplier", "1.2", *TUTORIAL, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert round(info["epsilon"]["rdp"], 2) == 1.99 and round(info["epsilon"]["pld"], 2) == 1.71
    assert info["neighbouring_relation"] == "ADD_OR_REMOVE_ONE"


def test_noise_for_a_target_then_epsilon_of_that_noise(capsys):
    assert (
        main(
            [
                "privacy",
                "noise",
                "--mechanism",
                "gaussian_fixed",
                "--target-epsilon",
                "1.9861111",
                "--accountant",
                "rdp",
                *TUTORIAL,
                "--json",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["noise_multiplier"] == pytest.approx(1.2, abs=2e-4)  # inverts the tutorial's RDP epsilon
    assert info["epsilon"]["rdp"] <= 1.9861111 and info["accountant"] == "rdp"


def test_experiment_yaml_with_overrides(tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "algorithm: {weighting: uniform}\ndata: {num_clients: 100}\n"
        "training: {rounds: 30, clients_per_round: 10}\n"
        "privacy: {mechanism: gaussian_fixed, noise_multiplier: 1.0}\n"
    )
    assert main(["privacy", "epsilon", str(exp), "--set", "training.rounds=60", "--json"]) == 0
    sixty = json.loads(capsys.readouterr().out)
    assert main(["privacy", "epsilon", str(exp), "--json"]) == 0
    thirty = json.loads(capsys.readouterr().out)
    assert sixty["rounds"] == 60 and sixty["epsilon"]["rdp"] > thirty["epsilon"]["rdp"]
    assert thirty["epsilon"]["pld"] is None  # fixed-size sampling: no PLD accountant in dp_accounting 0.4.3


@pytest.mark.parametrize(
    "args,needles",
    [
        # A bad flag value is named as the flag (argparse's own error: usage line, then the error).
        (["privacy", "epsilon", "--mechanism", "gaussian_fixed", "--noise-multiplier", "-1"], ["--noise-multiplier"]),
        (
            ["privacy", "epsilon", "--mechanism", "gaussian_fixed", "--noise-multiplier", "1", "--delta", "0.2"],
            ["--delta", "1/population"],
        ),
        (["privacy", "epsilon", "--mechanism", "ddp_secure", "--noise-multiplier", "1"], ["--model-dim"]),
        (
            ["privacy", "epsilon", "--mechanism", "ddp_secure", "--noise-multiplier", "1", "--model-dim", "100"],
            ["aggregation.zeroing"],
        ),
        (["privacy", "noise", "--mechanism", "gaussian_fixed", "--target-epsilon", "0"], ["--target-epsilon"]),
        (
            [
                "privacy",
                "epsilon",
                "--mechanism",
                "gaussian_fixed",
                "--noise-multiplier",
                "1",
                "--sampling-rate",
                "1.5",
            ],
            ["--sampling-rate"],
        ),
        (["privacy", "epsilon", "--noise-multiplier", "1"], ["privacy.mechanism"]),
    ],
)
def test_privacy_command_bad_input(args, needles, capsys):
    try:
        code = main(args)
    except SystemExit as e:  # argparse refused the flag's value
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "error:" in err[-1] and (len(err) == 1 or err[0].startswith("usage:")), err
    for n in needles:
        assert n in err[-1]


@pytest.mark.parametrize(
    "overrides,needles",
    [
        (["privacy.noise_multiplier=abc"], ["privacy.noise_multiplier", "a number"]),
        (["privacy.noise_multiplier=-0.5"], ["privacy.noise_multiplier"]),
        (["privacy.noise_multiplier=1.0", "privacy.clip=0"], ["privacy.clip"]),
        (["privacy.noise_multiplier=1.0", "privacy.delta=1.5"], ["privacy.delta", "(0, 1)"]),
        (["privacy.noise_multiplier=1.0", "privacy.delta=0.1"], ["privacy.delta", "1/population"]),
        (["privacy.target_epsilon=-2"], ["privacy.target_epsilon"]),
        (["privacy.noise_multiplier=1.0", "algorithm.weighting=num_examples"], ["algorithm.weighting", "unweighted"]),
        (
            ["privacy.noise_multiplier=1.0", "training.sampling=poisson", "training.sampling_rate=0"],
            ["training.sampling_rate"],
        ),
        (["privacy.noise_multiplier=1.0", "aggregation.kind=compression"], ["aggregation.kind"]),
        (["privacy.noise_multiplier=1.0", "privacy.accountant=pld"], ["privacy.accountant"]),
    ],
)
def test_run_refuses_bad_privacy_settings_and_writes_nothing(tmp_path, overrides, needles, capsys):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--quiet", "--set", "privacy.mechanism=gaussian_fixed"]
    if not any(o.startswith("algorithm.weighting") for o in overrides):
        args += ["--set", "algorithm.weighting=uniform"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tff-lab: error:"), err
    for n in needles:
        assert n in err[0]
    assert not out.exists()


def test_bad_privacy_input_through_a_fresh_process(tmp_path):
    """The same refusal as a user meets it: exit code 2, one line, no traceback."""
    out = tmp_path / "run"
    proc = run_cli(
        "run",
        "--out",
        out,
        "--set",
        "privacy.mechanism=gaussian_fixed",
        "--set",
        "privacy.noise_multiplier=abc",
        timeout=120,
    )
    assert_user_error(proc, "privacy.noise_multiplier")
    assert not out.exists()
