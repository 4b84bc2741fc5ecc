"""ReConPatch (Hyun et al., WACV 2024): contrastive patch representation learning + PatchCore scoring.

Pipeline (paper Sec. 3):
  frozen PatchCore features p  ->  f (linear, D -> repr_dim)  ->  g (projection head)  ->  z
  pseudo-labels from an EMA copy (f̄, ḡ):  z̄ = ḡ(f̄(p))
    pairwise   w^P_ij = exp(-||z̄_i - z̄_j||^2 / sigma)                         (Eq. 1)
    contextual w̃_ij  = |N_k(i) ∩ N_k(j)| / |N_k(i)|  if j ∈ N_k(i) else 0       (Eq. 2)
               ŵ_ij  = mean_{l ∈ R_{k/2}(i)} w̃_lj, R = reciprocal neighbours   (Eqs. 3, 4)
               w^C   = (ŵ + ŵ^T) / 2                                           (Eq. 5)
    w = alpha w^P + (1 - alpha) w^C                                            (Eq. 6)
  relaxed contrastive loss on z = g(f(p)) with delta_ij = ||z_i - z_j|| / mean_n ||z_i - z_n||   (Eq. 7)
  EMA: θ̄ <- γ θ̄ + (1 - γ) θ                                                    (Eq. 8)
After training the bank is the greedy coreset of f(p) over all training patches and a test
patch scores its NN distance with the Eq. 10 reweighting (see `patch_features`).  The
exported embedder is backbone + aggregation + f (g is only a training head, as in SimCLR).

Choices the paper leaves open (all config fields, see `ReConPatchConfig`):
  * z̄ is L2-normalised before Eqs. 1-5 (`pseudo_l2norm`): the Gaussian bandwidth (0.2)
    then has a fixed meaning (squared distances in [0, 4]) whatever the scale f/g drift to;
    the loss itself uses the raw z (Eq. 7 is scale-free through delta anyway).
  * N_k(i) contains i itself (its own nearest neighbour, as in STML's reference code);
    R_{k/2} uses max(1, k // 2) neighbours.
  * f starts orthogonal with zero bias (orthonormal columns when repr_dim >= the feature dim),
    so training starts from PatchCore's distances rather than a random linear map of them;
  * the i = j terms of Eq. 7 are left out: delta_ii = 0, so they are a constant with no gradient.
  * optimiser: AdamW (AdamP is not available), cosine learning-rate schedule as in the paper.
  * minibatches of `batch_patches` patches drawn uniformly from all training patches; the
    draw is a pure function of (seed, step), so a resumed run is bit-identical.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import (load_checkpoint, optimizer_from_flat, optimizer_to_flat, progress_bar, resolve_device,
                     save_checkpoint, seed_everything)
from .memory_bank import coreset_bank
from .patch_features import (PatchBankConfig, PatchFeatureExtractor, PatchModel, check_images, extract_patch_features,
                             image_hw)
from .patchcore import build_extractor

log = logging.getLogger(__name__)

__all__ = [
    "ReConPatchConfig",
    "ReConPatchEmbedder",
    "ReConPatchTrainer",
    "build_embedder",
    "contextual_similarity",
    "ema_update",
    "ensemble_scores",
    "modified_zscore",
    "pairwise_similarity",
    "pseudo_labels",
    "relaxed_contrastive_loss",
    "train_reconpatch",
]

CHECKPOINT_NAME = "reconpatch_last.safetensors"
# Fields that do not change what is trained; allowed to differ when resuming.
_RUN_ONLY_FIELDS = ("device", "batch_size", "checkpoint_every", "sigma", "topk_frac", "reweight_b")


@dataclass
class ReConPatchConfig(PatchBankConfig):
    """ReConPatch hyperparameters (JSON round trip with to_dict/from_dict).

    Patch features and bank (shared with PatchCore): backbone, pretrained, image_size, layers,
        patch_size, pre_dim, out_dim, coreset_*, reweight_b (Eq. 10), sigma, topk_frac, seed,
        device, batch_size - see `PatchBankConfig`.
    repr_dim: output of f, the bank dimension (paper: 512, Table 2's best).
    proj_dim / proj_hidden: g = Linear(repr_dim, proj_hidden) - ReLU - Linear(proj_hidden, proj_dim),
        a SimCLR-style head (the paper does not specify g); hidden = repr_dim by default.
    kernel_sigma: Gaussian bandwidth of Eq. 1 on the L2-normalised z̄.  0.2, not the ~1 of public
        re-implementations: measured on lite0 patch features at initialisation, squared distances
        of the normalised z̄ span 0.2-1.3, so sigma=1 gives every pair w^P in 0.3-0.8 and the loss
        attracts all pairs alike; at 0.2 the median pair gets 0.04 and the 4 nearest ~0.5.
    k: neighbourhood size of Eqs. 2-4 (public re-implementations: 5).
    alpha: pairwise/contextual mix of Eq. 6 (0.5: equal weight, the STML default).
    margin: repelling margin m of Eq. 7.  delta has a per-row mean of 1, so m=1 repels the
        (1 - w)-weighted pairs that are closer than the average distance.  Measured at
        initialisation only 0.5% of pairs have delta < 0.5, so m=0.5 left the repelling term
        inactive and training only pulled pairs together.
    ema: momentum γ of Eq. 8 (0.99: a ~100-step time constant, short enough for the CPU
        schedule below, long enough to keep pseudo-labels stable).
    batch_patches: patches per minibatch N (the pseudo-labels are N x N).
    steps / lr / weight_decay: the paper trains 120 epochs at lr 1e-5 (AdamP, wd 1e-2, cosine).
        One "epoch" over 200 images x 32x32 patches at N=1024 is 200 steps, i.e. 24k steps -
        hours on a 2-core CPU.  Defaults here (500 steps at lr 1e-4, cosine, AdamW wd 1e-2)
        train in about a minute; use steps=24000, lr=1e-5 for the paper's budget.
    pseudo_l2norm: L2-normalise z̄ before the pseudo-labels (see module docstring).
    feature_dtype: storage of the precomputed training patch features: "float32", "float16"
        or "auto" (float32 up to 1 GiB, else float16: 200 images x 1024 patches x 256 dims
        is 210 MB in float32).  max_patches_per_image: optional random subsample per image.
    checkpoint_every: steps between atomic checkpoints when a checkpoint_dir is given.
    compress_head: after training, replace f (in_dim -> repr_dim, repr_dim > in_dim) by the exact
        in_dim -> in_dim map R with f = Q R (QR decomposition): every f(x) - f(y) lies in the span of
        f's in_dim columns, so ||R(x - y)|| = ||f(x) - f(y)|| and every bank distance, map and score is
        unchanged while the bank and its search shrink by repr_dim / in_dim (512 / 152 on lite0: the
        search is most of a patch method's time).  Runs saved before this option rebuild without it.
    """

    repr_dim: int = 512
    proj_dim: int = 128
    proj_hidden: int | None = None
    kernel_sigma: float = 0.2
    k: int = 5
    alpha: float = 0.5
    margin: float = 1.0
    ema: float = 0.99
    batch_patches: int = 1024
    steps: int = 500
    lr: float = 1e-4
    weight_decay: float = 1e-2
    pseudo_l2norm: bool = True
    feature_dtype: str = "auto"
    max_patches_per_image: int | None = None
    checkpoint_every: int = 100
    compress_head: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 2:
            raise ValueError(f"k must be >= 2, got {self.k}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.batch_patches <= self.k:
            raise ValueError("batch_patches must exceed k")
        if self.feature_dtype not in ("auto", "float32", "float16"):
            raise ValueError(f"feature_dtype must be auto/float32/float16, got {self.feature_dtype!r}")


# ----------------------------------------------------------------------------- networks
def make_heads(in_dim: int, cfg: ReConPatchConfig) -> tuple[nn.Linear, nn.Sequential]:
    """f (the kept representation layer) and g (the training-only projection head)."""
    hidden = cfg.proj_hidden or cfg.repr_dim
    f = nn.Linear(in_dim, cfg.repr_dim)
    # Distance-preserving start: with orthonormal columns (repr_dim >= in_dim) ||f(x) - f(y)|| =
    # ||x - y||, so an untrained model scores exactly as PatchCore on the same features and
    # training moves away from that baseline.  PyTorch's default init is a random map that
    # distorts the distances (ratios 0.76-0.88, 93% NN agreement, measured on lite0 features).
    nn.init.orthogonal_(f.weight)
    nn.init.zeros_(f.bias)
    g = nn.Sequential(nn.Linear(cfg.repr_dim, hidden), nn.ReLU(), nn.Linear(hidden, cfg.proj_dim))
    return f, g


class ReConPatchEmbedder(nn.Module):
    """Exported module: images -> f(PatchCore features), (B, h*w, repr_dim)."""

    def __init__(self, extractor: PatchFeatureExtractor, f: nn.Linear) -> None:
        super().__init__()
        self.extractor = extractor
        self.f = f

    def forward(self, x: Tensor) -> Tensor:
        return self.f(self.extractor(x))

    def grid_size(self, input_hw: tuple[int, int] | int) -> tuple[int, int]:
        return self.extractor.grid_size(input_hw)


def build_embedder(config: Mapping[str, Any]) -> ReConPatchEmbedder:
    """Random-init embedder with the architecture of `config` (weights come from a state dict)."""
    cfg = ReConPatchConfig.from_dict(config)
    ext = build_extractor(config, pretrained=False)
    # a config without the key is a run saved before compress_head existed: its f was kept whole
    out = min(cfg.repr_dim, ext.out_dim) if config.get("compress_head", False) else cfg.repr_dim
    return ReConPatchEmbedder(ext, nn.Linear(ext.out_dim, out)).eval()


@torch.no_grad()
def compress_head(f: nn.Linear) -> nn.Linear:
    """The in_dim -> in_dim layer with the same pairwise distances as f (see ReConPatchConfig.compress_head):
    f(x) = W x + b with W = Q R (reduced QR, Q orthonormal columns), returns x -> R x + Q^T b = Q^T f(x).
    f itself when it does not widen (repr_dim <= in_dim: nothing to gain)."""
    if f.out_features <= f.in_features:
        return f
    w = f.weight.detach().double().cpu()
    q, r = torch.linalg.qr(w, mode="reduced")          # (out, in), (in, in)
    g = nn.Linear(f.in_features, f.in_features).to(f.weight.device)
    g.weight.copy_(r.float())
    g.bias.copy_((q.T @ f.bias.detach().double().cpu()).float())
    return g.eval()


# ----------------------------------------------------------------------------- pseudo-labels (Eqs. 1-6)
def _sq_dists(z: Tensor) -> Tensor:
    sq = (z * z).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)).clamp_min(0.0)
    return d2.fill_diagonal_(0.0)


def pairwise_similarity(z: Tensor, sigma: float) -> Tensor:
    """Eq. 1: exp(-||z_i - z_j||^2 / sigma), (N, N)."""
    return torch.exp(-_sq_dists(z) / sigma)


def knn_indices(z: Tensor, k: int) -> Tensor:
    """(N, k) indices of the k nearest neighbours of every row, the row itself first."""
    d2 = _sq_dists(z)
    d2.fill_diagonal_(-1.0)  # self is the first neighbour even if a duplicate point exists
    return torch.topk(d2, k, dim=1, largest=False).indices


def contextual_similarity(z: Tensor, k: int) -> Tensor:
    """Eqs. 2-5 with neighbour index arithmetic (O(N k^2 + N^2), no N^3 matmul)."""
    n = z.shape[0]
    knn = knn_indices(z, k)                                         # N_k(i), (N, k)
    # Eq. 2: for j = knn[i, a], |N_k(i) ∩ N_k(j)| / k.
    nbr_of_nbr = knn[knn]                                           # (N, k, k): N_k(knn[i, a])
    overlap = (nbr_of_nbr[:, :, :, None] == knn[:, None, None, :]).any(-1).sum(-1)  # (N, k)
    w_tilde = torch.zeros(n, n, dtype=z.dtype, device=z.device)
    w_tilde.scatter_(1, knn, overlap.to(z.dtype) / k)
    # Eq. 3 with k/2: l ∈ R(i) iff l ∈ N_{k/2}(i) and i ∈ N_{k/2}(l).  Always contains i.
    kh = max(1, k // 2)
    half = knn[:, :kh]                                              # (N, kh)
    rows = torch.arange(n, device=z.device)
    recip = (half[half] == rows[:, None, None]).any(-1)             # (N, kh): i ∈ N_{k/2}(half[i, a])
    # Eq. 4: ŵ_ij = mean over l ∈ R(i) of w̃_lj.
    wts = recip.to(z.dtype) / recip.sum(1, keepdim=True).to(z.dtype)   # (N, kh)
    w_hat = (w_tilde[half] * wts[:, :, None]).sum(1)                # (N, N)
    return 0.5 * (w_hat + w_hat.T)                                  # Eq. 5


def pseudo_labels(z_bar: Tensor, sigma: float, k: int, alpha: float, l2norm: bool = True) -> Tensor:
    """Eq. 6: alpha * pairwise + (1 - alpha) * contextual similarity of the EMA embeddings."""
    if l2norm:
        z_bar = F.normalize(z_bar, dim=1)
    return alpha * pairwise_similarity(z_bar, sigma) + (1.0 - alpha) * contextual_similarity(z_bar, k)


def relaxed_contrastive_loss(z: Tensor, w: Tensor, margin: float) -> Tensor:
    """Eq. 7 (1/N sum_i sum_{j != i}); w are fixed pseudo-labels in [0, 1]."""
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sq = (z * z).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    # clamp before sqrt: sqrt'(0) is infinite; the diagonal is masked out of the loss anyway.
    d = torch.sqrt(d2.clamp_min(1e-12)).masked_fill(eye, 0.0)
    delta = d / d.mean(dim=1, keepdim=True).clamp_min(1e-12)       # mean over n includes n = i (0)
    w = w.detach()
    per_pair = w * delta.pow(2) + (1.0 - w) * F.relu(margin - delta).pow(2)
    return per_pair.masked_fill(eye, 0.0).sum(1).mean()


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, gamma: float) -> None:
    """Eq. 8: θ̄ <- γ θ̄ + (1 - γ) θ, parameter by parameter (buffers copied)."""
    for pt, ps in zip(target.parameters(), source.parameters()):
        pt.mul_(gamma).add_(ps.detach(), alpha=1.0 - gamma)
    for bt, bs in zip(target.buffers(), source.buffers()):
        bt.copy_(bs)


# ----------------------------------------------------------------------------- score fusion (Eq. 11)
def modified_zscore(scores: np.ndarray, reference_scores: np.ndarray, beta: float = 1.4826) -> np.ndarray:
    """Eq. 11: (s - median(ref)) / (beta * MAD(ref)); MAD = median |ref - median(ref)|.

    reference_scores are a model's scores on nominal (training/validation) data.  With
    beta = 1.4826, beta*MAD estimates the standard deviation of normally distributed scores.
    """
    ref = np.asarray(reference_scores, dtype=np.float64).ravel()
    if ref.size == 0:
        raise ValueError("modified_zscore needs reference scores")
    med = float(np.median(ref))
    mad = float(np.median(np.abs(ref - med)))
    if not mad > 0.0:
        raise ValueError("reference scores have zero median absolute deviation: cannot normalise")
    return ((np.asarray(scores, dtype=np.float64) - med) / (beta * mad)).astype(np.float32)


def ensemble_scores(scores: Sequence[np.ndarray], references: Sequence[np.ndarray],
                    beta: float = 1.4826) -> np.ndarray:
    """Score-level fusion of several models: mean of their modified z-scores (Eq. 11).

    scores[i] and references[i] belong to model i; all scores arrays must have one shape
    (image scores (N,) or maps (N, H, W)).
    """
    if len(scores) == 0 or len(scores) != len(references):
        raise ValueError("need one reference array per model and at least one model")
    shapes = {np.shape(s) for s in scores}
    if len(shapes) != 1:
        raise ValueError(f"score arrays of the models differ in shape: {sorted(shapes)}")
    z = [modified_zscore(s, r, beta) for s, r in zip(scores, references)]
    return np.mean(np.stack(z), axis=0).astype(np.float32)


# ----------------------------------------------------------------------------- trainer
def _fingerprint(feats: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str((feats.shape, str(feats.dtype))).encode())
    h.update(np.ascontiguousarray(feats[:: max(1, len(feats) // 4096)]).tobytes())
    return h.hexdigest()[:32]


class ReConPatchTrainer:
    """Trains f, g (and the EMA f̄, ḡ) on precomputed patch features (Ntot, D).

    Deterministic: the minibatch of step t is drawn from `default_rng([seed, t])`, the
    learning rate is a pure function of t, so save/resume reproduces an uninterrupted run.
    """

    def __init__(self, cfg: ReConPatchConfig, feats: np.ndarray, device: str | torch.device = "cpu") -> None:
        if feats.ndim != 2 or len(feats) <= cfg.k:
            raise ValueError(f"need (Ntot > k, D) patch features, got {feats.shape}")
        self.cfg = cfg
        self.feats = feats
        self.device = torch.device(device)
        torch.manual_seed(cfg.seed)
        self.f, self.g = make_heads(feats.shape[1], cfg)
        self.f.to(self.device)
        self.g.to(self.device)
        self.f_ema = copy.deepcopy(self.f).requires_grad_(False)
        self.g_ema = copy.deepcopy(self.g).requires_grad_(False)
        self.opt = torch.optim.AdamW(list(self.f.parameters()) + list(self.g.parameters()),
                                     lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step_index = 0
        self.losses: list[float] = []
        self.fingerprint = _fingerprint(feats)

    def lr_at(self, step: int) -> float:
        """Cosine annealing from lr to 0 over cfg.steps (the paper's schedule)."""
        return 0.5 * self.cfg.lr * (1.0 + math.cos(math.pi * min(step, self.cfg.steps) / max(1, self.cfg.steps)))

    def batch(self, step: int) -> Tensor:
        n = min(self.cfg.batch_patches, len(self.feats))
        idx = np.sort(np.random.default_rng([self.cfg.seed, step]).choice(len(self.feats), n, replace=False))
        return torch.from_numpy(self.feats[idx].astype(np.float32, copy=False)).to(self.device)

    def train_step(self) -> float:
        cfg = self.cfg
        p = self.batch(self.step_index)
        for grp in self.opt.param_groups:
            grp["lr"] = self.lr_at(self.step_index)
        with torch.no_grad():
            w = pseudo_labels(self.g_ema(self.f_ema(p)), cfg.kernel_sigma, cfg.k, cfg.alpha, cfg.pseudo_l2norm)
        loss = relaxed_contrastive_loss(self.g(self.f(p)), w, cfg.margin)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        ema_update(self.f_ema, self.f, cfg.ema)
        ema_update(self.g_ema, self.g, cfg.ema)
        self.step_index += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"ReConPatch loss became {value} at step {self.step_index}")
        self.losses.append(value)
        return value

    def fit(self, progress: bool = True, checkpoint: str | Path | None = None,
            stop_at: int | None = None) -> list[float]:
        """Train up to cfg.steps (or `stop_at`), checkpointing every cfg.checkpoint_every steps."""
        end = self.cfg.steps if stop_at is None else min(stop_at, self.cfg.steps)
        bar = progress_bar(end, desc="reconpatch", enabled=progress, initial=self.step_index)
        try:
            while self.step_index < end:
                loss = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if self.step_index % 50 == 0 or self.step_index == end:
                    log.info("reconpatch step %d/%d loss %.5f lr %.2e", self.step_index, self.cfg.steps, loss,
                             self.lr_at(self.step_index - 1))
                if checkpoint is not None and (self.step_index % self.cfg.checkpoint_every == 0
                                               or self.step_index == end):
                    self.save(checkpoint)
        finally:
            bar.close()
        return self.losses

    # --- checkpoints: safetensors + JSON meta, atomic (common.save_checkpoint) -----------------
    def save(self, path: str | Path) -> Path:
        tensors: dict[str, Tensor] = {}
        for name, mod in (("f", self.f), ("g", self.g), ("f_ema", self.f_ema), ("g_ema", self.g_ema)):
            tensors.update({f"{name}.{k}": v for k, v in mod.state_dict().items()})
        opt_t, opt_meta = optimizer_to_flat(self.opt, "opt")
        tensors.update(opt_t)
        tensors["losses"] = torch.tensor(self.losses, dtype=torch.float64)
        meta = {"step": self.step_index, "config": self.cfg.to_dict(), "optimizer": opt_meta,
                "features": self.fingerprint}
        return save_checkpoint(path, tensors, meta)

    def load(self, path: str | Path) -> None:
        tensors, meta = load_checkpoint(path, device=self.device)
        mine, theirs = self.cfg.to_dict(), meta["config"]
        diff = sorted(k for k in set(mine) | set(theirs)
                      if k not in _RUN_ONLY_FIELDS and mine.get(k) != theirs.get(k))
        if diff:
            raise ValueError(f"checkpoint {path} was trained with a different config ({diff}); "
                             "use another checkpoint_dir or resume=False")
        if meta["features"] != self.fingerprint:
            raise ValueError(f"checkpoint {path} was trained on different patch features (other images)")
        for name, mod in (("f", self.f), ("g", self.g), ("f_ema", self.f_ema), ("g_ema", self.g_ema)):
            pre = f"{name}."
            mod.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}, strict=True)
        optimizer_from_flat(self.opt, tensors, meta["optimizer"], "opt")
        self.step_index = int(meta["step"])
        self.losses = [float(v) for v in tensors["losses"].tolist()]
        log.info("resumed ReConPatch from %s at step %d", path, self.step_index)


def _feature_dtype(cfg: ReConPatchConfig, n_images: int, n_patches: int, dim: int) -> type:
    if cfg.feature_dtype == "float32":
        return np.float32
    if cfg.feature_dtype == "float16":
        return np.float16
    per = n_patches if cfg.max_patches_per_image is None else min(n_patches, cfg.max_patches_per_image)
    return np.float32 if n_images * per * dim * 4 <= (1 << 30) else np.float16


@torch.no_grad()
def _apply_f(f: nn.Linear, feats: np.ndarray, chunk: int = 65536) -> np.ndarray:
    out = np.empty((len(feats), f.out_features), dtype=np.float32)
    dev = f.weight.device
    for s in range(0, len(feats), chunk):
        x = torch.from_numpy(feats[s:s + chunk].astype(np.float32, copy=False)).to(dev)
        out[s:s + chunk] = f(x).cpu().numpy()
    return out


def train_reconpatch(cfg: ReConPatchConfig, images: np.ndarray, progress: bool = True,
                     checkpoint_dir: str | Path | None = None, resume: bool = True,
                     stop_at: int | None = None) -> PatchModel | None:
    """Fit ReConPatch on preprocessed nominal images (float32 N x 3 x H x W) -> PatchModel.

    checkpoint_dir: where `reconpatch_last.safetensors` is written every cfg.checkpoint_every
    steps (atomic); with resume=True an existing one is continued (same config and images
    required).  stop_at: train only up to that step and return None (tests / pre-emption).
    """
    images = check_images(images, cfg.image_size)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    extractor = build_extractor(cfg.to_dict()).to(device).eval()
    grid = extractor.grid_size(image_hw(cfg.image_size))
    dtype = _feature_dtype(cfg, len(images), grid[0] * grid[1], extractor.out_dim)
    feats = extract_patch_features(extractor, images, cfg.batch_size, device, out_dtype=dtype, progress=progress,
                                   desc="reconpatch features", max_per_image=cfg.max_patches_per_image,
                                   seed=cfg.seed)
    t1 = time.perf_counter()
    log.info("reconpatch: %d patch features of dim %d (%s, %.0f MB) in %.1fs", len(feats), feats.shape[1],
             np.dtype(dtype).name, feats.nbytes / 2**20, t1 - t0)

    trainer = ReConPatchTrainer(cfg, feats, device)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if ckpt is not None and resume and ckpt.is_file():
        trainer.load(ckpt)
    trainer.fit(progress=progress, checkpoint=ckpt, stop_at=stop_at)
    t2 = time.perf_counter()
    if trainer.step_index < cfg.steps:
        return None

    f = trainer.f.eval()
    if cfg.compress_head:
        f = compress_head(f)
        log.info("reconpatch: bank in f's %d-dim span (f outputs %d dims; distances unchanged)", f.out_features,
                 cfg.repr_dim)
    embedder = ReConPatchEmbedder(extractor, copy.deepcopy(f)).eval()
    if dtype is np.float32 and cfg.max_patches_per_image is None:
        reps = _apply_f(f, feats)      # exactly what the embedder outputs for the training patches
    else:
        # float16 / subsampled storage: the bank must cover every training patch at full precision,
        # so run the final embedder over the images once more.
        reps = extract_patch_features(embedder, images, cfg.batch_size, device, progress=progress,
                                      desc="reconpatch bank features")
    del feats
    bank = coreset_bank(reps, cfg, device="cpu" if device.type == "cpu" else str(device), progress=progress)
    t3 = time.perf_counter()
    log.info("reconpatch: %d steps in %.1fs (final loss %.4f); coreset %d/%d in %.1fs", cfg.steps, t2 - t1,
             trainer.losses[-1] if trainer.losses else float("nan"), len(bank), len(reps), t3 - t2)
    embedder = embedder.cpu().eval()
    config = {"method": "reconpatch", **cfg.to_dict()}
    return PatchModel(method="reconpatch", config=config, embedder=embedder, bank=bank, grid=grid,
                      reweight_b=cfg.reweight_b)
