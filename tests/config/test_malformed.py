"""Malformed experiments, hunted systematically: every field of the schema gets values of the wrong
YAML type (including what YAML 1.1 makes of unquoted dates, yes/no/on/off, ~, lists, .nan, .inf)
and out-of-range values; each must be a ConfigError naming that field, never a library's traceback.
A handful go through the real CLI: exit 2, one line on stderr, RUN_DIR untouched."""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal, Union

import pytest
import yaml
from helpers import assert_user_error, run_cli

from tff_lab.config import ExperimentConfig, from_dict, load_config
from tff_lab.config.schema import SEED_MAX
from tff_lab.errors import ConfigError

# Raw YAML text of bad values per declared type. Each is wrong for every field of that type.
BAD_INT = ["ten", "1.5", "1e3", "true", "on", "~", "[1]", "2024-01-01", ".nan", "{a: 1}", str(2**64)]
BAD_FLOAT = ["abc", ".nan", ".NaN", ".inf", "-.inf", "yes", "off", "[1.0]", "2024-01-01", "{a: 1}", "1e999"]
BAD_BOOL = ["maybe", "1", "0", "2024-01-01", "[true]", "'true'"]
BAD_STR = ["2024-01-01", "yes", "no", "[a]", "{a: b}", "''", "' padded '", "1.5"]
BAD_LITERAL = ["bogus", "yes", "off", "[sgd]", "2024-01-01", "1"]
BAD_TUPLE = ["5", "abc", "[1.5]", "[true]", "[2024-01-01]", "{a: 1}"]
BAD_DICT = ["[a]", "3", "abc", "{a: 2024-01-01}"]
BAD_SECTION = ["5", "[a]", "abc", "2024-01-01", "yes"]


def _bad_values(tp) -> list[str]:
    origin = typing.get_origin(tp)
    optional = False
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, tp, origin = True, args[0], typing.get_origin(args[0])
    if origin is Literal:
        vals = BAD_LITERAL
    elif origin is tuple:
        elem = typing.get_args(tp)[0]
        vals = BAD_TUPLE if elem is int else ["5", "[1]", "[2024-01-01]", "['']", "{a: 1}"]
    elif dataclasses.is_dataclass(tp):
        return BAD_SECTION
    else:
        vals = {int: BAD_INT, float: BAD_FLOAT, bool: BAD_BOOL, str: BAD_STR, dict: BAD_DICT}[tp]
    # null is fine where the field is Optional (and for dicts, where it means {}).
    return [v for v in vals if not ((optional or tp is dict) and v == "~")] + ([] if optional or tp is dict else ["~"])


def _fields(cls=ExperimentConfig, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        yield path, hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], path)


FIELDS = list(_fields())


def _nest(path: str, raw: str) -> str:
    parts = path.split(".")
    lines = [("  " * i) + p + ":" for i, p in enumerate(parts[:-1])]
    lines.append(("  " * (len(parts) - 1)) + f"{parts[-1]}: {raw}")
    return "\n".join(lines) + "\n"


def _where(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        from_dict(yaml.safe_load(text))
    return e.value.where


def test_the_hunt_covers_every_field():
    assert len(FIELDS) >= 90  # the schema's leaves and sections (grows with it)


@pytest.mark.parametrize("path, tp", FIELDS, ids=[p for p, _ in FIELDS])
def test_every_wrongly_typed_value_names_its_field(path, tp):
    wrong = []
    for raw in _bad_values(tp):
        text = _nest(path, raw)
        try:
            where = _where(text)
        except BaseException as e:  # pytest.fail (no error), or a library's exception: a finding either way
            wrong.append(f"{raw!r}: {type(e).__name__}: {str(e)[:120]}")
            continue
        if not (where == path or where.startswith(path + "[") or where.startswith(path + ".")):
            wrong.append(f"{raw!r}: named {where!r}")
    assert not wrong, f"{path}: " + "; ".join(wrong)


# Values of the right type that the libraries would refuse (or that mean nothing), per field.
OUT_OF_RANGE = [
    ("seed", SEED_MAX + 1),
    ("seed", -1),
    ("name", "a/b"),
    ("data.num_clients", 0),
    ("data.num_clients", 2**31),
    ("data.test_fraction", 0.0),
    ("data.test_fraction", 1.0),
    ("data.client_eval_fraction", 1.0),
    ("data.client_eval_fraction", -0.1),
    ("data.max_clients", 0),
    ("data.path", '"a\\0b"'),
    ("partition.alpha", 0),
    ("partition.alpha", -1),
    ("partition.alpha", 1e-10),
    ("partition.alpha", 1e300),
    ("partition.quantity_sigma", 1e300),
    ("data.synthetic_beta", 1e300),
    ("partition.min_examples_per_client", 0),
    ("model.hidden_units", [0]),
    ("model.hidden_units", [2**31]),
    ("model.cnn_filters", [-1]),
    ("model.dropout", 1.0),
    ("model.dropout", -0.5),
    ("algorithm.proximal_strength", -0.1),
    ("algorithm.client_optimizer.learning_rate", 0),
    ("algorithm.client_optimizer.name", "lamb"),
    ("algorithm.client_optimizer.weight_decay", 1.0),
    ("algorithm.server_optimizer.learning_rate", -1),
    ("algorithm.server_optimizer.epsilon", 0),
    ("training.rounds", 0),
    ("training.rounds", 2**31),
    ("training.batch_size", 0),
    ("training.local_epochs", 0),
    ("training.eval_every_rounds", 0),
    ("training.rounds_per_checkpoint", 0),
    ("training.client_concurrency", -1),
    ("training.workers", -1),
    ("training.worker_retries", -1),
    ("training.divergence_factor", 1.0),
    ("training.worker_addresses", ["nohost"]),
    ("training.worker_addresses", ["h:99999"]),
    ("privacy.target_quantile", 1.0),
    ("privacy.clip", 0),
    ("aggregation.ddp_bits", 23),
    ("aggregation.quantization_bits", 0),
    ("aggregation.quantization_threshold", -1),
    ("centralized.dp_noise_multiplier", 0),
    ("centralized.dp_l2_norm_clip", -1),
    ("dist.epochs", 0),
    ("dist.per_replica_batch_size", 0),
    ("dist.learning_rate", 0),
    ("dist.steps_per_execution", 0),
]


@pytest.mark.parametrize("path, value", OUT_OF_RANGE, ids=[f"{p}={v}" for p, v in OUT_OF_RANGE])
def test_out_of_range_values_name_their_field(path, value):
    extra = {}
    if path.startswith("privacy.") or path.startswith("aggregation.ddp"):
        extra = {
            "privacy.mechanism": "gaussian_adaptive" if "quantile" in path else "gaussian_fixed",
            "privacy.noise_multiplier": 1.0,
            "algorithm.weighting": "uniform",
        }
        if path.startswith("aggregation.ddp"):
            extra["privacy.mechanism"] = "ddp_secure"
    if path.startswith("aggregation.quantization"):
        extra = {"aggregation.kind": "compression"}
    if path.startswith("centralized.dp_"):
        extra = {"centralized.dp_sgd": True}
    if path.startswith("partition.min_examples"):
        extra = {"partition.scheme": "dirichlet"}
    if path.startswith("partition.quantity"):
        extra = {"partition.scheme": "quantity_skew"}
    if path.startswith("data.synthetic"):
        extra = {"data.source": "synthetic"}
    if path.startswith("data.max_clients"):
        extra = {"data.source": "emnist"}
    if path.startswith("data.path"):
        extra = {"data.source": "npz_dir"}
    overrides = [f"{k}={v}" for k, v in extra.items()] + [f"{path}={value}"]
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert e.value.where == path or e.value.where.startswith(path + "["), (e.value.where, e.value.message)


# Fields set away from their default that have no effect given another field: refused, never ignored.
NO_EFFECT = [
    (["centralized.enabled=false", "centralized.dp_sgd=true"], "centralized.dp_sgd"),
    (["centralized.dp_noise_multiplier=2.0"], "centralized.dp_noise_multiplier"),
    (["algorithm.server_optimizer.momentum=0.5"], "algorithm.server_optimizer.momentum"),
    (
        ["algorithm.server_optimizer.name=sgdm", "algorithm.server_optimizer.beta_1=0.5"],
        "algorithm.server_optimizer.beta_1",
    ),
    (
        ["algorithm.server_optimizer.name=adam", "algorithm.server_optimizer.initial_preconditioner_value=0.1"],
        "algorithm.server_optimizer.initial_preconditioner_value",
    ),
    (["algorithm.client_optimizer.momentum=0.5"], "algorithm.client_optimizer.momentum"),
    (["partition.scheme=iid", "partition.alpha=0.1"], "partition.alpha"),
    (["partition.scheme=shards", "partition.quantity_sigma=2"], "partition.quantity_sigma"),
    (["partition.scheme=dirichlet", "partition.classes_per_client=3"], "partition.classes_per_client"),
    (["data.synthetic_alpha=0.5"], "data.synthetic_alpha"),
    (["data.path=/tmp/x"], "data.path"),
    (["data.max_clients=5"], "data.max_clients"),
    (["data.source=csv_dir", "data.path=/d", "data.max_clients=5"], "data.max_clients"),
    (["aggregation.quantization_bits=4"], "aggregation.quantization_bits"),
    (["aggregation.rotation=hadamard"], "aggregation.rotation"),
    (["privacy.clip=2.0"], "privacy.clip"),
    (["privacy.accountant=pld"], "privacy.accountant"),
    (
        [
            "privacy.mechanism=gaussian_fixed",
            "privacy.noise_multiplier=1",
            "algorithm.weighting=uniform",
            "privacy.target_quantile=0.7",
        ],
        "privacy.target_quantile",
    ),
    (
        [
            "privacy.mechanism=gaussian_fixed",
            "privacy.noise_multiplier=1",
            "algorithm.weighting=uniform",
            "privacy.clipped_count_stddev=1",
        ],
        "privacy.clipped_count_stddev",
    ),
    (["algorithm.proximal_strength=0.1"], "algorithm.proximal_strength"),
    (["training.sampling_rate=0.5"], "training.sampling_rate"),
    (["data.source=synthetic", "partition.alpha=0.1"], "partition.alpha"),
    (["aggregation.ddp_bits=16"], "aggregation.ddp_bits"),
    (["aggregation.zeroing=false"], "aggregation.zeroing"),
    (
        [
            "privacy.mechanism=ddp_secure",
            "privacy.noise_multiplier=1",
            "algorithm.weighting=uniform",
            "aggregation.clipping=false",
        ],
        "aggregation.clipping",
    ),
    (["data.source=npz_dir", "data.path=/d", "data.num_clients=5"], "data.num_clients"),
]


@pytest.mark.parametrize("overrides, where", NO_EFFECT, ids=[w for _, w in NO_EFFECT])
def test_settings_without_effect_are_refused(overrides, where):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert e.value.where == where, (e.value.where, e.value.message)
    # The same settings where they do have an effect are accepted (the refusal is about the combination).


def test_settings_with_effect_are_accepted():
    load_config(None, ["centralized.dp_sgd=true", "centralized.dp_noise_multiplier=2.0"])
    load_config(None, ["algorithm.server_optimizer.name=sgdm", "algorithm.server_optimizer.momentum=0.5"])
    load_config(
        None,
        [
            "algorithm.server_optimizer.name=yogi",
            "algorithm.server_optimizer.beta_1=0.5",
            "algorithm.server_optimizer.initial_preconditioner_value=0.1",
        ],
    )
    load_config(None, ["partition.scheme=shards", "partition.classes_per_client=3"])
    load_config(None, ["data.source=synthetic", "data.synthetic_alpha=0.5", "data.num_clients=30"])
    load_config(None, ["data.source=synthetic", "partition.scheme=dirichlet", "partition.alpha=0.1"])
    load_config(None, ["data.source=emnist", "data.max_clients=5", "training.clients_per_round=2"])
    load_config(None, ["aggregation.kind=compression", "aggregation.quantization_bits=4", "aggregation.zeroing=false"])
    load_config(None, ["aggregation.kind=robust", "aggregation.clipping=false"])
    load_config(
        None,
        [
            "privacy.mechanism=ddp_secure",
            "privacy.noise_multiplier=1",
            "algorithm.weighting=uniform",
            "aggregation.ddp_bits=16",
            "aggregation.zeroing=false",
        ],
    )
    load_config(
        None,
        [
            "privacy.mechanism=gaussian_adaptive",
            "privacy.noise_multiplier=1",
            "algorithm.weighting=uniform",
            "privacy.target_quantile=0.7",
            "privacy.clip=2.0",
        ],
    )


def test_yaml_messages_say_why_and_how_to_fix(tmp_path):
    cases = {
        "name: 2024-01-01\n": ("name", "quote it"),
        "name: no\n": ("name", "boolean"),
        "training: {rounds: ~}\n": ("training.rounds", "null"),
        "training: {sampling: off}\n": ("training.sampling", "boolean"),
        "algorithm: {client_optimizer: {learning_rate: .nan}}\n": (
            "algorithm.client_optimizer.learning_rate",
            "finite",
        ),
        "training:\n  rounds: 3\ntraining:\n  rounds: 5\n": ("", "duplicate key 'training' (line 3"),
    }
    for i, (text, (where, what)) in enumerate(cases.items()):
        f = tmp_path / f"e{i}.yaml"
        f.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(f)
        assert str(f) in str(e.value) and where in str(e.value) and what in str(e.value), str(e.value)
    f = tmp_path / "latin1.yaml"
    f.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(f)


def test_configs_built_in_python_are_checked_too():
    cfg = ExperimentConfig()
    for bad, where in [
        (dataclasses.replace(cfg, seed="3"), "seed"),
        (dataclasses.replace(cfg, seed=2**40), "seed"),
        (dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, rounds=2.5)), "training.rounds"),
        (dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=float("nan"))), "model.dropout"),
        (dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="")), "data.source"),
    ]:
        with pytest.raises(ConfigError) as e:
            bad.validate()
        assert e.value.where == where


BAD_EXPERIMENTS = {
    "seed_too_big": (f"seed: {2**32}\n", "seed"),
    "date_name": ("name: 2024-01-01\n", "name"),
    "nan_lr": ("algorithm:\n  server_optimizer: {learning_rate: .nan}\n", "algorithm.server_optimizer.learning_rate"),
    "dp_sgd_without_centralized": ("centralized: {enabled: false, dp_sgd: true}\n", "centralized.dp_sgd"),
    "list_for_int": ("training: {rounds: [3]}\n", "training.rounds"),
}


@pytest.mark.parametrize("name", list(BAD_EXPERIMENTS))
def test_bad_experiments_through_the_cli(name, tmp_path):
    text, where = BAD_EXPERIMENTS[name]
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    out = tmp_path / "r"
    proc = run_cli("run", f, "--out", out, "--quiet")
    assert_user_error(proc, f"{name}.yaml", where)
    assert not out.exists()
