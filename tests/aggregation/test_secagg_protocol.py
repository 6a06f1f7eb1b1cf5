"""The SecAgg / SecAgg+ protocol on integer vectors: sums, dropouts, aborts, the server's view, bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tff_lab.aggregation.secagg import graph as graph_lib
from tff_lab.aggregation.secagg import protocol
from tff_lab.aggregation.secagg.protocol import SecAggAborted


def _inputs(n, d, bits, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 2**bits, d, dtype=np.uint64) for _ in range(n)]


def _exact_sum(inputs, included, m):
    total = np.zeros(len(inputs[0]), dtype=object)
    for i in included:
        total = total + inputs[i].astype(object)
    return np.array([int(v) % (1 << m) for v in total], dtype=np.uint64)


def _survivors_ok(graph, t, dropouts, n):
    """Whether every secret the server needs has t holders left (the test's own account)."""
    u3 = {i for i in range(n) if dropouts.get(i) != "after_share_keys"}
    u4 = {i for i in u3 if dropouts.get(i) != "after_masked_input"}
    if len(u3) < t:
        return False
    for v in range(n):
        holders = graph[v] | {v}
        needed = v in u3 or any(u in u3 for u in graph[v])
        if needed and len(holders & u4) < t:
            return False
    return True


@pytest.mark.parametrize(
    "n,neighbors,fraction,seed",
    [(5, "all", 0.5, 0), (8, "all", 0.6, 1), (9, None, 0.5, 2), (12, 4, 0.5, 3), (16, None, 0.5, 4)],
)
def test_dropouts_up_to_n_minus_t_are_recovered(n, neighbors, fraction, seed):
    k = graph_lib.resolve_degree(n, neighbors)
    t = graph_lib.threshold(k + 1, fraction)
    m, d = 36, 64
    xs = _inputs(n, d, 32, seed)
    rng = np.random.default_rng(100 + seed)
    graph = graph_lib.harary_graph(n, k, np.random.default_rng(seed))
    tried = 0
    for trial in range(6):
        drops = int(rng.integers(0, n - t + 1)) if k == n - 1 else int(rng.integers(0, 3))
        who = rng.choice(n, drops, replace=False)
        dropouts = {int(i): protocol.DROP_STAGES[int(rng.integers(2))] for i in who}
        if not _survivors_ok(graph, t, dropouts, n):
            continue
        tried += 1
        res, _ = protocol.run(xs, m, degree=k, t=t, dropouts=dropouts, seed=seed)
        want_in = [i for i in range(n) if dropouts.get(i) != "after_share_keys"]
        assert res.included == want_in
        assert np.array_equal(res.sum, _exact_sum(xs, want_in, m))
    assert tried >= 3
    # The extreme case SecAgg must survive: exactly n - t clients gone, half at each stage.
    if k == n - 1:
        dropouts = {i: protocol.DROP_STAGES[i % 2] for i in range(n - t)}
        res, _ = protocol.run(xs, m, degree=k, t=t, dropouts=dropouts, seed=seed)
        assert np.array_equal(res.sum, _exact_sum(xs, res.included, m))


@pytest.mark.parametrize("stage", protocol.DROP_STAGES)
@pytest.mark.parametrize("n,fraction", [(6, 0.5), (10, 0.7)])
def test_more_than_n_minus_t_dropouts_abort(n, fraction, stage):
    t = graph_lib.threshold(n, fraction)
    xs = _inputs(n, 16, 32, 5)
    dropouts = {i: stage for i in range(n - t + 1)}
    with pytest.raises(SecAggAborted) as err:
        protocol.run(xs, 36, degree=n - 1, t=t, dropouts=dropouts)
    msg = str(err.value)
    assert "\n" not in msg and f"t = {t}" in msg


def test_secagg_plus_aborts_when_one_neighbourhood_loses_too_many():
    n, k = 12, 4
    t = graph_lib.threshold(k + 1, 0.5)  # 3 of 5
    graph = graph_lib.harary_graph(n, k, np.random.default_rng(7))
    victim = 0
    gone = sorted(graph[victim])[: k + 1 - t + 1]  # 3 of its 4 neighbours vanish before unmasking
    dropouts = {u: "after_masked_input" for u in gone}
    with pytest.raises(SecAggAborted, match="client"):
        protocol.run(_inputs(n, 8, 32, 1), 36, degree=k, t=t, dropouts=dropouts, seed=7)


def test_server_never_holds_an_unmasked_update():
    """Everything the server received: no input appears in it, and each masked vector is
    statistically independent of the client's input (correlation ~ 0, uniform field elements)."""
    n, d, bits, m = 6, 4096, 32, 35
    rng = np.random.default_rng(11)
    xs = [
        np.zeros(d, np.uint64),
        np.full(d, 2**32 - 1, np.uint64),
        *[(np.arange(d, dtype=np.uint64) * (2**20)) % (2**32)] * 2,
        *[rng.integers(0, 2**bits, d, dtype=np.uint64) for _ in range(2)],
    ]
    res, server = protocol.run(xs, m, degree=n - 1, t=4, dropouts={5: "after_share_keys"})
    masked = {}
    for step, sender, data in server.received:
        assert isinstance(data, bytes)
        for x in xs:  # no input's serialised form is inside any message
            assert protocol.pack_vector(x[:64], [(64, m)]) not in data
        if step == "masked_input":
            masked[sender] = protocol.unpack_vector(data[4:], [(d, m)])
    assert sorted(masked) == [0, 1, 2, 3, 4]
    bound = 5 / math.sqrt(d)  # |r| of independent vectors: sd 1/sqrt(d)
    for u, y in masked.items():
        x = xs[u].astype(np.float64)
        yf = y.astype(np.float64)
        if np.std(x) > 0:
            assert abs(np.corrcoef(x, yf)[0, 1]) < bound, u
        assert abs(np.corrcoef(np.arange(d), yf)[0, 1]) < bound, u
        # uniform over Z_{2^m}: top 4 bits in 16 equal bins
        counts = np.bincount((y >> np.uint64(m - 4)).astype(np.int64), minlength=16)
        assert stats.chisquare(counts).pvalue > 1e-6, (u, counts)
        assert not np.array_equal(y, xs[u])
    # Identical inputs (clients 2 and 3) are masked differently.
    assert np.mean(masked[2] == masked[3]) < 0.01
    # Nothing the server object keeps equals an input.
    for value in vars(server).values():
        for v in value.values() if isinstance(value, dict) else [value]:
            if isinstance(v, np.ndarray) and v.shape == (d,):
                assert not any(np.array_equal(v, x) for x in xs)
    assert np.array_equal(res.sum, _exact_sum(xs, [0, 1, 2, 3, 4], m))


def test_byte_accounting():
    """Bytes per client and step, from the message formats (computed here, not read from the module):
    ids 4 bytes, X25519 keys 32, AES-GCM nonce 12 + tag 16, Shamir shares 16, share index 2."""
    n, k, d_upd, d_side = 11, 4, 50, 3
    m_upd, m_side = 20 + 4, 32 + 4
    t = graph_lib.threshold(k + 1, 0.5)
    dropouts = {2: "after_share_keys", 7: "after_masked_input"}
    rng = np.random.default_rng(3)
    xs = [
        np.concatenate([rng.integers(0, 2**20, d_upd), rng.integers(0, 2**32, d_side)]).astype(np.uint64)
        for _ in range(n)
    ]
    res, server = protocol.run(xs, [(d_upd, m_upd), (d_side, m_side)], degree=k, t=t, dropouts=dropouts, seed=9)
    graph = server.graph
    assert all(len(g) == k for g in graph)
    u3 = {i for i in range(n) if i != 2}
    for u in range(n):
        nb = graph[u]
        advertise = 4 + 32 + 32
        share = 4 + 12 + (4 + 4 + 2 + 16 + 16) + 16
        masked = 4 + d_upd * 3 + d_side * 5  # 24 bits -> 3 bytes, 36 bits -> 5 bytes
        assert res.sent[u, 0] == advertise and res.received[u, 0] == advertise * k
        assert res.sent[u, 1] == share * k and res.received[u, 1] == share * k
        assert res.sent[u, 2] == (0 if u == 2 else masked) and res.received[u, 2] == 0
        if u in (2, 7):
            assert res.sent[u, 3] == 0 and res.received[u, 3] == 0
        else:
            assert res.received[u, 3] == 4 * len((nb | {u}) & u3)
            assert res.sent[u, 3] == (4 + 2 + 16) * (k + 1)
    assert res.server_seconds > 0 and np.all(res.client_seconds > 0)
    assert np.array_equal(res.sum[:d_upd], _exact_sum([x[:d_upd] for x in xs], sorted(u3), m_upd))
    assert np.array_equal(res.sum[d_upd:], _exact_sum([x[d_upd:] for x in xs], sorted(u3), m_side))


def test_graph_degrees_and_defaults():
    for n in (3, 10, 33, 100, 1000):
        k = graph_lib.default_degree(n)
        assert k == min(n - 1, max(2, math.ceil(math.log2(n)) + math.ceil(math.log2(n)) % 2))
        g = graph_lib.harary_graph(n, k, np.random.default_rng(n))
        assert all(len(s) == k for s in g) and all(i not in s for i, s in enumerate(g))
        assert all(j in g[i] for i in range(n) for j in g[i])  # symmetric
    assert graph_lib.resolve_degree(10, "all") == 9
    assert graph_lib.threshold(10, 0.5) == 6 and graph_lib.threshold(5, 0.5) == 3
