"""Locally aware patch features (PatchCore) and the trained-model container of the patch methods.

Pipeline of `PatchFeatureExtractor` (all steps linear after the frozen backbone, all
export to plain ONNX ops with a dynamic batch):

1. frozen backbone -> the stages listed in `layers` (default 1, 2: strides 8 and 16);
2. local neighbourhood aggregation: ``avg_pool(patch_size, stride 1, pad patch_size//2)``
   per stage at its own resolution (PatchCore's 3x3 "patchify"; averaging instead of
   unfold + pooling keeps the exported graph small);
3. coarser stages bilinearly upsampled to the grid of the first listed stage;
4. either the raw concatenation (``out_dim=0``, the default: sum C dims) or a per-stage
   channel projection to `pre_dim` and a final projection of the concatenation to
   `out_dim`, both "adaptive average pooling over channels" (PatchCore's MeanMapper /
   Aggregator).  Both are fixed matrices, so they are folded into ONE (out_dim, sum C)
   buffer applied as a single MatMul: same result as the two-step form, one op in ONNX,
   and no adaptive_avg_pool1d over channels in the exported graph (which exports poorly).
   On a thin backbone the projection *replicates* channels (Lite0's 40 stride-8 channels
   become ~128 of 256 dims) and so weights the stride-8 level ~3x more than the stride-16
   one in the Euclidean distance; the raw concatenation scored higher on magnetic_tile
   (benchmarks/RESULTS.md, PatchCore ablation).

`PatchModel` is what `train_patchcore` / `train_reconpatch` return and what the export,
the bundle and the torch reference scorer consume.  The torch scorer defines the
semantics the `_rt` runtime is checked against:

* patch score s' = Euclidean distance to the nearest bank entry r* (Eq. 9);
* Eq. 10 reweighting with b > 0: N_b(r*) are the b nearest bank entries of r*
  *including r* itself* (r* is its own nearest neighbour, as in anomalib's PatchCore),
  ``s = (1 - exp(s') / sum_{r' in N_b(r*)} exp(||q - r'||)) * s'``; b = 0 disables
  (s = s'); b = 1 is rejected (the weight would be identically 0);
* map = Gaussian blur (scipy 'reflect' border, radius int(4 sigma + 0.5)) of the
  bilinear (align_corners=True) upsampling of the (h, w) patch scores to the input
  size; image score = max of the map.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..preprocess import INPUT_NORMS

log = logging.getLogger(__name__)

__all__ = [
    "PatchBankConfig",
    "PatchFeatureExtractor",
    "PatchModel",
    "adaptive_avg_matrix",
    "extract_patch_features",
    "gaussian_blur_reflect",
    "load_patch_model",
    "nn_scores_torch",
    "bank_neighbours",
    "register_embedder_builder",
]


def adaptive_avg_matrix(in_dim: int, out_dim: int) -> Tensor:
    """(out_dim, in_dim) float64 matrix M with ``M @ v == adaptive_avg_pool1d(v, out_dim)``.

    Bin i averages input indices [floor(i*in/out), ceil((i+1)*in/out)), torch's definition;
    out_dim > in_dim replicates channels (PatchCore does this for thin layers, which
    equalises the weight of each stage in the Euclidean distance).
    """
    if in_dim <= 0 or out_dim <= 0:
        raise ValueError(f"dimensions must be positive, got {in_dim} -> {out_dim}")
    m = torch.zeros(out_dim, in_dim, dtype=torch.float64)
    for i in range(out_dim):
        s = (i * in_dim) // out_dim
        e = -((-(i + 1) * in_dim) // out_dim)  # ceil
        m[i, s:e] = 1.0 / (e - s)
    return m


class PatchFeatureExtractor(nn.Module):
    """Frozen backbone + PatchCore aggregation: ``(B, 3, H, W) -> (B, h*w, out_dim)``.

    backbone: an `edgeuad.backbones.Backbone` (frozen and kept in eval mode here).
    layers: indices into the backbone's three stages; the first is the output grid.
    patch_size: neighbourhood of the local average (odd; 1 disables).
    pre_dim: per-stage dimension before concatenation; out_dim: final dimension;
    out_dim = 0: no projection, the raw concatenation (dim = sum of the stages' channels).
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[int] = (1, 2), patch_size: int = 3,
                 pre_dim: int = 0, out_dim: int = 0, count_include_pad: bool = False) -> None:
        super().__init__()
        layers = tuple(int(v) for v in layers)
        chans = tuple(int(c) for c in getattr(backbone, "channels"))
        if not layers or any(l < 0 or l >= len(chans) for l in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"layers must be distinct indices into {len(chans)} backbone stages, got {layers}")
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be a positive odd number, got {patch_size}")
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.layers = layers
        self.patch_size = int(patch_size)
        self.count_include_pad = bool(count_include_pad)
        in_chans = [chans[l] for l in layers]
        if out_dim < 0 or pre_dim < 0 or (out_dim > 0) != (pre_dim > 0):
            raise ValueError(f"pre_dim/out_dim must both be positive (projection) or both 0 (raw concatenation), "
                             f"got {pre_dim}/{out_dim}")
        self.pre_dim = int(pre_dim)
        self.out_dim = int(out_dim) if out_dim > 0 else sum(in_chans)
        self.project = out_dim > 0
        if self.project:
            # Fold the per-stage MeanMappers (block diagonal) and the Aggregator into one matrix.
            blocks = torch.block_diag(*[adaptive_avg_matrix(c, self.pre_dim) for c in in_chans])
            proj = adaptive_avg_matrix(self.pre_dim * len(layers), self.out_dim) @ blocks
            # Non-persistent: derived from the config, rebuilt identically on load.
            self.register_buffer("proj", proj.to(torch.float32), persistent=False)
        self._grid_cache: dict[tuple[int, int], tuple[int, int]] = {}

    @property
    def dim(self) -> int:
        return self.out_dim

    def train(self, mode: bool = True) -> "PatchFeatureExtractor":
        # The backbone is a fixed ImageNet feature extractor: BatchNorm statistics must never move.
        super().train(mode)
        self.backbone.eval()
        return self

    def feature_maps(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> aggregated, concatenated (B, sum C, h, w) before the projection."""
        feats = self.backbone(x)
        sel = [feats[l] for l in self.layers]
        if self.patch_size > 1:
            p = self.patch_size
            # count_include_pad=True (the config default; PatchCore's zero-padded unfold): border patches
            # shrink towards zero, identically in training and test, so a border patch is matched with
            # the bank's border patches instead of with interior ones.  False (average of the real
            # neighbours only) scored lower on the synthetic-defect validation split of magnetic_tile
            # (I-AUROC 0.862 vs 0.979, benchmarks/RESULTS.md), with image maxima drawn to the border.
            sel = [F.avg_pool2d(f, p, stride=1, padding=p // 2, count_include_pad=self.count_include_pad)
                   for f in sel]
        h, w = sel[0].shape[-2:]
        out = [sel[0]]
        for f in sel[1:]:
            out.append(f if tuple(f.shape[-2:]) == (h, w) else
                       F.interpolate(f, size=(int(h), int(w)), mode="bilinear", align_corners=False))
        return torch.cat(out, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        m = self.feature_maps(x)
        b, c = m.shape[0], m.shape[1]
        y = m.reshape(b, c, -1)
        if self.project:
            y = torch.matmul(self.proj, y)                 # (B, D, h*w)
        return y.transpose(1, 2).contiguous()              # (B, h*w, D)

    @torch.no_grad()
    def grid_size(self, input_hw: tuple[int, int] | int) -> tuple[int, int]:
        """Patch grid (h, w) for an input size; found by a dummy pass (exact for any backbone padding)."""
        hw = (int(input_hw), int(input_hw)) if isinstance(input_hw, int) else (int(input_hw[0]), int(input_hw[1]))
        if hw not in self._grid_cache:
            p = next(self.backbone.parameters(), None)
            dev = p.device if p is not None else torch.device("cpu")
            was = self.backbone.training
            self.backbone.eval()
            f = self.backbone(torch.zeros(1, 3, *hw, device=dev))[self.layers[0]]
            self.backbone.train(was)
            self._grid_cache[hw] = (int(f.shape[-2]), int(f.shape[-1]))
        return self._grid_cache[hw]


@torch.no_grad()
def extract_patch_features(module: nn.Module, images: np.ndarray | Tensor, batch_size: int = 16,
                           device: str | torch.device = "cpu", out_dtype: np.dtype = np.float32,
                           progress: bool = False, desc: str = "features",
                           max_per_image: int | None = None, seed: int = 0) -> np.ndarray:
    """Run `module` (images -> (B, P, D)) over N images; returns (N*P', D) in `out_dtype`.

    max_per_image: keep a seeded random subset of P' patches per image (bounds memory for
    large grids / many images); None keeps all P.
    """
    from tqdm.auto import tqdm

    n = len(images)
    if n == 0:
        raise ValueError("no images given")
    module.eval()
    rng = np.random.default_rng(seed)
    chunks: list[np.ndarray] = []
    for s in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        xb = images[s:s + batch_size]
        xb = (xb if isinstance(xb, Tensor) else torch.from_numpy(np.ascontiguousarray(xb, np.float32)))
        e = module(xb.to(device)).float().cpu().numpy()
        if max_per_image is not None and max_per_image < e.shape[1]:
            keep = np.stack([np.sort(rng.choice(e.shape[1], max_per_image, replace=False)) for _ in range(len(e))])
            e = np.take_along_axis(e, keep[:, :, None], axis=1)
        chunks.append(e.reshape(-1, e.shape[-1]).astype(out_dtype, copy=False))
    return np.concatenate(chunks, axis=0)


# ----------------------------------------------------------------------------- scoring reference
def gaussian_blur_reflect(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, H, W) maps exactly as scipy.ndimage.gaussian_filter
    (truncate 4, mode 'reflect' = half-sample symmetric); sigma <= 0 returns the input.
    The one torch blur: methods.common.gaussian_blur_torch."""
    from .common import gaussian_blur_torch

    return gaussian_blur_torch(maps, sigma)


@torch.no_grad()
def bank_neighbours(bank: Tensor, b: int, chunk: int = 2048) -> Tensor:
    """(M, b) int64: the b nearest bank entries of every bank entry, itself included first."""
    m = bank.shape[0]
    if b > m:
        raise ValueError(f"reweight_b={b} exceeds the bank size {m}")
    bd = bank.to(torch.float64)
    out = torch.empty(m, b, dtype=torch.int64)
    for s in range(0, m, chunk):
        d = torch.cdist(bd[s:s + chunk], bd)
        rows = torch.arange(s, min(s + chunk, m))
        d[torch.arange(len(rows)), rows] = -1.0   # self first even when a duplicate exists
        out[s:s + chunk] = torch.topk(d, b, dim=1, largest=False).indices.cpu()
    return out


@torch.no_grad()
def nn_scores_torch(q: Tensor, bank: Tensor, b: int = 0, neighbours: Tensor | None = None,
                    chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Eq. 9 / Eq. 10 patch scores of queries q (Q, D) against bank (M, D), in float64.

    Returns (scores (Q,), nn_idx (Q,)).  b = 0: plain NN distance.  `neighbours` is
    `bank_neighbours(bank, b)` (computed when not given).
    """
    if b == 1:
        raise ValueError("reweight_b=1 makes the Eq. 10 weight identically 0; use 0 (off) or >= 2")
    bd = bank.to(torch.float64)
    if b > 0 and neighbours is None:
        neighbours = bank_neighbours(bank, b)
    scores = torch.empty(q.shape[0], dtype=torch.float64)
    nn_idx = torch.empty(q.shape[0], dtype=torch.int64)
    for s in range(0, q.shape[0], chunk):
        qc = q[s:s + chunk].to(torch.float64)
        # float64 + the matmul form of cdist: fast and exact enough to serve as a reference.
        d = torch.cdist(qc, bd)
        s1, i1 = d.min(dim=1)
        if b > 0:
            sup = neighbours[i1]                                   # (q, b)
            dsup = torch.linalg.vector_norm(qc[:, None, :] - bd[sup], dim=-1)
            dsup[:, 0] = s1                                         # r* itself: the same value as s'
            # exp(s') / sum exp(D) = 1 / sum exp(D - s'): stable because D >= s'.
            w = 1.0 - 1.0 / torch.exp(dsup - s1[:, None]).sum(1)
            s1 = w * s1
        scores[s:s + chunk] = s1
        nn_idx[s:s + chunk] = i1
    return scores, nn_idx


# ----------------------------------------------------------------------------- the trained model
# method name -> module providing `build_embedder(config: dict) -> nn.Module` (random init).
_EMBEDDER_BUILDERS: dict[str, str] = {
    "patchcore": "edgeuad.methods.patchcore",
    "reconpatch": "edgeuad.methods.reconpatch",
}


def register_embedder_builder(method: str, module: str) -> None:
    _EMBEDDER_BUILDERS[method] = module


@dataclass
class PatchModel:
    """A trained patch memory-bank model (PatchCore or ReConPatch).

    embedder: eval module, float32 (N, 3, H, W) -> (N, h*w, D); exported to ONNX as is.
    bank: (M, D) float32 coreset in the embedder's output space.
    config: the method config as a dict, including "method", "sigma", "topk_frac", "image_size".
    """

    method: str
    config: dict[str, Any]
    embedder: nn.Module
    bank: np.ndarray
    grid: tuple[int, int]
    reweight_b: int
    _neighbours: Tensor | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.bank.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        s = self.config["image_size"]
        return (int(s), int(s)) if isinstance(s, (int, float)) else (int(s[0]), int(s[1]))

    def state_dict(self) -> dict[str, Tensor]:
        """Everything needed (with `config`) to rebuild the model: embedder weights + bank."""
        sd = {f"embedder.{k}": v.detach().cpu().contiguous() for k, v in self.embedder.state_dict().items()}
        sd["bank"] = torch.from_numpy(np.ascontiguousarray(self.bank, dtype=np.float32))
        return sd

    def _device(self) -> torch.device:
        p = next(self.embedder.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.no_grad()
    def embed(self, images: np.ndarray | Tensor, batch_size: int = 8) -> np.ndarray:
        """(N, 3, H, W) preprocessed images -> (N, h*w, D) float32 embeddings."""
        self.embedder.eval()
        out = []
        for s in range(0, len(images), batch_size):
            xb = images[s:s + batch_size]
            xb = xb if isinstance(xb, Tensor) else torch.from_numpy(np.ascontiguousarray(xb, np.float32))
            out.append(self.embedder(xb.to(self._device())).float().cpu().numpy())
        return np.concatenate(out, axis=0)

    @torch.no_grad()
    def patch_scores_torch(self, images: np.ndarray | Tensor, batch_size: int = 8) -> np.ndarray:
        """(N, h, w) float32 patch scores (Eq. 9, reweighted by Eq. 10 when reweight_b > 0)."""
        emb = self.embed(images, batch_size)
        n, p, d = emb.shape
        bank = torch.from_numpy(self.bank)
        if self.reweight_b > 0 and self._neighbours is None:
            self._neighbours = bank_neighbours(bank, self.reweight_b)
        s, _ = nn_scores_torch(torch.from_numpy(emb.reshape(n * p, d)), bank, self.reweight_b, self._neighbours)
        return s.to(torch.float32).numpy().reshape(n, *self.grid)

    @torch.no_grad()
    def score_torch(self, images: np.ndarray | Tensor, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Torch reference: (maps (N, H, W) float32, image scores (N,) = max of each map)."""
        dist = torch.from_numpy(self.patch_scores_torch(images, batch_size))
        h, w = int(images.shape[-2]), int(images.shape[-1])
        maps = F.interpolate(dist[:, None], size=(h, w), mode="bilinear", align_corners=True)[:, 0]
        maps = gaussian_blur_reflect(maps, float(self.config.get("sigma", 4.0)))
        return maps.numpy().astype(np.float32), maps.flatten(1).max(1).values.numpy().astype(np.float32)


def load_patch_model(state: Mapping[str, Tensor], config: Mapping[str, Any]) -> PatchModel:
    """Rebuild a `PatchModel` from `PatchModel.state_dict()` and `PatchModel.config` (no downloads)."""
    config = dict(config)
    method = config.get("method")
    if method not in _EMBEDDER_BUILDERS:
        raise ValueError(f"config has method {method!r}; expected one of {sorted(_EMBEDDER_BUILDERS)}")
    if "bank" not in state:
        raise ValueError("state has no 'bank' tensor: not a PatchModel state dict")
    builder = importlib.import_module(_EMBEDDER_BUILDERS[method]).build_embedder
    embedder = builder(config)
    emb_state = {k[len("embedder."):]: v for k, v in state.items() if k.startswith("embedder.")}
    embedder.load_state_dict(emb_state, strict=True)
    embedder.eval()
    bank = state["bank"].detach().cpu().to(torch.float32).numpy()
    pm = PatchModel(method=str(method), config=config, embedder=embedder, bank=bank,
                    grid=_grid_of(embedder, config), reweight_b=int(config.get("reweight_b", 0)))
    return pm


def _grid_of(embedder: nn.Module, config: Mapping[str, Any]) -> tuple[int, int]:
    ext = embedder if isinstance(embedder, PatchFeatureExtractor) else getattr(embedder, "extractor")
    s = config["image_size"]
    hw = (int(s), int(s)) if isinstance(s, (int, float)) else (int(s[0]), int(s[1]))
    return ext.grid_size(hw)


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """256 or (256, 320) -> (H, W)."""
    if isinstance(image_size, (int, float)):
        return int(image_size), int(image_size)
    hw = tuple(int(v) for v in image_size)
    if len(hw) != 2:
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
    return hw  # type: ignore[return-value]


def check_images(images: np.ndarray, image_size: int | Sequence[int]) -> np.ndarray:
    """Validate preprocessed training input: float32 (N, 3, H, W) at the configured size, finite."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a float32 N x 3 x H x W array (edgeuad.preprocess output), got "
                         f"{getattr(images, 'shape', type(images))}")
    if len(images) == 0:
        raise ValueError("no training images")
    hw = image_hw(image_size)
    if tuple(images.shape[2:]) != hw:
        raise ValueError(f"images are {images.shape[2]}x{images.shape[3]} but config.image_size is {hw}; "
                         "preprocess with PreprocessConfig(size=image_size)")
    if not np.isfinite(images).all():
        raise ValueError("images contain NaN/inf")
    return np.ascontiguousarray(images, dtype=np.float32)


@dataclass
class PatchBankConfig:
    """The fields and checks every patch memory-bank method shares (PatchCore, ReConPatch), with
    their JSON round trip.  One place, so the baseline and the paper method cannot drift apart on
    the features or the bank they are compared on.

    backbone/pretrained: `edgeuad.backbones.build_backbone` arguments (pretrained may be a path);
        backbone "auto" (default): chosen at training time among EfficientNet-Lite0/1/2 on the
        synthetic-defect split of the held-out normals (`methods.backbone_choice`); the run and the
        bundle record the chosen name and the scores behind it.
    input_norm: the input's mean/std: "imagenet" (ImageNet mean/std), "inception" ((x - 127) / 128, what
        the EfficientNet-Lite weights were trained with) or "auto" (default): chosen with the backbone
        on the same split, the cheapest (backbone, normalisation) pair within the margin, ImageNet first
        at equal cost (`methods.backbone_choice`); the run records the chosen one.
    image_size: network input (int or (H, W)); must equal the preprocessed images' size.
    layers: backbone stages used (1, 2 = strides 8 and 16, PatchCore's "layer2 + layer3").
    patch_size: local aggregation neighbourhood (3 as in PatchCore); count_include_pad: whether the
        zero padding of the border counts in the local average (PatchCore's zero-padded unfold: True).
    pre_dim/out_dim: per-stage and final feature dimension of PatchCore's channel projection
        (1024/1024 for WideResNet-50); 0/0 (default) = no projection, the raw concatenation
        (Lite0: 40 + 112 = 152 dims), which keeps each channel's own weight in the distance (see
        PatchFeatureExtractor) and makes the NN search cheaper.
    coreset_ratio: fraction of training patches kept (PatchCore: 0.1 or 0.01; ReConPatch: 0.01);
        coreset_min_items floors it so small training sets keep a usable bank.
    coreset_proj_dim: random-projection dimension used by the greedy selection.
    bank_includes_holdout: `edgeuad train` holds normal images out for the threshold; True (default)
        rebuilds the shipped bank over all normal images once they have served: the threshold is
        calibrated at export on the bank without them (kept in the run as `calibration_bank`), where
        they are unseen like a test image.  More normal data in the bank is what a plain PatchCore
        has (it fits on every training image); False ships the bank the threshold was calibrated on.
    reweight_b: Eq. 10 neighbourhood size (0 = plain NN distance; PatchCore uses 9 in
        anomalib's image-level form; here applied per patch as ReConPatch does).
    sigma: Gaussian blur of the anomaly map (4 as in PatchCore); topk_frac for the top-k score.
    seed; device: "cpu", "cuda", "auto"; batch_size: images per feature-extraction batch.
    """

    backbone: str = "auto"
    pretrained: bool | str = True
    input_norm: str = "auto"
    image_size: int | tuple[int, int] = 256
    layers: tuple[int, ...] = (1, 2)
    patch_size: int = 3
    count_include_pad: bool = True
    pre_dim: int = 0
    out_dim: int = 0
    coreset_ratio: float = 0.01  # the same 1% for both methods, so the baseline comparison is fair
    coreset_min_items: int = 1000
    coreset_proj_dim: int = 128
    bank_includes_holdout: bool = True
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
        if self.backbone == "auto" and not isinstance(self.pretrained, bool):
            raise ValueError(f"a weights file ({self.pretrained}) is for one backbone: name it (backbone=...) "
                             "instead of 'auto'")
        if self.input_norm not in ("auto", *INPUT_NORMS):
            raise ValueError(f"input_norm must be 'auto' or one of {sorted(INPUT_NORMS)}, got {self.input_norm!r}")
        if "auto" in (self.backbone, self.input_norm) and not isinstance(self.image_size, int):
            raise ValueError("backbone/input_norm 'auto' score a square synthetic-defect split: use a square "
                             "image_size or name a backbone and an input_norm")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.reweight_b < 0 or self.reweight_b == 1:
            raise ValueError("reweight_b must be 0 (off) or >= 2")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        d["layers"] = list(d["layers"])
        if not isinstance(d["image_size"], int):
            d["image_size"] = list(d["image_size"])
        d["pretrained"] = d["pretrained"] if isinstance(d["pretrained"], bool) else str(d["pretrained"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):  # noqa: ANN206 - returns cls
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names - {"method"}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        kw = {k: v for k, v in d.items() if k in names}
        if "image_size" in kw and not isinstance(kw["image_size"], int):
            kw["image_size"] = tuple(kw["image_size"])
        return cls(**kw)
