"""The eager-torch reference pipeline the benchmark compares the runtime against.

Same bundle, same preprocessed input, but the network runs as the training-side torch module
(rebuilt from `weights.safetensors`) and post-processing is the training side's torch code:

    recontrast       model(x) -> (enc, dec) -> recontrast.anomaly_map_torch
    patchcore/...    PatchModel.score_torch(x)   (embedder + nearest-neighbour search + map, all torch)

This is what a user would run without edgeuad's runtime, so "speed-up" in the benchmark means
runtime pipeline vs this.  Training side: imports torch (the runtime imports this module lazily).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..bundle import Bundle

log = logging.getLogger(__name__)


@dataclass
class ReferenceOutput:
    """scores: (N,) raw image scores (the bundle's `postprocess.score` rule);
    maps: (N, h, w) float32 raw anomaly maps at the network input size;
    timings: ms per stage for this call ("network", "distance_map" | "score_torch")."""

    scores: np.ndarray
    maps: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


class ReferencePipeline:
    """Eager torch model + torch post-processing for one bundle, on CPU by default.

    threads > 0 sets torch's intra-op thread count (process-wide: torch has no per-module
    setting), so the benchmark can match the Detector's thread count.
    """

    def __init__(self, bundle: Union[Bundle, str, os.PathLike], threads: int = 0, device: str = "cpu") -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        if threads > 0:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.device = torch.device(device)
        self.method = self.bundle.method
        self.post = self.bundle.postprocess
        self.pre_cfg = self.bundle.preprocess   # callers preprocess with this (the Detector's own config)
        self._run: Callable[[np.ndarray], ReferenceOutput]
        from .registry import load_from_bundle  # the same rebuild path as the torch backend and export

        trained, cfg = load_from_bundle(self.bundle)
        if self.method == "recontrast":
            self._setup_recontrast(trained)
        elif self.method in ("patchcore", "reconpatch"):
            self._setup_patch(trained)
        else:  # Bundle.load already rejects unknown methods; keep the error explicit anyway
            raise ValueError(f"no torch reference for method {self.method!r}")
        log.info("torch reference for %s bundle %s (%d threads, %s)", self.method, self.bundle.root,
                 self.threads, self.device)

    # --- recontrast ------------------------------------------------------------------------
    def _setup_recontrast(self, model: Any) -> None:
        from .recontrast import anomaly_map_torch

        self.model = model.to(self.device).eval()
        p = self.post
        size = tuple(int(v) for v in self.bundle.preprocess.size)
        use_max = p.get("score", "max") == "max"
        # The bundle's graph holds only the map's levels (pairs "enc_l{k}_frozen", ...): run the
        # model on those levels, in the manifest's pair order, so weights and pairs line up.
        levels = sorted({int(str(a)[len("enc_l")]) for a, _ in p["pairs"]})
        names = [f"enc_{n}" for n in self.model.pair_names(levels)]
        if names != [str(a) for a, _ in p["pairs"]]:
            raise ValueError(f"manifest pairs {p['pairs']} do not match the model's pairs {names}")

        def run(x: np.ndarray) -> ReferenceOutput:
            xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device)
            with torch.inference_mode():
                t0 = time.perf_counter()
                enc, dec = self.model(xt, levels=levels)
                t1 = time.perf_counter()
                maps, smax, stopk = anomaly_map_torch(enc, dec, size, sigma=float(p["sigma"]),
                                                      align_corners=bool(p["align_corners"]),
                                                      weights=p.get("weights"),
                                                      topk_frac=float(p.get("topk_frac", 0.01)))
                scores = smax if use_max else stopk
                scores_np = scores.float().cpu().numpy()
                maps_np = maps.float().cpu().numpy()
                t2 = time.perf_counter()
            return ReferenceOutput(scores_np.astype(np.float64), maps_np.astype(np.float32),
                                   {"network": (t1 - t0) * 1e3, "distance_map": (t2 - t1) * 1e3})

        self._run = run

    # --- patch methods -----------------------------------------------------------------------
    def _setup_patch(self, pm: Any) -> None:
        if not hasattr(pm, "score_torch"):
            raise TypeError(f"{type(pm).__name__} has no score_torch(); cannot build the torch reference")
        pm.embedder.to(self.device).eval()
        self.model = pm
        if self.post.get("score", "max") != "max":
            # score_torch defines the image score as the map max; a bundle asking for topk_mean
            # would be compared against the wrong number, so refuse instead of reporting a false diff.
            raise ValueError(f"patch bundle uses score={self.post.get('score')!r}; the torch reference "
                             "(PatchModel.score_torch) only computes 'max'")

        def run(x: np.ndarray) -> ReferenceOutput:
            t0 = time.perf_counter()
            out = pm.score_torch(np.ascontiguousarray(x, np.float32), batch_size=max(1, len(x)))
            t1 = time.perf_counter()
            maps, scores = _split_patch_output(out)
            return ReferenceOutput(np.asarray(scores, np.float64), np.asarray(maps, np.float32),
                                   {"score_torch": (t1 - t0) * 1e3})

        self._run = run

    # --- public ----------------------------------------------------------------------------
    def run(self, x: np.ndarray) -> ReferenceOutput:
        """x: float32 N x 3 x h x w from `edgeuad.preprocess.preprocess` (the Detector's input)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W input, got {x.shape}")
        return self._run(x)


    def __call__(self, frames: Sequence[np.ndarray], color: str = "rgb") -> tuple[np.ndarray, np.ndarray]:
        """Frames (uint8 HxWx3, RGB by default) -> (raw maps N x H x W at the frames' size, raw scores (N,)).

        The same preprocessing as the Detector, and maps resized to each frame's size the way the
        Detector does it (bilinear), so `Result.raw_map` and `Result.score` compare directly.
        Frames of different sizes give an object array of maps."""
        import cv2

        from ..preprocess import preprocess

        out = self.run(preprocess(frames, self.pre_cfg, color=color))
        h, w = self.pre_cfg.size
        maps = []
        for f, m in zip(frames, out.maps):
            fh, fw = f.shape[:2]
            maps.append(m if (fh, fw) == (h, w) else cv2.resize(m, (fw, fh), interpolation=cv2.INTER_LINEAR))
        if len({m.shape for m in maps}) == 1:
            return np.stack(maps).astype(np.float32), out.scores
        arr = np.empty(len(maps), dtype=object)
        arr[:] = maps
        return arr, out.scores


def _split_patch_output(out: Any) -> tuple[np.ndarray, np.ndarray]:
    """score_torch returns (maps (N,H,W), scores (N,)); tell them apart by rank, not position,
    so a reordering on the training side cannot silently swap them."""
    if isinstance(out, dict):
        return _np(out["maps"]), _np(out["scores"])
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"score_torch returned {type(out).__name__}; expected (maps, scores)")
    a, b = _np(out[0]), _np(out[1])
    if a.ndim == 3 and b.ndim == 1:
        return a, b
    if a.ndim == 1 and b.ndim == 3:
        return b, a
    raise TypeError(f"score_torch returned arrays of shapes {a.shape} and {b.shape}; expected (N,H,W) and (N,)")


def _np(v: Any) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().float().cpu().numpy()
    return np.asarray(v)


def build_reference(bundle: Union[Bundle, str, os.PathLike], threads: int = 0,
                    device: Optional[str] = None) -> ReferencePipeline:
    return ReferencePipeline(bundle, threads=threads, device=device or "cpu")
