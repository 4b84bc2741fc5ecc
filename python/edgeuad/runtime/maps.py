"""Anomaly-map post-processing: the numpy reference and the compiled fast path.

One definition (docs/architecture.md, "Anomaly-map post-processing") serves every
implementation:

    map = sum_l w_l * bilinear_upsample(1 - cos_c(a_l, b_l), (H, W), align_corners)
    map = gaussian_blur(map, sigma)          # separable, scipy 'reflect' borders
    max = map.max(); topk_mean = mean of the max(1, int(frac*H*W)) largest values

``*_reference`` functions are that definition written in plain numpy (float64) and
exist to test the fast paths.  ``cos_map`` / ``l2_map`` call the compiled
``edgeuad._rt`` kernels; when the extension is missing they raise ImportError
instead of silently falling back to the (much slower) reference.
numpy only: this module is imported by the runtime, never torch.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .. import limits
from .native import load_rt

__all__ = [
    "check_map_params",
    "gaussian_kernel1d",
    "bilinear_resize_reference",
    "cos_map_reference",
    "l2_map_reference",
    "cos_map",
    "l2_map",
]

FeaturePair = tuple[np.ndarray, np.ndarray]
MapResult = tuple[np.ndarray, np.ndarray, np.ndarray]

def gaussian_kernel1d(sigma: float) -> np.ndarray:
    """Normalised Gaussian taps, radius int(4*sigma + 0.5) (scipy.ndimage truncate=4).

    sigma == 0 gives the identity kernel ``[1.0]``.
    """
    if not np.isfinite(sigma) or not 0 <= sigma <= limits.MAX_SIGMA:
        raise ValueError(f"sigma must be finite and in [0, {limits.MAX_SIGMA:g}], got {sigma}")
    if sigma == 0:
        return np.ones(1, dtype=np.float64)
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _source_index(n_in: int, n_out: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices i0, i1 and weight of i1 per output position, as torch's bilinear mode computes them."""
    dst = np.arange(n_out, dtype=np.float32)
    if n_in == n_out:  # torch copies
        idx = np.arange(n_out)
        return idx, idx, np.zeros(n_out, dtype=np.float32)
    if align_corners:
        scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0.0)
        src = scale * dst
    else:
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, lam


def bilinear_resize_reference(x: np.ndarray, out_size: tuple[int, int], align_corners: bool = True) -> np.ndarray:
    """Bilinear resize of the last two axes, same as torch.nn.functional.interpolate(mode='bilinear')."""
    h, w = x.shape[-2:]
    y0, y1, ly = _source_index(h, out_size[0], align_corners)
    x0, x1, lx = _source_index(w, out_size[1], align_corners)
    x = x.astype(np.float64)
    ly = ly.astype(np.float64)[:, None]
    lx = lx.astype(np.float64)[None, :]
    top = x[..., y0, :][..., x0] * (1 - lx) + x[..., y0, :][..., x1] * lx
    bot = x[..., y1, :][..., x0] * (1 - lx) + x[..., y1, :][..., x1] * lx
    return top * (1 - ly) + bot * ly


def _blur_reference(m: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian over the last two axes with half-sample symmetric borders."""
    k = gaussian_kernel1d(sigma)
    r = len(k) // 2
    if r == 0:
        return m
    for axis in (-2, -1):
        pad = [(0, 0)] * m.ndim
        pad[axis] = (r, r)
        # numpy 'symmetric' == scipy.ndimage 'reflect', also when r exceeds the size.
        p = np.pad(m, pad, mode="symmetric")
        n = m.shape[axis]
        m = sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(len(k)))
    return m


def _scores_reference(m: np.ndarray, topk_frac: float) -> tuple[np.ndarray, np.ndarray]:
    flat = m.reshape(m.shape[0], -1)
    k = max(1, int(topk_frac * flat.shape[1]))
    top = -np.sort(-flat, axis=1)[:, :k]
    return flat.max(axis=1), top.mean(axis=1)


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_map_params(out_size: Sequence[int], sigma: float, topk_frac: float, threads: int = 0) -> tuple[int, int]:
    """Validate the size-like parameters of a map call against `edgeuad.limits` before any work
    (a huge sigma once overflowed the kernel radius and crashed the interpreter).  Returns (H, W)."""
    if isinstance(out_size, (str, bytes)) or not hasattr(out_size, "__len__") or len(out_size) != 2 \
            or not all(_is_int(v) for v in out_size):
        raise ValueError(f"out_size must be a (height, width) pair of ints, got {out_size!r}")
    h, w = int(out_size[0]), int(out_size[1])
    if not (1 <= h <= limits.MAX_MAP_SIDE and 1 <= w <= limits.MAX_MAP_SIDE):
        raise ValueError(f"out_size sides must be in [1, {limits.MAX_MAP_SIDE}], got ({h}, {w})")
    if not _is_real(sigma) or not np.isfinite(sigma) or not 0.0 <= sigma <= limits.MAX_SIGMA:
        raise ValueError(f"sigma must be a finite number in [0, {limits.MAX_SIGMA:g}] (map pixels), got {sigma!r}")
    if not _is_real(topk_frac) or not 0.0 <= topk_frac <= 1.0:
        raise ValueError(f"topk_frac must be a number in [0, 1], got {topk_frac!r}")
    if not _is_int(threads) or not 0 <= threads <= limits.MAX_THREADS:
        raise ValueError(f"threads must be an int in [0, {limits.MAX_THREADS}] (0 = default), got {threads!r}")
    return h, w


def _check_common(out_size: Sequence[int], sigma: float, topk_frac: float) -> tuple[int, int]:
    return check_map_params(out_size, sigma, topk_frac)


def _finish(m: np.ndarray, sigma: float, topk_frac: float) -> MapResult:
    m = _blur_reference(m, sigma)
    mx, topk = _scores_reference(m, topk_frac)
    return m.astype(np.float32), mx.astype(np.float32), topk.astype(np.float32)


def cos_map_reference(
    pairs: Sequence[FeaturePair],
    out_size: tuple[int, int],
    weights: Optional[Sequence[float]] = None,
    align_corners: bool = True,
    sigma: float = 4.0,
    topk_frac: float = 0.01,
) -> MapResult:
    """The fused cosine anomaly map, written plainly (float64).  Returns (map, max, topk_mean)."""
    size = _check_common(out_size, sigma, topk_frac)
    if len(pairs) == 0:
        raise ValueError("pairs is empty: need at least one (a, b) feature pair")
    if weights is None:
        weights = [1.0] * len(pairs)
    if len(weights) != len(pairs):
        raise ValueError(f"weights has {len(weights)} entries for {len(pairs)} pairs")
    total = None
    for level, ((a, b), w) in enumerate(zip(pairs, weights)):
        if a.ndim != 4 or a.shape != b.shape:
            raise ValueError(f"level {level}: a and b must be 4-D of the same shape, got {a.shape} and {b.shape}")
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        na = np.maximum(np.sqrt((a64 * a64).sum(axis=1)), 1e-8)
        nb = np.maximum(np.sqrt((b64 * b64).sum(axis=1)), 1e-8)
        dist = 1.0 - (a64 * b64).sum(axis=1) / (na * nb)  # B x H_l x W_l
        up = float(w) * bilinear_resize_reference(dist, size, align_corners)
        if total is not None and up.shape[0] != total.shape[0]:
            raise ValueError(f"level {level}: batch size {up.shape[0]} differs from level 0's {total.shape[0]}")
        total = up if total is None else total + up
    return _finish(total, sigma, topk_frac)


def l2_map_reference(
    dist: np.ndarray,
    out_size: tuple[int, int],
    align_corners: bool = True,
    sigma: float = 4.0,
    topk_frac: float = 0.01,
) -> MapResult:
    """Single-level map (memory-bank distances B x h x w): upsample, blur, score."""
    size = _check_common(out_size, sigma, topk_frac)
    if dist.ndim != 3:
        raise ValueError(f"dist must be 3-D (B, h, w), got shape {dist.shape}")
    return _finish(bilinear_resize_reference(dist, size, align_corners), sigma, topk_frac)


def cos_map(
    pairs: Sequence[FeaturePair],
    out_size: tuple[int, int],
    weights: Optional[Sequence[float]] = None,
    align_corners: bool = True,
    sigma: float = 4.0,
    topk_frac: float = 0.01,
    threads: int = 0,
) -> MapResult:
    """Fused CPU kernel (edgeuad._rt.cos_map): float32/float16 C-contiguous inputs, no copies."""
    check_map_params(out_size, sigma, topk_frac, threads)
    if isinstance(pairs, (str, bytes)):
        raise TypeError("pairs must be a list of (a, b) array pairs, got a string")
    pairs = list(pairs)
    if not 1 <= len(pairs) <= limits.MAX_LEVELS:
        raise ValueError(f"pairs must hold 1 to {limits.MAX_LEVELS} (a, b) feature pairs, got {len(pairs)}")
    if weights is not None and not all(_is_real(w) and np.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite numbers, got {list(weights)!r}")
    return load_rt().cos_map(
        pairs, tuple(out_size), weights=None if weights is None else [float(w) for w in weights],
        align_corners=align_corners, sigma=sigma, topk_frac=topk_frac, threads=threads,
    )


def l2_map(
    dist: np.ndarray,
    out_size: tuple[int, int],
    align_corners: bool = True,
    sigma: float = 4.0,
    topk_frac: float = 0.01,
    threads: int = 0,
) -> MapResult:
    """Fused CPU kernel (edgeuad._rt.l2_map) for a (B, h, w) float32/float16 distance map."""
    check_map_params(out_size, sigma, topk_frac, threads)
    return load_rt().l2_map(
        dist, tuple(out_size), align_corners=align_corners, sigma=sigma, topk_frac=topk_frac, threads=threads
    )
