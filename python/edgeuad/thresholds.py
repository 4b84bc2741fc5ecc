"""Decision thresholds and score normalisation, computed from held-out data.

Normal-only data (the usual case on a line): threshold = a high quantile of the normal scores.
With labelled validation data: the F1-optimal threshold.  Normalised score maps the raw score
to [0, 1] with 0.5 exactly at the threshold (anomalib's min-max convention), so operators read
one number whatever the method or backbone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from .metrics import f1_max


@dataclass(frozen=True)
class Thresholds:
    threshold: float        # raw image score at or above which a frame is anomalous
    min: float              # score range used for normalisation
    max: float
    source: str             # "normal_quantile" | "f1_optimal"
    quantile: float | None = None
    n_normal: int = 0
    n_anomalous: int = 0
    pixel_threshold: float | None = None  # raw map value threshold (same rule applied to map values)

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
    spread = float(s.max() - s.min()) or max(abs(t), 1e-6)
    t += margin * spread
    lo = float(s.min())
    # the normalisation range: normal minimum to a point as far above the threshold as the normal
    # spread, so typical anomalies land in (0.5, 1] instead of all clipping at 1.
    hi = max(float(s.max()), t) + spread
    pix = float(np.quantile(map_values, quantile)) if map_values is not None else None
    return Thresholds(threshold=t, min=lo, max=hi, source="normal_quantile", quantile=quantile,
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
