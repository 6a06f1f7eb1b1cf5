"""Partitioners: split pooled examples over clients (all driven by a numpy Generator)."""

from __future__ import annotations

import numpy as np

from tff_lab.errors import ConfigError


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    idx = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(idx, num_clients)]


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float,
    min_examples: int = 10,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Label skew: for each class, its examples go to clients in Dirichlet(alpha) proportions.

    Redraws until every client holds at least ``min_examples`` examples (the usual
    protocol of Hsu et al. 2019 / Wang et al. 2020); raises if that is impossible.
    """
    classes = np.unique(labels)
    if min_examples * num_clients > len(labels):
        raise ConfigError(
            "data.num_clients",
            f"{num_clients} clients x {min_examples} examples needs more than the {len(labels)} examples available",
        )
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx_c = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props) * len(idx_c)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx_c, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_examples:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        "partition.alpha",
        f"could not give every one of {num_clients} clients "
        f"{min_examples} examples with alpha={alpha}; raise alpha or lower "
        "partition.min_examples_per_client",
    )


def shards(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, classes_per_client: int
) -> list[np.ndarray]:
    """Pathological non-IID (McMahan et al. 2017): sort by label, cut into shards, k shards per client."""
    num_shards = num_clients * classes_per_client
    if num_shards > len(labels):
        raise ConfigError("partition.classes_per_client", f"{num_shards} shards exceed {len(labels)} examples")
    order = np.argsort(labels + rng.random(len(labels)) * 0.5, kind="stable")  # shuffle within a class
    shard_list = np.array_split(order, num_shards)
    assignment = rng.permutation(num_shards)
    return [np.sort(np.concatenate([shard_list[s] for s in assignment[k::num_clients]])) for k in range(num_clients)]


def quantity_skew(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, sigma: float, min_examples: int = 10
) -> list[np.ndarray]:
    """IID labels, log-normal(0, sigma) client sizes (each at least ``min_examples``)."""
    n = len(labels)
    if min_examples * num_clients > n:
        raise ConfigError(
            "data.num_clients", f"{num_clients} clients x {min_examples} examples needs more than the {n} available"
        )
    weights = rng.lognormal(0.0, sigma, num_clients)
    extra = n - min_examples * num_clients
    sizes = min_examples + np.floor(weights / weights.sum() * extra).astype(int)
    sizes[: n - sizes.sum()] += 1  # hand out the rounding remainder
    idx = rng.permutation(n)
    return [np.sort(p) for p in np.split(idx, np.cumsum(sizes)[:-1])]


def partition(labels: np.ndarray, num_clients: int, rng: np.random.Generator, cfg) -> list[np.ndarray]:
    """Dispatches on ``cfg.scheme`` (a :class:`~tff_lab.config.PartitionConfig`)."""
    if cfg.scheme == "iid":
        return iid(labels, num_clients, rng)
    if cfg.scheme == "dirichlet":
        return dirichlet(labels, num_clients, rng, alpha=cfg.alpha, min_examples=cfg.min_examples_per_client)
    if cfg.scheme == "shards":
        return shards(labels, num_clients, rng, classes_per_client=cfg.classes_per_client)
    if cfg.scheme == "quantity_skew":
        return quantity_skew(
            labels, num_clients, rng, sigma=cfg.quantity_sigma, min_examples=cfg.min_examples_per_client
        )
    raise ConfigError(
        "partition.scheme",
        f"'{cfg.scheme}' applies only to naturally partitioned sources (synthetic, npz_dir, csv_dir, emnist)",
    )
