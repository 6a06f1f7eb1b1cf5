"""The one place algorithm names are resolved: ``algorithm.name`` -> an :class:`Algorithm` class.

Config validation (:mod:`tff_lab.config.schema`), both engines and the docs read the names from
here. Adding an algorithm is one file and one line in ``ALGORITHMS`` (README: "Adding an algorithm
or a mechanism"). Importing this module imports no TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tff_lab.algorithms.base import Algorithm
from tff_lab.algorithms.fedavg import FedAvg
from tff_lab.algorithms.fedprox import FedProx
from tff_lab.algorithms.fedsgd import FedSGD
from tff_lab.algorithms.scaffold import Scaffold
from tff_lab.errors import ConfigError

if TYPE_CHECKING:
    from tff_lab.config.schema import AlgorithmConfig

ALGORITHMS: dict[str, type[Algorithm]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedsgd": FedSGD,
    "scaffold": Scaffold,
}

# AlgorithmConfig fields that only some algorithms read, with their defaults.
_OPTIONAL_FIELDS = {"proximal_strength": 0.0}


def names() -> tuple[str, ...]:
    return tuple(ALGORITHMS)


def algorithm_class(name: str, where: str = "algorithm.name") -> type[Algorithm]:
    """The class registered under ``name``; ConfigError listing the valid names otherwise."""
    cls = ALGORITHMS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(where, f"unknown value {name!r}; expected one of: {', '.join(ALGORITHMS)}")
    return cls


def check_config(cfg: AlgorithmConfig, p: str = "algorithm") -> type[Algorithm]:
    """Validates ``algorithm.name`` and the fields only some algorithms read; returns the class."""
    cls = algorithm_class(cfg.name, f"{p}.name")
    for field, default in _OPTIONAL_FIELDS.items():
        if field not in cls.uses and getattr(cfg, field) != default:
            users = [n for n, c in ALGORITHMS.items() if field in c.uses]
            raise ConfigError(
                f"{p}.{field}", f"only used by algorithm {' or '.join(map(repr, users))}, but algorithm is '{cfg.name}'"
            )
    cls.check_config(cfg, p)
    return cls


def create(cfg: AlgorithmConfig) -> Algorithm:
    """The algorithm object of a (validated) ``algorithm`` config section."""
    return algorithm_class(cfg.name)(cfg)
