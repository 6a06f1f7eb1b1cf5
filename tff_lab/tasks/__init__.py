"""Built-in tasks, written on the public API (``register_model``, ``register_source``).

A task is one constructor (as in google-research/federated) returning the config overrides of
a complete experiment: data source and its kwargs, model and its kwargs, and the
hyperparameters written beside it. ``experiments/emnist62_cnn.yaml`` and
``experiments/shakespeare_char.yaml`` hold the same values (a test keeps them equal).

Example:
  >>> from tff_lab import run_experiment
  >>> from tff_lab.tasks import task_config
  >>> cfg = task_config("shakespeare_char", **{"data.cache_dir": "~/.tff", "training.rounds": 5})
  >>> run_experiment(cfg, "runs/shakespeare")

Registered here, at import (the registries import this package when they resolve names):
sources ``emnist`` (TFF's federated EMNIST, 62 classes by default) and ``shakespeare`` (TFF's
Shakespeare or a directory of ``.txt`` files); models ``emnist_cnn`` and ``char_rnn``.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from tff_lab.data.registry import register_source
from tff_lab.models.spec import register_model
from tff_lab.tasks import vocab
from tff_lab.tasks.emnist import build_emnist_cnn, load_emnist
from tff_lab.tasks.shakespeare import build_char_rnn, char_loss, char_metrics, load_shakespeare

_TASKS: dict[str, Callable[..., dict]] = {}


def register_task(name: str):
    """Decorator: registers ``fn(**kwargs) -> dict`` of config overrides as task ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError("task name must be a non-empty string")

    def deco(fn):
        if name in _TASKS:
            raise ValueError(f"task '{name}' is already registered")
        _TASKS[name] = fn
        return fn

    return deco


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def task_overrides(name: str, **kwargs) -> dict:
    """The nested config dict of task ``name`` (its constructor called with ``kwargs``)."""
    from tff_lab.errors import ConfigError

    if name not in _TASKS:
        raise ConfigError("task", f"unknown task {name!r}; expected one of: {', '.join(available_tasks())}")
    return copy.deepcopy(_TASKS[name](**kwargs))


def _set(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def task_config(name: str, *, task_kwargs: dict | None = None, **overrides):
    """An :class:`~tff_lab.config.ExperimentConfig` for task ``name``; ``overrides`` are dotted
    keys (``**{"data.cache_dir": "/data/tff", "training.rounds": 5}``)."""
    from tff_lab.config import from_dict

    d = task_overrides(name, **(task_kwargs or {}))
    for k, v in overrides.items():
        _set(d, k, v)
    return from_dict(d)


@register_task("emnist62_cnn")
def emnist62_cnn(*, only_digits: bool = False, cache_dir: str | None = None) -> dict:
    """EMNIST-62, the FedAvg paper's CNN; FedAvg with the FedAvg paper's E=1, B=10 and
    google-research/federated's EMNIST client learning rate 0.1 (server SGD 1.0), 10 writers a round."""
    return {
        "name": "emnist10_cnn" if only_digits else "emnist62_cnn",
        "seed": 0,
        "data": {
            "source": "emnist",
            "kwargs": {"only_digits": only_digits},
            "cache_dir": cache_dir,
            "client_eval_fraction": 0.1,
        },
        "partition": {"scheme": "natural"},
        "model": {"name": "emnist_cnn"},
        "algorithm": {
            "name": "fedavg",
            "client_optimizer": {"name": "sgd", "learning_rate": 0.1},
            "server_optimizer": {"name": "sgd", "learning_rate": 1.0},
        },
        "training": {
            "rounds": 1500,
            "clients_per_round": 10,
            "local_epochs": 1,
            "batch_size": 10,
            "eval_every_rounds": 50,
            "rounds_per_checkpoint": 50,
        },
    }


@register_task("shakespeare_char")
def shakespeare_char(
    *,
    sequence_length: int = vocab.DEFAULT_SEQUENCE_LENGTH,
    cache_dir: str | None = None,
    path: str | None = None,
    cell: str = "lstm",
) -> dict:
    """Shakespeare next-character prediction, char LSTM (embedding 8, 2x256), sequences of 80;
    FedAvg with client SGD lr 1.0 and batch 4 (google-research/federated's Shakespeare
    settings), 10 roles a round."""
    return {
        "name": "shakespeare_char",
        "seed": 0,
        "data": {
            "source": "shakespeare",
            "kwargs": {"sequence_length": sequence_length},
            "cache_dir": cache_dir,
            "path": path,
            "client_eval_fraction": 0.1,
        },
        "partition": {"scheme": "natural"},
        "model": {"name": "char_rnn", "kwargs": {"embedding_dim": 8, "units": 256, "num_layers": 2, "cell": cell}},
        "algorithm": {
            "name": "fedavg",
            "client_optimizer": {"name": "sgd", "learning_rate": 1.0},
            "server_optimizer": {"name": "sgd", "learning_rate": 1.0},
        },
        "training": {
            "rounds": 1200,
            "clients_per_round": 10,
            "local_epochs": 1,
            "batch_size": 4,
            "eval_every_rounds": 50,
            "rounds_per_checkpoint": 50,
        },
    }


def _register_parts() -> None:
    register_source("emnist", load_emnist, replace=True)  # replaces the former digits-only downloader
    register_source("shakespeare", load_shakespeare, replace=True)
    register_model("emnist_cnn", build_emnist_cnn, outputs="probabilities", replace=True)
    register_model("char_rnn", build_char_rnn, outputs="logits", loss=char_loss, metrics=char_metrics, replace=True)


_register_parts()

__all__ = [
    "available_tasks",
    "build_char_rnn",
    "build_emnist_cnn",
    "load_emnist",
    "load_shakespeare",
    "register_task",
    "task_config",
    "task_overrides",
    "vocab",
]
