"""edgeuad._rt.MemoryBank (HNSW + exact search, Eq. 10 reweighting, file format) and runtime.bank.Bank."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edgeuad import _rt
from edgeuad.runtime.bank import Bank, BankConfig


# this process's exact searches take bf16 candidates (AVX512_BF16 CPUs); the prune tests turn them off per
# bank (the prune only runs without them)
BF16 = _rt.MemoryBank(8).exact_bf16


def float32_bank(dim: int, **kw) -> _rt.MemoryBank:
    """A bank whose exact searches use the float32 tile (and so the prune, where it applies)."""
    bank = _rt.MemoryBank(dim, **kw)
    bank.exact_bf16 = False
    return bank


def clustered(n: int, d: int, seed: int, clusters: int = 40, latent: int = 12) -> np.ndarray:
    """Patch-feature-like data: Gaussian clusters on a low-dimensional subspace plus noise."""
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((latent, d)) / np.sqrt(latent)
    centers = 3.0 * rng.standard_normal((clusters, latent))
    z = centers[rng.integers(0, clusters, n)] + rng.standard_normal((n, latent))
    return (z @ proj + 0.05 * rng.standard_normal((n, d))).astype(np.float32)


def brute_force(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(Q, N) float64 Euclidean distances."""
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    d2 = (q64 ** 2).sum(1)[:, None] - 2 * q64 @ x64.T + (x64 ** 2).sum(1)[None]
    return np.sqrt(np.maximum(d2, 0))


def eq10_numpy(q: np.ndarray, x: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """ReConPatch Eq. 10 / PatchCore reweighting, written directly from the paper."""
    dq = brute_force(q, x)
    nn = dq.argmin(1)
    s1 = dq[np.arange(len(q)), nn]
    dx = brute_force(x, x)
    np.fill_diagonal(dx, -1.0)  # the item itself first
    scores = np.empty(len(q))
    for i, r in enumerate(nn):
        nb = np.argsort(dx[r], kind="stable")[:b]
        scores[i] = (1.0 - np.exp(s1[i]) / np.exp(dq[i, nb]).sum()) * s1[i]
    return scores, nn


@pytest.fixture(scope="module")
def small():
    x = clustered(3000, 32, seed=0)
    q = clustered(200, 32, seed=1)
    bank = _rt.MemoryBank(32, M=16, ef_construction=100, seed=0)
    bank.add(x)
    return bank, x, q


# ---------------------------------------------------------------------------- search
def test_exact_equals_numpy_brute_force(small):
    bank, x, q = small
    dist, idx = bank.search(q, k=4, exact=True)
    assert dist.shape == (200, 4) and dist.dtype == np.float32 and idx.dtype == np.int64
    ref = brute_force(q, x)
    want = np.argsort(ref, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(dist, np.take_along_axis(ref, want, 1), rtol=1e-4)
    assert np.all(np.diff(dist, axis=1) >= 0)


# ------------------------------------------------------------- pruned exact search
def _search_both(bank, q, k, threads):
    """(pruned, full) results of the same exact search; the bank's switch is restored."""
    bank.exact_prune = True
    pruned = bank.search(q, k=k, exact=True, threads=threads)
    bank.exact_prune = False
    full = bank.search(q, k=k, exact=True, threads=threads)
    bank.exact_prune = True
    return pruned, full


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_pruned_exact_search_equals_full_search_and_numpy(offset):
    """Low-rank patch-like features (where the lower-bound prune applies): the pruned search returns the
    numpy brute force's neighbours and distances, the same as the full search, for k = 1 and 5 and 1 or 2
    threads; far from the origin too (its margin is relative to the centred norms).  Most queries are
    certified by the bound (otherwise this would only test the fallback)."""
    x = clustered(3000, 160, seed=0) + np.float32(offset)
    q = clustered(301, 160, seed=1) + np.float32(offset)
    q[:7] = x[[0, 5, 99, 1000, 2047, 2048, 2999]]  # queries on bank rows: distance 0
    bank = float32_bank(160, M=8, ef_construction=20, seed=0)
    bank.add(x, threads=1)
    st = bank.exact_stats()
    assert st["prune_enabled"] and st["prune_dims"] == 32 and st["energy"] > 0.9
    ref = brute_force(q, x)
    for k in (1, 5):
        want = np.argsort(ref, axis=1, kind="stable")[:, :k]
        for threads in (1, 2):
            before = bank.exact_stats()
            (pd, pi), (fd, fi) = _search_both(bank, q, k, threads)
            np.testing.assert_array_equal(pi, want)
            np.testing.assert_array_equal(pi, fi)
            np.testing.assert_array_equal(pd, fd)
            np.testing.assert_allclose(pd, np.take_along_axis(ref, want, 1), rtol=1e-5, atol=1e-3)
            assert np.all(pd[:7, 0] == 0.0)
            after = bank.exact_stats()
            assert after["queries"] - before["queries"] == 2 * len(q)
            full = after["full_queries"] - before["full_queries"] - len(q)  # minus the full search's own
            assert 0 <= full < len(q) // 4, full


def test_pruned_search_falls_back_when_the_bound_is_loose():
    """Rows in tight groups of 100 near-duplicates: a query near a group has more rows under its
    threshold than the threshold search keeps (64), so those queries take the full search, and the full
    search's rounding certificate sends them on to direct differences.  The answer is numpy's."""
    rng = np.random.default_rng(4)
    base = clustered(30, 128, seed=2, clusters=30)
    x = (np.repeat(base, 100, axis=0) + 1e-3 * rng.standard_normal((3000, 128))).astype(np.float32)
    q = (base[rng.integers(0, 30, 200)] + 1e-3 * rng.standard_normal((200, 128))).astype(np.float32)
    bank = float32_bank(128, M=8, ef_construction=20, seed=0)
    bank.add(x, threads=1)
    assert bank.exact_stats()["prune_dims"] == 32
    (pd, pi), (fd, fi) = _search_both(bank, q, 3, 2)
    ref = brute_force(q, x)
    np.testing.assert_allclose(pd, np.sort(ref, axis=1)[:, :3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(ref, pi, 1), pd, rtol=1e-5, atol=1e-5)  # true distances
    np.testing.assert_array_equal(pd, fd)
    st = bank.exact_stats()
    assert st["full_queries"] - len(q) > len(q) // 2  # most of the pruned search's queries fell back
    # and the full search's rounding certificate sent them to direct differences: its float expansion
    # cannot order rows 1e-3 apart at norm ~10 (before the certificate it returned neighbours 20% too far)
    assert st["direct_queries"] > len(q)


def test_prune_stays_off_for_isotropic_or_small_banks():
    """Spread variance (random data), narrow (< 64 dims) or small (< 512 rows) banks keep the full search;
    the switch turns pruning off for a bank that has it."""
    rng = np.random.default_rng(5)
    iso = float32_bank(128)
    iso.add(rng.standard_normal((2000, 128)).astype(np.float32), threads=1)
    st = iso.exact_stats()
    assert st["prune_dims"] == 0 and 0.2 < st["energy"] < 0.9
    narrow = float32_bank(32)
    narrow.add(clustered(2000, 32, seed=0), threads=1)
    small = float32_bank(160)
    small.add(clustered(400, 160, seed=0), threads=1)
    for b in (narrow, small):
        assert b.exact_stats()["prune_dims"] == 0
    low = float32_bank(160)
    low.add(clustered(2000, 160, seed=0), threads=1)
    assert low.exact_prune and low.exact_stats()["prune_dims"] == 32
    low.exact_prune = False
    q = clustered(50, 160, seed=1)
    low.search(q, k=2, exact=True)
    st = low.exact_stats()
    assert not st["prune_enabled"] and st["prune_dims"] == 0 and st["full_queries"] == st["queries"] == 50
    # rank 5 (the subspace basis is completed with unit vectors) and all rows equal (no variance)
    rank5 = float32_bank(96)
    rank5.add((rng.standard_normal((1500, 5)) @ rng.standard_normal((5, 96))).astype(np.float32), threads=1)
    assert rank5.exact_stats()["prune_dims"] == 24
    same = float32_bank(96)
    same.add(np.ones((600, 96), np.float32), threads=1)
    assert same.exact_stats()["prune_dims"] == 0
    q5 = (rng.standard_normal((40, 5)) @ rng.standard_normal((5, 96))).astype(np.float32)
    for b, data_q in ((iso, rng.standard_normal((40, 128)).astype(np.float32)), (low, q), (rank5, q5)):
        d, i = b.search(data_q, k=2, exact=True)
        np.testing.assert_array_equal(i, np.argsort(brute_force(data_q, b.features()), 1, kind="stable")[:, :2])


def test_exact_is_precise_for_large_norms():
    """|q|^2 - 2q.x + |x|^2 cancels badly far from the origin; the final re-ranking is exact."""
    rng = np.random.default_rng(2)
    x = (1000.0 + rng.standard_normal((500, 24))).astype(np.float32)
    q = np.concatenate([x[:20], (1000.0 + rng.standard_normal((20, 24))).astype(np.float32)])
    bank = _rt.MemoryBank(24)
    bank.add(x, threads=1)
    dist, idx = bank.search(q, k=1, exact=True)
    ref = brute_force(q, x)
    np.testing.assert_array_equal(idx[:20, 0], np.arange(20))
    assert np.all(dist[:20, 0] == 0.0)
    np.testing.assert_array_equal(idx[:, 0], ref.argmin(1))
    np.testing.assert_allclose(dist[20:, 0], ref.min(1)[20:], rtol=1e-4)


def test_hnsw_recall_on_clustered_data():
    # seeded, single-threaded build: the graph (and so the recall) is the same on every run; a
    # multi-threaded build inserts in a timing-dependent order and made this test flaky
    x = clustered(20000, 64, seed=3)
    q = clustered(400, 64, seed=4)
    bank = _rt.MemoryBank(64, M=16, ef_construction=100, seed=0)
    bank.add(x, threads=1)
    _, exact = bank.search(q, k=1, exact=True)
    dist, approx = bank.search(q, k=1, exact=False, ef=64)
    recall = float((approx[:, 0] == exact[:, 0]).mean())
    assert recall >= 0.95, recall
    ok = approx[:, 0] == exact[:, 0]
    np.testing.assert_allclose(dist[ok, 0], brute_force(q[ok], x).min(1), rtol=1e-4)


def test_compiled_bank_defaults_match_bank_config():
    # BankConfig (Python) and the C++ defaults (bank.hpp, used by the binding) must not drift apart:
    # a bare _rt.MemoryBank and a Bank built from BankConfig must build the same graph.
    b = _rt.MemoryBank(8)
    assert (b.M, b.ef_construction) == (BankConfig.M, BankConfig.ef_construction)


def test_hnsw_default_graph_knn_matches_exact():
    # The bank's own base-layer search (hnswlib's, plus whole-vector prefetch): with the default graph
    # (M 32, ef_construction 400) and ef well above k, the 10 nearest neighbours and their distances
    # are the exact ones for nearly every query, and every returned distance is the true one.
    x = clustered(6000, 48, seed=5)
    q = clustered(200, 48, seed=6)
    bank = _rt.MemoryBank(48)
    bank.add(x, threads=1)
    de, ie = bank.search(q, k=10, exact=True)
    dh, ih = bank.search(q, k=10, exact=False, ef=128)
    assert float((ih == ie).all(1).mean()) >= 0.97
    true = np.sqrt(((q[:, None, :].astype(np.float64) - x[ih].astype(np.float64)) ** 2).sum(-1))
    np.testing.assert_allclose(dh, true, rtol=1e-4, atol=1e-5)
    assert np.all(np.diff(dh, axis=1) >= 0)


def test_k_larger_than_one_hnsw_sorted(small):
    bank, _, q = small
    dist, idx = bank.search(q, k=5, ef=50)
    assert np.all(np.diff(dist, axis=1) >= 0)
    assert all(len(set(row)) == 5 for row in idx)


def test_threads_one_build_is_deterministic(small):
    _, x, q = small
    results = []
    for _ in range(2):
        bank = _rt.MemoryBank(32, M=8, ef_construction=50, seed=7)
        bank.add(x[:1000], threads=1)
        results.append(bank.search(q, k=3, ef=16))
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][0], results[1][0])


def test_concurrent_searches_from_python_threads(small):
    bank, _, q = small
    want_h = bank.search(q, k=3, ef=40, threads=1)
    want_e = bank.search(q, k=3, exact=True, threads=1)

    def job(i: int):
        if i % 2:
            return bank.search(q, k=3, exact=True, threads=2), want_e
        return bank.search(q, k=3, ef=40, threads=2), want_h

    with ThreadPoolExecutor(max_workers=4) as pool:
        for (got, want) in pool.map(job, range(12)):
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("bf16", [False, True])
def test_concurrent_first_searches_build_one_search_index(bf16):
    """Searches from several Python threads right after add(): they race to build the bank's search index
    (the prune index, or with bf16 candidates the packed bf16 tiles; its own mutex under the shared bank
    lock) and then search with it concurrently; every result equals numpy's, and add() drops the index so
    the next searches rebuild it for the new rows."""
    if bf16 and not BF16:
        pytest.skip("this CPU has no AVX512_BF16 (or EDGEUAD_RT_NO_BF16=1)")
    x = clustered(3000, 160, seed=0)
    q = clustered(120, 160, seed=1)
    bank = _rt.MemoryBank(160, M=8, ef_construction=20, seed=0)
    bank.exact_bf16 = bf16
    bank.add(x, threads=1)
    want = np.argsort(brute_force(q, x), axis=1, kind="stable")[:, :2]

    def job(i: int) -> np.ndarray:
        return bank.search(q, k=2, exact=True, threads=1 + i % 2)[1]

    with ThreadPoolExecutor(max_workers=4) as pool:
        for got in pool.map(job, range(8)):
            np.testing.assert_array_equal(got, want)
    st = bank.exact_stats()
    assert st["bf16"] == bf16 and st["queries"] == 8 * len(q)
    # these rows hold 98% or more of their variance in 32 dims: the prune runs beside bf16 too
    assert st["energy"] >= 0.98 and st["prune_dims"] == 32 and st["full_queries"] < len(q)
    extra = clustered(500, 160, seed=2) + np.float32(0.5)
    bank.add(extra, threads=1)
    both = np.concatenate([x, extra])
    np.testing.assert_array_equal(bank.search(q, k=2, exact=True)[1],
                                  np.argsort(brute_force(q, both), axis=1, kind="stable")[:, :2])


# ------------------------------------------------------------- bf16 candidates (AVX512_BF16)
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has no AVX512_BF16 (or EDGEUAD_RT_NO_BF16=1)")


def full_search_matches_numpy(x: np.ndarray, q: np.ndarray, k: int) -> dict:
    """The full exact search (no prune: the one that takes the bf16 candidates) of q in a bank of x, 2
    threads, checked against numpy's neighbours and distances; returns the bank's exact_stats()."""
    bank = _rt.MemoryBank(x.shape[1], M=8, ef_construction=20, seed=0)
    bank.exact_prune = False
    bank.add(x, threads=1)
    d, i = bank.search(q, k=k, exact=True, threads=2)
    ref = brute_force(q, x)
    np.testing.assert_array_equal(i, np.argsort(ref, axis=1, kind="stable")[:, :k])
    np.testing.assert_allclose(d, np.sort(ref, axis=1)[:, :k], rtol=1e-5, atol=1e-5)
    return bank.exact_stats()


def far_near_duplicates(rng: np.random.Generator, nq: int) -> tuple[np.ndarray, np.ndarray]:
    """800 rows in two groups of near-duplicates (spread 1e-2) at +-100 e_0, and nq queries beside them:
    the bf16 bound (~2^-6 |q||x|) is far wider than the spread, and each group outnumbers the threshold
    pass's 64 slots, so no query is certified without the float32 search."""
    e = np.zeros(64, np.float32)
    e[0] = 100.0
    x = np.concatenate([e + 1e-2 * rng.standard_normal((400, 64)), -e + 1e-2 * rng.standard_normal((400, 64))])
    x = x.astype(np.float32)
    return x, (x[rng.integers(0, 800, nq)] + 1e-2 * rng.standard_normal((nq, 64))).astype(np.float32)


@needs_bf16
@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_bf16_search_equals_float32_search_and_numpy(offset):
    """The bf16 candidates ranked by their certified lower bound, re-ranked exactly: numpy's neighbours and
    the float32 search's distances bit for bit (both report the same exact re-rank), for k = 1 and 5, 1 and
    2 threads, queries on bank rows, odd dims and partial tiles, far from the origin too.  Most queries are
    certified by the bf16 bound (otherwise this would only test the float32 fallback)."""
    for n, d, nq in ((3000, 160, 301), (517, 37, 67), (1037, 152, 203)):
        x = clustered(n, d, seed=0, latent=min(12, d)) + np.float32(offset)
        q = clustered(nq, d, seed=1, latent=min(12, d)) + np.float32(offset)
        q[:3] = x[[0, n // 2, n - 1]]
        bank = _rt.MemoryBank(d, M=8, ef_construction=20, seed=0)
        bank.exact_prune = False  # the full search is the one that takes the bf16 candidates
        bank.add(x, threads=1)
        ref = brute_force(q, x)
        for k in (1, 5):
            want = np.argsort(ref, axis=1, kind="stable")[:, :k]
            for threads in (1, 2):
                bank.exact_bf16 = True
                before = bank.exact_stats()
                bd, bi = bank.search(q, k=k, exact=True, threads=threads)
                after = bank.exact_stats()
                bank.exact_bf16 = False
                fd, fi = bank.search(q, k=k, exact=True, threads=threads)
                np.testing.assert_array_equal(bi, want)
                np.testing.assert_array_equal(bi, fi)
                np.testing.assert_array_equal(bd, fd)
                np.testing.assert_allclose(bd, np.take_along_axis(ref, want, 1), rtol=1e-5, atol=1e-3)
                assert np.all(bd[:3, 0] == 0.0)
                assert after["bf16"] and after["queries"] - before["queries"] == nq
                refined = after["refined_queries"] - before["refined_queries"]
                assert 0 <= refined < nq // 4, (n, d, k, refined)


@needs_bf16
def test_bf16_threshold_pass_settles_what_the_first_pass_left():
    """Random rows and queries (distances bunch up: the bf16 first pass leaves some queries uncertified):
    those get the threshold pass of the same tile (every row whose bound is under their k-th kept distance),
    which settles them without the float32 search; the answers are numpy's."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2141, 152)).astype(np.float32)
    q = rng.standard_normal((500, 152)).astype(np.float32)
    st = full_search_matches_numpy(x, q, k=3)
    assert st["second_pass_queries"] > 0 and st["refined_queries"] == 0, st


@needs_bf16
def test_bf16_search_falls_back_to_float32_when_the_bound_is_loose():
    """Two groups of near-duplicate rows far from their common centre: the bf16 bound (~2^-6 |q||x| in
    squared distance) is far wider than the rows' spread, so no query is certified and every one is searched
    again by the float32 tile (counted as refined); the answer is numpy's."""
    x, q = far_near_duplicates(np.random.default_rng(6), 50)
    st = full_search_matches_numpy(x, q, k=2)
    # the threshold pass found more than 64 rows under every query's threshold (400 near-duplicates)
    assert st["bf16"] and st["second_pass_queries"] == st["refined_queries"] == len(q) and not st["bf16_gave_up"]


@needs_bf16
def test_bf16_search_turns_itself_off_where_its_bound_keeps_failing():
    """The same kind of bank: after 4096 queries of which more than a quarter needed the float32 search
    again, the bank stops taking bf16 candidates (each such query paid for both passes); the answers stay
    numpy's; add() and switching it on again start a new trial."""
    x, q = far_near_duplicates(np.random.default_rng(7), 1100)
    want = np.argsort(brute_force(q, x), axis=1, kind="stable")[:, :1]
    runtime = Bank.build(x, exact_threshold=8192)
    bank = runtime.rt
    bank.exact_prune = False
    assert runtime.search_mode().startswith("exact, full search with bf16 candidates")
    for i in range(4):  # 4400 queries, every one refined
        assert bank.exact_bf16, i
        np.testing.assert_array_equal(bank.search(q, k=1, exact=True, threads=2)[1], want)
    st = bank.exact_stats()
    assert st["bf16_gave_up"] and not st["bf16"] and not bank.exact_bf16 and st["refined_queries"] == 4400
    np.testing.assert_array_equal(bank.search(q, k=1, exact=True, threads=2)[1], want)  # float32 now
    assert bank.exact_stats()["refined_queries"] == 4400
    assert runtime.search_mode() == ("exact, full search (bf16 candidates turned off for this bank: its bound "
                                     "certified too few queries)")
    bank.exact_bf16 = True  # a new trial
    assert bank.exact_bf16 and not bank.exact_stats()["bf16_gave_up"]
    for _ in range(4):
        bank.search(q, k=1, exact=True, threads=2)
    assert not bank.exact_bf16
    bank.add(x[:1] + np.float32(0.5), threads=1)  # a changed bank: a new trial too
    assert bank.exact_bf16


def test_exact_bf16_switch_follows_the_cpu_and_the_environment():
    """exact_bf16 reads True only where the CPU has AVX512_BF16 (and the AVX-512 tile is active), and
    EDGEUAD_RT_NO_BF16=1 turns it off for the process: the kernel name says which tile runs."""
    import subprocess
    import sys

    flags = _cpu_flags()
    has = {"avx512f", "avx512_bf16", "avx2", "fma"} <= flags
    code = "from edgeuad import _rt\nprint(_rt.MemoryBank(8).exact_bf16, _rt.exact_kernel())\n"
    for extra, want in (({}, has), ({"EDGEUAD_RT_NO_BF16": "1"}, False), ({"EDGEUAD_RT_NO_AVX512": "1"}, False)):
        r = subprocess.run([sys.executable, "-c", code], env=_kernel_env(extra), capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        on, name = r.stdout.split()
        assert on == str(want) and (name == "avx512bf16-6x32") == want, (extra, r.stdout)
    b = _rt.MemoryBank(8)
    b.exact_bf16 = True
    assert b.exact_bf16 == BF16  # asking cannot turn it on where the CPU lacks it
    b.exact_bf16 = False
    assert not b.exact_bf16 and not b.exact_stats()["bf16"]


# ---------------------------------------------------------------------------- Eq. 10 reweighting
def test_reweighted_equals_numpy_eq10(small):
    bank, x, q = small
    fresh = _rt.MemoryBank(32)
    fresh.add(x)
    scores, nn = fresh.search_reweighted(q, b=9, exact=True)
    want, want_nn = eq10_numpy(q, x, 9)
    np.testing.assert_array_equal(nn, want_nn)
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-6)
    assert np.all(scores <= fresh.search(q, exact=True)[0][:, 0] + 1e-6)  # the weight is in [0, 1)
    table = fresh.neighbor_table()
    assert table.shape == (3000, 9) and table.dtype == np.int32
    np.testing.assert_array_equal(table[:, 0], np.arange(3000))


def test_neighbor_table_is_self_plus_nearest(small):
    _, x, _ = small
    bank = _rt.MemoryBank(32)
    bank.add(x[:400])
    assert bank.neighbor_table() is None and bank.neighbor_b == 0
    bank.build_neighbor_table(5, exact=True)
    table = bank.neighbor_table()
    d = brute_force(x[:400], x[:400])
    np.fill_diagonal(d, -1.0)
    np.testing.assert_array_equal(table, np.argsort(d, axis=1, kind="stable")[:, :5])
    bank.add(x[400:410])  # adding invalidates the table
    assert bank.neighbor_b == 0


# ---------------------------------------------------------------------------- save / load
def test_save_load_round_trip(small, tmp_path: Path):
    bank, x, q = small
    bank.search_reweighted(q[:5], b=4)  # builds a table that must be saved too
    path = tmp_path / "bank.euab"
    bank.save(path)
    assert not list(tmp_path.glob("*.tmp.*"))  # the temporary file was renamed away
    loaded = _rt.MemoryBank.load(str(path))
    assert len(loaded) == len(bank) and loaded.dim == 32 and loaded.M == 16 and loaded.neighbor_b == 4
    np.testing.assert_array_equal(loaded.features(), x)
    np.testing.assert_array_equal(loaded.neighbor_table(), bank.neighbor_table())
    for exact in (False, True):
        for a, b in zip(loaded.search(q, k=3, exact=exact, ef=32), bank.search(q, k=3, exact=exact, ef=32)):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(loaded.search_reweighted(q, b=4), bank.search_reweighted(q, b=4)):
        np.testing.assert_array_equal(a, b)
    loaded.add(q[:10])  # a loaded bank can grow
    assert len(loaded) == 3010
    assert loaded.search(q[:10], exact=False, ef=32)[0].max() < 1e-3


def _saved(tmp_path: Path) -> tuple[Path, bytes]:
    bank = _rt.MemoryBank(8)
    bank.add(clustered(300, 8, seed=5))
    path = tmp_path / "b.euab"
    bank.save(path)
    return path, path.read_bytes()


def test_truncated_file_is_oserror(tmp_path: Path):
    path, data = _saved(tmp_path)
    for n in (len(data) - 1, len(data) // 2, 60, 0):
        path.write_bytes(data[:n])
        with pytest.raises(OSError, match="truncated"):
            _rt.MemoryBank.load(str(path))


def test_corrupted_file_is_oserror(tmp_path: Path):
    path, data = _saved(tmp_path)
    path.write_bytes(b"NOTABANK" + data[8:])
    with pytest.raises(OSError, match="magic"):
        _rt.MemoryBank.load(str(path))
    for pos in (9, 20, 40, 80):  # version, dim, N, hashes: header checksum
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        path.write_bytes(bytes(bad))
        with pytest.raises(OSError, match="corrupted"):
            _rt.MemoryBank.load(str(path))
    for pos in (100, len(data) // 2, len(data) - 3):  # features, HNSW graph
        bad = bytearray(data)
        bad[pos] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(OSError, match="corrupted"):
            _rt.MemoryBank.load(str(path))
    path.write_bytes(data + b"\0")
    with pytest.raises(OSError, match="trailing"):
        _rt.MemoryBank.load(str(path))
    with pytest.raises(OSError):
        _rt.MemoryBank.load(str(tmp_path / "missing.euab"))


# ---------------------------------------------------------------------------- bad input
def test_bad_shapes_and_dtypes(small):
    bank, x, q = small
    with pytest.raises(TypeError, match="float32"):
        bank.search(q.astype(np.float64))
    with pytest.raises(TypeError, match="float32"):
        bank.add(x[:5].astype(np.float16))
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        bank.search(q[:, :16].copy())
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        bank.search(q[0])
    with pytest.raises(ValueError, match="ascontiguousarray"):
        bank.search(np.asfortranarray(q))
    with pytest.raises(ValueError, match="k must be"):
        bank.search(q, k=0)
    with pytest.raises(ValueError, match="k must be"):
        bank.search(q, k=len(bank) + 1, exact=True)
    with pytest.raises(ValueError, match="b must be"):
        bank.search_reweighted(q, b=len(bank) + 1)
    with pytest.raises(ValueError, match="ef"):
        bank.search(q, ef=0)
    with pytest.raises(ValueError, match="empty"):
        _rt.MemoryBank(32).search(q)
    with pytest.raises(ValueError, match="dim"):
        _rt.MemoryBank(0)
    with pytest.raises(ValueError, match="M must"):
        _rt.MemoryBank(8, M=1)


# ---------------------------------------------------------------------------- Bank wrapper
def test_bank_wrapper(small, tmp_path: Path):
    _, x, q = small
    bank = Bank.build(x, M=12, ef_construction=80, exact_threshold=5000, neighbor_b=9)
    assert len(bank) == 3000 and bank.dim == 32 and bank.use_exact() and not bank.use_exact(False)
    assert bank.rt.neighbor_b == 9
    dist, idx = bank.search(q, k=2)
    np.testing.assert_array_equal(idx, np.argsort(brute_force(q, x), axis=1, kind="stable")[:, :2])
    np.testing.assert_array_equal(bank.search_patch_scores(q, b=0), dist[:, 0])
    want, _ = eq10_numpy(q, x, 9)
    np.testing.assert_allclose(bank.search_patch_scores(q, b=9), want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="b must be 0"):
        bank.search_patch_scores(q, b=1)
    with pytest.raises(ValueError, match="shape"):
        bank.search(q[:, :3])
    bank.save(tmp_path / "w.euab")
    loaded = Bank.load(tmp_path / "w.euab", exact_threshold=10)
    assert loaded.config.M == 12 and not loaded.use_exact()
    assert loaded.rt.neighbor_b == 9
    np.testing.assert_array_equal(loaded.search(q, exact=True)[1], idx[:, :1])
    assert BankConfig.from_dict(bank.config.to_dict()) == bank.config
    with pytest.raises(ValueError, match="unknown"):
        BankConfig.from_dict({"M": 4, "bogus": 1})
    with pytest.raises(ValueError, match="empty"):
        Bank.build(np.zeros((0, 4), np.float32))


def _cpu_flags() -> set:
    with open("/proc/cpuinfo") as f:
        return set(next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), []))


def _kernel_env(extra: dict) -> dict:
    """This process's environment without the tile-forcing variables, plus `extra`."""
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("EDGEUAD_RT_PORTABLE", "EDGEUAD_RT_NO_AVX512", "EDGEUAD_RT_NO_BF16")}
    env.update(extra)
    return env


# kernel -> (environment that selects it, the name _rt.exact_kernel() reports for it on this CPU)
def _kernel_case(kernel: str) -> tuple[dict, str]:
    flags = _cpu_flags()
    simd = {"avx2", "fma"} <= flags
    if kernel == "portable":
        return {"EDGEUAD_RT_PORTABLE": "1"}, "portable-4x8"
    if kernel == "avx2":
        return {"EDGEUAD_RT_NO_AVX512": "1"}, "avx2-6x16" if simd else "portable-4x8"
    avx512 = "avx512-6x32" if simd and "avx512f" in flags else ("avx2-6x16" if simd else "portable-4x8")
    if kernel == "float32":
        return {"EDGEUAD_RT_NO_BF16": "1"}, avx512
    return {}, "avx512bf16-6x32" if avx512 == "avx512-6x32" and "avx512_bf16" in flags else avx512


@pytest.mark.parametrize("kernel,pack_limit", [("native", ""), ("float32", ""), ("avx2", ""), ("portable", ""),
                                               ("native", "0"), ("float32", "0"), ("avx2", "0"), ("portable", "0")])
def test_exact_kernels_match_numpy_odd_sizes(kernel, pack_limit):
    """Every exact micro-kernel (the bf16 6x32 candidate tile on AVX512_BF16 CPUs, EDGEUAD_RT_NO_BF16=1
    forcing the float32 AVX-512 6x32 tile there, AVX2 6x16 on x86, EDGEUAD_RT_NO_AVX512=1 forcing it on an
    AVX-512 CPU, and the portable 4x8 tile that aarch64/Jetson
    runs, forced with EDGEUAD_RT_PORTABLE=1) against float64 brute force, with query and bank
    counts that leave partial register tiles and partial bank tiles; with the bank packed once per
    call (default) and per query block (EDGEUAD_RT_PACK_LIMIT=0: what banks over 256 MiB do)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, sys\n"
        "from edgeuad import _rt\n"
        "print(_rt.exact_kernel())\n"
        "rng = np.random.default_rng(3)\n"
        "for n, d, nq in [(1, 7, 5), (300, 37, 67), (517, 256, 131), (1000, 64, 200)]:\n"
        "    x = rng.standard_normal((n, d)).astype(np.float32)\n"
        "    q = rng.standard_normal((nq, d)).astype(np.float32)\n"
        "    b = _rt.MemoryBank(d, M=16, ef_construction=50, seed=0); b.add(x, threads=1)\n"
        "    k = min(3, n)\n"
        "    dist, idx = b.search(q, k=k, exact=True, threads=2)\n"
        "    ref = np.sqrt(np.maximum(((q.astype(np.float64)[:, None] - x.astype(np.float64)[None]) ** 2).sum(-1), 0))\n"
        "    order = np.argsort(ref, 1)[:, :k]\n"
        "    assert np.array_equal(idx, order), (n, d, nq)\n"
        "    assert np.abs(dist - np.take_along_axis(ref, order, 1)).max() < 1e-4, (n, d, nq)\n"
        "# low-rank rows (the pruned search applies; its projection has an AVX2 and a portable loop)\n"
        "z = rng.standard_normal((1201, 10)) * np.geomspace(5, 0.5, 10)\n"
        "x = (z @ rng.standard_normal((10, 130)) + 0.05 * rng.standard_normal((1201, 130))).astype(np.float32)\n"
        "q = (rng.standard_normal((67, 10)) * np.geomspace(5, 0.5, 10) @ rng.standard_normal((10, 130))).astype(np.float32)\n"
        "b = _rt.MemoryBank(130, M=8, ef_construction=20, seed=0); b.add(x, threads=1)\n"
        "assert b.exact_stats()['prune_dims'] == 32\n"
        "ref = np.sqrt(np.maximum(((q.astype(np.float64)[:, None] - x.astype(np.float64)[None]) ** 2).sum(-1), 0))\n"
        "dist, idx = b.search(q, k=2, exact=True, threads=2)\n"
        "assert np.array_equal(idx, np.argsort(ref, 1)[:, :2])\n"
        "print('ok')\n"
    )
    extra, want = _kernel_case(kernel)
    env = _kernel_env({**extra, "EDGEUAD_RT_PACK_LIMIT": pack_limit})
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split()[-1] == "ok", r.stderr[-2000:]
    # the kernel that ran is the one this case means to test (the widest the CPU has, unless forced)
    assert r.stdout.split()[0] == want


@pytest.mark.skipif(not {"avx512f", "avx2", "fma"} <= _cpu_flags(), reason="this CPU has no AVX-512F")
def test_avx512_and_avx2_kernels_give_identical_distances(tmp_path):
    """The AVX-512 tile runs each column's dot as the same FMA chain as the AVX2 tile: the exact
    search's distances are equal bit for bit, partial tiles included; so are the bf16 tile's, whose kept
    rows are re-ranked by the same exact distances (where the CPU has AVX512_BF16)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, sys\n"
        "from edgeuad import _rt\n"
        "rng = np.random.default_rng(5)\n"
        "x = rng.standard_normal((1037, 152)).astype(np.float32)\n"
        "q = rng.standard_normal((203, 152)).astype(np.float32)\n"
        "b = _rt.MemoryBank(152, M=16, ef_construction=50, seed=0); b.add(x, threads=1)\n"
        "b.exact_prune = False\n"
        "d, i = b.search(q, k=3, exact=True, threads=1)\n"
        "np.save(sys.argv[1], np.concatenate([d, i.astype(np.float32)], 1))\n"
        "print(_rt.exact_kernel())\n"
    )
    names = []
    bf16 = "avx512_bf16" in _cpu_flags()
    runs = (("512", {"EDGEUAD_RT_NO_BF16": "1"}), ("256", {"EDGEUAD_RT_NO_AVX512": "1"})) + ((("bf16", {}),) if bf16 else ())
    for tag, extra in runs:
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{tag}.npy")], env=_kernel_env(extra),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        names.append(r.stdout.split()[-1])
    assert names == ["avx512-6x32", "avx2-6x16"] + (["avx512bf16-6x32"] if bf16 else [])
    assert np.array_equal(np.load(tmp_path / "512.npy"), np.load(tmp_path / "256.npy"))
    if bf16:
        assert np.array_equal(np.load(tmp_path / "bf16.npy"), np.load(tmp_path / "512.npy"))


def test_bank_search_mode_says_how_searches_run():
    """runtime Bank.search_mode: what the Detector logs at load (and it builds the prune index there)."""
    low = Bank.build(clustered(2000, 160, seed=0), exact_threshold=8192)
    if BF16:  # nearly low-rank (>= 98% of the variance in 32 dims): pruned, its full searches on bf16
        assert low.search_mode().endswith("variance); full searches with bf16 candidates (AVX512_BF16) ranked by "
                                          "a certified lower bound, re-ranked by exact distances")
        spread = Bank.build(clustered(2000, 160, seed=0) + np.random.default_rng(1).standard_normal(
            (2000, 160)).astype(np.float32))
        assert spread.search_mode().startswith("exact, full search with bf16 candidates (AVX512_BF16)")
        low.rt.exact_bf16 = False
    assert low.search_mode().startswith("exact, pruned by a certified lower bound in 32 principal dimensions")
    assert low.search_mode(False).startswith("HNSW (M=")
    low.rt.exact_prune = False
    assert low.search_mode() == "exact, full search (pruning turned off)"
    iso = Bank.build(np.random.default_rng(0).standard_normal((1000, 128)).astype(np.float32))
    iso.rt.exact_bf16 = False
    assert "too little to prune" in iso.search_mode()
    small = Bank.build(clustered(100, 32, seed=0))
    small.rt.exact_bf16 = False
    assert small.search_mode() == "exact, full search (too small or too narrow to prune)"


# ---------------------------------------------------------------------------- measured peak
def test_flops_probe_runs_each_instruction_this_cpu_has_and_refuses_the_rest():
    """_rt.flops_probe (the bank benchmark's measured peak): a finite positive rate for every kind the CPU
    runs, ValueError for a kind it lacks, an unknown kind, or a duration outside (0, 10] s."""
    flags = _cpu_flags()
    runs = {"avx512": "avx512f" in flags, "bf16": {"avx512f", "avx512_bf16"} <= flags,
            "avx2": {"avx2", "fma"} <= flags}
    for kind, ok in runs.items():
        if ok:
            rate = _rt.flops_probe(kind, 0.01)
            assert np.isfinite(rate) and rate > 0.0
        else:
            with pytest.raises(ValueError, match="supported by this CPU"):
                _rt.flops_probe(kind, 0.01)
    with pytest.raises(ValueError, match="kind must be"):
        _rt.flops_probe("sse9", 0.01)
    for bad in (0.0, -1.0, 11.0, float("nan")):
        with pytest.raises(ValueError, match="seconds must be in"):
            _rt.flops_probe("avx2", bad)


def test_bank_benchmark_compares_each_tile_with_its_own_instruction(monkeypatch):
    """bank_gemm.peak_kind: the bf16 tile against vdpbf16ps, the AVX2 tile against 256-bit FMA, the float32
    AVX-512, portable and torch rows against the widest FMA the CPU has."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bank_gemm import peak_kind

    peaks = {"avx512": 240.0, "bf16": 450.0, "avx2": 120.0}
    assert peak_kind("_rt exact (avx512bf16-6x32)", peaks) == "bf16"
    assert peak_kind("_rt exact (avx512-6x32)", peaks) == "avx512"
    assert peak_kind("_rt exact (avx2-6x16)", peaks) == "avx2"
    assert peak_kind("_rt exact (portable-4x8)", peaks) == "avx512"
    assert peak_kind("torch GEMM (MKL/oneDNN)", peaks) == "avx512"
    assert peak_kind("torch GEMM (MKL/oneDNN)", {"avx2": 120.0}) == "avx2"  # an AVX2-only CPU
