"""Kubernetes quantities (--cpu, --memory, --storage) parsed with the kubernetes client's own
``parse_quantity`` and Kubernetes' quantity syntax: many generated valid quantities pass unchanged
and parse to the value Kubernetes gives them; many generated invalid ones (unknown suffixes, signs,
zero, NaN/inf, spaces, underscores, overflow) are one line naming the flag, from argparse and from
RenderParams.validate (Python callers)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import numpy as np
import pytest
from helpers import REPO, assert_user_error, run_cli
from kubernetes.utils import parse_quantity

from tff_lab.cli import main
from tff_lab.deploy import render
from tff_lab.errors import ConfigError

RNG = np.random.default_rng(8)
BINARY = ["Ki", "Mi", "Gi", "Ti", "Pi"]
DECIMAL = ["k", "M", "G", "T", "P"]


def _valid(kind: str, n: int = 40) -> list[str]:
    out = []
    for _ in range(n):
        num = RNG.choice([f"{int(RNG.integers(1, 5000))}", f"{RNG.uniform(0.5, 64):.3f}"])
        if kind == "cpu":
            out.append(RNG.choice([num, f"{int(RNG.integers(1, 64000))}m"]))
        else:
            out.append(f"{int(RNG.integers(1, 900))}{RNG.choice(BINARY[:4] + DECIMAL[:4])}")
    return out


def _invalid() -> list[str]:
    bad = [
        "16XB",
        "4 Gi",
        " 4",
        "4 ",
        "1_000",
        "NaN",
        "nan",
        "inf",
        "Infinity",
        "-inf",
        "",
        "Gi",
        "1.5.5",
        "0x10",
        "1e",
        "1e999999",
        "--1",
        "+-1",
        "4GB",
        "4gb",
        "4gi",
        "1Ki2",
        "one",
        "4\n",
        "½",
    ]
    bad += ["0", "-0", "0.0", "0Gi", "0m", "-1", "-3", "-16Gi", "-0.5", "-500m"]
    for _ in range(30):  # random junk suffixes
        suffix = "".join(RNG.choice(list("abcdefghjlnopqrsuvwxyzABCDFHIJLNOQRSUVWXYZ"), int(RNG.integers(1, 4))))
        if suffix not in ("m", "k", "M", "G", "T", "P", "E") and not suffix.startswith(("e", "E")):
            bad.append(f"{int(RNG.integers(1, 100))}{suffix}")
    return bad


@pytest.mark.parametrize("kind", ["cpu", "memory", "storage"])
def test_valid_quantities_pass_unchanged(kind):
    for q in _valid(kind):
        assert render.check_quantity(q, f"--{kind}", kind) == q
        assert parse_quantity(q) > 0


@pytest.mark.parametrize("kind", ["cpu", "memory", "storage"])
def test_invalid_quantities_refused(kind):
    for q in _invalid():
        with pytest.raises(ConfigError) as e:
            render.check_quantity(q, f"--{kind}", kind)
        assert e.value.where == f"--{kind}" and "\n" not in str(e.value), (q, str(e.value))


def test_beyond_any_node_refused():
    for q, kind in [
        ("1e20", "cpu"),
        ("200000", "cpu"),
        ("8Ei", "memory"),
        ("1e30", "storage"),
        ("0.1m", "cpu"),
        ("0.5", "memory"),
    ]:
        with pytest.raises(ConfigError):
            render.check_quantity(q, "--x", kind)


def test_syntax_agrees_with_parse_quantity():
    """Whatever the syntax accepts, the kubernetes client parses to a finite positive Decimal."""
    for q in _valid("memory") + _valid("cpu") + ["1E", "2e3", "1.", ".5", "+4"]:
        v = parse_quantity(q)
        assert isinstance(v, Decimal) and v.is_finite() and v > 0


def test_render_params_validate_quantities():
    p = render.RenderParams(
        experiment_name="e", experiment_yaml="name: e\n", workers=1, gpus_per_worker=0, image="r.example/t:1"
    )
    p.validate()
    for field in ("cpu", "memory", "storage"):
        for q in ("16XB", "-3", "0", "NaN"):
            with pytest.raises(ConfigError) as e:
                dataclasses.replace(p, **{field: q}).validate()
            assert e.value.where == f"--{field}"


@pytest.mark.parametrize(
    "flag,value", [("--memory", "16XB"), ("--cpu", "-3"), ("--storage", "0Gi"), ("--memory", "NaN")]
)
def test_flags_in_process(flag, value, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["k8s", "render", "experiments/dist_digits.yaml", "--image", "r.example/t:1", flag, value]) == 2
    assert f"argument {flag}: expected a Kubernetes quantity" in capsys.readouterr().err.strip().splitlines()[-1]


def test_real_cli(tmp_path):
    proc = run_cli(
        "k8s",
        "render",
        "experiments/dist_digits.yaml",
        "--image",
        "r.example/t:1",
        "--memory",
        "16XB",
        "--cpu",
        "-3",
        "--out",
        tmp_path / "k8s",
        timeout=60,
    )
    assert_user_error(proc, "--")
    assert not (tmp_path / "k8s").exists()
