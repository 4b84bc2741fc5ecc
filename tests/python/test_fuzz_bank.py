"""Fuzz: the compiled `_rt` module — bank files through `MemoryBank.load`, the bank API, and the
map kernels with in-range parameters (their C++ bounds are another change's job).

Bank files are mutated blindly (bit flips, truncation, splices: the checksums must catch them) and
with their checksums recomputed (the Python `bank_hash` below is the C++ `Hasher` of
cpp/src/bank.cpp), so that corrupted headers, neighbour tables and HNSW graphs reach the structural
checks behind the checksums.  Properties: load raises OSError or gives a bank that searches without
crashing and returns in-range indices; the bank and map APIs raise ValueError/TypeError or agree
with numpy.  Run under ASan/UBSan by tools/sanitize_tests.sh.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from _fuzz import accepted, budget, count
from edgeuad import _rt
from edgeuad.runtime import maps

M64 = (1 << 64) - 1
P1, P2, P3, P5 = 11400714785074694791, 14029467366897019727, 1609587929392839161, 2870177450012600261
HEADER = struct.Struct("<8sII7QQQ")  # magic, version, header_bytes, dim..hnsw_bytes, payload_hash, header_hash
HEADER_FIELDS = ("dim", "size", "M", "ef_construction", "seed", "neighbor_b", "hnsw_bytes")
HNSW_PREFIX = 96  # hnswlib 0.6.2 saveIndex fixed prefix (see HnswPrefix in bank.cpp)
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 29, 30, 31, 63, 64, 255, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 63, M64]


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & M64


def bank_hash(data: bytes) -> int:
    """cpp/src/bank.cpp Hasher::digest over `data` (xxHash64-style, 4 lanes of 64 bits)."""
    v = [(P1 + P2) & M64, P2, 0, (-P1) & M64]
    full = len(data) - len(data) % 32
    words = struct.unpack_from(f"<{full // 8}Q", data)
    for i in range(0, len(words), 4):
        for lane in range(4):
            v[lane] = _rotl((v[lane] + words[i + lane] * P2) & M64, 31) * P1 & M64
    h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18) + len(data)) & M64
    for b in data[full:]:
        h = _rotl(h ^ (b * P5 & M64), 11) * P1 & M64
    h ^= h >> 33
    h = h * P2 & M64
    h ^= h >> 29
    h = h * P3 & M64
    return h ^ (h >> 32)


def rehash(data: bytes, payload: bool = True) -> bytes:
    """Recompute the payload and header checksums of a (modified) bank file."""
    if len(data) < HEADER.size:
        return data
    f = list(HEADER.unpack_from(data))
    if payload:
        f[-2] = bank_hash(data[HEADER.size:])
    hdr = HEADER.pack(*f)
    f[-1] = bank_hash(hdr[:HEADER.size - 8])
    return HEADER.pack(*f) + data[HEADER.size:]


def _bank_bytes(tmp: Path, n: int, dim: int, m: int, b: int, seed: int) -> bytes:
    bank = _rt.MemoryBank(dim, M=m, ef_construction=16, seed=seed)
    if n:
        bank.add(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32), threads=1)
        if b:
            bank.build_neighbor_table(b, exact=True, threads=1)
    p = tmp / f"seed_{n}_{dim}_{m}_{b}.euab"
    bank.save(p)
    return p.read_bytes()


class Seeds:
    """Valid bank files to mutate (a short repr keeps failure reports readable)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.files = [_bank_bytes(tmp, 40, 4, 4, 3, 1), _bank_bytes(tmp, 1, 1, 2, 1, 2),
                      _bank_bytes(tmp, 0, 3, 2, 0, 3), _bank_bytes(tmp, 120, 2, 3, 0, 4)]

    def __repr__(self) -> str:
        return f"Seeds({len(self.files)} bank files)"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Seeds:
    sd = Seeds(tmp_path_factory.mktemp("fuzz_bank"))
    for data in sd.files:  # the Python checksum is the C++ one
        f = HEADER.unpack_from(data)
        assert f[-2] == bank_hash(data[HEADER.size:]) and f[-1] == bank_hash(data[:HEADER.size - 8])
    return sd


@st.composite
def mutation(draw: st.DrawFn) -> tuple:
    kind = draw(st.sampled_from(["flip", "truncate", "append", "splice", "payload", "payload_u32",
                                 "hnsw_prefix", "header", "header", "payload_u32"]))
    return kind, draw(st.integers(0, 2 ** 32)), draw(st.integers(0, 2 ** 32)), draw(st.sampled_from(INTERESTING)), \
        draw(st.binary(min_size=1, max_size=16))


def mutate(data: bytes, kind: str, a: int, b: int, val: int, blob: bytes) -> bytes:
    d = bytearray(data)
    n = len(d)
    payload_start = HEADER.size
    hnsw_start = n - HEADER.unpack_from(data)[2 + 7]  # hnsw_bytes
    if kind == "flip":
        d[a % n] ^= 1 << (b % 8)
        return bytes(d)
    if kind == "truncate":
        return bytes(d[:a % n])
    if kind == "append":
        return bytes(d) + blob
    if kind == "splice":
        i = a % n
        return bytes(d[:i]) + blob + bytes(d[i + len(blob):])
    if kind == "header":  # one field set to an interesting value, header checksum recomputed
        f = list(HEADER.unpack_from(data))
        i = 1 + a % (2 + len(HEADER_FIELDS))
        f[i] = val & (0xFFFFFFFF if i <= 2 else M64)
        return rehash(HEADER.pack(*f) + bytes(d[HEADER.size:]), payload=False)
    if n == payload_start:
        return bytes(d)
    if kind == "payload":
        i = payload_start + a % (n - payload_start)
        d[i:i + len(blob)] = blob[: n - i]
    elif kind == "payload_u32":
        i = payload_start + 4 * (a % max(1, (n - payload_start) // 4))
        d[i:i + 4] = struct.pack("<I", val & 0xFFFFFFFF)[: n - i]
    elif kind == "hnsw_prefix" and n - hnsw_start >= HNSW_PREFIX:
        offsets = [0, 8, 16, 24, 32, 40, 48, 52, 56, 64, 72, 80, 88]  # every field of the prefix
        o = hnsw_start + offsets[a % len(offsets)]
        width = 4 if o - hnsw_start in (48, 52) else 8
        d[o:o + width] = struct.pack("<I" if width == 4 else "<Q", val & ((1 << (8 * width)) - 1))
    return rehash(bytes(d))


@budget(2200)
@given(st.integers(0, 3), mutation())
def test_bank_file_loads_or_oserror(seeds, which: int, mut: tuple) -> None:  # noqa: ANN001 - fixture
    count("bank.file")
    data = mutate(seeds.files[which], *mut)
    p = seeds.tmp / "case.euab"
    p.write_bytes(data)
    try:
        bank = _rt.MemoryBank.load(p)
    except OSError:
        return
    accepted("bank.file")
    n, dim = len(bank), bank.dim
    assert bank.features().shape == (n, dim)
    if n == 0:
        return
    q = np.random.default_rng(0).standard_normal((5, dim)).astype(np.float32)
    for exact in (True, False):
        for k in {1, min(3, n)}:
            dist, idx = bank.search(q, k=k, exact=exact, ef=8, threads=1)
            assert dist.shape == (5, k) and ((idx >= -1 + exact) & (idx < n)).all()
    if bank.neighbor_b >= 1:
        for exact in (True, False):
            s, nn = bank.search_reweighted(q, b=bank.neighbor_b, exact=exact, ef=8, threads=1)
            # -1: no neighbour reachable in a (corrupted) disconnected graph; never on exact search
            assert s.shape == (5,) and ((nn >= -1 + exact) & (nn < n)).all() and np.isinf(s[nn < 0]).all()
    table = bank.neighbor_table()
    assert table is None or ((table >= 0) & (table < n)).all()


FLOATS = st.sampled_from([np.float32] * 7 + [np.float16, np.float64, np.int32])


@budget(400)
@given(dim=st.integers(1, 9), m=st.integers(2, 12), efc=st.integers(1, 40), n=st.integers(0, 60),
       dtype=FLOATS, qn=st.integers(0, 6), k=st.integers(-1, 8), ef=st.integers(1, 64), b=st.integers(0, 8),
       exact=st.booleans(), threads=st.integers(0, 2), layout=st.sampled_from(["c"] * 7 + ["f", "strided", "wrong_dim"]))
def test_bank_api_in_range(dim, m, efc, n, dtype, qn, k, ef, b, exact, threads, layout) -> None:  # noqa: ANN001
    count("bank.api")
    rng = np.random.default_rng(dim * 1000 + n)
    bank = _rt.MemoryBank(dim, M=m, ef_construction=efc, seed=0)
    feats = rng.standard_normal((n, dim)).astype(dtype)
    if layout == "f":
        feats = np.asfortranarray(feats)
    elif layout == "strided":
        feats = np.repeat(feats, 2, axis=0)[::2]
    elif layout == "wrong_dim":
        feats = rng.standard_normal((n, dim + 1)).astype(dtype)
    try:
        bank.add(feats, threads=threads)
    except (ValueError, TypeError):
        assert dtype != np.float32 or not feats.flags.c_contiguous or feats.shape[1] != dim
        return
    assert len(bank) == n
    accepted("bank.api")
    q = rng.standard_normal((qn, dim)).astype(np.float32)
    try:
        dist, idx = bank.search(q, k=k, exact=exact, ef=ef, threads=threads)
    except ValueError:
        assert n == 0 or not 1 <= k <= n
        return
    if exact and qn:  # exact search is exact: compare with numpy brute force
        d = np.sqrt(((q[:, None, :].astype(np.float64) - feats[None].astype(np.float64)) ** 2).sum(-1))
        np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :k], rtol=1e-4, atol=1e-4)
    assert ((idx >= 0) & (idx < n)).all()
    try:
        s, nn = bank.search_reweighted(q, b=b, exact=exact, ef=ef, threads=threads)
    except ValueError:
        assert not 1 <= b <= n
        return
    assert s.shape == (qn,) and ((nn >= 0) & (nn < n)).all()


@st.composite
def map_inputs(draw: st.DrawFn) -> tuple:
    wild = draw(st.integers(0, 9)) < 3  # else a valid call, so the comparison with numpy runs
    dtype = draw(st.sampled_from([np.float32, np.float16] + ([np.float64, np.int32] if wild else [])))
    lo = 0 if wild else 1
    b = draw(st.integers(lo, 2))
    levels = []
    for _ in range(draw(st.integers(lo, 3))):
        shape = (b, draw(st.integers(lo, 5)), draw(st.integers(lo, 7)), draw(st.integers(lo, 7)))
        a = draw(hnp.arrays(dtype, shape, elements=st.floats(-4, 4, width=16) if dtype != np.int32 else None))
        bb = draw(hnp.arrays(dtype, shape, elements=st.floats(-4, 4, width=16) if dtype != np.int32 else None))
        if wild and draw(st.booleans()) and a.shape[3] > 1:
            a = a[..., ::2]  # not contiguous
        levels.append((a, bb))
    return (levels, (draw(st.integers(1, 24)), draw(st.integers(1, 24))), draw(st.booleans()),
            draw(st.floats(0, 6)), draw(st.floats(0, 1)), draw(st.integers(0, 2)))


@budget(700)
@given(map_inputs())
def test_rt_maps_in_range_agree_with_numpy(args: tuple) -> None:
    count("rt.maps")
    levels, out_size, align, sigma, topk, threads = args
    try:
        fast = _rt.cos_map(levels, out_size, align_corners=align, sigma=sigma, topk_frac=topk, threads=threads)
    except (ValueError, TypeError):
        ok = levels and all(a.dtype in (np.float32, np.float16) and a.flags.c_contiguous and a.size for a, _ in levels)
        assert not ok or len({a.shape[0] for a, _ in levels}) > 1
        return
    accepted("rt.maps")
    ref = maps.cos_map_reference(levels, out_size, align_corners=align, sigma=sigma, topk_frac=topk)
    for x, y in zip(fast, ref):
        np.testing.assert_allclose(x, y, atol=2e-3, rtol=1e-3)
    d = levels[0][0][:, 0] if levels else np.zeros((0, 1, 1), np.float32)
    try:
        fast = _rt.l2_map(np.ascontiguousarray(d), out_size, align_corners=align, sigma=sigma, topk_frac=topk,
                          threads=threads)
    except (ValueError, TypeError):
        return
    ref = maps.l2_map_reference(d, out_size, align_corners=align, sigma=sigma, topk_frac=topk)
    for x, y in zip(fast, ref):
        np.testing.assert_allclose(x, y, atol=2e-3, rtol=1e-3)
