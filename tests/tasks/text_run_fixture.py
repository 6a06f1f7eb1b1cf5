"""Tiny files in TFF's on-disk formats and a trained tiny Shakespeare run (shared with tests/tflite).

The corpus is our own few lines of text; the files are written in TFF's SQLite layout and read
back only through ``tff.simulation.datasets.*.load_data(cache_dir=...)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CORPUS = {
    "ALICE": [
        "The kettle sang upon the hearth, and Alice wound the clock.",
        "Come, sit; the night is long and the candles are short.",
        "I have walked the river road since morning, and my boots are full of sand.",
    ],
    "BERTRAM": [
        "Good morrow! What news from the harbour?",
        "The ships are late; the wind has turned against them.",
        "Then we shall wait, as sailors' wives have always waited.",
    ],
    "CELIA": ["Hush. Do you hear the bells?", "They ring for the new bridge, finished at last."],
    "DUNSTAN": [
        "Bread, cheese, and a jug of cider: a feast for a tired man.",
        "Sing me the song about the miller's daughter \u00e9tienne.",
    ],
}
CORPUS_TEST = {
    "ALICE": ["Wind the clock again."],
    "BERTRAM": ["No ships today."],
    "CELIA": ["The bells are silent now."],
    "DUNSTAN": ["More cider!"],
}
SEQ_LEN = 12
TINY_RNN = {"embedding_dim": 4, "units": 8, "num_layers": 1, "cell": "lstm"}


def write_tff_cache(cache_dir: Path) -> Path:
    """emnist_all.sqlite (5 writers, labels over all 62 classes) and shakespeare.sqlite (4 roles)."""
    from tff_lab.tasks.tff_files import write_emnist_sqlite, write_shakespeare_sqlite

    cache_dir = Path(cache_dir)
    if (cache_dir / "emnist_all.sqlite").is_file() and (cache_dir / "shakespeare.sqlite").is_file():
        return cache_dir
    rng = np.random.default_rng(7)
    train, test = {}, {}
    for w in range(5):
        labels = np.array([(w * 13 + k * 5) % 62 for k in range(8)])
        labels[0] = w  # every writer has a digit
        x = rng.random((8, 28, 28)).astype(np.float32)
        train[f"f{w:04d}_{w % 3:02d}"] = (x[:6], labels[:6])
        test[f"f{w:04d}_{w % 3:02d}"] = (x[6:], labels[6:])
    write_emnist_sqlite(cache_dir, train, test)
    write_shakespeare_sqlite(cache_dir, CORPUS, CORPUS_TEST)
    return cache_dir


def write_text_dir(root: Path, with_test: bool = True) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, snippets in CORPUS.items():
        (root / f"{name.lower()}.txt").write_text("\n\n".join(snippets) + "\n", encoding="utf-8")
    if with_test:
        (root / "test.txt").write_text("\n\n".join(s for v in CORPUS_TEST.values() for s in v) + "\n")
    return root


def shakespeare_overrides(cache_dir: Path, rounds: int = 1) -> dict:
    return {
        "data.cache_dir": str(cache_dir),
        "training.clients_per_round": 2,
        "training.rounds": rounds,
        "training.eval_every_rounds": 1,
        "training.rounds_per_checkpoint": 1,
        "model.kwargs": dict(TINY_RNN),
    }


def make_text_run(run_dir: Path, cache_dir: Path) -> Path:
    """A finished tiny Shakespeare run (1 round through tff_lab.run_experiment), built once."""
    run_dir = Path(run_dir)
    done = run_dir.parent / (run_dir.name + ".complete")
    if done.exists():
        return run_dir
    from tff_lab import run_experiment
    from tff_lab.tasks import task_config

    write_tff_cache(cache_dir)
    cfg = task_config(
        "shakespeare_char", task_kwargs={"sequence_length": SEQ_LEN}, **shakespeare_overrides(cache_dir, rounds=2)
    )
    run_experiment(cfg, run_dir, overwrite=True)
    done.write_text("ok\n")
    return run_dir
