"""edgeuad._rt fused anomaly maps (CPU) vs the numpy reference and vs eager torch."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from edgeuad import _rt
from edgeuad.runtime import maps

ATOL = 1e-4


def random_pairs(rng: np.random.Generator, batch: int, dtype=np.float32, levels=None):
    """Feature pairs with odd sizes, including 1-pixel levels and shared resolutions."""
    if levels is None:
        levels = [(int(rng.integers(1, 9)), int(rng.integers(1, 14)), int(rng.integers(1, 14))) for _ in range(3)]
        levels.append(levels[0][:1] + levels[1][1:])  # a second pair at level 1's resolution
    pairs = []
    for c, h, w in levels:
        a = rng.standard_normal((batch, c, h, w)).astype(dtype)
        b = (a.astype(np.float32) + rng.standard_normal(a.shape).astype(np.float32)).astype(dtype)
        pairs.append((a, b))
    return pairs


def max_err(x, y) -> float:
    return max(float(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64)).max()) for u, v in zip(x, y))


# ---------------------------------------------------------------------------- torch reference
def torch_blur(m, sigma: float):
    """The one torch blur (methods/common.gaussian_blur_torch) on (B, 1, H, W)."""
    from edgeuad.methods.common import gaussian_blur_torch

    return gaussian_blur_torch(m[:, 0], sigma)[:, None]


def torch_scores(m, topk_frac: float):
    flat = m.flatten(1)
    k = max(1, int(topk_frac * flat.shape[1]))
    return m.numpy(), flat.max(1).values.numpy(), flat.topk(k, dim=1).values.mean(1).numpy()


def torch_cos_map(pairs, out_size, weights, align_corners, sigma, topk_frac):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    total = None
    for (a, b), w in zip(pairs, weights):
        ta, tb = torch.from_numpy(a).float(), torch.from_numpy(b).float()
        d = 1.0 - F.cosine_similarity(ta, tb, dim=1, eps=1e-8)
        up = w * F.interpolate(d[:, None], size=out_size, mode="bilinear", align_corners=align_corners)
        total = up if total is None else total + up
    return torch_scores(torch_blur(total.double(), sigma)[:, 0], topk_frac)


# ---------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("sigma", [0.0, 4.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cos_map_matches_reference_and_torch(seed, align_corners, sigma, dtype):
    rng = np.random.default_rng(seed)
    pairs = random_pairs(rng, batch=2, dtype=dtype)
    weights = [float(w) for w in rng.uniform(0.2, 2.0, len(pairs))]
    out_size = (int(rng.integers(5, 40)) | 1, int(rng.integers(5, 40)) | 1)  # odd sizes
    args = dict(weights=weights, align_corners=align_corners, sigma=sigma, topk_frac=0.03)
    got = _rt.cos_map(pairs, out_size, **args)
    assert got[0].shape == (2, *out_size) and got[0].dtype == np.float32
    assert got[1].shape == (2,) and got[2].shape == (2,)
    ref = maps.cos_map_reference(pairs, out_size, **args)
    assert max_err(got, ref) <= ATOL
    assert max_err(got, torch_cos_map(pairs, out_size, weights, align_corners, sigma, 0.03)) <= ATOL


def test_default_backbone_shapes_match_torch():
    """The deployed configuration: 3 levels x 2 pairs -> 256x256, sigma 4, batch 2."""
    rng = np.random.default_rng(3)
    pairs = random_pairs(rng, 2, levels=[(24, 64, 64), (24, 64, 64), (40, 32, 32), (40, 32, 32),
                                         (112, 16, 16), (112, 16, 16)])
    got = _rt.cos_map(pairs, (256, 256))
    assert max_err(got, torch_cos_map(pairs, (256, 256), [1.0] * 6, True, 4.0, 0.01)) <= ATOL


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("sigma", [0.0, 4.0, 1.3])
def test_l2_map_matches_reference_and_torch(align_corners, sigma):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(5)
    dist = rng.uniform(0, 3, (3, 7, 11)).astype(np.float32)
    out_size = (31, 18)
    got = _rt.l2_map(dist, out_size, align_corners=align_corners, sigma=sigma, topk_frac=0.1)
    assert max_err(got, maps.l2_map_reference(dist, out_size, align_corners, sigma, 0.1)) <= ATOL
    up = F.interpolate(torch.from_numpy(dist)[:, None], size=out_size, mode="bilinear", align_corners=align_corners)
    assert max_err(got, torch_scores(torch_blur(up.double(), sigma)[:, 0], 0.1)) <= ATOL
    got16 = _rt.l2_map(dist.astype(np.float16), out_size, align_corners=align_corners, sigma=sigma, topk_frac=0.1)
    ref16 = maps.l2_map_reference(dist.astype(np.float16), out_size, align_corners, sigma, 0.1)
    assert max_err(got16, ref16) <= ATOL


def test_reference_blur_is_scipy_reflect():
    """Pins the border rule: scipy.ndimage 'reflect', including kernels wider than the image."""
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for shape in [(30, 41), (5, 3), (1, 9)]:
        img = rng.random(shape)
        want = ndimage.gaussian_filter(img, 4.0, mode="reflect", truncate=4.0)
        got = maps.l2_map_reference(img[None], shape, sigma=4.0)[0][0]
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_scores_definition():
    """sigma 0 and out_size == input size make the map the input itself."""
    rng = np.random.default_rng(1)
    dist = rng.random((2, 16, 16)).astype(np.float32)
    for frac, k in [(0.01, 2), (0.0, 1), (0.5, 128), (1.0, 256)]:
        m, mx, topk = _rt.l2_map(dist, (16, 16), sigma=0.0, topk_frac=frac)
        np.testing.assert_array_equal(m, dist)
        np.testing.assert_allclose(mx, dist.reshape(2, -1).max(1))
        want = np.sort(dist.reshape(2, -1), axis=1)[:, ::-1][:, :k].mean(1)
        np.testing.assert_allclose(topk, want, rtol=1e-6)


def test_float16_conversion_is_exact_for_every_bit_pattern():
    """All 65536 half values (zeros, subnormals, normals, NaN) pass through the map unchanged.

    (+-inf become NaN: the interpolation multiplies the neighbour by a zero weight, as torch does.)
    """
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    dist = bits.view(np.float16).reshape(1, 256, 256)
    m, mx, topk = _rt.l2_map(dist, (256, 256), sigma=0.0)
    want = dist.astype(np.float32)
    finite_or_nan = ~np.isinf(want)
    assert finite_or_nan.sum() == 65534
    np.testing.assert_array_equal(m[finite_or_nan], want[finite_or_nan])  # NaNs compare equal here
    assert np.isnan(mx[0]) and np.isnan(topk[0])  # a NaN in the map is reported, not hidden
    # Runs shorter than 8 values take the portable (non-F16C) conversion on x86.
    flat, want = dist.ravel(), want.ravel()
    for s in range(0, 65536, 7):
        chunk = np.ascontiguousarray(flat[s:s + 7]).reshape(1, 1, -1)
        got = _rt.l2_map(chunk, chunk.shape[1:], sigma=0.0)[0].ravel()
        keep = finite_or_nan.ravel()[s:s + 7]
        np.testing.assert_array_equal(got[keep], want[s:s + 7][keep])


def test_identical_pairs_give_zero_map():
    a = np.random.default_rng(2).standard_normal((1, 8, 5, 5)).astype(np.float32)
    m, mx, _ = _rt.cos_map([(a, a.copy())], (9, 9))
    assert np.abs(m).max() < 1e-6 and abs(mx[0]) < 1e-6


def test_zero_vectors_use_eps():
    a = np.zeros((1, 4, 3, 3), np.float32)
    b = np.ones((1, 4, 3, 3), np.float32)
    m, _, _ = _rt.cos_map([(a, b)], (3, 3), sigma=0)
    np.testing.assert_allclose(m, 1.0)  # cos = 0 / (1e-8 * 2) = 0


@pytest.mark.parametrize("batch", [1, 3])
def test_threads_do_not_change_results(batch):
    pairs = random_pairs(np.random.default_rng(4), batch)
    one = _rt.cos_map(pairs, (40, 70), threads=1)
    for threads in (2, 3):
        for x, y in zip(one, _rt.cos_map(pairs, (40, 70), threads=threads)):
            np.testing.assert_array_equal(x, y)


def test_python_wrappers_call_rt():
    pairs = random_pairs(np.random.default_rng(6), 1)
    for x, y in zip(maps.cos_map(pairs, (10, 12), weights=[1, 2, 3, 4]), _rt.cos_map(pairs, (10, 12),
                                                                                     weights=[1.0, 2.0, 3.0, 4.0])):
        np.testing.assert_array_equal(x, y)


def test_wrappers_raise_importerror_without_rt(monkeypatch):
    monkeypatch.setitem(sys.modules, "edgeuad._rt", None)  # makes `import edgeuad._rt` fail
    with pytest.raises(ImportError, match="pip install -e ."):
        maps.cos_map(random_pairs(np.random.default_rng(0), 1), (4, 4))
    with pytest.raises(ImportError, match="not built"):
        maps.l2_map(np.zeros((1, 2, 2), np.float32), (4, 4))


# ---------------------------------------------------------------------------- bad input
@pytest.fixture
def good():
    return random_pairs(np.random.default_rng(7), 2, levels=[(4, 6, 6), (8, 3, 3)])


def test_wrong_dtype_is_typeerror(good):
    a, b = good[1]
    with pytest.raises(TypeError, match="float32 or float16"):
        _rt.cos_map([good[0], (a.astype(np.float64), b)], (8, 8))
    with pytest.raises(TypeError, match="float32 or float16"):
        _rt.cos_map([good[0], (a, b.astype(np.int32))], (8, 8))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        _rt.cos_map([(a.tolist(), b)], (8, 8))
    with pytest.raises(TypeError):
        _rt.l2_map(np.zeros((1, 3, 3), np.float64), (8, 8))


def test_mismatched_shapes_name_the_level(good):
    a, b = good[1]
    with pytest.raises(ValueError, match="level 1.*differ"):
        _rt.cos_map([good[0], (a, b[:, :4].copy())], (8, 8))
    with pytest.raises(ValueError, match="level 1.*batch"):
        _rt.cos_map([good[0], (a[:1].copy(), b[:1].copy())], (8, 8))
    with pytest.raises(ValueError, match="level 0.*4-D"):
        _rt.cos_map([(good[0][0][0], good[0][1][0])], (8, 8))


def test_non_contiguous_is_valueerror(good):
    a, b = good[0]
    with pytest.raises(ValueError, match="ascontiguousarray"):
        _rt.cos_map([(a[..., ::2], b[..., ::2])], (8, 8))
    with pytest.raises(ValueError, match="ascontiguousarray"):
        _rt.cos_map([(a.transpose(0, 1, 3, 2), b)], (8, 8))
    with pytest.raises(ValueError, match="ascontiguousarray"):
        _rt.l2_map(np.zeros((2, 4, 4), np.float32)[:, ::2], (8, 8))


@pytest.mark.parametrize("out_size", [(0, 8), (8, -1), (8,), (1, 2, 3)])
def test_bad_out_size(good, out_size):
    with pytest.raises(ValueError, match="out_size"):
        _rt.cos_map(good, out_size)


def test_other_bad_arguments(good):
    with pytest.raises(ValueError, match="empty"):
        _rt.cos_map([], (8, 8))
    with pytest.raises(ValueError, match="weights"):
        _rt.cos_map(good, (8, 8), weights=[1.0])
    with pytest.raises(ValueError, match="sigma"):
        _rt.cos_map(good, (8, 8), sigma=-1.0)
    with pytest.raises(ValueError, match="topk_frac"):
        _rt.cos_map(good, (8, 8), topk_frac=1.5)
    with pytest.raises(ValueError, match="pair"):
        _rt.cos_map([(good[0][0],)], (8, 8))
    with pytest.raises(ValueError, match="empty"):
        _rt.cos_map([(np.zeros((2, 0, 3, 3), np.float32),) * 2], (8, 8))
    with pytest.raises(ValueError, match="3-D"):
        _rt.l2_map(np.zeros((4, 4), np.float32), (8, 8))
