"""Metrics vs sklearn, hand-computed cases and a slow exact AUPRO reference."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score

from edgeuad.metrics import aupro, auroc, f1_max, pixel_auroc, pro_curve, summarize


# --------------------------------------------------------------------------- AUROC
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_random_and_tied(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    y[:2] = [0, 1]
    s = rng.normal(size=500) + 0.7 * y
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    tied = np.round(s, 0)  # few distinct values -> many ties across classes
    assert auroc(y, tied) == pytest.approx(roc_auc_score(y, tied), abs=1e-9)


def test_auroc_hand_computed() -> None:
    # pairs (pos, neg): (0.8,0.1)>, (0.8,0.4)>, (0.4,0.1)>, (0.4,0.4)= -> (3 + 0.5) / 4
    assert auroc([0, 1, 0, 1], [0.1, 0.4, 0.4, 0.8]) == pytest.approx(0.875)
    assert auroc([1, 0], [0.0, 1.0]) == 0.0
    assert auroc([True, False, False], [5, 5, 5]) == 0.5


def test_auroc_errors() -> None:
    with pytest.raises(ValueError, match="one class"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="length"):
        auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="0/1"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        auroc([], [])


def test_pixel_auroc_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((4, 32, 40)) > 0.9
    maps = (rng.random((4, 32, 40)) + 0.3 * masks).astype(np.float32)
    ref = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(ref, abs=1e-9)
    q = np.round(maps * 8).astype(np.float32)  # heavy ties
    assert pixel_auroc(masks, q) == pytest.approx(roc_auc_score(masks.ravel(), q.ravel()), abs=1e-9)
    # list of differently sized images == flattened concatenation
    ml = [masks[0], masks[1, :20, :25]]
    al = [maps[0], maps[1, :20, :25]]
    ref = roc_auc_score(np.concatenate([m.ravel() for m in ml]), np.concatenate([a.ravel() for a in al]))
    assert pixel_auroc(ml, al) == pytest.approx(ref, abs=1e-9)


def test_pixel_auroc_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(np.zeros((2, 8, 8), bool), np.zeros((2, 8, 9)))
    with pytest.raises(ValueError, match="one class"):
        pixel_auroc(np.zeros((2, 8, 8), bool), np.zeros((2, 8, 8)))
    m = np.zeros((1, 8, 8), bool)
    m[0, 0, 0] = True
    bad = np.zeros((1, 8, 8))
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pixel_auroc(m, bad)
    with pytest.raises(ValueError, match="2 masks but 1 maps"):
        pixel_auroc([m[0], m[0]], [bad[0]])


# --------------------------------------------------------------------------- AUPRO
def _slow_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float) -> float:
    """Obviously-correct reference: loop over every distinct threshold, measure each
    region's overlap explicitly (scipy labelling, 8-connectivity), integrate."""
    labelled = [ndimage.label(m, structure=np.ones((3, 3))) for m in masks]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in sorted(np.unique(maps), reverse=True):
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        overlaps = []
        for m_i, (lab, n) in enumerate(labelled):
            for k in range(1, n + 1):
                r = lab == k
                overlaps.append((pred[m_i] & r).sum() / r.sum())
        xs.append(fpr)
        ys.append(np.mean(overlaps))
    xs, ys = np.array(xs), np.array(ys)
    # trapezoids of the piecewise-linear curve, the last one cut at max_fpr
    area = 0.0
    for i in range(1, len(xs)):
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / max_fpr


def test_aupro_perfect_and_constant() -> None:
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:5, 2:6] = True
    masks[0, 10:12, 10:15] = True
    masks[1, 7, 7] = True
    perfect = masks.astype(np.float32)
    assert aupro(masks, perfect) == pytest.approx(1.0)
    # constant map: one threshold -> (0,0) to (1,1), PRO == FPR -> area 0.3^2/2 / 0.3
    assert aupro(masks, np.full(masks.shape, 0.42)) == pytest.approx(0.15)
    assert aupro(masks, np.full(masks.shape, 0.42), max_fpr=1.0) == pytest.approx(0.5)
    inverted = 1.0 - perfect  # all normal pixels fire first: PRO = 0 up to FPR = 1
    assert aupro(masks, inverted) == pytest.approx(0.0)


def test_aupro_region_averaging_hand_case() -> None:
    # Two regions: a big one (10 px) fully detected, a single pixel missed.
    # At the top threshold PRO = (1 + 0) / 2 = 0.5 with FPR = 0; then all fires.
    m = np.zeros((1, 10, 10), bool)
    m[0, 0, :] = True
    m[0, 9, 9] = True
    a = np.zeros((1, 10, 10))
    a[0, 0, :] = 1.0
    fpr, pro = pro_curve(m, a)
    np.testing.assert_allclose(fpr, [0, 0, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 1])
    # area on [0, 0.3] of 0.5 + 0.5x  = 0.15 + 0.0225 -> / 0.3
    assert aupro(m, a) == pytest.approx((0.15 + 0.0225) / 0.3)


def test_aupro_eight_connectivity() -> None:
    # diagonal touching pixels form ONE region with 8-connectivity
    m = np.zeros((1, 6, 6), bool)
    m[0, 1, 1] = m[0, 2, 2] = True
    a = np.zeros((1, 6, 6))
    a[0, 1, 1] = 1.0  # top threshold covers half of the one region -> PRO 0.5
    a[0, 2, 2] = 0.5
    fpr, pro = pro_curve(m, a)
    np.testing.assert_allclose(pro[:3], [0, 0.5, 1.0])
    np.testing.assert_allclose(fpr[:3], [0, 0, 0])


@pytest.mark.parametrize("seed,max_fpr", [(0, 0.3), (1, 0.3), (2, 0.05), (3, 1.0)])
def test_aupro_matches_slow_reference(seed: int, max_fpr: float) -> None:
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 12, 12), bool)
    masks[0, 2:5, 3:7] = True
    masks[0, 8:10, 8:9] = True
    masks[1, 5:9, 1:3] = True
    masks[1, 0, 11] = True
    # image 2 is fully normal
    maps = np.round(rng.random(masks.shape) + 0.6 * masks, 2).astype(np.float32)  # ties too
    ref = _slow_aupro(masks, maps, max_fpr)
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(ref, abs=1e-9)


def test_aupro_binned_close_to_exact() -> None:
    rng = np.random.default_rng(5)
    masks = np.zeros((2, 24, 24), bool)
    masks[0, 4:10, 4:12] = True
    masks[1, 15:20, 2:6] = True
    maps = (rng.random(masks.shape) + 0.8 * masks).astype(np.float32)
    exact = aupro(masks, maps)
    assert aupro(masks, maps, num_thresholds=2000) == pytest.approx(exact, abs=5e-3)


def test_aupro_errors() -> None:
    with pytest.raises(ValueError, match="defect pixel"):
        aupro(np.zeros((1, 8, 8), bool), np.zeros((1, 8, 8)))
    m = np.zeros((1, 8, 8), bool)
    m[0, 1, 1] = True
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(m, np.zeros((1, 8, 8)), max_fpr=0.0)


# --------------------------------------------------------------------------- F1
@pytest.mark.parametrize("seed", [0, 1])
def test_f1_max_vs_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    y[0] = 1
    s = np.round(rng.normal(size=60) + y, 1)
    best, best_t = -1.0, None
    for t in sorted(np.unique(s), reverse=True):  # highest threshold wins ties
        f = f1_score(y, (s >= t).astype(int))
        if f > best + 1e-12:
            best, best_t = f, t
    f1, thr = f1_max(y, s)
    assert f1 == pytest.approx(best, abs=1e-12)
    assert thr == best_t


def test_f1_max_hand_case_and_errors() -> None:
    assert f1_max([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 0.8)
    with pytest.raises(ValueError, match="anomalous"):
        f1_max([0, 0], [0.1, 0.2])


# --------------------------------------------------------------------------- summary
def test_summarize_keys_and_masks_with_none() -> None:
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.3, 0.2, 0.9]
    out = summarize(labels, scores)
    assert set(out) == {"i_auroc", "f1_max", "f1_threshold"}
    assert out["i_auroc"] == pytest.approx(0.75)

    masks = [np.zeros((8, 8), bool), np.zeros((8, 8), bool), None, np.zeros((8, 8), bool)]
    masks[3][2:4, 2:4] = True
    maps = [np.zeros((8, 8)) for _ in range(4)]
    maps[3][2:4, 2:4] = 1.0
    maps[2][:] = 5.0  # ignored: image 2 has no mask
    out = summarize(labels, scores, masks, maps)
    assert out["p_auroc"] == pytest.approx(1.0)
    assert out["aupro"] == pytest.approx(1.0)
    out = summarize(labels, scores, [None] * 4, maps)
    assert "p_auroc" not in out
    with pytest.raises(ValueError, match="one mask and one map"):
        summarize(labels, scores, masks[:3], maps)


def test_auroc_per_group_compares_each_defect_type_with_all_normals() -> None:
    from edgeuad.metrics import auroc_per_group

    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.9, 0.8, 0.15, 0.25]
    groups = ["good", "good", "good", "crack", "crack", "fray", "fray"]
    got = auroc_per_group(labels, scores, groups)
    assert got == {"crack": 1.0, "fray": pytest.approx((1 + 2) / 6)}
    assert auroc_per_group(labels, scores, groups)["fray"] == pytest.approx(auroc([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.15, 0.25]))
    with pytest.raises(ValueError, match="differ"):
        auroc_per_group(labels, scores, groups[:-1])
