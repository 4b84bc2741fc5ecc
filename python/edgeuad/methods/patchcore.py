"""PatchCore (Roth et al., CVPR 2022): frozen locally aware patch features + greedy coreset bank.

Training = one pass of the frozen extractor over the nominal images + coreset subsampling;
there is no optimisation, hence no checkpoints/resume (the whole run is minutes and
deterministic for a seed).  Scoring is defined in `patch_features` (NN distance, optional
Eq. 10 reweighting, bilinear upsampling, Gaussian blur).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..backbones import build_backbone
from .common import resolve_device, seed_everything
from .memory_bank import coreset_bank
from .patch_features import (PatchBankConfig, PatchFeatureExtractor, PatchModel, check_images, extract_patch_features,
                             image_hw)

log = logging.getLogger(__name__)

__all__ = ["PatchCoreConfig", "build_embedder", "build_extractor", "train_patchcore"]


@dataclass
class PatchCoreConfig(PatchBankConfig):
    """PatchCore hyperparameters: exactly the shared patch-bank fields of `PatchBankConfig`
    (backbone, layers, aggregation, projection, coreset, Eq. 10 reweighting, blur); PatchCore has
    nothing to train, so it adds none.  JSON round trip with to_dict/from_dict."""


def build_extractor(cfg: Mapping[str, Any], pretrained: bool | str | None = None) -> PatchFeatureExtractor:
    """The patch feature extractor described by a (PatchCore or ReConPatch) config dict."""
    pre = cfg.get("pretrained", True) if pretrained is None else pretrained
    name = str(cfg.get("backbone", "efficientnet_lite0"))
    if name == "auto":  # resolving it needs held-out normal images: a training run's job
        raise ValueError("backbone 'auto' is chosen by edgeuad.api.train (`edgeuad train`) from held-out normal "
                         "images; pass a backbone name to train a patch model directly")
    bb = build_backbone(name, pretrained=pre)
    return PatchFeatureExtractor(bb, layers=tuple(cfg.get("layers", (1, 2))), patch_size=int(cfg.get("patch_size", 3)),
                                 pre_dim=int(cfg.get("pre_dim", 0)), out_dim=int(cfg.get("out_dim", 0)),
                                 count_include_pad=bool(cfg.get("count_include_pad", False)))


def build_embedder(config: Mapping[str, Any]) -> PatchFeatureExtractor:
    """Random-init embedder with the architecture of `config` (weights come from a state dict)."""
    return build_extractor(config, pretrained=False).eval()


def train_patchcore(cfg: PatchCoreConfig, images: np.ndarray, progress: bool = True) -> PatchModel:
    """Fit PatchCore on preprocessed nominal images (float32 N x 3 x H x W) -> PatchModel."""
    images = check_images(images, cfg.image_size)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    extractor = build_extractor(cfg.to_dict()).to(device).eval()
    feats = extract_patch_features(extractor, images, cfg.batch_size, device, progress=progress,
                                   desc="patchcore features")
    t1 = time.perf_counter()
    bank = coreset_bank(feats, cfg, device="cpu" if device.type == "cpu" else str(device), progress=progress)
    t2 = time.perf_counter()
    extractor = extractor.cpu().eval()
    grid = extractor.grid_size(image_hw(cfg.image_size))
    log.info("patchcore: %d images -> %d patches of dim %d (grid %dx%d) in %.1fs; coreset %d in %.1fs",
             len(images), len(feats), feats.shape[1], grid[0], grid[1], t1 - t0, len(bank), t2 - t1)
    config = {"method": "patchcore", **cfg.to_dict()}
    return PatchModel(method="patchcore", config=config, embedder=extractor, bank=bank, grid=grid,
                      reweight_b=cfg.reweight_b)
