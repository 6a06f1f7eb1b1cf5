"""Shakespeare next-character prediction: TFF's data (or per-client ``.txt`` files) and a char RNN.

Data (``data.source: shakespeare``):

* ``data.path`` unset: ``tff.simulation.datasets.shakespeare.load_data(cache_dir)`` read from
  ``data.cache_dir/shakespeare.sqlite`` (never downloaded); one client per speaking role, as TFF
  has them; every client's snippets in TFF's *test* split form the global test set.
* ``data.path``: a directory of ``<client_id>.txt`` files, one client each (UTF-8 text; blank
  lines separate snippets). An optional ``test.txt`` is the global test set; without it,
  ``data.test_fraction`` of each client's sequences is held out for it.

Snippets become int32 token sequences exactly as TFF packs them (:mod:`tff_lab.tasks.vocab`):
``x`` and ``y`` of shape (n, sequence_length), ``y`` is ``x`` shifted by one character.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from tff_lab.errors import ConfigError, DataError
from tff_lab.tasks import vocab as V


def _check_sequence_length(sequence_length) -> int:
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < 1:
        raise ConfigError("data.kwargs.sequence_length", f"expected an integer >= 1, got {sequence_length!r}")
    return sequence_length


def _check_partition(cfg) -> None:
    if cfg.partition.scheme not in ("auto", "natural"):
        raise ConfigError(
            "partition.scheme",
            f"source 'shakespeare' keeps its natural per-client split (auto or "
            f"natural), got '{cfg.partition.scheme}' (label partitions do not apply to text)",
        )


def client_snippets(client_data, client_id: str, where: str) -> list[bytes]:
    import tensorflow as tf

    out = []
    try:
        for b in client_data.create_tf_dataset_for_client(client_id).batch(4096).as_numpy_iterator():
            out.extend(b["snippets"].tolist())
    except tf.errors.OpError as e:
        raise DataError(
            where,
            f"client {client_id!r}: unreadable snippets ({type(e).__name__}: {' '.join(str(e.message).split())[:160]})",
        ) from None
    return out


def text_snippets(text: str) -> list[str]:
    """Blank-line separated blocks of a text file (a file without blank lines is one snippet)."""
    blocks = [b.strip("\n") for b in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))]
    return [b for b in blocks if b.strip()]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(str(path), f"not UTF-8 text (byte {e.start}); expected a plain-text file") from None
    except OSError as e:
        raise DataError(str(path), f"unreadable ({e.strerror or e})") from None


def _assemble(cfg, rng, ids, client_seqs, test, sequence_length, test_source):
    from tff_lab.data.sources import FederatedData, _split_client

    train, ev = {}, {}
    for cid, (x, y) in zip(ids, client_seqs):
        train[cid], ev[cid] = _split_client(x, y, cfg.data.client_eval_fraction, rng)
    return FederatedData(
        client_ids=list(ids),
        train=train,
        eval=ev,
        test=test,
        num_classes=V.VOCAB_SIZE,
        labels=V.token_labels(),
        preprocessing=V.vocabulary_info(sequence_length),
        test_source=test_source,
    )


def _concat(parts, sequence_length):
    parts = [p for p in parts if len(p[0])]
    if not parts:
        empty = np.zeros((0, sequence_length), np.int32)
        return empty, empty.copy()
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_shakespeare(cfg, rng, *, sequence_length: int = V.DEFAULT_SEQUENCE_LENGTH):
    """``data.source: shakespeare`` -> FederatedData of token sequences (90 classes)."""
    sequence_length = _check_sequence_length(sequence_length)
    _check_partition(cfg)
    if cfg.data.path:
        return _load_text_dir(cfg, rng, sequence_length)
    from tff_lab.tasks.cache import open_client_data, require_cache_file
    from tff_lab.tasks.emnist import choose_clients

    path = str(require_cache_file("shakespeare", cfg.data.cache_dir))
    train, test = open_client_data("shakespeare", cfg.data.cache_dir)
    if not train.client_ids:
        raise DataError(path, "holds no clients in TFF's split 'train'")
    ids = choose_clients(list(train.client_ids), cfg.data.max_clients, rng)
    seqs = [V.snippets_to_sequences(client_snippets(train, c, path), sequence_length) for c in ids]
    test_ids = set(test.client_ids)
    test_arr = _concat(
        [V.snippets_to_sequences(client_snippets(test, c, path), sequence_length) for c in ids if c in test_ids],
        sequence_length,
    )
    return _assemble(cfg, rng, ids, seqs, test_arr, sequence_length, "clients")


def _load_text_dir(cfg, rng, sequence_length):
    root = Path(os.path.expanduser(cfg.data.path))
    if not root.is_dir():
        raise DataError(
            str(root), "data directory not found (data.path, source shakespeare: one <client>.txt file per client)"
        )
    files = sorted(p for p in root.glob("*.txt") if p.stem != "test")
    if not files:
        raise DataError(str(root), "no client files '*.txt' found (one UTF-8 text file per client)")
    ids, seqs = [], []
    for f in files:
        snippets = text_snippets(_read_text(f))
        if not snippets:
            raise DataError(str(f), "holds no text")
        ids.append(f.stem)
        seqs.append(V.snippets_to_sequences(snippets, sequence_length))
    test_file = root / "test.txt"
    if test_file.exists():
        test = V.snippets_to_sequences(text_snippets(_read_text(test_file)), sequence_length)
        if not len(test[0]):
            raise DataError(str(test_file), "holds no text")
        return _assemble(cfg, rng, ids, seqs, test, sequence_length, "separate")
    held, kept = [], []
    for x, y in seqs:
        n_test = int(round(len(y) * cfg.data.test_fraction))
        n_test = min(n_test, len(y) - 1)
        perm = rng.permutation(len(y))
        held.append((x[perm[:n_test]], y[perm[:n_test]]))
        kept.append((x[perm[n_test:]], y[perm[n_test:]]))
    test = _concat(held, sequence_length)
    if not len(test[0]):
        raise DataError(
            str(root),
            f"too little text to hold out a test set (data.test_fraction "
            f"{cfg.data.test_fraction}); add test.txt or more text",
        )
    return _assemble(cfg, rng, ids, kept, test, sequence_length, "clients")


def build_char_rnn(
    input_shape, num_classes: int, *, embedding_dim: int = 8, units: int = 256, num_layers: int = 2, cell: str = "lstm"
):
    """A character RNN (McMahan et al. 2017; TFF's ``create_recurrent_model``): embedding 8 ->
    ``num_layers`` LSTM (or GRU) layers of ``units`` -> dense logits at every position.

    Returns logits of shape (batch, sequence_length, num_classes) (declared ``outputs: logits``).
    No masking layer, so the model converts to TFLite builtins (fused LSTM) for the edge runner.
    """
    import tensorflow as tf

    if cell not in ("lstm", "gru"):
        raise ConfigError("model.kwargs.cell", f"expected 'lstm' or 'gru', got {cell!r}")
    if len(input_shape) != 1:
        raise ConfigError("model", f"char_rnn takes token sequences of shape (sequence_length,), got {input_shape}")
    layer = tf.keras.layers.LSTM if cell == "lstm" else tf.keras.layers.GRU
    inputs = tf.keras.Input(shape=tuple(input_shape), dtype=tf.int32, name="x")
    x = tf.keras.layers.Embedding(int(num_classes), int(embedding_dim), name="embedding")(inputs)
    for i in range(int(num_layers)):
        x = layer(int(units), return_sequences=True, kernel_initializer="he_normal", name=f"{cell}_{i}")(x)
    outputs = tf.keras.layers.Dense(int(num_classes), name="logits")(x)
    return tf.keras.Model(inputs, outputs, name="char_rnn")


def char_loss():
    import tensorflow as tf

    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def char_metrics():
    from tff_lab.tasks.metrics import MaskedAccuracy

    return [MaskedAccuracy(masked_tokens=V.MASKED_TOKENS, name="accuracy")]
