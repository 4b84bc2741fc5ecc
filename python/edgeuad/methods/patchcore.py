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
from .coreset import greedy_coreset
from .patch_features import (PatchConfigIO, PatchFeatureExtractor, PatchModel, check_images, extract_patch_features,
                             image_hw)

log = logging.getLogger(__name__)

__all__ = ["PatchCoreConfig", "build_embedder", "build_extractor", "train_patchcore"]


@dataclass
class PatchCoreConfig(PatchConfigIO):
    """PatchCore hyperparameters (JSON round trip with to_dict/from_dict).

    backbone/pretrained: `edgeuad.backbones.build_backbone` arguments (pretrained may be a path).
    image_size: network input (int or (H, W)); must equal the preprocessed images' size.
    layers: backbone stages used (1, 2 = strides 8 and 16, PatchCore's "layer2 + layer3").
    patch_size: local aggregation neighbourhood (3 as in PatchCore).
    pre_dim/out_dim: per-stage and final feature dimension (PatchCore uses 1024/1024 for
        WideResNet-50; 256/256 here since efficientnet_lite0 only has 40 + 112 channels:
        a larger D would replicate channels and slow the NN search without adding information).
    coreset_ratio: fraction of training patches kept (PatchCore: 0.1 or 0.01);
        coreset_min_items floors it so small training sets keep a usable bank.
    coreset_proj_dim: random-projection dimension used by the greedy selection.
    reweight_b: Eq. 10 neighbourhood size (0 = plain NN distance; PatchCore uses 9 in
        anomalib's image-level form; here applied per patch as ReConPatch does).
    sigma: Gaussian blur of the anomaly map (4 as in PatchCore); topk_frac for the top-k score.
    batch_size: images per feature-extraction batch; device: "cpu", "cuda", "auto".
    """

    backbone: str = "efficientnet_lite0"
    pretrained: bool | str = True
    image_size: int | tuple[int, int] = 256
    layers: tuple[int, ...] = (1, 2)
    patch_size: int = 3
    pre_dim: int = 256
    out_dim: int = 256
    coreset_ratio: float = 0.01  # same as ReConPatch (paper: 1%) so the baseline comparison is fair
    coreset_min_items: int = 1000
    coreset_proj_dim: int = 128
    reweight_b: int = 9
    sigma: float = 4.0
    topk_frac: float = 0.01
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 16

    def __post_init__(self) -> None:
        self.layers = tuple(int(v) for v in self.layers)
        if not isinstance(self.image_size, int):
            self.image_size = image_hw(self.image_size)
        self._check_bank_fields()


def build_extractor(cfg: Mapping[str, Any], pretrained: bool | str | None = None) -> PatchFeatureExtractor:
    """The patch feature extractor described by a (PatchCore or ReConPatch) config dict."""
    pre = cfg.get("pretrained", True) if pretrained is None else pretrained
    bb = build_backbone(str(cfg.get("backbone", "efficientnet_lite0")), pretrained=pre)
    return PatchFeatureExtractor(bb, layers=tuple(cfg.get("layers", (1, 2))), patch_size=int(cfg.get("patch_size", 3)),
                                 pre_dim=int(cfg.get("pre_dim", 256)), out_dim=int(cfg.get("out_dim", 256)))


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
    idx = greedy_coreset(feats, cfg.coreset_ratio, proj_dim=cfg.coreset_proj_dim, seed=cfg.seed,
                         min_items=cfg.coreset_min_items, progress=progress,
                         device="cpu" if device.type == "cpu" else str(device))
    bank = np.ascontiguousarray(feats[np.sort(idx)], dtype=np.float32)
    t2 = time.perf_counter()
    extractor = extractor.cpu().eval()
    grid = extractor.grid_size(image_hw(cfg.image_size))
    log.info("patchcore: %d images -> %d patches of dim %d (grid %dx%d) in %.1fs; coreset %d in %.1fs",
             len(images), len(feats), feats.shape[1], grid[0], grid[1], t1 - t0, len(bank), t2 - t1)
    config = {"method": "patchcore", **cfg.to_dict()}
    return PatchModel(method="patchcore", config=config, embedder=extractor, bank=bank, grid=grid,
                      reweight_b=cfg.reweight_b)
