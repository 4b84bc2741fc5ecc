"""The torch references the Detector is compared against, written as their best user writes them.

    torch-eager      the bundle's torch network (rebuilt from weights.safetensors) + torch post-processing
    torch-compile    the same two functions under torch.compile (inductor, CPU)
    ort+torch-post   the anomalib-style peer: the bundle's ONNX graph in onnxruntime + torch post-processing

All in float32 under torch.inference_mode (no_grad for torch.compile), with torch's thread count (and onnxruntime's for the peer)
set to the Detector's.  What a competent user does that the training-side correctness reference
(methods/patch_features.nn_scores_torch, float64) does not:
- nearest-neighbour search as one float32 GEMM, |q|^2 - 2 q.x + |x|^2 (anomalib's form), the bank's
  squared norms computed once; the winner's distance recomputed directly (float32 re-rank) so the
  cancellation of the expanded form does not reach the score;
- Eq. 10 reweighting reads the support distances from that same distance matrix (a gather) instead
  of a (Q, b, D) temporary;
- ReContrast: cosine distances of pairs at the same resolution are summed before upsampling
  (bilinear upsampling is linear, so this is the same map with fewer interpolations).
Training side: imports torch (only the reference workers import this module).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..bundle import Bundle
from ..methods.common import gaussian_blur_torch
from .config import PEER, REFERENCES, TORCH_COMPILE, TORCH_EAGER

log = logging.getLogger(__name__)

Outputs = dict[str, torch.Tensor]


@dataclass
class ReferenceOutput:
    """scores (N,) raw image scores; maps (N, h, w) raw maps at the network input size; ms per stage."""

    scores: np.ndarray
    maps: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def _map_scores(total: torch.Tensor, sigma: float, score: str, topk_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    maps = gaussian_blur_torch(total, sigma)
    flat = maps.flatten(1)
    if score == "max":
        return maps, flat.max(dim=1).values
    k = max(1, int(topk_frac * flat.shape[1]))
    return maps, flat.topk(k, dim=1).values.mean(dim=1)


def cos_pairs_post(outs: Outputs, post: dict[str, Any], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """ReContrast map: sum_l w_l * up(1 - cos(a_l, b_l)), same-resolution pairs summed before upsampling."""
    weights = post.get("weights") or [1.0] * len(post["pairs"])
    by_size: dict[tuple[int, int], torch.Tensor] = {}
    for (a_name, b_name), w in zip(post["pairs"], weights):
        a, b = outs[a_name], outs[b_name]
        d = float(w) * (1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8))
        hw = (int(d.shape[-2]), int(d.shape[-1]))
        by_size[hw] = d if hw not in by_size else by_size[hw] + d
    total = None
    for d in by_size.values():
        up = F.interpolate(d[:, None], size=size, mode="bilinear", align_corners=bool(post["align_corners"]))[:, 0]
        total = up if total is None else total + up
    assert total is not None
    return _map_scores(total, float(post["sigma"]), post.get("score", "max"), float(post.get("topk_frac", 0.01)))


class BankSearch:
    """Float32 exact nearest-neighbour patch scores against a bank (Eq. 9, Eq. 10 when b > 0)."""

    def __init__(self, bank: np.ndarray, b: int) -> None:
        self.bank = torch.from_numpy(np.ascontiguousarray(bank, np.float32))
        self.bank_t = self.bank.t().contiguous()
        self.bank_sq = (self.bank * self.bank).sum(1)
        self.b = int(b)
        self.neighbours = None
        if self.b > 0:  # set-up, not timed: the (M, b) neighbour table of the bank, as the bundle stores it
            from ..methods.patch_features import bank_neighbours

            self.neighbours = bank_neighbours(self.bank, self.b)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        d2 = torch.addmm(self.bank_sq[None, :], q, self.bank_t, alpha=-2.0)
        d2 += (q * q).sum(1, keepdim=True)
        d2.clamp_min_(0.0)
        _, i1 = d2.min(dim=1)
        s1 = torch.linalg.vector_norm(q - self.bank[i1], dim=1)   # float32 re-rank of the winner
        if self.neighbours is None:
            return s1
        dsup = d2.gather(1, self.neighbours[i1]).sqrt_()
        dsup[:, 0] = s1
        return (1.0 - 1.0 / torch.exp(dsup - s1[:, None]).sum(1)) * s1


class TorchReference:
    """One reference pipeline for a bundle: `run(x)` on the Detector's preprocessed input."""

    def __init__(self, bundle: Bundle | str, variant: str = TORCH_EAGER, threads: int = 0) -> None:
        if variant not in REFERENCES:
            raise ValueError(f"unknown reference {variant!r}; known: {', '.join(REFERENCES)}")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        if "model" not in self.bundle.manifest:
            raise ValueError(f"this {self.bundle.method} bundle has no network of its own to write a torch reference "
                             "for: time it with --no-reference")
        if threads > 0:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.variant = variant
        self.post = dict(self.bundle.postprocess)
        self.pre_cfg = self.bundle.preprocess
        self.size = tuple(int(v) for v in self.pre_cfg.size)
        self.names = list(self.bundle.model["outputs"])
        self._net: Callable[[torch.Tensor], Outputs] = self._build_network(threads)
        self._post: Callable[[Outputs], tuple[torch.Tensor, torch.Tensor]] = self._build_post()
        if variant == TORCH_COMPILE:
            self._net, self._post = torch.compile(self._net), torch.compile(self._post)
            t0 = time.perf_counter()   # compile now: a failure is this pipeline's reported reason
            self.run(np.zeros((1, 3, *self.size), np.float32))
            self.compile_s = time.perf_counter() - t0
            log.info("torch.compile of the %s reference: %.1f s", self.bundle.method, self.compile_s)

    def _build_network(self, threads: int) -> Callable[[torch.Tensor], Outputs]:
        if self.variant == PEER:
            from ..runtime.backends import OrtBackend

            ort = OrtBackend(self.bundle.onnx_path, threads=threads)
            return lambda x: {k: torch.from_numpy(v) for k, v in ort.run(x.numpy()).items()}
        from ..methods.registry import load_export_module

        module = load_export_module(self.bundle).eval()

        def net(x: torch.Tensor) -> Outputs:
            outs = module(x)
            outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
            return dict(zip(self.names, outs))
        return net

    def _build_post(self) -> Callable[[Outputs], tuple[torch.Tensor, torch.Tensor]]:
        p = self.post
        if p["kind"] == "cos_pairs":
            return lambda outs: cos_pairs_post(outs, p, self.size)
        if p["kind"] != "nn_l2":
            raise ValueError(f"no torch reference for post-processing kind {p['kind']!r}")
        from ..methods.registry import load_from_bundle

        pm, _ = load_from_bundle(self.bundle)
        search = BankSearch(pm.bank, int(p["reweight_b"]))
        gh, gw = (int(v) for v in p["grid"])

        def post(outs: Outputs) -> tuple[torch.Tensor, torch.Tensor]:
            emb = outs[p["embedding"]]
            s = search(emb.reshape(-1, emb.shape[-1])).reshape(emb.shape[0], 1, gh, gw)
            up = F.interpolate(s, size=self.size, mode="bilinear", align_corners=bool(p["align_corners"]))[:, 0]
            return _map_scores(up, float(p["sigma"]), p.get("score", "max"), float(p.get("topk_frac", 0.01)))
        return post

    def run(self, x: np.ndarray) -> ReferenceOutput:
        """x: float32 N x 3 x h x w from `edgeuad.preprocess.preprocess` (the Detector's input)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W input, got {x.shape}")
        # torch.compile guards fail on inference-mode tensors (torch 2.13: "Guard failed on the same frame
        # it was created ... ADInplaceOrView"), so the compiled variant runs under no_grad, as its docs show
        with (torch.no_grad() if self.variant == TORCH_COMPILE else torch.inference_mode()):
            xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
            t0 = time.perf_counter()
            outs = self._net(xt)
            t1 = time.perf_counter()
            maps, scores = self._post(outs)
            scores_np, maps_np = scores.numpy().astype(np.float64), maps.numpy()
            t2 = time.perf_counter()
        return ReferenceOutput(scores_np, maps_np, {"network": (t1 - t0) * 1e3, "torch_post": (t2 - t1) * 1e3})
