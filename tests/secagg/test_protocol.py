"""Secure aggregation: the unmasked sum equals the plain quantized sum exactly, for n from 3 to 100,
complete graph (SecAgg) and sparse (SecAgg+), with dropouts at every stage while t survive; fewer
than t survivors give no output and a clear error; t − 1 shares reveal nothing; one client's masked
vector is uniform; a request for both kinds of share of one client is refused."""

import numpy as np
import pytest
from scipy import stats

from cohort.secagg import SecAggClient, SecAggError, SecAggServer, bits_for, dequantize_sum, harary_graph, quantize
from cohort.secagg.crypto import PRIME, SHARE_BYTES, combine, split

LENGTH = 257


def run(n, t, drop=(), degree=None, seed=0, inputs=None):
    """One round with clients 0..n-1; ``drop``: {stage: ids} that vanish before that stage
    (1: before sharing, 2: before masked input, 3: before unmasking, 4: during unmasking)."""
    drop = {k: set(v) for k, v in dict(drop).items()}
    ids = list(range(n))
    graph = harary_graph(ids, degree, seed, 1) if degree else None
    clients = {u: SecAggClient(u, t, graph[u] if graph else None) for u in ids}
    server = SecAggServer(t, LENGTH, graph)
    g = np.random.default_rng(seed)
    xs = inputs if inputs is not None else {u: g.integers(0, 2**20, LENGTH, dtype=np.uint32) for u in ids}
    alive = set(ids)
    keys = server.collect_keys({u: clients[u].advertise() for u in alive})
    alive -= drop.get(1, set())
    inbox = server.route({u: clients[u].share_keys(keys) for u in alive})
    alive -= drop.get(2, set())
    survivors, dropped = server.collect_masked({u: clients[u].masked_input(xs[u], inbox[u]) for u in alive})
    alive -= drop.get(3, set())
    responders = alive - drop.get(4, set())
    total = server.unmask({u: clients[u].unmask(survivors, dropped) for u in responders})
    expected = np.zeros(LENGTH, np.uint32)
    for u in survivors:
        expected += xs[u]
    return total, expected, survivors


@pytest.mark.parametrize("n", [3, 5, 10, 30, 100])
def test_the_unmasked_sum_is_the_plain_sum_exactly(n):
    t = n // 2 + 1
    total, expected, survivors = run(n, t)
    assert survivors == set(range(n)) and np.array_equal(total, expected)


@pytest.mark.parametrize("n", [5, 12, 40])
@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_dropouts_at_every_stage_while_t_survive(n, stage):
    t = n // 2 + 1
    k = n - t  # as many as can go
    total, expected, survivors = run(n, t, drop={stage: range(1, 1 + k)})
    assert np.array_equal(total, expected)
    assert len(survivors) == (n - k if stage <= 2 else n)  # stages 3, 4: their masked inputs were in


def test_dropouts_spread_over_all_stages():
    total, expected, survivors = run(20, 8, drop={1: {0, 1}, 2: {2, 3, 4}, 3: {5, 6, 7}, 4: {8, 9, 10}})
    assert survivors == set(range(5, 20)) and np.array_equal(total, expected)


@pytest.mark.parametrize("n, degree", [(30, 8), (100, 12)])
def test_secagg_plus_on_a_sparse_graph(n, degree):
    graph = harary_graph(list(range(n)), degree, 0, 1)
    assert all(len(nb) == degree + 1 and u in nb for u, nb in graph.items())
    assert all(u in graph[v] for u in graph for v in graph[u])  # symmetric
    t = degree // 2 + 2
    total, expected, _ = run(n, t, degree=degree, drop={3: {0, 5, 17}})
    assert np.array_equal(total, expected)


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_fewer_than_t_survivors_give_no_output_and_a_clear_error(stage):
    with pytest.raises(SecAggError, match="below|at least t|threshold"):
        run(10, 6, drop={stage: range(5)})


def test_t_minus_1_shares_reveal_nothing():
    """For any other secret there is exactly one polynomial of degree t − 1 through (0, it) and the
    t − 1 shares: they are as consistent with every secret as with the real one."""
    t = 5
    secret, other = bytes(range(32)), bytes(32 * [7])
    shares = split(secret, t, list(range(1, 11)))
    seen = dict(list(shares.items())[: t - 1])
    fake = split_through(other, seen)  # the polynomial through (0, other) and the seen shares
    for x, y in seen.items():
        assert fake(x) == int.from_bytes(y, "big")
    assert combine({**seen, 11: fake(11).to_bytes(SHARE_BYTES, "big")}, t) == other
    assert combine(dict(list(shares.items())[t - 1: 2 * t - 1]), t) == secret


def split_through(secret: bytes, points: dict[int, bytes]):
    pts = [(0, int.from_bytes(secret, "big"))] + [(x, int.from_bytes(y, "big")) for x, y in points.items()]

    def at(x):
        total = 0
        for i, (xi, yi) in enumerate(pts):
            num = den = 1
            for j, (xj, _) in enumerate(pts):
                if i != j:
                    num = num * (x - xj) % PRIME
                    den = den * (xi - xj) % PRIME
            total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
        return total

    return at


def test_one_clients_masked_vector_is_uniform():
    length = 200_000
    clients = {u: SecAggClient(u, 2) for u in range(3)}
    server = SecAggServer(2, length)
    keys = server.collect_keys({u: c.advertise() for u, c in clients.items()})
    inbox = server.route({u: c.share_keys(keys) for u, c in clients.items()})
    y = clients[0].masked_input(np.zeros(length, np.uint32), inbox[0])  # an all-zero input
    counts = np.bincount((y >> np.uint32(24)).astype(np.int64), minlength=256)  # its top bytes
    assert stats.chisquare(counts).pvalue > 1e-4
    counts = np.bincount((y & np.uint32(255)).astype(np.int64), minlength=256)  # and its low bytes
    assert stats.chisquare(counts).pvalue > 1e-4


def test_a_request_for_both_shares_of_one_client_is_refused():
    clients = {u: SecAggClient(u, 3) for u in range(4)}
    server = SecAggServer(3, 8)
    keys = server.collect_keys({u: c.advertise() for u, c in clients.items()})
    inbox = server.route({u: c.share_keys(keys) for u, c in clients.items()})
    for u, c in clients.items():
        c.masked_input(np.zeros(8, np.uint32), inbox[u])
    with pytest.raises(SecAggError, match=r"both shares of client\(s\) \[2\]"):
        clients[0].unmask({0, 1, 2, 3}, {2})
    with pytest.raises(SecAggError, match="order is"):
        clients[0].unmask({0, 1, 3}, {2})  # and no second chance in the same round
    with pytest.raises(SecAggError, match="reported dropped"):
        clients[1].unmask({0, 2, 3}, {1})


def test_forged_or_misrouted_shares_are_refused():
    clients = {u: SecAggClient(u, 2) for u in range(3)}
    server = SecAggServer(2, 8)
    keys = server.collect_keys({u: c.advertise() for u, c in clients.items()})
    sent = {u: c.share_keys(keys) for u, c in clients.items()}
    inbox = server.route(sent)
    inbox[0][1] = inbox[0][1][:-1] + bytes([inbox[0][1][-1] ^ 1])  # one flipped bit
    clients[0].masked_input(np.zeros(8, np.uint32), inbox[0])
    with pytest.raises(SecAggError, match="does not decrypt"):
        clients[0].unmask({0, 1, 2}, set())


@pytest.mark.parametrize("n", [3, 100])
def test_fixed_point_encoding_sums_within_its_resolution_and_never_wraps(n):
    bits = bits_for(n)
    assert n * (2**bits - 1) < 2**32
    g = np.random.default_rng(1)
    values = [g.uniform(-2, 2, 1000) for _ in range(n)]
    total = np.zeros(1000, np.uint32)
    for v in values:
        total += quantize(v, 1.0, bits, g)  # clipped to [-1, 1]: the stated range
    got = dequantize_sum(total, n, 1.0, bits)
    want = np.sum([np.clip(v, -1, 1) for v in values], axis=0)
    step = 2.0 / (2**bits - 1)
    assert np.abs(got - want).max() <= n * step + 1e-9
    # unbiased rounding: the mean error over many coordinates is far below one step
    assert abs((got - want).mean()) < 0.05 * n * step
