"""The research API: a user's model, data, algorithm and aggregator, with every guarantee kept."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, run_cli

import tff_lab
from tff_lab.config import load_config

HERE = Path(__file__).resolve().parent
BASE = [
    "training.rounds=3",
    "training.clients_per_round=3",
    "training.eval_every_rounds=3",
    "training.rounds_per_checkpoint=1",
    "centralized.enabled=false",
    "training.batch_size=8",
]


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def _weights(run_dir: Path):
    import tensorflow as tf

    m = tf.keras.models.load_model(run_dir / "model" / "model.keras", compile=False)
    return m.get_weights()


def test_python_model_and_data_run_and_record_provenance(tmp_path):
    import user_parts

    model = tff_lab.ModelSpec(builder=user_parts.tiny_net, outputs="logits", kwargs={"width": 6})
    s = tff_lab.run_experiment(load_config(None, BASE), tmp_path / "r", model=model, data=user_parts.blobs())
    assert s["rounds"] == 3 and s["population"] == 6
    assert 0.0 <= s["final_test_accuracy"] <= 1.0
    parts = {p["kind"]: p for p in s["parts"]}
    src = Path(user_parts.__file__).resolve()
    assert parts["model"]["name"] == "user_parts:tiny_net"
    assert parts["model"]["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert parts["data"]["name"] == "python:data:dict" and not parts["model"]["builtin"]
    assert parts["data"]["type"] == "object" and len(parts["data"]["builds_sha256"]) == 64
    text = (tmp_path / "r" / "config.yaml").read_text()
    assert "builder: user_parts:tiny_net" in text and "outputs: logits" in text and "user parts" in text
    assert json.loads((tmp_path / "r" / "parts.json").read_text()) == s["parts"]
    # The model has the user's architecture (6 hidden units, 3 logits).
    w = _weights(tmp_path / "r")
    assert [a.shape for a in w] == [(5, 6), (6,), (6, 3), (3,)]


def test_yaml_import_paths_through_the_cli(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "data: {source: 'user_parts:load_blobs', kwargs: {num_clients: 5}}\n"
        "model: {builder: 'user_parts:tiny_net', kwargs: {width: 4}, outputs: logits}\n"
    )
    (tmp_path / "user_parts.py").write_text((HERE / "user_parts.py").read_text())  # beside the YAML
    proc = run_cli("run", exp, "--out", tmp_path / "r", "--quiet", *sum((["--set", o] for o in BASE), []))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["population"] == 5
    assert {p["kind"]: p["name"] for p in s["parts"]}["model"] == "user_parts:tiny_net"


def test_tff_client_data_and_tf_data_mapping_give_the_same_run(tmp_path):
    import tensorflow as tf
    import tensorflow_federated as tff
    import user_parts

    arrays = user_parts.blobs()
    cd = tff.simulation.datasets.TestClientData({c: {"x": x, "y": y} for c, (x, y) in arrays.items()})
    ds_map = {c: tf.data.Dataset.from_tensor_slices((x, y)) for c, (x, y) in arrays.items()}
    cfg = load_config(None, BASE)
    a = tff_lab.run_experiment(cfg, tmp_path / "a", data=cd)
    b = tff_lab.run_experiment(cfg, tmp_path / "b", data=ds_map)
    c = tff_lab.run_experiment(cfg, tmp_path / "c", data=arrays)
    assert a["population"] == b["population"] == c["population"] == 6
    for wa, wb, wc in zip(_weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c"), strict=True):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(wa, wc)


def test_preprocess_and_separate_test_set(tmp_path):
    import tensorflow as tf
    import user_parts

    arrays = user_parts.blobs()
    test = user_parts.blobs(num_clients=1, per_client=50, seed=1)["c0"]
    fd = tff_lab.federated_data(
        {c: tf.data.Dataset.from_tensor_slices((x, y)) for c, (x, y) in arrays.items()},
        test=test,
        preprocess=lambda ds: ds.map(lambda x, y: (x * 2.0, y)),
    )
    assert fd.test_source == "separate" and len(fd.test[1]) == 50
    np.testing.assert_allclose(fd.train["c0"][0].sum() + fd.eval["c0"][0].sum(), 2 * arrays["c0"][0].sum(), rtol=1e-5)


def test_user_algorithm_equals_the_builtin_one(tmp_path):
    import user_parts

    # The built-in process on TFF's runtime, bit for bit the user's aggregator's run (also TFF's runtime).
    cfg = load_config(
        None,
        BASE
        + [
            "algorithm.server_optimizer.name=sgdm",
            "algorithm.server_optimizer.momentum=0.9",
            "algorithm.client_optimizer.learning_rate=0.1",
            "training.engine=tff",
        ],
    )
    ref = tff_lab.run_experiment(cfg, tmp_path / "ref", data=user_parts.blobs())
    # sgdm(0.1) with momentum 0.9 on the clients differs from the built-in plain SGD clients:
    mine = tff_lab.run_experiment(cfg, tmp_path / "mine", data=user_parts.blobs(), algorithm=user_parts.my_fedavg)
    assert {p["kind"]: p["name"] for p in mine["parts"]}["algorithm"] == "user_parts:my_fedavg"
    diff = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(_weights(tmp_path / "ref"), _weights(tmp_path / "mine"), strict=True)
    )
    assert diff > 1e-4  # the user's process really ran (client momentum)
    # ...and a user aggregator equal to TFF's default for weighted FedAvg reproduces the built-in run.
    same = tff_lab.run_experiment(cfg, tmp_path / "agg", data=user_parts.blobs(), aggregator=user_parts.mean_factory())
    for a, b in zip(_weights(tmp_path / "ref"), _weights(tmp_path / "agg"), strict=True):
        np.testing.assert_array_equal(a, b)
    priv = json.loads((tmp_path / "agg" / "privacy.json").read_text())
    assert priv["epsilon"] is None and "declares no dp_accounting event" in priv["why_no_epsilon"]


def test_declared_dp_aggregator_gets_exact_epsilon(tmp_path):
    import dp_accounting
    import tensorflow_federated as tff
    import user_parts

    agg = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
        noise_multiplier=1.0, clients_per_round=3, clip=1.0
    )
    # Under replace-one (fixed-size sampling) a clip-C sum moves by 2C: the Gaussian multiplier of the
    # event is half the aggregator's (declaring 1.0 would overstate the noise, and is refused).
    event = dp_accounting.SampledWithoutReplacementDpEvent(6, 3, dp_accounting.GaussianDpEvent(0.5))
    agg.dp_event = lambda cfg, population: event
    # z = 1 on 3 clients is loud noise: this test is about epsilon, not accuracy, so no divergence stop.
    s = tff_lab.run_experiment(
        load_config(None, BASE + ["algorithm.weighting=uniform", "training.divergence_factor=1000"]),
        tmp_path / "r",
        data=user_parts.blobs(),
        aggregator=agg,
    )
    from tff_lab.privacy.accounting import epsilon_of

    delta = min(1e-5, 6**-1.1)
    expected = epsilon_of(event, 3, delta, dp_accounting.NeighboringRelation.REPLACE_ONE)
    assert s["privacy"]["epsilon"]["rdp"] == pytest.approx(expected.rdp, rel=1e-9)
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(event, 3)  # dp_accounting's own default orders: the same bound within their resolution
    assert s["privacy"]["epsilon"]["rdp"] == pytest.approx(acc.get_epsilon(delta), rel=0.05)
    assert s["privacy"]["epsilon"]["neighbouring_relation"] == "REPLACE_ONE"
    rows = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eps_rdp"] for r in rows] == sorted(r["eps_rdp"] for r in rows) and len(rows) == 3


def test_stages_resume_bit_identical_with_user_parts(tmp_path):
    import user_parts

    model = tff_lab.ModelSpec(builder=user_parts.tiny_net, outputs="logits")
    cfg = load_config(
        None,
        BASE
        + [
            "training.rounds=4",
            "privacy.mechanism=gaussian_fixed",
            "privacy.noise_multiplier=0.5",
            "algorithm.weighting=uniform",
            "training.sampling=poisson",
            "training.sampling_rate=0.5",
        ],
    )
    full = tff_lab.run_experiment(cfg, tmp_path / "full", model=model, data=user_parts.blobs())
    exp = tff_lab.build(cfg, model=model, data=user_parts.blobs())
    rs = tff_lab.initialize(exp, tmp_path / "split")
    tff_lab.run_rounds(exp, rs, until=2)
    exp.close()
    exp2 = tff_lab.build(cfg, model=model, data=user_parts.blobs())
    rs2 = tff_lab.initialize(exp2, tmp_path / "split", resume=True)
    assert rs2.round == 2
    tff_lab.run_rounds(exp2, rs2)
    split = tff_lab.finalize(exp2, rs2)
    exp2.close()
    for a, b in zip(_weights(tmp_path / "full"), _weights(tmp_path / "split"), strict=True):
        np.testing.assert_array_equal(a, b)
    assert split["privacy"]["epsilon"] == full["privacy"]["epsilon"]


def test_resume_refuses_a_part_that_builds_something_else(tmp_path):
    """Same name (a closure of one factory), different architecture: refused naming the model."""
    import user_parts

    def make(width):
        def net(input_shape, num_classes):
            return user_parts.tiny_net(input_shape, num_classes, width=width)

        return net

    cfg = load_config(None, BASE)
    exp = tff_lab.build(cfg, data=user_parts.blobs(), model=make(4))
    rs = tff_lab.initialize(exp, tmp_path / "r")
    tff_lab.run_rounds(exp, rs, until=1)
    exp.close()
    exp2 = tff_lab.build(cfg, data=user_parts.blobs(), model=make(5))
    assert exp2.cfg.model.builder == exp.cfg.model.builder  # python:model:...make.<locals>.net
    with pytest.raises(tff_lab.errors.ConfigError, match=r"^model: .*what it builds changed.*\[5, 5\]"):
        tff_lab.initialize(exp2, tmp_path / "r", resume=True)
    exp2.close()


# -- bad parts: TypeError/ValueError in Python, one line and exit 2 from the CLI, RUN_DIR untouched ----------
@pytest.mark.parametrize(
    "kwargs, exc, needle",
    [
        ({"model": "user_parts:returns_not_a_model"}, TypeError, "expected a fresh tf.keras.Model"),
        ({"model": "user_parts:wrong_classes"}, ValueError, "outputs shape"),
        ({"data": {}}, ValueError, "holds no clients"),
        ({"data": 42}, TypeError, "ClientData"),
        ({"aggregator": object()}, TypeError, "tff.aggregators factory"),
        ({"algorithm": "user_parts:not_a_learning_process"}, TypeError, "LearningProcess"),
    ],
)
def test_bad_python_parts(kwargs, exc, needle, tmp_path):
    import user_parts

    kwargs = {k: (getattr(user_parts, v.split(":")[1]) if isinstance(v, str) else v) for k, v in kwargs.items()}
    kwargs.setdefault("data", user_parts.blobs())
    with pytest.raises(exc, match=needle):
        tff_lab.run_experiment(load_config(None, BASE), tmp_path / "r", **kwargs)
    assert not (tmp_path / "r").exists()


def test_unimportable_state_checks():
    from tff_lab.federated.algorithms import check_checkpointable

    check_checkpointable({"w": np.zeros(3), "n": 3})
    with pytest.raises(ValueError, match="cannot be checkpointed"):
        check_checkpointable({"w": np.zeros(3), "bad": object()})


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "r"
    tff_lab.run_experiment(load_config(None, BASE), out)
    return out


@pytest.mark.parametrize(
    "sets, needles",
    [
        (["model.builder=user_parts:returns_not_a_model"], ["model", "tf.keras.Model"]),
        (["model.builder=user_parts:wrong_classes"], ["model", "outputs shape"]),
        (["model.builder=no_such_module_xyz:net"], ["model.builder", "no_such_module_xyz"]),
        (["model.builder=user_parts:nothing_here"], ["model.builder", "nothing_here"]),
        (["model.builder=not an import path"], ["model.builder", "module:attribute"]),
        (["model.name=my_resnet"], ["model.name", "my_resnet", "mlp"]),
        (["aggregation.builder=user_parts:blobs"], ["aggregator", "factory"]),
        (["algorithm.builder=user_parts:not_a_learning_process"], ["algorithm", "LearningProcess"]),
    ],
)
def test_bad_parts_from_the_cli_leave_run_dir_untouched(sets, needles, good_run, tmp_path, monkeypatch, capsys):
    """In-process CLI (tff_lab.cli.main) for speed; the subprocess test below covers a fresh process."""
    import shutil

    from tff_lab.cli import main

    run = tmp_path / "r"
    shutil.copytree(good_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    monkeypatch.chdir(HERE)
    code = main(["run", "--out", str(run), "--overwrite", "--quiet", *sum((["--set", o] for o in BASE + sets), [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("tff-lab: error"), err
    for n in needles:
        assert n in err[0], (n, err[0])
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_bad_part_in_a_fresh_process(good_run, tmp_path):
    import shutil

    run = tmp_path / "r"
    shutil.copytree(good_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    proc = run_cli(
        "run",
        "--out",
        run,
        "--overwrite",
        "--set",
        "model.builder=user_parts:returns_not_a_model",
        *sum((["--set", o] for o in BASE), []),
        cwd=HERE,
    )
    assert_user_error(proc, "model", "tf.keras.Model")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
