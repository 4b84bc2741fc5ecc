"""Anomaly-detection metrics: I-AUROC, P-AUROC, AUPRO, F1-max.

Pure numpy (+ cv2.connectedComponents for AUPRO regions), no torch, no sklearn.

Every AUROC here is computed by counting, not by building a ROC curve with an
argsort over all pixels:  AUROC = P(s_pos > s_neg) + 0.5 * P(s_pos == s_neg),
which equals sklearn's trapezoid over the ROC with tied scores grouped.  Only
the negative scores are sorted (one float32 copy); positives are looked up with
searchsorted in chunks, so 50M pixels need ~ 0.3 GB and no int64 index arrays.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)

_CHUNK = 1 << 22  # positives looked up per searchsorted call (bounds temporaries)

MapsLike = np.ndarray | Sequence[np.ndarray]


# --------------------------------------------------------------------------- validation
def _labels_scores(labels: Any, scores: Any, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if y.size == 0:
        raise ValueError("labels/scores are empty")
    if y.dtype != bool:
        if not np.issubdtype(y.dtype, np.number) or not np.isin(y, (0, 1)).all():
            raise ValueError(f"labels must be 0/1 (or bool), got values {np.unique(y)[:5]}")
        y = y.astype(bool)
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(dtype, copy=False)
    if not np.isfinite(s).all():
        raise ValueError(f"scores contain {int((~np.isfinite(s)).sum())} NaN/inf value(s)")
    return y, s


def _need_both(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "anomalous" if n_pos else "normal"
        raise ValueError(f"{what} is undefined with only one class present (all {y.size} labels are {only})")


def _auc_from_split(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(pos == neg), exactly (integer counts).

    Sorts `neg` in place: callers pass a fresh copy (boolean indexing makes one).
    """
    neg.sort()
    twice = 0  # 2 * (#pairs pos > neg) + #pairs pos == neg, exact in int64 (python int)
    for i in range(0, pos.size, _CHUNK):
        p = pos[i:i + _CHUNK]
        lo = np.searchsorted(neg, p, side="left")   # negatives strictly below
        hi = np.searchsorted(neg, p, side="right")  # negatives below or equal
        twice += int(lo.sum(dtype=np.int64)) + int(hi.sum(dtype=np.int64))
    return twice / (2.0 * float(neg.size) * float(pos.size))


# --------------------------------------------------------------------------- AUROC
def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve; labels 1 = anomalous, higher score = more anomalous.

    Identical to sklearn.metrics.roc_auc_score (ties grouped, trapezoid rule).
    Raises ValueError for a single class, NaN/inf scores or mismatched lengths.
    """
    y, s = _labels_scores(labels, scores)
    _need_both(y, "AUROC")
    return _auc_from_split(s[~y], s[y])


def auroc_per_group(labels: Any, scores: Any, groups: Sequence[str]) -> dict[str, float]:
    """I-AUROC of each anomalous group (e.g. defect type) against all normal images.

    labels 1 = anomalous; `groups[i]` names image i's group (normal images' groups are ignored).
    Groups without a normal image to compare with are left out."""
    y, s = _labels_scores(labels, scores)
    g = np.asarray(list(groups), dtype=object)
    if g.shape != y.shape:
        raise ValueError(f"groups {g.shape} and labels {y.shape} differ in length")
    neg = s[~y]
    if neg.size == 0:
        return {}
    return {str(name): _auc_from_split(neg, s[y & (g == name)]) for name in sorted(set(g[y]))}


def _stack_pixels(masks: MapsLike, maps: MapsLike) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate (N,H,W) arrays or sequences of (H,W) arrays, pairwise same shape."""
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = masks[None]
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        maps = maps[None]
    if len(masks) != len(maps):
        raise ValueError(f"got {len(masks)} masks but {len(maps)} maps")
    if len(masks) == 0:
        raise ValueError("no masks/maps given")
    ms: list[np.ndarray] = []
    ss: list[np.ndarray] = []
    for i, (m, a) in enumerate(zip(masks, maps)):
        if m is None:
            raise ValueError(f"mask[{i}] is None; drop images without pixel labels first")
        m = np.asarray(m)
        a = np.asarray(a)
        if m.ndim != 2 or a.ndim != 2:
            raise ValueError(f"mask[{i}]/map[{i}] must be 2-D (H, W), got {m.shape} and {a.shape}")
        if m.shape != a.shape:
            raise ValueError(f"mask[{i}] shape {m.shape} != map[{i}] shape {a.shape}; "
                             "resize the mask (nearest) or the map to the same size first")
        if not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"map[{i}] must be numeric, got dtype {a.dtype}")
        a = a.astype(np.float32, copy=False)
        if not np.isfinite(a).all():
            raise ValueError(f"map[{i}] contains NaN/inf values")
        ms.append(m != 0)
        ss.append(a)
    return ms, ss


def pixel_auroc(masks: MapsLike, maps: MapsLike) -> float:
    """Pixel-level AUROC over all pixels of all images (flattened).

    masks: (N,H,W) bool (or a list of HxW), maps: matching anomaly maps.  Maps
    are compared as float32 (the SDK's map dtype), which keeps 50M pixels at a
    few hundred MB.
    """
    ms, ss = _stack_pixels(masks, maps)
    y = np.concatenate([m.ravel() for m in ms])
    s = np.concatenate([a.ravel() for a in ss])
    _need_both(y, "pixel AUROC")
    neg, pos = s[~y], s[y]
    del s, y  # free the concatenated copies before sorting (large pixel counts)
    return _auc_from_split(neg, pos)


# --------------------------------------------------------------------------- AUPRO
def _region_weights(ms: list[np.ndarray]) -> np.ndarray:
    """Per-pixel weight 1 / (num_regions * region_size) for every defect pixel, in
    the order of np.concatenate([a[m] for ...]); sums to 1 over all regions."""
    sizes: list[np.ndarray] = []
    per_pixel: list[np.ndarray] = []
    for m in ms:
        if not m.any():
            continue
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        counts = np.bincount(lab[m], minlength=n)  # label 0 is background, never under m
        sizes.append(counts[1:])
        per_pixel.append(1.0 / counts[lab[m]].astype(np.float64))
    n_regions = sum(len(c) for c in sizes)
    return np.concatenate(per_pixel) / float(n_regions)


def pro_curve(masks: MapsLike, maps: MapsLike, max_fpr: float | None = None,
              num_thresholds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve: (fpr, pro) arrays, fpr non-decreasing, from (0, 0).

    For a threshold t, PRO(t) is the mean over all connected defect regions (per
    image, 8-connectivity) of the fraction of the region with map >= t; FPR(t) is
    the fraction of normal pixels with map >= t.  num_thresholds=None evaluates
    every distinct map value (exact, as the MVTec AD evaluation code does); an int
    evaluates that many thresholds evenly spaced over the map range (cheaper,
    approximate).  With max_fpr given, points beyond the first one past max_fpr
    are omitted (they cannot change the integral up to max_fpr).
    """
    ms, ss = _stack_pixels(masks, maps)
    neg = np.concatenate([a[~m] for m, a in zip(ms, ss)])
    pos = np.concatenate([a[m] for m, a in zip(ms, ss)])
    if pos.size == 0:
        raise ValueError("PRO is undefined without any defect pixel in the masks")
    if neg.size == 0:
        raise ValueError("PRO is undefined without any normal pixel in the masks")
    w = _region_weights(ms)

    neg.sort()
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    cw = np.concatenate(([0.0], np.cumsum(w[order])))  # cw[k] = weight of the k smallest positives
    total_w = cw[-1]

    if num_thresholds is None:
        lo = -np.inf
        if max_fpr is not None and max_fpr < 1.0:
            # The (k+1)-th largest negative is the highest threshold whose FPR exceeds
            # max_fpr; thresholds below it only add points past max_fpr.
            k = int(np.floor(max_fpr * neg.size))
            lo = neg[neg.size - 1 - k] if k < neg.size else -np.inf
        thr = np.unique(np.concatenate((neg[neg >= lo], pos[pos >= lo])))[::-1]
    else:
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be >= 2 or None, got {num_thresholds}")
        vmin = min(float(neg[0]), float(pos[0]))
        vmax = max(float(neg[-1]), float(pos[-1]))
        thr = np.linspace(vmax, vmin, num_thresholds)
    # #scores >= t, for each threshold t
    fp = neg.size - np.searchsorted(neg, thr, side="left")
    pro = total_w - cw[np.searchsorted(pos, thr, side="left")]
    fpr = np.concatenate(([0.0], fp / float(neg.size)))
    pro = np.concatenate(([0.0], np.clip(pro, 0.0, 1.0)))
    if fpr[-1] < 1.0 and (max_fpr is None or fpr[-1] <= max_fpr):
        # Curve must reach fpr = 1 (at a threshold below every score, all is positive).
        fpr = np.append(fpr, 1.0)
        pro = np.append(pro, 1.0)
    return fpr, pro


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under the piecewise-linear curve (x non-decreasing) on [x[0], x_max],
    interpolating y at exactly x_max."""
    keep = x <= x_max
    xk, yk = x[keep], y[keep]
    area = float(np.sum(0.5 * (yk[1:] + yk[:-1]) * np.diff(xk)))
    j = int(keep.sum())  # first point beyond x_max
    if xk[-1] < x_max and j < x.size:
        x0, y0, x1, y1 = x[j - 1], y[j - 1], x[j], y[j]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (x_max - x0)
    return area


def aupro(masks: MapsLike, maps: MapsLike, max_fpr: float = 0.3,
          num_thresholds: int | None = None) -> float:
    """Area under the PRO curve for FPR in [0, max_fpr], divided by max_fpr.

    The MVTec AD definition (Bergmann et al.): 1.0 is perfect; a constant map
    gives PRO = FPR along the diagonal, i.e. max_fpr / 2.  See `pro_curve` for
    the thresholds.  Images without defects contribute only normal pixels.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, pro = pro_curve(masks, maps, max_fpr=max_fpr, num_thresholds=num_thresholds)
    return _trapezoid_to(fpr, pro, max_fpr) / max_fpr


# --------------------------------------------------------------------------- F1
def f1_max(labels: Any, scores: Any) -> tuple[float, float]:
    """Best F1 over all thresholds, and that threshold (score >= threshold -> anomalous).

    Every distinct score is tried as a threshold.  When several give the same
    best F1, the highest threshold is returned (fewest false alarms).  Needs at
    least one anomalous label.
    """
    y, s = _labels_scores(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("F1 is undefined without any anomalous label")
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    tp = np.cumsum(y_desc)
    fp = np.cumsum(~y_desc)
    # Last index of each run of equal scores: all tied samples flip together.
    last = np.r_[np.nonzero(np.diff(s_desc))[0], s_desc.size - 1]
    tp, fp = tp[last], fp[last]
    f1 = 2.0 * tp / (tp + fp + n_pos)  # = 2 tp / (2 tp + fp + fn)
    best = int(np.argmax(f1))  # first maximum = highest threshold
    return float(f1[best]), float(s_desc[last[best]])


# --------------------------------------------------------------------------- summary
def summarize(image_labels: Any, image_scores: Any, masks: Sequence[np.ndarray | None] | np.ndarray | None = None,
              maps: MapsLike | None = None, max_fpr: float = 0.3) -> dict[str, float]:
    """Image metrics (i_auroc, f1_max, f1_threshold) and, when any mask is given,
    pixel metrics (p_auroc, aupro) over the images that have one.

    masks: per image a bool HxW or None (anomalous image without ground truth:
    excluded from pixel metrics); maps: per image an HxW anomaly map.
    """
    out: dict[str, float] = {"i_auroc": auroc(image_labels, image_scores)}
    f1, thr = f1_max(image_labels, image_scores)
    out["f1_max"], out["f1_threshold"] = f1, thr
    if masks is None:
        return out
    if maps is None:
        raise ValueError("masks given without maps")
    n = len(np.asarray(image_labels))
    if len(masks) != n or len(maps) != n:
        raise ValueError(f"need one mask and one map per image: {n} labels, {len(masks)} masks, {len(maps)} maps")
    keep = [i for i in range(n) if masks[i] is not None]
    if not keep:
        log.info("no pixel masks available: skipping p_auroc/aupro")
        return out
    if len(keep) < n:
        log.info("pixel metrics over %d of %d images (the rest have no mask)", len(keep), n)
    km = [masks[i] for i in keep]
    ka = [maps[i] for i in keep]
    out["p_auroc"] = pixel_auroc(km, ka)
    out["aupro"] = aupro(km, ka, max_fpr=max_fpr)
    return out
