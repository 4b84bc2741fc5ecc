"""Device-resident post-processing for the TensorRT backend: network outputs stay on the GPU and feed
`_rt`'s CUDA map kernels on the engine's stream; only the image scores (B floats) and, when asked,
the maps come back to the host.

    cos_pairs (ReContrast):     engine -> cos_map_cuda(pairs, out, max/topk) -> scores [+ map] to host
    nn_l2 (PatchCore, ReConPatch), exact banks (below the bank's exact_threshold, the CPU path's rule):
                                engine -> _rt.DeviceBank.patch_scores (exact NN + Eq. 10 on the GPU)
                                -> l2_map_cuda -> scores [+ map] to host
    nn_l2, HNSW banks:          engine -> embeddings to pinned host memory -> HNSW search on the host
                                -> distances to the device -> l2_map_cuda -> scores [+ map] to host

The copies go through page-locked buffers allocated once per batch size, so they are truly
asynchronous.

NOT RUN ON A GPU: no GPU was available to this project.  The host-side logic (buffers, argument
wiring, stream use, copies, score selection, chunking) is tested with a fake pycuda/TensorRT and
`_rt`'s CPU emulation of the CUDA kernels (tests/python/test_device_post.py); the real chain is
what tools/gpu_smoke.sh checks on a GPU.
numpy only (no torch).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Optional

import numpy as np

from .native import load_rt

log = logging.getLogger(__name__)

__all__ = ["DevicePostprocess", "DeviceOutput", "device_postprocess_available"]

_NEEDED = ("run_device", "stream_handle", "device_empty", "pinned_empty", "copy_to_host_async",
           "copy_to_device_async", "synchronize", "max_batch")


def device_postprocess_available(backend: Any, rt: Optional[ModuleType] = None) -> tuple[bool, str]:
    """(usable, reason): the backend keeps outputs on a GPU and `_rt` has usable CUDA kernels."""
    missing = [n for n in _NEEDED if not hasattr(backend, n)]
    if missing:
        return False, f"backend {getattr(backend, 'name', backend)!r} cannot keep outputs on the GPU (no {missing[0]})"
    try:
        rt = rt or load_rt()
    except ImportError as e:
        return False, f"edgeuad._rt is not importable: {e}"
    if not rt.has_cuda():
        return False, "edgeuad._rt was built without CUDA (rebuild with nvcc: EDGEUAD_CUDA=ON pip install -e .)"
    st = rt.cuda_status()
    if st["device_count"] == 0:
        return False, f"edgeuad._rt sees no CUDA device: {st['error']}"
    return True, "ok"


@dataclass
class DeviceOutput:
    scores: np.ndarray                 # (B,) float32: max or topk_mean as the bundle says
    maps: Optional[np.ndarray]         # (B, H, W) float32 at the network resolution, or None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Buffers:
    out: Any        # device (B, H, W)
    score: Any      # device (B,)
    host_score: np.ndarray
    host_map: np.ndarray
    emb_shape: Optional[tuple[int, ...]] = None
    dist: Any = None            # nn_l2: device (B, gh, gw)
    host_emb: Optional[np.ndarray] = None
    host_dist: Optional[np.ndarray] = None


class DevicePostprocess:
    """Scores a preprocessed batch with the map computed on the GPU (see module docstring)."""

    def __init__(self, backend: Any, post: dict[str, Any], out_size: tuple[int, int], bank: Any = None,
                 exact_search: Optional[bool] = None, threads: int = 0, rt: Optional[ModuleType] = None) -> None:
        ok, why = device_postprocess_available(backend, rt)
        if not ok:
            raise RuntimeError(f"device post-processing unavailable: {why}")
        self.backend = backend
        self.rt = rt or load_rt()
        self.post = dict(post)
        self.kind = self.post["kind"]
        if self.kind not in ("cos_pairs", "nn_l2"):
            raise ValueError(f"unknown post-processing kind {self.kind!r}")
        if self.kind == "nn_l2" and bank is None:
            raise ValueError("nn_l2 post-processing needs the memory bank")
        if self.post["score"] not in ("max", "topk_mean"):
            raise ValueError(f"unknown score {self.post['score']!r}")
        self.size = (int(out_size[0]), int(out_size[1]))
        self.bank = bank
        self.exact_search = exact_search
        self.threads = threads
        self._buffers: dict[int, _Buffers] = {}
        self.device_bank = None
        if self.kind == "nn_l2" and bank.use_exact(exact_search):
            self.device_bank = self._upload_bank(int(self.post["reweight_b"]))

    def _upload_bank(self, b: int) -> Any:
        """Exact search on the GPU: the bank's features and (b >= 2) its Eq. 10 neighbour table, once."""
        table = None
        if b >= 2:
            rt_bank = self.bank.rt
            if rt_bank.neighbor_b != b:  # the CPU path builds it lazily the same way
                rt_bank.build_neighbor_table(b, exact=True, threads=self.threads)
            table = rt_bank.neighbor_table()
        log.info("memory bank (%d x %d) uploaded for exact search on the GPU", len(self.bank), self.bank.dim)
        return self.rt.DeviceBank(self.bank.features(), table)

    def _alloc(self, b: int, emb_shape: Optional[tuple[int, ...]] = None, host_bank: bool = True) -> _Buffers:
        buf = self._buffers.get(b)
        if buf is not None and (emb_shape is None or buf.emb_shape == emb_shape):
            return buf
        be = self.backend
        h, w = self.size
        buf = _Buffers(out=be.device_empty((b, h, w)), score=be.device_empty((b,)),
                       host_score=be.pinned_empty((b,)), host_map=be.pinned_empty((b, h, w)))
        if emb_shape is not None:
            gh, gw = self.post["grid"]
            buf.emb_shape = emb_shape
            buf.dist = be.device_empty((b, gh, gw))
            if host_bank:  # HNSW on the host: embeddings out, distances in, through pinned memory
                buf.host_emb = be.pinned_empty(emb_shape)
                buf.host_dist = be.pinned_empty((b, gh, gw))
        self._buffers[b] = buf
        return buf

    def _score_kwargs(self, buf: _Buffers) -> dict[str, Any]:
        # Only the score the bundle uses is computed and copied back.
        key = "max_out" if self.post["score"] == "max" else "topk_out"
        return {key: buf.score, "topk_frac": float(self.post["topk_frac"])}

    def run(self, x: np.ndarray, return_map: bool = True) -> DeviceOutput:
        """Scores (and maps) of a preprocessed float32 batch; batches above max_batch are chunked."""
        mb = int(self.backend.max_batch)
        if x.shape[0] <= mb:
            return self._run(x, return_map)
        parts = [self._run(x[i:i + mb], return_map) for i in range(0, x.shape[0], mb)]
        timings = {k: sum(p.timings.get(k, 0.0) for p in parts) for k in parts[0].timings}
        return DeviceOutput(np.concatenate([p.scores for p in parts]),
                            np.concatenate([p.maps for p in parts]) if return_map else None, timings)

    def _run(self, x: np.ndarray, return_map: bool) -> DeviceOutput:
        be, rt, p = self.backend, self.rt, self.post
        t0 = time.perf_counter()
        outs = be.run_device(x)
        b = int(x.shape[0])
        timings: dict[str, float] = {}
        if self.kind == "cos_pairs":
            buf = self._alloc(b)
            pairs = [(outs[a], outs[c]) for a, c in p["pairs"]]
            weights = p.get("weights")
            rt.cos_map_cuda(pairs, buf.out, self.size, weights=None if weights is None else [float(v) for v in weights],
                            align_corners=bool(p["align_corners"]), sigma=float(p["sigma"]),
                            stream=be.stream_handle, **self._score_kwargs(buf))
        else:
            emb = outs[p["embedding"]]
            gh, gw = p["grid"]
            shape = tuple(int(d) for d in emb.shape)
            if len(shape) != 3 or shape[1] != gh * gw:
                raise RuntimeError(f"embedding output has shape {shape}, expected (B, {gh * gw}, D)")
            buf = self._alloc(b, shape, host_bank=self.device_bank is None)
            if self.device_bank is not None:  # exact: everything stays on the GPU
                self.device_bank.patch_scores(emb, buf.dist, b=int(p["reweight_b"]), stream=be.stream_handle)
                rt.l2_map_cuda(buf.dist, buf.out, self.size, align_corners=bool(p["align_corners"]),
                               sigma=float(p["sigma"]), stream=be.stream_handle, **self._score_kwargs(buf))
                return self._finish(buf, return_map, t0, "network+memory_bank+distance_map", timings)
            be.copy_to_host_async(buf.host_emb, emb)
            be.synchronize()
            t1 = time.perf_counter()
            timings["network"] = (t1 - t0) * 1e3
            q = buf.host_emb.reshape(b * gh * gw, shape[2])
            dist = self.bank.search_patch_scores(q, b=p["reweight_b"], exact=self.exact_search, threads=self.threads)
            np.copyto(buf.host_dist, dist.reshape(b, gh, gw))
            t2 = time.perf_counter()
            timings["memory_bank"] = (t2 - t1) * 1e3
            be.copy_to_device_async(buf.dist, buf.host_dist)
            rt.l2_map_cuda(buf.dist, buf.out, self.size, align_corners=bool(p["align_corners"]),
                           sigma=float(p["sigma"]), stream=be.stream_handle, **self._score_kwargs(buf))
            return self._finish(buf, return_map, t2, "distance_map", timings)
        return self._finish(buf, return_map, t0, "network+distance_map", timings)

    def _finish(self, buf: _Buffers, return_map: bool, t0: float, key: str,
                timings: dict[str, float]) -> DeviceOutput:
        be = self.backend
        be.copy_to_host_async(buf.host_score, buf.score)
        if return_map:
            be.copy_to_host_async(buf.host_map, buf.out)
        be.synchronize()
        timings[key] = (time.perf_counter() - t0) * 1e3
        # Pinned staging buffers are reused by the next call: hand out copies.
        return DeviceOutput(buf.host_score.copy(), buf.host_map.copy() if return_map else None, timings)
