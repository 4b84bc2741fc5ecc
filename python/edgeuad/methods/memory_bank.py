"""The memory bank of a patch method: a trained embedder's features of normal images -> greedy coreset.

PatchCore builds its bank this way at training time; `refit_bank` rebuilds a trained model's bank
over more normal images (the held-out ones too, once they have served threshold calibration), with
the same embedder and the same coreset rule, so the only difference is the data the bank covers.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np

from .coreset import greedy_coreset
from .patch_features import PatchModel, check_images, extract_patch_features

log = logging.getLogger(__name__)

__all__ = ["coreset_bank", "refit_bank"]


def coreset_bank(feats: np.ndarray, cfg: Any, device: str = "cpu", progress: bool = False) -> np.ndarray:
    """(N, D) patch features -> (M, D) float32 bank: cfg's greedy coreset (ratio, projection, seed, floor)."""
    idx = greedy_coreset(feats, cfg.coreset_ratio, proj_dim=cfg.coreset_proj_dim, seed=cfg.seed,
                         min_items=cfg.coreset_min_items, progress=progress, device=device)
    return np.ascontiguousarray(feats[np.sort(idx)], dtype=np.float32)


def refit_bank(pm: PatchModel, cfg: Any, images: np.ndarray, progress: bool = False) -> PatchModel:
    """`pm` with its bank rebuilt over `images` (preprocessed float32 N x 3 x H x W) by `pm.embedder`."""
    images = check_images(images, cfg.image_size)
    t0 = time.perf_counter()
    feats = extract_patch_features(pm.embedder.eval(), images, cfg.batch_size, "cpu", progress=progress,
                                   desc=f"{pm.method} bank features")
    bank = coreset_bank(feats, cfg, progress=progress)
    log.info("%s: bank refitted over %d images: %d -> %d entries in %.1fs", pm.method, len(images),
             len(pm.bank), len(bank), time.perf_counter() - t0)
    return replace(pm, bank=bank, _neighbours=None)
