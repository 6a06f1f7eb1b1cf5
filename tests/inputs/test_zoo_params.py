"""Zoo parameters checked before Keras sees them (tff_lab.models.zoo): generated bad hidden_units /
cnn_filters (bad element anywhere, wrong types), bad dropout rates, non-image inputs for cnn, and
models over the parameter bound are one ConfigError naming the field, with no allocation; the
parameter count used for the bound equals Keras' own for generated valid models. One real CLI run."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_user_error, run_cli
from input_checks import one_line, small_peak

tf = pytest.importorskip("tensorflow")

from tff_lab.config import load_config  # noqa: E402
from tff_lab.errors import ConfigError  # noqa: E402
from tff_lab.models import zoo  # noqa: E402
from tff_lab.models.spec import build_model  # noqa: E402

RNG = np.random.default_rng(64)
BAD_UNITS = [0, -1, -5, 65537, 2**31 - 1, 2**40, 1.5, 64.0, True, "64", None, [8]]


def _bad_lists(n: int = 40):
    for _ in range(n):
        length = int(RNG.integers(1, 5))
        units = [int(u) for u in RNG.integers(1, 64, length)]
        i = int(RNG.integers(length))
        bad = BAD_UNITS[int(RNG.integers(len(BAD_UNITS)))]
        units[i] = bad
        yield units, i


@pytest.mark.parametrize("builder,field", [(zoo.build_mlp, "hidden_units"), (zoo.build_cnn, "cnn_filters")])
def test_bad_layer_widths_name_the_element(builder, field):
    shape = (16,) if builder is zoo.build_cnn else (7,)
    with small_peak():
        for units, i in _bad_lists():
            with pytest.raises(ConfigError) as e:
                builder(shape, 3, **{field: units})
            assert e.value.where == f"model.kwargs.{field}[{i}]", (units, str(e.value))
            one_line(e.value)
        for not_a_list in (64, "64", "[64]", None, 1.5, {"a": 1}):
            with pytest.raises(ConfigError) as e:
                builder(shape, 3, **{field: not_a_list})
            assert e.value.where.startswith(f"model.kwargs.{field}")


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.5", True, None])
def test_bad_dropout(rate):
    for builder, shape in ((zoo.build_mlp, (5,)), (zoo.build_cnn, (4, 4))):
        with pytest.raises(ConfigError) as e:
            builder(shape, 2, dropout=rate)
        assert e.value.where == "model.kwargs.dropout"


def test_cnn_needs_image_shaped_inputs():
    flat = [n for n in range(1, 400) if int(np.sqrt(n)) ** 2 != n][:60] + [1]
    for n in flat:
        with pytest.raises(ConfigError) as e:
            zoo.build_cnn((n,), 3)
        assert e.value.where == "model.name" and "image" in str(e.value), n
    for shape in [(2, 2, 2, 2), (3, 3, 3, 3, 1)]:
        with pytest.raises(ConfigError, match="image"):
            zoo.build_cnn(shape, 3)


def test_models_over_the_parameter_bound_refused_before_keras():
    cases = [
        (zoo.build_mlp, (784,), {"hidden_units": [65536, 65536]}),
        (zoo.build_mlp, (30,), {"hidden_units": [65536] * 20}),
        (zoo.build_mlp, (10**6,), {"hidden_units": [64]}),
        (zoo.build_cnn, (28, 28), {"cnn_filters": [4096, 4096]}),
        (zoo.build_cnn, (512, 512, 3), {"cnn_filters": [16]}),
        (zoo.build_logreg, (10**7,), {}),
    ]
    for _ in range(10):
        w = int(RNG.integers(8000, 65536))
        cases.append((zoo.build_mlp, (int(RNG.integers(1000, 5000)),), {"hidden_units": [w, w]}))
    with small_peak():
        for builder, shape, kw in cases:
            with pytest.raises(ConfigError) as e:
                builder(shape, 10, **kw)
            text = one_line(e.value)
            assert e.value.where == "model" and "parameters" in text and "50,000,000" in text, text


def test_parameter_count_is_keras_count():
    for _ in range(4):
        units = [int(u) for u in RNG.integers(1, 40, int(RNG.integers(1, 4)))]
        shape = tuple(int(d) for d in RNG.integers(1, 6, int(RNG.integers(1, 3))))
        k = int(RNG.integers(2, 9))
        assert zoo.build_mlp(shape, k, hidden_units=units).count_params() == zoo.mlp_params(shape, k, units)
    for shape in [(16,), (9, 9), (28, 28, 3), (5, 7)]:
        filters = [int(f) for f in RNG.integers(1, 12, int(RNG.integers(1, 4)))]
        k = int(RNG.integers(2, 9))
        assert zoo.build_cnn(shape, k, cnn_filters=filters).count_params() == zoo.cnn_params(shape, k, filters)


def test_keras_value_errors_become_one_line():
    with pytest.raises(ConfigError) as e:
        with zoo._keras_build("mlp"):
            tf.keras.layers.Dense(4, activation="not-an-activation")
    assert e.value.where == "model.kwargs" and "mlp" in one_line(e.value)


@pytest.mark.parametrize(
    "overrides,where",
    [
        (["model.kwargs.hidden_units=[-5]"], "model.kwargs.hidden_units[0]"),
        (["model.kwargs.hidden_units=[2147483647]"], "model.kwargs.hidden_units[0]"),
        (["model.kwargs.hidden_units=64"], "model.kwargs.hidden_units"),
        (["model.kwargs.dropout=2"], "model.kwargs.dropout"),
        (["model.hidden_units=[2147483647]"], "model.hidden_units[0]"),
        (["model.name=cnn"], "model.name"),
    ],
)
def test_through_the_config(overrides, where):
    with pytest.raises(ConfigError) as e:
        cfg = load_config(None, overrides)
        build_model(cfg.model, (30,), 2)
    assert e.value.where == where, str(e.value)


def test_real_cli_cnn_on_flat_features(tmp_path):
    proc = run_cli(
        "run",
        "--out",
        tmp_path / "r",
        "--set",
        "data.source=breast_cancer",
        "--set",
        "data.num_clients=4",
        "--set",
        "model.name=cnn",
        "--set",
        "training.rounds=1",
        "--set",
        "training.clients_per_round=2",
        timeout=120,
    )
    assert_user_error(proc, "model.name", "cnn needs image-shaped inputs", "(30,)")
    assert not (tmp_path / "r").exists()
