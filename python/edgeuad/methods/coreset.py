"""Greedy k-center coreset subsampling (PatchCore's "approximately greedy" coreset).

The memory bank of a patch method would otherwise hold every training patch
(200 images x 32x32 grid = 200k vectors); nearest-neighbour search cost and bank
size scale with it.  PatchCore (Roth et al., CVPR 2022, after Sener & Savarese) keeps
the subset that greedily minimises the covering radius: repeatedly add the point
farthest from the current coreset.

Two speed-ups, both from PatchCore:
  * distances are computed after a random Gaussian projection to `proj_dim`
    (Johnson-Lindenstrauss: pairwise distances are preserved up to a small factor);
  * the min-distance vector is updated incrementally with
    ``d_new = |X|^2 - 2 X z + |z|^2`` - one matrix-vector product per iteration
    instead of a full ``cdist`` per row (about 5x faster, and memory-bound).

The CPU path uses numpy: on the 2-core reference machine `numpy` float32 GEMV over a
(200k, 128) matrix is ~3x faster than `torch.mv` (5 ms vs 16 ms per iteration).
A torch path is used when a CUDA device is requested.
"""
from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["coreset_size", "greedy_coreset", "covering_radius"]


def coreset_size(n_total: int, ratio: float | None = 0.01, n: int | None = None,
                 min_items: int = 1) -> int:
    """How many points a coreset keeps.

    `n` (absolute count) wins over `ratio`; the result is at least `min_items` (a floor so
    that tiny training sets still get a usable bank) and at most `n_total`.
    """
    if n_total <= 0:
        raise ValueError("cannot build a coreset of an empty feature set")
    if n is not None:
        if n <= 0:
            raise ValueError(f"coreset size n must be positive, got {n}")
        k = int(n)
    else:
        if ratio is None or not (0.0 < ratio <= 1.0):
            raise ValueError(f"coreset ratio must be in (0, 1], got {ratio!r}")
        k = int(math.ceil(ratio * n_total))
    k = max(k, int(min_items))
    return min(k, n_total)


def _project(x: np.ndarray, proj_dim: int, seed: int) -> np.ndarray:
    """Random Gaussian projection (D -> proj_dim); identity when D <= proj_dim (nothing to gain)."""
    d = x.shape[1]
    if proj_dim <= 0 or d <= proj_dim:
        return np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    # N(0, 1/proj_dim) keeps squared norms unbiased; the scale does not change the argmax anyway.
    p = rng.standard_normal((d, proj_dim), dtype=np.float32) / np.float32(math.sqrt(proj_dim))
    out = np.empty((x.shape[0], proj_dim), dtype=np.float32)
    chunk = 65536  # bounded temporaries for a float16 input
    for s in range(0, x.shape[0], chunk):
        np.matmul(x[s:s + chunk].astype(np.float32, copy=False), p, out=out[s:s + chunk])
    return out


def greedy_coreset(features: np.ndarray, ratio: float | None = 0.01, *, n: int | None = None,
                   proj_dim: int = 128, seed: int = 0, min_items: int = 1,
                   progress: bool = False, device: str = "cpu") -> np.ndarray:
    """Indices (int64, selection order) of a greedy k-center coreset of `features` (N, D).

    ratio: fraction of N to keep (PatchCore uses 0.1 / 0.01); `n` overrides it.
    proj_dim: dimension of the random projection used for distances (<=0 disables).
    seed: seeds both the projection and the random first point: same seed -> same indices.
    min_items: floor on the coreset size (capped at N).
    device: "cpu" (numpy) or a torch device string such as "cuda" (torch path).
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"features must be floating point, got {x.dtype}")
    n_total = x.shape[0]
    k = coreset_size(n_total, ratio, n, min_items)
    if k == n_total:
        return np.arange(n_total, dtype=np.int64)
    xp = _project(x, proj_dim, seed)
    first = int(np.random.default_rng(seed).integers(n_total))
    if device != "cpu":
        return _greedy_torch(xp, k, first, progress, device)
    return _greedy_numpy(xp, k, first, progress)


def _pbar(total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="coreset", unit="pt", disable=not enabled,
                mininterval=0.5, leave=False)


def _greedy_numpy(xp: np.ndarray, k: int, first: int, progress: bool) -> np.ndarray:
    n_total = xp.shape[0]
    sq = np.einsum("ij,ij->i", xp, xp)
    min_d = np.full(n_total, np.inf, dtype=np.float32)
    buf = np.empty(n_total, dtype=np.float32)
    sel = np.empty(k, dtype=np.int64)
    cur = first
    with _pbar(k, progress) as bar:
        for i in range(k):
            sel[i] = cur
            z = xp[cur]
            np.dot(xp, z, out=buf)           # X z        (the only O(N D) step)
            buf *= -2.0
            buf += sq
            buf += np.float32(z @ z)         # |X|^2 - 2 X z + |z|^2
            np.minimum(min_d, buf, out=min_d)
            # Already-selected points have distance ~0 (possibly tiny negative from rounding);
            # they can never be the argmax unless every point is covered (duplicates).
            cur = int(np.argmax(min_d))
            bar.update(1)
    return sel


def _greedy_torch(xp: np.ndarray, k: int, first: int, progress: bool, device: str) -> np.ndarray:
    import torch
    x = torch.from_numpy(xp).to(device)
    sq = (x * x).sum(1)
    min_d = torch.full((x.shape[0],), float("inf"), device=device)
    sel = torch.empty(k, dtype=torch.int64, device=device)
    cur = torch.tensor(first, device=device)
    with _pbar(k, progress) as bar:
        for i in range(k):
            sel[i] = cur
            z = x[cur]
            d = torch.addmv(sq + (z * z).sum(), x, z, alpha=-2.0)
            torch.minimum(min_d, d, out=min_d)
            cur = torch.argmax(min_d)       # stays on device: no sync per iteration
            bar.update(1)
    return sel.cpu().numpy()


def covering_radius(features: np.ndarray, subset: np.ndarray, chunk: int = 8192) -> float:
    """max_i min_{j in subset} ||x_i - x_j|| (exact, Euclidean): the quantity k-center minimises."""
    x = np.asarray(features, dtype=np.float32)
    c = x[np.asarray(subset)]
    csq = np.einsum("ij,ij->i", c, c)
    worst = 0.0
    for s in range(0, x.shape[0], chunk):
        b = x[s:s + chunk]
        d = np.einsum("ij,ij->i", b, b)[:, None] - 2.0 * b @ c.T + csq[None, :]
        worst = max(worst, float(np.sqrt(max(d.min(1).max(), 0.0))))
    return worst
