"""Client sampling and per-round client datasets: pure functions of the seed and the round.

A leaf module (numpy only, TensorFlow imported lazily) shared by the training loop, the
engines and the privacy accountant, so that what is accounted is exactly what runs.
"""

from __future__ import annotations

import numpy as np

SAMPLING_STREAM = 0x5A3D
SHUFFLE_STREAM = 0x5F1E


def sample_clients(cfg, population: int, round_num: int) -> np.ndarray:
    """Client indices for ``round_num`` (1-based); a pure function of ``cfg.seed`` and the round.

    ``training.sampling: poisson`` includes each client independently with probability
    ``training.sampling_rate`` (the mechanism amplification by sampling assumes);
    ``uniform`` draws exactly ``training.clients_per_round`` clients without replacement.
    """
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SAMPLING_STREAM, round_num]))
    t = cfg.training
    if t.sampling == "poisson":
        return np.flatnonzero(rng.random(population) < t.sampling_rate)
    return np.sort(rng.choice(population, size=t.clients_per_round, replace=False))


def client_permutations(cfg, num_examples: int, client_index: int, round_num: int) -> list[np.ndarray]:
    """The example order of each local epoch of one client in one round (seeded)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SHUFFLE_STREAM, round_num, client_index]))
    return [rng.permutation(num_examples) for _ in range(cfg.training.local_epochs)]


def client_dataset(cfg, x: np.ndarray, y: np.ndarray, client_index: int, round_num: int):
    """A client's local data for one round: ``local_epochs`` freshly shuffled passes, pre-batched."""
    import tensorflow as tf

    ds = None
    for perm in client_permutations(cfg, len(y), client_index, round_num):
        epoch = tf.data.Dataset.from_tensor_slices({"x": x[perm], "y": y[perm]}).batch(cfg.training.batch_size)
        ds = epoch if ds is None else ds.concatenate(epoch)
    return ds
