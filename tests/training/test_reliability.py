"""--overwrite never loses a working run to a broken one; divergence stops the run loudly."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import run_cli

from tff_lab.config import load_config
from tff_lab.training import loop

BASE = [
    "training.rounds=3",
    "training.clients_per_round=3",
    "data.num_clients=6",
    "training.eval_every_rounds=3",
    "training.rounds_per_checkpoint=2",
    "centralized.enabled=false",
]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "r"
    loop.run_experiment(load_config(None, BASE), out)
    (out / "export").mkdir()
    (out / "export" / "model_float32.tflite").write_bytes(b"stale export of the old model")
    (out / "notes.txt").write_text("the user's own file")
    return out


def _snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "sets",
    [
        ["data.source=npz_dir", "data.path=/nonexistent/clients", "data.num_clients=20"],  # fails while loading data
        ["algorithm.client_optimizer.learning_rate=300"],  # diverges in round 1
    ],
)
def test_overwrite_with_a_broken_experiment_keeps_the_old_run(sets, good_run, tmp_path, capsys):
    from tff_lab.cli import main

    run = tmp_path / "r"
    shutil.copytree(good_run, run)
    before = _snapshot(run)
    code = main(["run", "--out", str(run), "--overwrite", "--quiet", *sum((["--set", o] for o in BASE + sets), [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (2, 3) and len(err) == 1, (code, err)
    assert _snapshot(run) == before
    assert not [p for p in run.iterdir() if p.name.startswith(".replaced")]


def test_overwrite_replaces_the_whole_old_run_including_its_export(good_run, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(good_run, run)
    old_summary = json.loads((run / "summary.json").read_text())
    s = loop.run_experiment(load_config(None, BASE + ["seed=7"]), run, overwrite=True)
    assert s["seed"] == 7 and old_summary["seed"] == 0
    assert not (run / "export").exists()  # the old model's export does not survive beside the new model
    assert (run / "notes.txt").read_text() == "the user's own file"  # not ours: left alone
    assert not [p for p in run.iterdir() if p.name.startswith(".replaced")]


def test_divergence_stops_with_exit_3_names_the_round_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "r"
    proc = run_cli(
        "run",
        "--out",
        run,
        "--quiet",
        *sum(
            (
                ["--set", o]
                for o in BASE
                + [
                    "training.rounds=20",
                    "training.rounds_per_checkpoint=1",
                    "algorithm.server_optimizer.learning_rate=30",
                ]
            ),
            [],
        ),
    )
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("tff-lab: diverged:") and "round" in line and "Traceback" not in proc.stderr
    bad_round = int(line.split("at round ")[1].split(":")[0])
    assert not (run / "model").exists() and not (run / "summary.json").exists()
    kept = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("ckpt_*.json"))
    assert bad_round == 2 and kept and max(kept) == bad_round - 1
    import numpy as np

    with np.load(run / "checkpoints" / f"ckpt_{max(kept):06d}.npz") as f:
        assert all(np.all(np.isfinite(f[k])) for k in f.files if f[k].dtype.kind == "f")
