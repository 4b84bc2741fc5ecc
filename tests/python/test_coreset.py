"""Greedy k-center coreset: covering quality, cluster coverage, determinism, sizes."""
from __future__ import annotations

import numpy as np
import pytest

from edgeuad.methods.coreset import coreset_size, covering_radius, greedy_coreset


def _clusters(n_clusters: int = 12, per: int = 300, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 10.0, (n_clusters, dim)).astype(np.float32)
    # Unbalanced clusters: random subsets miss the small ones, k-center must not.
    sizes = [per if i % 3 else per // 20 for i in range(n_clusters)]
    x = np.concatenate([c + rng.normal(0, 0.3, (s, dim)).astype(np.float32)
                        for c, s in zip(centers, sizes)])
    labels = np.concatenate([np.full(s, i) for i, s in enumerate(sizes)])
    return x, labels


def test_covering_radius_beats_random_and_covers_every_cluster():
    x, labels = _clusters()
    k = 24
    idx = greedy_coreset(x, n=k, proj_dim=16, seed=0)
    assert idx.shape == (k,) and idx.dtype == np.int64 and len(set(idx.tolist())) == k
    r_core = covering_radius(x, idx)
    rng = np.random.default_rng(1)
    r_rand = np.median([covering_radius(x, rng.choice(len(x), k, replace=False)) for _ in range(5)])
    assert r_core < 0.5 * r_rand, (r_core, r_rand)
    assert set(labels[idx].tolist()) == set(range(labels.max() + 1))


def test_no_projection_path_and_exact_farthest_point():
    # Without projection the second pick must be the exact farthest point from the first.
    x, _ = _clusters(dim=8)
    idx = greedy_coreset(x, n=2, proj_dim=0, seed=3)
    d = np.linalg.norm(x - x[idx[0]], axis=1)
    assert idx[1] == int(np.argmax(d))


def test_deterministic_for_seed_and_seed_matters():
    x, _ = _clusters(dim=200)  # D > proj_dim: projection path
    a = greedy_coreset(x, 0.02, proj_dim=32, seed=5)
    b = greedy_coreset(x, 0.02, proj_dim=32, seed=5)
    c = greedy_coreset(x, 0.02, proj_dim=32, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sizes_and_errors():
    assert coreset_size(1000, 0.01) == 10
    assert coreset_size(1000, 0.01, min_items=50) == 50
    assert coreset_size(10, 0.5, min_items=50) == 10
    assert coreset_size(1000, None, n=7) == 7
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    np.testing.assert_array_equal(greedy_coreset(x, 1.0), np.arange(40))
    with pytest.raises(ValueError):
        greedy_coreset(x, 0.0)
    with pytest.raises(ValueError):
        greedy_coreset(x[0], 0.5)
    # float16 input (the ReConPatch feature store) is accepted
    assert len(greedy_coreset(x.astype(np.float16), n=5)) == 5
