"""TFF's dataset cache: where its loaders look, and a check that the file is there *before* they run.

TFF's loaders (``tff.simulation.datasets.<name>.load_data(cache_dir=...)``) download
``<url>.sqlite.lzma`` and decompress it to ``cache_dir/<name>.sqlite`` unless that file already
exists. tff_lab never lets them download (no network at run time): the file must be there, or
the run stops with one line naming the file and how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from tff_lab.errors import DataError

TFF_DEFAULT_CACHE = "~/.tff"  # tff.simulation.datasets.download.get_compressed_file's default
BASE_URL = "https://storage.googleapis.com/tff-datasets-public"
FILES = {"emnist": "emnist_all.sqlite", "shakespeare": "shakespeare.sqlite"}


def cache_dir(value: Optional[str]) -> Path:
    return Path(os.path.expanduser(value or TFF_DEFAULT_CACHE))


def require_cache_file(dataset: str, value: Optional[str]) -> Path:
    """``cache_dir/<file>`` of TFF's ``dataset``; a :class:`DataError` naming it when it is absent."""
    name = FILES[dataset]
    path = cache_dir(value) / name
    if not path.is_file():
        where = "data.cache_dir" if value else f"data.cache_dir (unset: TFF's default {TFF_DEFAULT_CACHE})"
        raise DataError(
            str(path),
            f"TFF's {dataset} file is missing from {where}; tff_lab never downloads: fetch "
            f"{BASE_URL}/{name}.lzma on a machine with network, `unxz` it to {name} in that directory "
            f"(or run tff.simulation.datasets.{dataset}.load_data(cache_dir=DIR) there and copy DIR/{name})",
        )
    return path


def open_client_data(dataset: str, value: Optional[str], **kwargs):
    """TFF's (train, test) ClientData for ``dataset`` read from the cache; never downloads."""
    path = require_cache_file(dataset, value)
    import sqlite3

    import tensorflow_federated as tff

    loader = getattr(tff.simulation.datasets, dataset).load_data
    try:
        return loader(cache_dir=str(path.parent), **kwargs)
    except Exception as e:  # sqlite3.DatabaseError, TFF's DatabaseFormatError: not TFF's file
        if isinstance(e, sqlite3.Error) or type(e).__name__ == "DatabaseFormatError":
            raise DataError(
                str(path), f"not TFF's {dataset} SQLite file ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
            ) from None
        raise
