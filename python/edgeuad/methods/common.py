"""Shared training utilities: seeding, atomic safetensors checkpoints, progress, batches.

Checkpoints never use pickle: tensors go to safetensors, everything scalar
(iteration, configs, optimiser hyper-parameters) to the JSON metadata header.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..atomic import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = [
    "EpochShuffleSampler",
    "ImageArrayDataset",
    "load_checkpoint",
    "optimizer_from_flat",
    "optimizer_to_flat",
    "progress_bar",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
]

_META_KEY = "edgeuad_meta"


# ------------------------------------------------------------------------ seeding
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; make CPU (and, where possible, CUDA) kernels deterministic."""
    # cuBLAS reads this when CUDA is first initialised; setting it later is harmless.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        # warn_only: a few CUDA kernels (e.g. bilinear upsample backward) have no
        # deterministic version; training must still run there.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def resolve_device(device: str | torch.device) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or 'auto' (CUDA when available) -> torch.device, with a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return dev


# --------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Path:
    """Write tensors (safetensors) + JSON-serialisable meta atomically.

    The file is written to a temporary name in the same directory, fsynced and
    renamed over the target, so a crash mid-write leaves the previous checkpoint intact.
    """
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors needs contiguous, non-aliased CPU tensors
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    blob = save(flat, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(path, blob)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by save_checkpoint -> (tensors, meta)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    tensors: dict[str, Tensor] = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        raw = (f.metadata() or {}).get(_META_KEY)
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    if raw is None:
        raise ValueError(f"{path} is not an edgeuad checkpoint (no '{_META_KEY}' metadata)")
    return tensors, json.loads(raw)


def optimizer_to_flat(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimiser state_dict into tensors (``prefix.state.<i>.<name>``) and JSON meta."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}.state.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: Mapping[str, Tensor], meta: Mapping[str, Any],
                        prefix: str) -> None:
    """Inverse of optimizer_to_flat (loads into ``opt`` in place)."""
    state: dict[int, dict[str, Any]] = {}
    head = f"{prefix}.state."
    for key, value in tensors.items():
        if key.startswith(head):
            idx, name = key[len(head):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


# ------------------------------------------------------------------------ progress
def progress_bar(total: int, desc: str = "", enabled: bool = True, initial: int = 0, **kwargs: Any) -> Any:
    """A tqdm bar, silently disabled when asked or when stderr is not a terminal (logs, CI)."""
    from tqdm.auto import tqdm

    on = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, disable=not on, dynamic_ncols=True, **kwargs)


# ----------------------------------------------------------------------- batches
class ImageArrayDataset:
    """Preprocessed training images (float32 N x 3 x H x W from ``edgeuad.preprocess.preprocess``)."""

    def __init__(self, images: np.ndarray) -> None:
        if not isinstance(images, np.ndarray):
            raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be N x 3 x H x W, got shape {images.shape}")
        if images.shape[0] == 0:
            raise ValueError("no training images")
        if images.dtype != np.float32:
            raise ValueError(f"images must be float32 (output of preprocess), got {images.dtype}")
        if not np.isfinite(images).all():
            raise ValueError("images contain NaN or Inf")
        self.images = np.ascontiguousarray(images)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def batch(self, indices: Iterable[int], device: torch.device | str = "cpu") -> Tensor:
        idx = np.asarray(list(indices), dtype=np.int64)
        return torch.from_numpy(self.images[idx]).to(device)


class EpochShuffleSampler:
    """Shuffled epochs of mini-batches, a pure function of (seed, iteration).

    Like a DataLoader with shuffle=True and drop_last=False, but stateless: the
    batch of iteration ``it`` does not depend on what ran before, so a resumed run
    sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n <= 0 or batch_size <= 0:
            raise ValueError("n and batch_size must be positive")
        self.n = n
        self.batch_size = min(batch_size, n)
        self.seed = seed
        self.batches_per_epoch = -(-n // self.batch_size)
        self._cache: tuple[int, np.ndarray] | None = None

    def _perm(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._cache = (epoch, rng.permutation(self.n))
        return self._cache[1]

    def batch_indices(self, iteration: int) -> np.ndarray:
        epoch, pos = divmod(iteration, self.batches_per_epoch)
        perm = self._perm(epoch)
        return perm[pos * self.batch_size:(pos + 1) * self.batch_size]


# ----------------------------------------------------------------------------- the torch Gaussian blur
def _symmetric_index(n: int, r: int, device: torch.device) -> Tensor:
    """Indices of a length-n axis padded by r on both sides, scipy 'reflect' (half-sample
    symmetric: d c b a | a b c d | d c b a), valid for any r (repeats the reflection)."""
    i = torch.arange(-r, n + r, device=device)
    period = 2 * n
    j = torch.remainder(i, period)
    return torch.where(j >= n, period - 1 - j, j)


def gaussian_blur_torch(maps: Tensor, sigma: float) -> Tensor:
    """The torch Gaussian blur of every torch map in edgeuad (ReContrast, the patch methods, the
    benchmarks' references): separable blur of B x H x W maps with scipy.ndimage.gaussian_filter
    semantics (truncate 4: kernel 2*int(4*sigma+0.5)+1, mode 'reflect'); sigma 0 returns the input.
    The taps are runtime.maps.gaussian_kernel1d, the numpy/_rt side's own definition."""
    if sigma <= 0:
        return maps
    from ..runtime.maps import gaussian_kernel1d  # numpy only: no _rt needed

    k = torch.from_numpy(gaussian_kernel1d(float(sigma))).to(device=maps.device, dtype=maps.dtype)
    r = k.numel() // 2
    _, h, w = maps.shape
    out = maps.unsqueeze(1)
    out = out.index_select(2, _symmetric_index(h, r, maps.device))
    out = F.conv2d(out, k.view(1, 1, -1, 1))
    out = out.index_select(3, _symmetric_index(w, r, maps.device))
    out = F.conv2d(out, k.view(1, 1, 1, -1))
    return out.squeeze(1)
