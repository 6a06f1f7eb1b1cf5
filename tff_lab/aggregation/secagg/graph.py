"""The communication graph of SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, CCS 2020).

SecAgg (Bonawitz et al., CCS 2017) has every client mask with, and secret-share to, every other
client: the complete graph, ``O(n)`` keys, shares and pairwise masks per client. SecAgg+ replaces
it with a sparse random graph of degree ``k = O(log n)``: each client only agrees keys with, masks
with and shares its secrets among its ``k`` neighbours, so its cost is ``O(log n)`` (plus the
model) while the server still learns only the sum (Bell et al., Thm. 5.x: a random ``k``-regular
graph with ``k ~ log n`` is connected after dropouts and adversarial corruptions with
overwhelming probability).

The graph here is a Harary graph ``H(k, n)`` (each client joined to the ``k/2`` nearest on either
side of a ring) laid over a random permutation of the cohort drawn from the round's seed: the
construction of Bell et al.'s implementation (and Flower's ``secaggplus``), ``k``-regular for
even ``k``. ``k = n - 1`` is the complete graph, i.e. SecAgg.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np

Neighbors = Union[None, int, str]


def default_degree(n: int) -> int:
    """SecAgg+'s default degree: ``ceil(log2 n)`` rounded up to even (at least 2), at most ``n - 1``."""
    if n <= 1:
        return 0
    k = max(2, math.ceil(math.log2(n)))
    k += k % 2
    return min(k, n - 1)


def resolve_degree(n: int, neighbors: Neighbors) -> int:
    """``neighbors`` from the config: None (SecAgg+ default), 'all' (SecAgg), or an even count."""
    if n <= 1:
        return 0
    if neighbors is None:
        return default_degree(n)
    if neighbors == "all":
        return n - 1
    k = int(neighbors)
    k += k % 2  # a Harary graph with odd degree needs an even cohort; use the next even degree
    return min(k, n - 1)


def harary_graph(n: int, k: int, rng: Optional[np.random.Generator] = None) -> list[frozenset]:
    """Neighbour sets (positions ``0..n-1``) of ``H(k, n)`` over a random permutation."""
    if k >= n - 1:
        return [frozenset(j for j in range(n) if j != i) for i in range(n)]
    perm = rng.permutation(n) if rng is not None else np.arange(n)
    pos = np.empty(n, dtype=np.int64)
    pos[perm] = np.arange(n)
    half = k // 2
    out = []
    for i in range(n):
        p = int(pos[i])
        out.append(frozenset(int(perm[(p + d) % n]) for d in range(-half, half + 1) if d != 0))
    return out


def threshold(holders: int, fraction: float) -> int:
    """Shares needed out of ``holders``: ``floor(fraction * holders) + 1`` (a strict ``fraction``
    majority; 0.5 gives a majority), at most ``holders``."""
    return min(int(holders), int(math.floor(fraction * holders)) + 1)
