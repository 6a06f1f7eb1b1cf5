"""Guards the fast default settings (see BENCHMARKS.md) against regression.

Checks the settings and what they build, never a time: the default config asks for TFF's
DATASET_ITERATOR client loop and an unlimited client concurrency; a run builds its TFF process
once and gives it exactly that loop; each round's client datasets arrive pre-batched; the C++
worker that executes the rounds runs with no concurrency limit.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO

from tff_lab.config import TrainingConfig, from_dict, load_config, read_yaml

FAST = {"loop_implementation": "dataset_iterator", "client_concurrency": 0}
TINY = [
    "data.num_clients=8",
    "training.clients_per_round=4",
    "training.rounds=3",
    "training.eval_every_rounds=3",
    "training.rounds_per_checkpoint=3",
    "centralized.enabled=false",
]


def test_schema_defaults_are_the_fast_settings():
    t = TrainingConfig()
    assert {k: getattr(t, k) for k in FAST} == FAST


@pytest.mark.parametrize(
    "path",
    [None, *sorted((REPO / "experiments").glob("*.yaml"))],
    ids=lambda p: "builtin-default" if p is None else Path(p).name,
)
def test_shipped_experiments_keep_the_fast_settings(path):
    data = read_yaml(path) if path is not None else {}
    if "base" in data and "grid" in data:  # a sweep: its base holds the shared settings
        assert not any(k.startswith("training.") and k.split(".")[1] in FAST for k in data["grid"])
        t = from_dict(data["base"], validate=False).training
    else:
        t = load_config(path).training
    assert {k: getattr(t, k) for k in FAST} == FAST


def test_default_config_builds_the_iterator_loop():
    import tensorflow_federated as tff

    from tff_lab.federated.algorithms import loop_implementation

    assert loop_implementation(load_config(None)) is tff.learning.LoopImplementation.DATASET_ITERATOR
    reduce_cfg = load_config(None, ["training.loop_implementation=dataset_reduce"])
    assert loop_implementation(reduce_cfg) is tff.learning.LoopImplementation.DATASET_REDUCE


def test_client_datasets_are_pre_batched_and_shuffled_per_epoch():
    import tensorflow as tf

    from tff_lab.sampling import client_dataset

    cfg = load_config(None, ["training.local_epochs=2", "training.batch_size=16"])
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    y = np.arange(40, dtype=np.int32)
    ds = client_dataset(cfg, x, y, client_index=3, round_num=5)
    assert ds.element_spec["x"].shape.as_list() == [None, 3]  # batched before it reaches TFF
    batches = list(ds.as_numpy_iterator())
    assert [len(b["y"]) for b in batches] == [16, 16, 8] * 2  # epoch by epoch, no batch across epochs
    epochs = [np.concatenate([b["y"] for b in batches[:3]]), np.concatenate([b["y"] for b in batches[3:]])]
    assert all(sorted(e) == list(range(40)) for e in epochs)  # each epoch is a full pass ...
    assert not np.array_equal(epochs[0], epochs[1])  # ... in its own order
    again = np.concatenate([b["y"] for b in client_dataset(cfg, x, y, 3, 5).as_numpy_iterator()])
    assert np.array_equal(again, np.concatenate(epochs))  # a pure function of (seed, round, client)
    assert isinstance(ds, tf.data.Dataset)


class _SpyProcess:
    """Wraps a LearningProcess; records what each ``next`` receives."""

    def __init__(self, process, calls):
        self._process, self._calls = process, calls

    def next(self, state, datasets):
        self._calls.append(datasets)
        return self._process.next(state, datasets)

    def __getattr__(self, name):
        return getattr(self._process, name)


@pytest.mark.slow  # ~20 s: a real 3-round run
def test_a_run_builds_one_process_with_the_fast_settings(tmp_path, monkeypatch):
    import psutil
    import tensorflow_federated as tff

    from tff_lab import run_experiment
    from tff_lab.federated import algorithms, runtime
    from tff_lab.training.hooks import RoundHook

    builds, nexts, workers = [], [], []
    real_build = algorithms.build_learning_process

    def spy_build(cfg, model_fn, aggregator=None):
        builds.append(algorithms.loop_implementation(cfg))
        return _SpyProcess(real_build(cfg, model_fn, aggregator), nexts)

    class WorkerProbe(RoundHook):
        name = "probe"

        def after_round(self, ctx, info, row):
            for pid in runtime.worker_pids():
                workers.append(psutil.Process(pid).cmdline())

    monkeypatch.setattr(algorithms, "build_learning_process", spy_build)
    summary = run_experiment(None, tmp_path / "run", overrides=TINY + ["training.engine=tff"], hooks=[WorkerProbe()])

    assert summary["rounds"] == 3
    assert builds == [tff.learning.LoopImplementation.DATASET_ITERATOR]  # built once, iterator loop
    assert len(nexts) == 3 and all(len(ds) == 4 for ds in nexts)
    batch = load_config(None, TINY).training.batch_size
    for datasets in nexts:
        for ds in datasets:
            assert ds.element_spec["x"].shape.as_list() == [None, 64]  # pre-batched digits rows
            sizes = [int(b["y"].shape[0]) for b in ds]
            assert max(sizes) == batch and len(sizes) == math.ceil(sum(sizes) / batch)
    # The C++ worker that ran the rounds had no limit on concurrent client computations.
    assert workers, "no TFF worker_binary was seen during the rounds"
    assert all("--max_concurrent_computation_calls=-1" in cmd for cmd in workers), workers
    assert runtime.worker_pids() == []  # and the run stopped it
