"""Bad input: one line naming the field or file, exit code 2, nothing in RUN_DIR damaged."""

import numpy as np
import pytest
from helpers import assert_user_error, run_cli


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--set", "algorithm.name=fedfoo"], ["algorithm.name", "fedavg"]),
        (["--set", "model.name=resnet"], ["model.name", "mlp"]),
        (["--set", "data.source=mnist"], ["data.source", "digits"]),
        (["--set", "training.rounds=0"], ["training.rounds"]),
        (["--set", "training.clients_per_round=50"], ["training.clients_per_round", "20"]),
        (["--set", "nope.x=1"], ["nope", "valid keys"]),
        (["--set", "garbage"], ["--set", "key.sub=value"]),
        (["experiments/does_not_exist.yaml"], ["does_not_exist.yaml", "not found"]),
        (["--set", "data.source=emnist", "--set", "training.clients_per_round=2"], ["emnist", "network"]),
    ],
)
def test_bad_config(args, needles, tmp_path):
    proc = run_cli("run", "--out", tmp_path / "r", *args)
    assert_user_error(proc, *needles)
    assert not (tmp_path / "r").exists()


def test_malformed_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("data: {source: digits\n")
    assert_user_error(run_cli("run", f, "--out", tmp_path / "r"), "bad.yaml", "YAML")


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow  # it makes an earlier run first
def test_missing_data_dir(tmp_path):
    missing = [
        "--set",
        "data.source=npz_dir",
        "--set",
        f"data.path={tmp_path / 'missing'}",
        "--set",
        "training.clients_per_round=2",
    ]
    proc = run_cli("run", "--out", tmp_path / "r", *missing)
    assert_user_error(proc, "missing", "not found")
    assert not (tmp_path / "r").exists()
    # An earlier run in RUN_DIR survives a broken experiment, even with --overwrite (issue 12).
    earlier = tmp_path / "earlier"
    run_cli(
        "run",
        "--out",
        earlier,
        "--quiet",
        "--set",
        "training.rounds=1",
        "--set",
        "centralized.enabled=false",
        "--set",
        "data.num_clients=4",
        "--set",
        "training.clients_per_round=2",
        check=True,
    )
    before = _files(earlier)
    assert any(p.name == "summary.json" for p in before) and any(p.parts[0] == "checkpoints" for p in before)
    proc = run_cli("run", "--out", earlier, "--overwrite", *missing)
    assert_user_error(proc, "missing", "not found")
    assert _files(earlier) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier"]  # nothing moved aside and left behind


def test_client_file_with_nan_features(tmp_path):
    d = tmp_path / "clients"
    d.mkdir()
    for name in ("a", "b"):
        x = np.ones((6, 3), np.float32)
        if name == "b":
            x[4, 1] = np.nan
        np.savez(d / f"{name}.npz", x=x, y=np.zeros(6, np.int64))
    proc = run_cli(
        "run",
        "--out",
        tmp_path / "r",
        "--set",
        "data.source=npz_dir",
        "--set",
        f"data.path={d}",
        "--set",
        "training.clients_per_round=1",
    )
    assert_user_error(proc, "b.npz", "NaN at example 4")
    assert not (tmp_path / "r").exists()


def test_bad_client_file(tmp_path):
    d = tmp_path / "clients"
    d.mkdir()
    np.savez(d / "a.npz", x=np.zeros((5, 3), np.float32), y=np.zeros(5, np.int64))
    np.savez(d / "b.npz", x=np.zeros((5, 4), np.float32), y=np.zeros(5, np.int64))
    proc = run_cli(
        "run",
        "--out",
        tmp_path / "r",
        "--set",
        "data.source=npz_dir",
        "--set",
        f"data.path={d}",
        "--set",
        "training.clients_per_round=1",
    )
    assert_user_error(proc, "b.npz", "shape")


def test_non_run_dir_is_not_touched(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    proc = run_cli("run", "--out", out, "--set", "training.rounds=1")
    assert_user_error(proc, str(out))
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
