"""The per-pixel functions shared by the CPU and CUDA kernels (cpp/include/edgeuad/maps_pixel.hpp),
the CUDA kernels run on the CPU (`_rt.emulate_cuda_*`: maps_kernels.hpp bodies, same plan and launch
sequence as on a GPU), and the bounds of every size-like parameter.

No GPU is needed: this is the CPU-side proof of the GPU code path's arithmetic and indexing.  What it
cannot show (launch configuration limits, real concurrency, memory transfers) is left to the `gpu`
tests in test_rt_cuda.py and tools/gpu_smoke.sh.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeuad import _rt
from edgeuad.runtime import maps

PX = _rt.pixel
ATOL = 1e-5
PYDIR = Path(__file__).resolve().parents[2] / "python"


# ------------------------------------------------------------------------------------------ bounds
def test_huge_sigma_is_a_value_error_not_a_crash():
    # Was a segfault (exit 139): radius int(4*sigma + 0.5) overflowed to INT_MIN.  Run it in a
    # subprocess so that a crash fails this test instead of killing the test run.
    code = ("import numpy as np; from edgeuad import _rt\n"
            "for f in (lambda s: _rt.l2_map(np.ones((1, 32, 32), np.float32), (256, 256), sigma=s),\n"
            "          lambda s: _rt.cos_map([(np.ones((1, 4, 8, 8), np.float32),) * 2], (64, 64), sigma=s),\n"
            "          lambda s: _rt.emulate_cuda_l2_map(np.ones((1, 4, 4), np.float32), (8, 8), sigma=s)):\n"
            "    try:\n"
            "        f(6e8)\n"
            "    except ValueError as e:\n"
            "        assert 'sigma' in str(e), e\n"
            "    else:\n"
            "        raise SystemExit('no error')\n"
            "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=str(PYDIR))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.strip() == "ok"


@pytest.mark.parametrize("sigma", [6e8, 64.001, float("nan"), float("inf"), -0.5, 1e308])
@pytest.mark.parametrize("fn", ["l2_map", "emulate_cuda_l2_map"])
def test_bad_sigma_rejected(sigma, fn):
    with pytest.raises(ValueError, match="sigma must be finite and in \\[0, 64\\]"):
        getattr(_rt, fn)(np.ones((1, 5, 5), np.float32), (9, 9), sigma=sigma)
    with pytest.raises(ValueError, match="sigma"):
        PX.gaussian_taps(sigma)


def test_largest_sigma_works_and_matches_reference():
    assert PX.MAX_SIGMA == 64.0 and PX.MAX_RADIUS == 256
    d = np.random.default_rng(0).uniform(0, 1, (1, 3, 4)).astype(np.float32)
    ref = maps.l2_map_reference(d, (5, 7), True, 64.0)  # radius 256 >> image: many reflections
    for got in (_rt.l2_map(d, (5, 7), sigma=64.0), _rt.emulate_cuda_l2_map(d, (5, 7), sigma=64.0)):
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, atol=ATOL, rtol=0)


@pytest.mark.parametrize("size", [(0, 8), (8, 0), (-1, 8), (16385, 8), (8, 16385)])
def test_out_size_bounds(size):
    for fn in (_rt.l2_map, _rt.emulate_cuda_l2_map):
        with pytest.raises(ValueError, match="out_size"):
            fn(np.ones((1, 2, 2), np.float32), size)


def test_weights_must_be_finite_in_every_implementation():
    a = np.ones((1, 2, 3, 3), np.float32)
    for fn in (_rt.cos_map, _rt.emulate_cuda_cos_map):
        for w in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="weight is not finite"):
                fn([(a, a)], (4, 4), weights=[w])


# ------------------------------------------------------------------------------------------ per pixel
@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("n_in,n_out", [(1, 1), (1, 7), (7, 1), (5, 5), (3, 8), (9, 31), (64, 256), (33, 17),
                                        (28, 224), (2, 3)])
def test_source_index_matches_numpy(n_in, n_out, align):
    i0, i1, l1 = PX.source_index(n_in, n_out, align)
    r0, r1, rl = maps._source_index(n_in, n_out, align)
    np.testing.assert_array_equal(i0, r0)
    np.testing.assert_array_equal(i1, r1)
    np.testing.assert_array_equal(l1, rl.astype(np.float32))
    assert i0.min() >= 0 and i1.max() <= n_in - 1 and l1.min() >= 0 and l1.max() <= 1


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17])
def test_reflect_index_matches_numpy_symmetric_pad(n):
    r = 3 * n + 2  # several periods on both sides
    i = np.arange(-r, n + r)
    ref = np.pad(np.arange(n), r, mode="symmetric")
    np.testing.assert_array_equal(PX.reflect_index(i, n), ref)


@pytest.mark.parametrize("sigma", [0.0, 0.3, 1.0, 4.0, 7.5, 64.0])
def test_gaussian_taps_match_reference(sigma):
    taps = PX.gaussian_taps(sigma)
    np.testing.assert_allclose(taps, maps.gaussian_kernel1d(sigma), rtol=1e-12, atol=1e-15)
    assert len(taps) == 2 * int(4 * sigma + 0.5) + 1 if sigma > 0 else len(taps) == 1


@pytest.mark.parametrize("ta,tb", [(np.float32, np.float32), (np.float16, np.float16), (np.float32, np.float16),
                                   (np.float16, np.float32)])
def test_cos_distance_matches_numpy(ta, tb):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((50, 37)).astype(ta)
    b = rng.standard_normal((50, 37)).astype(tb)
    a[0] = 0  # zero vector: the 1e-8 clamp gives 1 - 0/(1e-8 * |b|) = 1
    b[1] = a[1]  # identical: distance 0
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = 1 - (a64 * b64).sum(1) / (np.maximum(np.linalg.norm(a64, axis=1), 1e-8)
                                     * np.maximum(np.linalg.norm(b64, axis=1), 1e-8))
    got = PX.cos_distance(a, b)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert got[0] == 1.0 and abs(got[1]) < 1e-6


def test_cos_distance_keeps_nan():
    a = np.ones((1, 4), np.float32)
    b = a.copy()
    b[0, 2] = np.nan
    assert np.isnan(PX.cos_distance(a, b)[0])


def test_half_loads_match_numpy_for_every_bit_pattern():
    bits = np.arange(65536, dtype=np.uint16)
    h = bits.view(np.float16).reshape(-1, 1)
    ones = np.ones_like(h, dtype=np.float32)
    # cos_distance of (x) and (1) is 1 - sign(x) for finite nonzero x: checks the load of every half value
    got = PX.cos_distance(h, ones)
    x = h.astype(np.float64)[:, 0]
    finite = np.isfinite(x)
    with np.errstate(invalid="ignore"):  # inf / inf for the infinities, excluded below
        ref = 1 - x / np.maximum(np.abs(x), 1e-8)
    np.testing.assert_allclose(got[finite], ref[finite], atol=1e-6, rtol=0)
    assert np.isnan(got[np.isnan(x)]).all() and np.isnan(got[np.isinf(x)]).all()


def test_float_key_orders_like_floats_and_ranks_nan_highest():
    v = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 1e30, np.inf, np.nan], np.float32)
    keys, back = PX.float_key(v)
    assert (np.diff(keys.astype(np.int64)) > 0).all()
    np.testing.assert_array_equal(back[:-1], v[:-1])
    assert np.isnan(back[-1]) and keys[-1] == 0xFFFFFFFF


def test_lerp():
    assert PX.lerp(2.0, 6.0, 0.25) == 3.0 and PX.lerp(2.0, 6.0, 0.0) == 2.0 and PX.lerp(2.0, 6.0, 1.0) == 6.0


# ------------------------------------------------------------------------------------------ emulated CUDA
def _pairs(rng, batch, dtype, levels):
    out = []
    for c, h, w in levels:
        a = rng.standard_normal((batch, c, h, w)).astype(dtype)
        b = (a.astype(np.float32) + rng.standard_normal(a.shape).astype(np.float32)).astype(dtype)
        out.append((a, b))
    return out


def _close(got, ref, atol=ATOL):
    for g, r in zip(got, ref):
        assert g.dtype == np.float32 and g.shape == r.shape
        np.testing.assert_allclose(g, r, atol=atol, rtol=0)


LEVELS = [(5, 9, 7), (3, 4, 5), (6, 9, 7), (8, 1, 3), (24, 64, 64), (112, 16, 16)]


@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("sigma", [0.0, 4.0, 20.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_emulated_cuda_cos_map_matches_reference(align, sigma, dtype):
    rng = np.random.default_rng(0)
    pairs = _pairs(rng, 3, dtype, LEVELS)
    weights = [float(w) for w in rng.uniform(0.2, 2.0, len(pairs))]
    ref = maps.cos_map_reference(pairs, (37, 129), weights, align, sigma, 0.05)
    _close(_rt.emulate_cuda_cos_map(pairs, (37, 129), weights, align, sigma, 0.05), ref)
    _close(_rt.cos_map(pairs, (37, 129), weights, align, sigma, 0.05), ref)


@pytest.mark.parametrize("out_size", [(1, 1), (1, 300), (300, 1), (2, 3), (65, 257), (256, 256)])
@pytest.mark.parametrize("topk", [0.0, 0.01, 1.0])
def test_emulated_cuda_odd_sizes_and_topk(out_size, topk):
    rng = np.random.default_rng(1)
    pairs = _pairs(rng, 2, np.float32, [(3, 1, 1), (4, 5, 3)])
    ref = maps.cos_map_reference(pairs, out_size, None, False, 2.0, topk)
    _close(_rt.emulate_cuda_cos_map(pairs, out_size, None, False, 2.0, topk), ref)


def test_emulated_cuda_mixed_dtypes_and_shared_resolution_groups():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, 7, 11, 13)).astype(np.float16)
    b = rng.standard_normal((2, 7, 11, 13)).astype(np.float32)
    c = rng.standard_normal((2, 3, 11, 13)).astype(np.float32)  # same resolution: one group with (a, b)
    pairs = [(a, b), (c, c * 0.5 + 1), (b, a)]
    ref = maps.cos_map_reference(pairs, (40, 50), [1.0, 0.5, 2.0], True, 3.0)
    _close(_rt.emulate_cuda_cos_map(pairs, (40, 50), [1.0, 0.5, 2.0], True, 3.0), ref)


def test_emulated_cuda_nan_propagates_to_scores_like_the_cpu():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    b = a + 0.1
    a[1, 2, 3, 3] = np.nan
    cpu = _rt.cos_map([(a, b)], (12, 12), sigma=1.0)
    emu = _rt.emulate_cuda_cos_map([(a, b)], (12, 12), sigma=1.0)
    for x in (cpu, emu):
        assert np.isfinite(x[1][0]) and np.isfinite(x[2][0])
        assert np.isnan(x[1][1]) and np.isnan(x[2][1])
    np.testing.assert_allclose(emu[1][0], cpu[1][0], atol=ATOL)
    np.testing.assert_array_equal(np.isnan(emu[0]), np.isnan(cpu[0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("sigma", [0.0, 4.0])
@pytest.mark.parametrize("align", [True, False])
def test_emulated_cuda_l2_map_matches_reference(dtype, sigma, align):
    dist = np.random.default_rng(1).uniform(0, 3, (2, 28, 28)).astype(dtype)
    ref = maps.l2_map_reference(dist, (224, 200), align, sigma)
    _close(_rt.emulate_cuda_l2_map(dist, (224, 200), align, sigma), ref)


def test_emulated_cuda_ties_in_topk():
    # Many equal values around the k-th largest: the radix select must count ties exactly.
    d = np.zeros((1, 10, 10), np.float32)
    d[0, :3, :] = 2.0
    d[0, 5, 5] = 7.0
    for frac in (0.05, 0.3, 0.31, 0.5):
        ref = maps.l2_map_reference(d, (10, 10), True, 0.0, frac)
        _close(_rt.emulate_cuda_l2_map(d, (10, 10), True, 0.0, frac), ref)


def test_emulated_cuda_level_limit():
    a = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="at most 16 levels"):
        _rt.emulate_cuda_cos_map([(a, a)] * 17, (4, 4))
    _rt.emulate_cuda_cos_map([(a, a)] * 16, (4, 4))


def test_emulated_cuda_batch_index_limit():
    with pytest.raises(ValueError, match="2\\^31"):
        _rt.emulate_cuda_l2_map(np.ones((9, 1, 1), np.float32), (16384, 16384))
