"""Decision thresholds and score normalisation, computed from held-out data.

Normal-only data (the usual case on a line), two rules:
* ``robust`` (default): a Gaussian tail fitted robustly to the normal scores, threshold =
  median + z(1 - fpr) * 1.4826 * MAD (the modified z-score of ReConPatch Eq. 11 at a target false
  positive rate).  With the ~20-70 held-out normal images a line usually has, the empirical 0.99
  quantile is the maximum (or next to it) and moves with the single most unusual good part; the
  median and MAD do not.
* ``quantile``: a high empirical quantile of the normal scores (the previous default).
With labelled validation data: the F1-optimal threshold.  Normalised score maps the raw score
to [0, 1] with 0.5 exactly at the threshold (anomalib's min-max convention), so operators read
one number whatever the method or backbone.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

from .metrics import f1_max


@dataclass(frozen=True)
class Thresholds:
    threshold: float        # raw image score at or above which a frame is anomalous
    min: float              # score range used for normalisation
    max: float
    source: str             # "normal_robust" | "normal_quantile" | "f1_optimal"
    quantile: float | None = None
    n_normal: int = 0
    n_anomalous: int = 0
    pixel_threshold: float | None = None  # raw map value threshold (same rule applied to map values)
    fpr: float | None = None                # target false-positive rate of the "robust" rule

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Thresholds":
        t = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        if not np.isfinite(t.threshold) or not (t.max > t.min):
            raise ValueError(f"invalid thresholds: {d}")
        return t

    def normalize(self, x: np.ndarray | float) -> np.ndarray | float:
        """(x - threshold) / (max - min) + 0.5, clipped to [0, 1]: 0.5 at the threshold."""
        span = self.max - self.min
        y = np.clip((np.asarray(x, dtype=np.float32) - self.threshold) / span + 0.5, 0.0, 1.0)
        return float(y) if np.ndim(y) == 0 else y


def from_normal_scores(scores: Sequence[float], quantile: float = 0.99, margin: float = 0.0,
                       map_values: np.ndarray | None = None) -> Thresholds:
    """Threshold from normal data only: the `quantile` of held-out normal scores (+ a relative margin)."""
    s = _check(scores, "normal scores")
    if not 0.5 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0.5, 1], got {quantile}")
    t = float(np.quantile(s, quantile))
    t += margin * _spread(s, t)
    lo, hi = _normal_range(s, t)
    pix = float(np.quantile(map_values, quantile)) if map_values is not None else None
    return Thresholds(threshold=t, min=lo, max=hi, source="normal_quantile", quantile=quantile,
                      n_normal=int(s.size), pixel_threshold=pix)


def _spread(s: np.ndarray, t: float) -> float:
    return float(s.max() - s.min()) or max(abs(t), 1e-6)


def _normal_range(s: np.ndarray, t: float) -> tuple[float, float]:
    """Normalisation range of normal-only rules: the normal minimum to a point as far above the
    threshold as the normal spread, so typical anomalies land in (0.5, 1] instead of all clipping at 1."""
    return float(s.min()), max(float(s.max()), t) + _spread(s, t)


def robust_tail(values: np.ndarray, fpr: float) -> float:
    """median + z(1 - fpr) * 1.4826 * MAD of `values`: the (1 - fpr) quantile of a Gaussian fitted with
    outlier-insensitive estimates (1.4826 * MAD estimates the standard deviation of a normal law)."""
    med, mad = median_mad(values)
    return med + NormalDist().inv_cdf(1.0 - fpr) * 1.4826 * mad


def median_mad(values: np.ndarray | Sequence[float]) -> tuple[float, float]:
    """(median, median absolute deviation) of `values`; a zero MAD (a constant majority, e.g. identical
    frames) falls back to std / 1.4826, the plain spread in MAD units (0 only if all values are equal)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    if mad == 0.0:
        mad = float(v.std()) / 1.4826
    return med, mad


def from_normal_robust(scores: Sequence[float], fpr: float = 0.01,
                       map_values: np.ndarray | None = None) -> Thresholds:
    """Threshold from normal data only by the robust Gaussian tail (see the module docstring)."""
    s = _check(scores, "normal scores")
    if not 1e-6 <= fpr <= 0.5:
        raise ValueError(f"fpr must be in [1e-6, 0.5], got {fpr}")
    if s.size < 2:
        raise ValueError(f"the robust threshold needs at least 2 held-out normal scores, got {s.size}")
    if s.size < 10:
        log.warning("robust threshold from only %d normal scores: hold out more normal images", s.size)
    t = robust_tail(s, fpr)
    lo, hi = _normal_range(s, t)
    pix = robust_tail(map_values, fpr) if map_values is not None else None
    return Thresholds(threshold=t, min=lo, max=hi, source="normal_robust", fpr=fpr,
                      n_normal=int(s.size), pixel_threshold=pix)


def from_labelled(scores: Sequence[float], labels: Sequence[int],
                  map_values: np.ndarray | None = None, pixel_labels: np.ndarray | None = None) -> Thresholds:
    """F1-optimal threshold on labelled validation data (labels: 0 normal, 1 anomalous)."""
    s = _check(scores, "scores")
    y = np.asarray(labels).astype(int).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    _, t = f1_max(y, s)
    pix = None
    if map_values is not None and pixel_labels is not None:
        _, pix = f1_max(np.asarray(pixel_labels).ravel().astype(int), np.asarray(map_values).ravel())
    return Thresholds(threshold=float(t), min=float(s.min()), max=float(s.max()), source="f1_optimal",
                      n_normal=int((y == 0).sum()), n_anomalous=int((y == 1).sum()),
                      pixel_threshold=None if pix is None else float(pix))


def _check(scores: Sequence[float], what: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError(f"no {what} given: need held-out images to set a threshold")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{what} contain NaN/inf")
    return s
