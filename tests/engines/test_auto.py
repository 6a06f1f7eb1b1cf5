"""``training.engine: auto`` (the default): the vectorised engine whenever it runs the experiment
exactly, else TFF's runtime, and the run says which and why."""

from __future__ import annotations

import pytest
import tensorflow as tf

from tff_lab.config import load_config
from tff_lab.errors import ConfigError
from tff_lab.training.loop import build, run_experiment

TINY = [
    "data.num_clients=6",
    "training.clients_per_round=3",
    "training.rounds=2",
    "training.eval_every_rounds=2",
    "training.rounds_per_checkpoint=2",
    "centralized.enabled=false",
    "model.name=logreg",
]


def test_auto_is_the_default():
    assert load_config(None).training.engine == "auto"


def test_auto_picks_the_vectorised_engine_when_it_is_exact(tmp_path):
    summary = run_experiment(None, tmp_path, overrides=TINY)
    assert summary["engine"] == "vectorized"
    reason = "auto: the vectorised engine runs this experiment exactly as TFF does"
    assert summary["engine_choice"] == {"requested": "auto", "name": "vectorized", "reason": reason}
    text = (tmp_path / "config.yaml").read_text()
    assert "# engine that ran: vectorized (auto: " in text and "engine: auto" in text


@pytest.mark.parametrize(
    "overrides,where", [(["aggregation.kind=secure"], "aggregation.kind"), (["training.engine=tff"], None)]
)
def test_auto_falls_back_to_tff_and_says_why(overrides, where):
    exp = build(None, overrides=TINY + overrides)
    try:
        assert exp.engine.name == "tff"
        if where is None:
            assert exp.engine.choice.reason == "training.engine: tff"
        else:
            assert exp.engine.choice.reason.startswith(f"auto: {where}: the vectorized engine ")
            assert "\n" not in exp.engine.choice.reason
    finally:
        exp.close()


def batchnorm(input_shape, num_classes):
    inputs = tf.keras.Input(shape=input_shape)
    x = tf.keras.layers.BatchNormalization()(inputs)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(num_classes, activation="softmax")(x))


def test_auto_falls_back_for_a_model_it_refuses():
    import tff_lab

    exp = build(None, overrides=TINY[:-1], model=tff_lab.ModelSpec(builder=batchnorm))
    try:
        assert exp.engine.name == "tff" and "non-trainable" in exp.engine.choice.reason
    finally:
        exp.close()


def test_an_algorithm_only_the_vectorised_engine_runs_names_both_reasons():
    with pytest.raises(ConfigError) as e:
        build(None, overrides=TINY + ["algorithm.name=scaffold", "aggregation.kind=robust"])
    assert e.value.where == "algorithm.name"
    assert "TFF has no stateful-client process" in str(e.value) and "aggregation.kind" in str(e.value)
