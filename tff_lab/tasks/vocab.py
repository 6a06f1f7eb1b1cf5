"""TFF's Shakespeare character vocabulary and tokenization, in numpy (no TensorFlow).

The vocabulary, the special tokens and the packing into sequences are those of
``tff.simulation.baselines.shakespeare.char_prediction_preprocessing`` (and of TFF's text
generation tutorial and google-research/federated's Shakespeare task):

* token ``0`` is padding, the 86 characters of ``CHAR_VOCAB`` are ``1..86`` (in that order),
  ``87`` is out-of-vocabulary, ``88`` beginning of snippet, ``89`` end of snippet (90 in all);
* text is split into *bytes* (``tf.strings.bytes_split``), so a non-ASCII character is one OOV
  token per byte;
* each snippet becomes ``[BOS] + tokens + [EOS]``, padded with ``0`` to a multiple of
  ``sequence_length + 1`` and cut into pieces of that length; a piece ``s`` gives the example
  ``x = s[:-1]``, ``y = s[1:]`` (predict the next character at every position).

``tests/tasks`` checks this against TFF's own tf.data preprocessing, token for token.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

CHAR_VOCAB = "dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r"
DEFAULT_SEQUENCE_LENGTH = 80  # McMahan et al., AISTATS 2017
PAD, OOV, BOS, EOS = 0, len(CHAR_VOCAB) + 1, len(CHAR_VOCAB) + 2, len(CHAR_VOCAB) + 3
VOCAB_SIZE = len(CHAR_VOCAB) + 4  # model outputs: pad, 86 characters, OOV, BOS, EOS
SPECIAL_TOKENS = {"pad": PAD, "oov": OOV, "bos": BOS, "eos": EOS}
MASKED_TOKENS = (PAD, OOV, BOS, EOS)  # excluded from accuracy (google-research/federated's Shakespeare)

_BYTE_TO_TOKEN = np.full(256, OOV, np.int32)
for _i, _c in enumerate(CHAR_VOCAB):
    _BYTE_TO_TOKEN[ord(_c)] = _i + 1


def token_labels() -> list[str]:
    """One label per output class: ``<pad>``, the characters, ``<oov>``, ``<bos>``, ``<eos>``."""
    return ["<pad>", *CHAR_VOCAB, "<oov>", "<bos>", "<eos>"]


def encode(text) -> np.ndarray:
    """Token ids (int32) of a str (UTF-8 encoded) or bytes snippet, without BOS/EOS."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return _BYTE_TO_TOKEN[np.frombuffer(data, np.uint8)]


def decode(tokens: Iterable[int], *, specials: bool = False) -> str:
    """Text of token ids; special tokens are dropped (or shown as ``<pad>`` etc. with ``specials``)."""
    labels = token_labels()
    out = []
    for t in np.asarray(list(tokens) if not isinstance(tokens, np.ndarray) else tokens).reshape(-1):
        t = int(t)
        if 1 <= t <= len(CHAR_VOCAB):
            out.append(CHAR_VOCAB[t - 1])
        elif specials and 0 <= t < VOCAB_SIZE:
            out.append(labels[t])
    return "".join(out)


def snippets_to_sequences(
    snippets: Sequence, sequence_length: int = DEFAULT_SEQUENCE_LENGTH
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) int32 arrays of shape (n, sequence_length), packed as TFF packs them."""
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
    split = sequence_length + 1
    pieces = []
    for s in snippets:
        toks = np.concatenate([[BOS], encode(s), [EOS]]).astype(np.int32)
        pad = (-len(toks)) % split
        if pad:
            toks = np.concatenate([toks, np.zeros(pad, np.int32)])
        pieces.append(toks.reshape(-1, split))
    if not pieces:
        empty = np.zeros((0, sequence_length), np.int32)
        return empty, empty.copy()
    seq = np.concatenate(pieces)
    return np.ascontiguousarray(seq[:, :-1]), np.ascontiguousarray(seq[:, 1:])


def vocabulary_info(sequence_length: int) -> dict:
    """What a device needs to turn text into model inputs and outputs back into text (sidecar)."""
    return {
        "kind": "tokens",
        "vocabulary": "tff_shakespeare_char",
        "chars": CHAR_VOCAB,
        "char_to_id": "1 + index in chars; other bytes -> oov",
        "special_tokens": dict(SPECIAL_TOKENS),
        "pad_id": PAD,
        "masked_ids": list(MASKED_TOKENS),
        "sequence_length": int(sequence_length),
    }
