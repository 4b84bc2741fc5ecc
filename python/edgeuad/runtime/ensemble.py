"""Ensembles of bundles scored as one (ReConPatch, Hyun et al. WACV 2024, Eq. 11).

Each member's image score s_i is put on a common scale with the modified z-score

    z_i = (s_i - median_i) / (1.4826 * MAD_i)

where median_i and MAD_i are taken over that member's scores on held-out NORMAL images (written into
the ensemble manifest when it is built, `export/ensemble.py`).  The ensemble score is the mean of the
members' z.  Maps are combined the same way: each member's raw map, resized to the frame, is
normalised with that member's median/MAD and the normalised maps are averaged.  The ensemble's own
thresholds then apply to these combined values like any bundle's thresholds to its raw scores.

`Ensemble` sits behind `Detector` in place of a backend: the Detector hands it the frames
(`preprocess`), it runs every member's network (`run`, the Backend call) and post-processing
(`postprocess`).  Members are Detectors themselves (same backend, threads and colour order), built by
the caller, so nothing here imports the Detector.  numpy only; no torch.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..bundle import Bundle

log = logging.getLogger(__name__)

MAD_TO_SIGMA = 1.4826  # MAD * 1.4826 estimates the standard deviation of a normal law

__all__ = ["MAD_TO_SIGMA", "Ensemble", "EnsembleError", "combine_scores", "modified_z"]


class EnsembleError(ValueError):
    """Members or normal images that cannot make an ensemble (none, nested ensembles, ...)."""


def modified_z(x: np.ndarray | float, median: float, mad: float) -> np.ndarray:
    """(x - median) / (1.4826 * mad), in x's floating dtype (float64 for Python numbers)."""
    a = np.asarray(x)
    a = a if a.dtype.kind == "f" else a.astype(np.float64)
    return (a - a.dtype.type(median)) / a.dtype.type(MAD_TO_SIGMA * mad)


def combine_scores(scores: np.ndarray, medians: Sequence[float], mads: Sequence[float]) -> np.ndarray:
    """Members' raw image scores (members x images) -> ensemble scores (images,): mean of modified z."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != len(medians) or len(medians) != len(mads):
        raise ValueError(f"scores must be members x images with one median and MAD per member, got {s.shape}, "
                         f"{len(medians)} medians, {len(mads)} MADs")
    med = np.asarray(medians, dtype=np.float64)[:, None]
    scale = MAD_TO_SIGMA * np.asarray(mads, dtype=np.float64)[:, None]
    return ((s - med) / scale).mean(axis=0)


class Ensemble:
    """The members of a loaded ensemble bundle, run as one backend + post-processing.

    make_member: builds the runtime for one member `Bundle` (the Detector passes itself, with its own
    backend, threads and colour order)."""

    def __init__(self, bundle: "Bundle", make_member: Callable[["Bundle"], Any]) -> None:
        entries = bundle.postprocess["members"]
        if len(bundle.members) != len(entries):  # Bundle.load fills one per entry
            raise EnsembleError(f"ensemble {bundle.root}: {len(entries)} members listed, {len(bundle.members)} loaded")
        self.members: list[Any] = []
        try:
            for b in bundle.members:
                self.members.append(make_member(b))
        except BaseException:
            self.close()
            raise
        self.dirs = [e["dir"] for e in entries]
        self.medians = [float(e["median"]) for e in entries]
        self.mads = [float(e["mad"]) for e in entries]
        self.name = "+".join(dict.fromkeys(m.backend_name for m in self.members))  # e.g. "onnxruntime"

    # --- the Detector's stages -------------------------------------------------------------
    def preprocess(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One network input per member; members with the same preprocessing share one array."""
        done: dict[Any, np.ndarray] = {}
        xs = []
        for m in self.members:
            if m.pre_cfg not in done:
                done[m.pre_cfg] = m.preprocess(frames)
            xs.append(done[m.pre_cfg])
        return xs

    def run(self, xs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Every member's network; outputs keyed "<member index>/<output name>"."""
        if len(xs) != len(self.members):
            raise ValueError(f"ensemble of {len(self.members)} members given {len(xs)} inputs")
        out: dict[str, np.ndarray] = {}
        for i, (m, x) in enumerate(zip(self.members, xs)):
            out.update({f"{i}/{k}": v for k, v in m.infer(x).items()})
        return out

    def postprocess(self, outputs: dict[str, np.ndarray], frame_sizes: Sequence[tuple[int, int]],
                    return_map: bool) -> tuple[np.ndarray, Optional[list[np.ndarray]], dict[str, float]]:
        """(ensemble scores, ensemble maps at each frame's size or None, summed member timings)."""
        per: list[dict[str, np.ndarray]] = [{} for _ in self.members]
        for key, v in outputs.items():
            i, name = key.split("/", 1)
            per[int(i)][name] = v
        z = np.empty((len(self.members), len(frame_sizes)), dtype=np.float64)
        maps: Optional[list[np.ndarray]] = None
        timings: dict[str, float] = {}
        for i, m in enumerate(self.members):
            scores, raw_maps, t = m.raw_postprocess(per[i], frame_sizes, return_map)
            for k, v in t.items():
                timings[k] = timings.get(k, 0.0) + v
            t0 = time.perf_counter()
            z[i] = modified_z(np.asarray(scores, dtype=np.float64), self.medians[i], self.mads[i])
            if raw_maps is not None:
                zm = [modified_z(r, self.medians[i], self.mads[i]) for r in raw_maps]
                maps = zm if maps is None else [a + b for a, b in zip(maps, zm)]
            timings["postprocess"] = timings.get("postprocess", 0.0) + (time.perf_counter() - t0) * 1e3
        if maps is not None:
            maps = [(a / np.float32(len(self.members))).astype(np.float32, copy=False) for a in maps]
        return z.mean(axis=0), maps, timings

    def close(self) -> None:
        for m in self.members:
            m.close()
