"""Writers of small files in TFF's own on-disk formats (the SQLite files its loaders read).

TFF's ``SqlClientData`` reads a SQLite database with two tables: ``examples(split_name,
client_id, serialized_example_proto)`` and ``client_metadata(client_id, split_name,
num_examples)``; each example is a serialized ``tf.train.Example``. EMNIST's file
(``emnist_all.sqlite``) has the splits ``all_train``, ``all_test``, ``digits_only_train`` and
``digits_only_test`` with features ``pixels`` (784 floats, 28x28) and ``label`` (int64);
Shakespeare's (``shakespeare.sqlite``) has ``train`` and ``test`` with the bytes feature
``snippets``. Used by the tests and the README's tiny example; the files are read back only
through ``tff.simulation.datasets.*.load_data(cache_dir=...)``.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

_SCHEMA = (
    "CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
    "serialized_example_proto BLOB NOT NULL);",
    "CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL, num_examples INTEGER NOT NULL);",
)


def _write_sqlite(path: Path, rows: Mapping[str, Mapping[str, list[bytes]]]) -> Path:
    """rows: split -> client id -> serialized examples. Written beside and renamed into place."""
    from tff_lab.fileio import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".sqlite") as tmp:
        tmp = Path(tmp)
        if tmp.exists():
            tmp.unlink()
        con = sqlite3.connect(str(tmp))
        try:
            for q in _SCHEMA:
                con.execute(q)
            for split, clients in rows.items():
                for cid, examples in clients.items():
                    con.executemany(
                        "INSERT INTO examples (split_name, client_id, serialized_example_proto) VALUES (?, ?, ?);",
                        [(split, cid, e) for e in examples],
                    )
                    con.execute(
                        "INSERT INTO client_metadata (client_id, split_name, num_examples) VALUES (?, ?, ?);",
                        (cid, split, len(examples)),
                    )
            con.commit()
        finally:
            con.close()
    return path


def _emnist_example(pixels: np.ndarray, label: int) -> bytes:
    import tensorflow as tf

    feats = {
        "pixels": tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(pixels, np.float32).ravel())),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_emnist_sqlite(
    cache_dir: Union[str, os.PathLike],
    train: Mapping[str, tuple[np.ndarray, np.ndarray]],
    test: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> Path:
    """``cache_dir/emnist_all.sqlite`` from per-writer (pixels (n, 28, 28) in [0, 1], labels 0..61).

    Examples with labels < 10 also go to the digits-only splits, as in TFF's file.
    """
    rows: dict = {s: {} for s in ("all_train", "all_test", "digits_only_train", "digits_only_test")}
    for split, clients in (("train", train), ("test", test)):
        for cid, (x, y) in clients.items():
            x, y = np.asarray(x, np.float32).reshape(-1, 28, 28), np.asarray(y).reshape(-1)
            rows[f"all_{split}"][cid] = [_emnist_example(x[i], y[i]) for i in range(len(y))]
            digits = [_emnist_example(x[i], y[i]) for i in range(len(y)) if y[i] < 10]
            if digits:
                rows[f"digits_only_{split}"][cid] = digits
    return _write_sqlite(Path(cache_dir) / "emnist_all.sqlite", rows)


def _snippet_example(text: Union[str, bytes]) -> bytes:
    import tensorflow as tf

    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    feats = {"snippets": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))}
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_shakespeare_sqlite(
    cache_dir: Union[str, os.PathLike], train: Mapping[str, Sequence[str]], test: Mapping[str, Sequence[str]]
) -> Path:
    """``cache_dir/shakespeare.sqlite`` from client id -> snippets (TFF's ``train``/``test`` splits)."""
    rows = {
        "train": {c: [_snippet_example(s) for s in v] for c, v in train.items()},
        "test": {c: [_snippet_example(s) for s in v] for c, v in test.items()},
    }
    return _write_sqlite(Path(cache_dir) / "shakespeare.sqlite", rows)
