"""Secure aggregation: Bonawitz et al. 2017 (SecAgg), with the sparse graph of Bell et al. 2020 (SecAgg+).

Run as a simulation between client objects and a server object that exchange real, serialised
messages (``bytes``); the server only ever sees what a deployment's server would: public keys,
ciphertexts it cannot open, masked vectors, and the shares it asks for during unmasking. The
rounds of the semi-honest protocol (Bonawitz et al., Fig. 4, without the signatures and the
consistency check of the actively secure variant):

0. ``advertise_keys``: each client makes two X25519 key pairs, ``c`` (its channel key) and
   ``s`` (its masking key; the private key is derived with HKDF from a 16-byte seed), and sends
   both public keys. The server draws the graph (:mod:`.graph`) and sends each client its
   neighbours' public keys.
1. ``share_keys``: each client draws a 16-byte self-mask seed ``b`` and splits ``b`` and its
   masking seed ``t``-of-``(k+1)`` with Shamir's scheme (pycryptodome,
   ``Crypto.Protocol.SecretSharing.Shamir``, GF(2^128), 16-byte secrets) among its neighbours and
   itself; each neighbour's pair of shares is encrypted with AES-GCM under
   HKDF(X25519(c_u, c_v)) and routed through the server.
2. ``masked_input``: each client sends ``y_u = x_u + PRG(b_u) + sum_v ±PRG(s_uv) mod 2^m`` over
   the neighbours that shared with it, with ``s_uv = HKDF(X25519(s_u, s_v))`` (``+`` when
   ``u < v``) and the PRG AES-256-CTR's keystream (``cryptography``).
3. ``unmasking``: the server names the neighbours whose masked input arrived; each client answers
   with its share of ``b_v`` for those and of ``v``'s masking seed for the others (never both for
   one client). With ``t`` shares per secret the server removes the self masks and the pairwise
   masks of clients that vanished after ``share_keys``; the pairwise masks of survivors cancel.

Why a 16-byte masking *seed* is shared instead of the 32-byte X25519 key: pycryptodome's Shamir
scheme works on 16-byte secrets. The seed has 128 bits, the security level of X25519 itself, and
HKDF-SHA256 expands it into the private key, so one sharing of 16 bytes (not two of 16-byte
halves) carries everything the server needs to recompute a dropped client's pairwise masks.

Randomness: keys, seeds and shares come from the operating system (``os.urandom``, pycryptodome's
own generator), as they must; the sum, which clients drop out and every byte count are functions
of the inputs and the round's seed only.

The protocol fails (``SecAggAborted``) rather than produce a wrong sum: fewer than ``t`` masked
inputs, or a secret that fewer than ``t`` surviving holders can reconstruct (with SecAgg, more than
``n - t`` dropouts).
"""

from __future__ import annotations

import dataclasses
import os
import struct
import time
from typing import Optional, Sequence

import numpy as np

from tff_lab.aggregation.secagg import graph as graph_lib

STEPS = ("advertise_keys", "share_keys", "masked_input", "unmasking")
DROP_STAGES = ("after_share_keys", "after_masked_input")

_ID = struct.Struct("<I")
_SHARE = 16  # Shamir share bytes (GF(2^128))
_NONCE = 12  # AES-GCM nonce
_TAG = 16  # AES-GCM tag
_KEY = 32  # X25519 public key bytes


class SecAggAborted(RuntimeError):
    """A secure-aggregation round could not complete (too many dropouts); nothing was summed."""


def _hkdf(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def prg(key: bytes, length: int) -> np.ndarray:
    """``length`` uniform uint64 words: AES-256-CTR keystream (zero IV; each key is used once) read
    little-endian. Reduced modulo 2^m (which divides 2^64) they are uniform in Z_{2^m}."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(8 * length)) + enc.finalize(), dtype="<u8").astype(np.uint64)


def element_bytes(mod_bits: int) -> int:
    """Bytes per masked element on the wire (byte-aligned ``mod_bits``)."""
    return -(-int(mod_bits) // 8)


def _segments(segments) -> list:
    """``[(length, mod_bits), ...]`` (an int ``mod_bits`` with a length = one segment)."""
    return [(int(n), int(b)) for n, b in segments]


def element_masks(segments) -> np.ndarray:
    """Per element: 2^m - 1 of its segment's ring."""
    return np.concatenate([np.full(n, (1 << b) - 1, dtype=np.uint64) for n, b in segments] or [np.zeros(0, np.uint64)])


def vector_bytes(segments) -> int:
    return int(sum(n * element_bytes(b) for n, b in segments))


def pack_vector(v: np.ndarray, segments) -> bytes:
    out, off = [], 0
    for n, b in segments:
        w = element_bytes(b)
        out.append(np.ascontiguousarray(v[off : off + n].astype("<u8")).view(np.uint8).reshape(-1, 8)[:, :w].tobytes())
        off += n
    return b"".join(out)


def unpack_vector(data: bytes, segments) -> np.ndarray:
    parts, off = [], 0
    for n, b in segments:
        w = element_bytes(b)
        raw = np.frombuffer(data[off : off + n * w], dtype=np.uint8).reshape(n, w)
        full = np.zeros((n, 8), dtype=np.uint8)
        full[:, :w] = raw
        parts.append(full.reshape(-1).view("<u8").astype(np.uint64))
        off += n * w
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


# -- wire sizes (also the test's independent account) -------------------------------------------
ADVERTISE_BYTES = _ID.size + 2 * _KEY  # id, c_pk, s_pk
SHARE_PLAINTEXT = 2 * _ID.size + 2 + 2 * _SHARE  # owner, holder, share index, share of b, share of s
SHARE_MESSAGE = _ID.size + _NONCE + SHARE_PLAINTEXT + _TAG  # peer id + AES-GCM(nonce, ciphertext, tag)
UNMASK_ENTRY = _ID.size + 2 + _SHARE  # owner id, share index, share


@dataclasses.dataclass
class SecAggResult:
    sum: np.ndarray  # uint64, the sum (each element modulo its segment's 2^m) of the included clients' inputs
    included: list  # client positions whose inputs are in the sum (sent their masked input)
    dropped: dict  # position -> stage at which it vanished
    sent: np.ndarray  # [clients, steps] bytes each client sent in each step
    received: np.ndarray  # [clients, steps] bytes each client received in each step
    client_seconds: np.ndarray  # [clients] compute time of each client (all steps)
    server_seconds: float
    degree: int  # k, neighbours per client
    threshold: int  # t, shares needed per secret (out of k + 1 holders)
    segments: list  # [(length, m)]: the vector's parts and the ring Z_{2^m} of each


class _Client:
    def __init__(self, cid: int, x: np.ndarray, segments: list, tag: bytes):
        self.id, self.x, self.segments, self.tag = cid, x, segments, tag
        self.masks = element_masks(segments)
        self.seconds = 0.0

    # round 0
    def advertise_keys(self) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        raw = (Encoding.Raw, PublicFormat.Raw)
        self.c_sk = X25519PrivateKey.generate()
        self.s_seed = os.urandom(16)
        self.s_sk = _mask_key(self.s_seed, self.tag)
        return _ID.pack(self.id) + self.c_sk.public_key().public_bytes(*raw) + self.s_sk.public_key().public_bytes(*raw)

    def receive_keys(self, message: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        self.peers = {}
        for off in range(0, len(message), ADVERTISE_BYTES):
            (vid,) = _ID.unpack_from(message, off)
            c = X25519PublicKey.from_public_bytes(message[off + 4 : off + 36])
            s = X25519PublicKey.from_public_bytes(message[off + 36 : off + 68])
            self.peers[vid] = (c, s)

    # round 1
    def share_keys(self, t: int) -> bytes:
        from Crypto.Protocol.SecretSharing import Shamir
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.b_seed = os.urandom(16)
        holders = sorted([self.id, *self.peers])
        b_shares = Shamir.split(t, len(holders), self.b_seed)
        s_shares = Shamir.split(t, len(holders), self.s_seed)
        self.held = {}  # owner -> (index, share of b, share of s)
        out = []
        for (idx, b), (idx2, s), v in zip(b_shares, s_shares, holders):
            assert idx == idx2
            if v == self.id:
                self.held[self.id] = (idx, b, s)
                continue
            plain = _ID.pack(self.id) + _ID.pack(v) + struct.pack("<H", idx) + b + s
            nonce = os.urandom(_NONCE)
            ct = AESGCM(self._channel(v)).encrypt(nonce, plain, _ID.pack(self.id) + _ID.pack(v))
            out.append(_ID.pack(v) + nonce + ct)
        return b"".join(out)

    def _channel(self, v: int) -> bytes:
        return _hkdf(self.c_sk.exchange(self.peers[v][0]), b"tff_lab secagg channel" + self.tag)

    def receive_shares(self, message: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.sharers = {self.id}
        for off in range(0, len(message), SHARE_MESSAGE):
            (u,) = _ID.unpack_from(message, off)
            nonce = message[off + 4 : off + 4 + _NONCE]
            ct = message[off + 4 + _NONCE : off + SHARE_MESSAGE]
            plain = AESGCM(self._channel(u)).decrypt(nonce, ct, _ID.pack(u) + _ID.pack(self.id))
            owner, holder = _ID.unpack_from(plain, 0)[0], _ID.unpack_from(plain, 4)[0]
            if owner != u or holder != self.id:
                raise SecAggAborted(f"client {self.id}: a share from {u} names the wrong parties")
            (idx,) = struct.unpack_from("<H", plain, 8)
            self.held[u] = (idx, plain[10:26], plain[26:42])
            self.sharers.add(u)

    # round 2
    def masked_input(self) -> bytes:
        d = len(self.x)
        y = self.x.astype(np.uint64) + prg(_hkdf(self.b_seed, b"tff_lab secagg self mask" + self.tag), d)
        for v in self.sharers - {self.id}:
            mask = prg(_hkdf(self.s_sk.exchange(self.peers[v][1]), b"tff_lab secagg pair mask" + self.tag), d)
            y = y + mask if self.id < v else y - mask  # uint64 wraps: exact modulo 2^64, hence modulo 2^m
        y &= self.masks
        return _ID.pack(self.id) + pack_vector(y, self.segments)

    # round 3
    def unmask(self, message: bytes) -> bytes:
        survivors = {_ID.unpack_from(message, off)[0] for off in range(0, len(message), _ID.size)}
        out = []
        for owner in sorted(self.held):
            idx, b, s = self.held[owner]
            share = b if owner in survivors else s  # one of the two secrets per client, never both
            out.append(_ID.pack(owner) + struct.pack("<H", idx) + share)
        return b"".join(out)


def _mask_key(seed: bytes, tag: bytes):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(_hkdf(seed, b"tff_lab secagg mask key" + tag))


class Server:
    """The aggregation server. ``received`` logs every message it was sent: (step, sender, bytes)."""

    def __init__(
        self, num_clients: int, segments: list, degree: int, t: int, rng: Optional[np.random.Generator], tag: bytes
    ):
        self.n, self.segments, self.k, self.t, self.tag = num_clients, segments, degree, t, tag
        self.d = int(sum(n for n, _ in segments))
        self.graph = graph_lib.harary_graph(num_clients, degree, rng)
        self.received: list = []
        self.seconds = 0.0

    def _log(self, step: str, sender: int, data: bytes) -> None:
        self.received.append((step, sender, data))

    def collect_keys(self, messages: dict) -> dict:
        """messages: id -> advertise bytes. Returns id -> the message of its neighbours' keys."""
        self.keys = {}
        for u, data in messages.items():
            self._log("advertise_keys", u, data)
            self.keys[u] = data
        self.u1 = set(self.keys)
        if len(self.u1) < self.t:
            raise SecAggAborted(f"only {len(self.u1)} clients advertised keys; t = {self.t} are needed")
        return {u: b"".join(self.keys[v] for v in sorted(self.graph[u]) if v in self.u1) for u in self.u1}

    def route_shares(self, messages: dict) -> dict:
        inbox: dict = {u: [] for u in self.u1}
        for u, data in messages.items():
            self._log("share_keys", u, data)
            for off in range(0, len(data), SHARE_MESSAGE):
                (v,) = _ID.unpack_from(data, off)
                if v not in self.graph[u]:
                    raise SecAggAborted(f"client {u} sent a share to {v}, not its neighbour")
                inbox[v].append(_ID.pack(u) + data[off + 4 : off + SHARE_MESSAGE])
        self.u2 = set(messages)
        return {v: b"".join(msgs) for v, msgs in inbox.items() if v in self.u2}

    def collect_masked(self, messages: dict) -> dict:
        self.masked = {}
        for u, data in messages.items():
            self._log("masked_input", u, data)
            (uid,) = _ID.unpack_from(data, 0)
            assert uid == u
            self.masked[u] = unpack_vector(data[4:], self.segments)
        self.u3 = set(self.masked)
        if len(self.u3) < self.t:
            raise SecAggAborted(
                f"only {len(self.u3)} of {self.n} clients sent their masked input; t = {self.t} are needed"
            )
        return {u: b"".join(_ID.pack(v) for v in sorted((self.graph[u] | {u}) & self.u3)) for u in self.u3}

    def unmask(self, messages: dict) -> np.ndarray:
        from Crypto.Protocol.SecretSharing import Shamir

        shares: dict = {}
        for u, data in messages.items():
            self._log("unmasking", u, data)
            for off in range(0, len(data), UNMASK_ENTRY):
                (owner,) = _ID.unpack_from(data, off)
                (idx,) = struct.unpack_from("<H", data, off + 4)
                shares.setdefault(owner, []).append((idx, data[off + 6 : off + UNMASK_ENTRY]))
        mask_bits = element_masks(self.segments)
        z = np.zeros(self.d, dtype=np.uint64)
        for y in self.masked.values():
            z += y

        def secret(owner: int, what: str) -> bytes:
            got = shares.get(owner, [])
            if len(got) < self.t:
                raise SecAggAborted(
                    f"cannot remove client {owner}'s {what}: {len(got)} of its {len(self.graph[owner]) + 1} "
                    f"share holders answered, t = {self.t} are needed (more than {len(self.graph[owner]) + 1 - self.t}"
                    f" of them dropped out)"
                )
            return Shamir.combine(got[: self.t])

        for u in sorted(self.u3):
            b_seed = secret(u, "self mask")
            z -= prg(_hkdf(b_seed, b"tff_lab secagg self mask" + self.tag), self.d)
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        for v in sorted(self.u2 - self.u3):
            masked_with = sorted(u for u in self.graph[v] if u in self.u3)
            if not masked_with:
                continue
            s_sk = _mask_key(secret(v, "pairwise masks"), self.tag)
            for u in masked_with:
                s_pk_u = X25519PublicKey.from_public_bytes(self.keys[u][36:68])
                mask = prg(_hkdf(s_sk.exchange(s_pk_u), b"tff_lab secagg pair mask" + self.tag), self.d)
                z = z - mask if u < v else z + mask  # undo what u added for v
        return z & mask_bits


def run(
    inputs: Sequence[np.ndarray],
    segments,
    *,
    degree: int,
    t: int,
    dropouts: Optional[dict] = None,
    seed: Optional[int] = None,
    tag: bytes = b"",
) -> tuple[SecAggResult, Server]:
    """Runs one secure-aggregation round among ``len(inputs)`` clients (positions ``0..n-1``).

    Args:
      inputs: each client's vector of non-negative integers (same length).
      segments: ``[(length, m), ...]`` covering the vector: the ring Z_{2^m} of each part (an int
        ``m``: one ring for the whole vector).
      degree: neighbours per client (``n - 1``: SecAgg).
      t: Shamir threshold (of ``degree + 1`` holders per secret).
      dropouts: position -> ``after_share_keys`` | ``after_masked_input``.
      seed: the graph's permutation (None: the identity).
      tag: bound into every key derivation (e.g. the round number).

    Returns (result, the server object with everything it received). Raises SecAggAborted.
    """
    n = len(inputs)
    d = int(len(inputs[0])) if n else 0
    segments = [(d, int(segments))] if isinstance(segments, (int, np.integer)) else _segments(segments)
    if sum(k for k, _ in segments) != d:
        raise ValueError(f"segments cover {sum(k for k, _ in segments)} elements, the inputs have {d}")
    dropouts = dict(dropouts or {})
    for u, stage in dropouts.items():
        if stage not in DROP_STAGES:
            raise ValueError(f"unknown dropout stage {stage!r}")
    sent = np.zeros((n, len(STEPS)), dtype=np.int64)
    recv = np.zeros((n, len(STEPS)), dtype=np.int64)
    rng = np.random.default_rng(seed) if seed is not None else None
    server = Server(n, segments, degree, t, rng, tag)
    clients = [_Client(i, np.asarray(x, np.uint64), segments, tag) for i, x in enumerate(inputs)]

    def client_step(step: int, active, call):
        out = {}
        for c in active:
            t0 = time.perf_counter()
            msg = call(c)
            c.seconds += time.perf_counter() - t0
            if msg is not None:
                out[c.id] = msg
                sent[c.id, step] += len(msg)
        return out

    def server_step(fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            server.seconds += time.perf_counter() - t0

    def deliver(step: int, replies: dict, call):
        for u, msg in replies.items():
            recv[u, step] += len(msg)
            c = clients[u]
            t0 = time.perf_counter()
            call(c, msg)
            c.seconds += time.perf_counter() - t0

    alive = list(clients)
    keys = client_step(0, alive, lambda c: c.advertise_keys())
    deliver(0, server_step(server.collect_keys, keys), lambda c, m: c.receive_keys(m))
    shares = client_step(1, alive, lambda c: c.share_keys(t))
    deliver(1, server_step(server.route_shares, shares), lambda c, m: c.receive_shares(m))
    alive = [c for c in alive if dropouts.get(c.id) != "after_share_keys"]
    masked = client_step(2, alive, lambda c: c.masked_input())
    lists = server_step(server.collect_masked, masked)
    alive = [c for c in alive if dropouts.get(c.id) != "after_masked_input"]
    lists = {u: m for u, m in lists.items() if u in {c.id for c in alive}}  # vanished clients receive nothing
    for u, m in lists.items():
        recv[u, 3] += len(m)
    answers = client_step(3, alive, lambda c: c.unmask(lists[c.id]))
    total = server_step(server.unmask, answers)
    result = SecAggResult(
        sum=total,
        included=sorted(server.u3),
        dropped=dropouts,
        sent=sent,
        received=recv,
        client_seconds=np.array([c.seconds for c in clients]),
        server_seconds=server.seconds,
        degree=degree,
        threshold=t,
        segments=segments,
    )
    return result, server


def draw_dropouts(n: int, rate: float, rng: np.random.Generator) -> dict:
    """Each client vanishes with probability ``rate``, half of them after ``share_keys`` and half
    after ``masked_input`` (in expectation)."""
    if rate <= 0:
        return {}
    gone = rng.random(n) < rate
    stage = rng.random(n) < 0.5
    return {i: DROP_STAGES[int(stage[i])] for i in range(n) if gone[i]}


__all__ = [
    "SecAggAborted",
    "SecAggResult",
    "Server",
    "run",
    "prg",
    "draw_dropouts",
    "STEPS",
    "DROP_STAGES",
    "ADVERTISE_BYTES",
    "SHARE_MESSAGE",
    "UNMASK_ENTRY",
    "element_bytes",
    "vector_bytes",
]
