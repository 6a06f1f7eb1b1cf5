"""Federated algorithms as objects: each gives the TFF engine a ``LearningProcess`` and the
vectorised engine its client and server steps (:mod:`tff_lab.algorithms.base`). Names resolve
through :mod:`tff_lab.algorithms.registry`."""

from tff_lab.algorithms.base import Algorithm
from tff_lab.algorithms.registry import ALGORITHMS, algorithm_class, create, names

__all__ = ["ALGORITHMS", "Algorithm", "algorithm_class", "create", "names"]
