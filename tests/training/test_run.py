"""End-to-end runs through the real CLI and the Python API (tiny configs)."""

import csv
import json

import numpy as np
import pytest
from helpers import TINY, assert_user_error, run_cli


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    args = ["run", "--out", out, "--quiet"] + [a for o in TINY for a in ("--set", o)]
    proc = run_cli(*args, check=True)
    return out, proc


def test_run_dir_holds_every_artifact(tiny_run):
    out, _ = tiny_run
    for rel in [
        "config.yaml",
        "metrics.csv",
        "metrics.jsonl",
        "client_stats.json",
        "summary.json",
        "model/model.keras",
        "model/saved_model/saved_model.pb",
        "plots/accuracy.png",
        "plots/loss.png",
        "plots/heterogeneity.png",
    ]:
        assert (out / rel).is_file(), rel
    assert any((out / "tb").iterdir()), "TensorBoard events"
    assert list((out / "checkpoints").glob("ckpt_*.npz"))
    for png in (out / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_have_one_row_per_round(tiny_run):
    out, _ = tiny_run
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    jl = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in jl] == [1, 2, 3]
    for r in rows:
        assert int(r["clients"]) == 4
        assert 0 <= float(r["train_accuracy"]) <= 1 and float(r["train_loss"]) > 0
        assert float(r["round_seconds"]) > 0
    assert rows[0]["eval_accuracy"] == "" and rows[1]["eval_accuracy"] != "" and rows[2]["eval_accuracy"] != ""


def test_summary_fields(tiny_run):
    out, _ = tiny_run
    s = json.loads((out / "summary.json").read_text())
    assert s["rounds"] == 3 and s["seed"] == 0 and s["population"] == 8
    assert 0 <= s["final_test_accuracy"] <= 1 and s["final_test_loss"] > 0
    assert s["centralized_accuracy"] > 0
    assert s["retention"] == pytest.approx(s["final_test_accuracy"] / s["centralized_accuracy"])
    assert s["versions"]["tensorflow-federated"] == "0.87.0"
    spread = s["per_client_eval_accuracy"]
    assert spread["min"] <= spread["median"] <= spread["max"] and spread["clients"] == 8
    jl = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert s["final_test_accuracy"] == pytest.approx(jl[-1]["eval_accuracy"])
    # The saved model reproduces the reported accuracy.
    import tensorflow as tf

    from tff_lab.config import load_config
    from tff_lab.data import load_federated_data

    model = tf.keras.models.load_model(out / "model/model.keras")
    data = load_federated_data(load_config(out / "config.yaml"))
    acc = float(np.mean(model.predict(data.test[0], verbose=0).argmax(1) == data.test[1]))
    assert acc == pytest.approx(s["final_test_accuracy"], abs=1e-6)


def test_client_stats(tiny_run):
    out, _ = tiny_run
    st = json.loads((out / "client_stats.json").read_text())
    assert st["num_clients"] == 8 and len(st["clients"]) == 8
    assert sum(sum(c["label_histogram"]) for c in st["clients"]) == st["train_examples"]


def test_rerun_into_the_same_dir_needs_resume_or_overwrite(tiny_run):
    out, _ = tiny_run
    before = (out / "summary.json").read_bytes()
    proc = run_cli("run", "--out", out, "--quiet", *[a for o in TINY for a in ("--set", o)])
    assert_user_error(proc, "--resume")
    assert (out / "summary.json").read_bytes() == before


def test_a_different_experiment_in_the_same_dir_is_refused(tiny_run):
    out, _ = tiny_run
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = run_cli("run", "--out", out, "--quiet", "--set", "seed=5", *[a for o in TINY for a in ("--set", o)])
    assert_user_error(proc, str(out), "different experiment")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_python_api_matches_cli(tiny_run, tmp_path):
    from tff_lab import run_experiment

    out, _ = tiny_run
    s = run_experiment(None, tmp_path / "api", overrides=TINY)
    cli = json.loads((out / "summary.json").read_text())
    assert s["final_test_accuracy"] == cli["final_test_accuracy"]
    assert s["config_hash"] == cli["config_hash"]


# Each family runs beside a twin that differs only in the knob under test: the knob must reach TFF's
# process (the final weights differ, and the server optimizer's state is in the checkpoint).
FAMILIES = {
    "fedprox": (
        ["algorithm.name=fedprox", "algorithm.proximal_strength=0.5"],
        ["algorithm.name=fedprox", "algorithm.proximal_strength=0.0"],
    ),
    "fedsgd": (
        ["algorithm.name=fedsgd", "algorithm.server_optimizer.learning_rate=0.5"],
        ["algorithm.name=fedavg", "algorithm.server_optimizer.learning_rate=0.5"],
    ),
    "unweighted-yogi": (
        [
            "algorithm.weighting=uniform",
            "algorithm.server_optimizer.name=yogi",
            "algorithm.server_optimizer.learning_rate=0.01",
        ],
        ["algorithm.weighting=uniform", "algorithm.server_optimizer.learning_rate=0.01"],
    ),
    "fedavgm-cnn-poisson": (
        [
            "algorithm.server_optimizer.name=sgdm",
            "model.name=cnn",
            "training.sampling=poisson",
            "training.sampling_rate=0.5",
        ],
        ["model.name=cnn", "training.sampling=poisson", "training.sampling_rate=0.5"],
    ),
}


def _final_weights(run_dir):
    import tensorflow as tf

    return tf.keras.models.load_model(run_dir / "model/model.keras").get_weights()


def _state_arrays(run_dir) -> int:
    """How many arrays the learning process's state holds (the last checkpoint's record)."""
    last = sorted((run_dir / "checkpoints").glob("ckpt_*.json"))[-1]
    return json.loads(last.read_text())["num_arrays"]


@pytest.mark.slow  # two tiny runs per family
@pytest.mark.parametrize("family", list(FAMILIES))
def test_algorithm_family_runs(family, tmp_path):
    from tff_lab import run_experiment

    algo, twin = FAMILIES[family]
    base = TINY + ["centralized.enabled=false"]
    s = run_experiment(None, tmp_path / "r", overrides=base + algo)
    assert s["rounds"] == 3 and 0 <= s["final_test_accuracy"] <= 1
    rows = [json.loads(l) for l in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["train_loss"] is None or np.isfinite(r["train_loss"]) for r in rows)
    run_experiment(None, tmp_path / "twin", overrides=base + twin)
    w, w_twin = _final_weights(tmp_path / "r"), _final_weights(tmp_path / "twin")
    assert len(w) == len(w_twin) > 0
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(w, w_twin, strict=True))
    assert diff > 1e-4, f"{family}: the knob did not change the model ({diff})"
    # The server optimizer's state (accumulators, hyperparameters) is in the process's state:
    # yogi adds accumulator + preconditioner per weight and beta_1, beta_2, epsilon, step;
    # sgdm adds an accumulator per weight and the momentum; FedSGD's process has no client optimizer
    # (FedAvg's client work keeps its learning rate); FedProx's mu is in the computation, not the state.
    extra = {"unweighted-yogi": 2 * len(w) + 4, "fedavgm-cnn-poisson": len(w) + 1, "fedsgd": -1}.get(family, 0)
    assert _state_arrays(tmp_path / "r") - _state_arrays(tmp_path / "twin") == extra
