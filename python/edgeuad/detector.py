"""Detector: bundle -> backend -> maps / bank -> result.  The runtime's front door.

    det = Detector("bundle/")              # onnxruntime on CPU, never imports torch
    r = det.score(frame_rgb)               # HxWx3 uint8; color="bgr" for OpenCV frames
    r.score, r.normalized, r.is_anomaly, r.anomaly_map

The three stages are public (`preprocess`, `infer`, `postprocess`) so that the benchmark and
the stream can time and pipeline them without re-implementing anything.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from .bundle import Bundle, BundleError, normalize_digest
from .cpus import resolve_threads
from .manifest_schema import ENSEMBLE, check_against_bank, check_against_graph
from .preprocess import preprocess as _preprocess
from .preprocess import validate_frame
from .runtime import maps as _maps
from .runtime.backends import Backend, make_backend
from .thresholds import Thresholds

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass
class Result:
    """One frame's verdict.  `anomaly_map` is normalised like `normalized` (0.5 = threshold)."""

    score: float
    normalized: float
    is_anomaly: bool
    anomaly_map: np.ndarray | None = None      # H x W float32 at the frame's resolution, normalised
    raw_map: np.ndarray | None = None          # H x W float32, raw units (same as `score`)
    latency_ms: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


class Detector:
    """Scores frames with an exported bundle (directory or .tar) or a TensorRT engine inside one."""

    def __init__(self, bundle_or_engine: str | os.PathLike | Bundle, backend: str = "auto", threads: int = 0,
                 color: str = "rgb", exact_search: bool | None = None,
                 device_postprocess: bool | None = None, *, expected_digest: str | None = None,
                 allow_provisional: bool = False) -> None:
        """bundle_or_engine: a bundle directory or .tar, a TensorRT engine inside a bundle, or a loaded Bundle.
        An ensemble bundle runs each member with this backend, threads and colour order (runtime/ensemble.py).
        expected_digest: refuse any bundle whose manifest sha256 differs (`edgeuad info` prints it).
        allow_provisional: load a bundle whose thresholds are still provisional (the exporter only)."""
        if color not in ("rgb", "bgr"):
            raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
        self.bundle, engine_path = _open(bundle_or_engine, expected_digest, allow_provisional)
        path = self.bundle.root
        self.digest = self.bundle.digest
        self.color = color
        self.method = self.bundle.method
        self.pre_cfg = self.bundle.preprocess
        self.post = self.bundle.postprocess
        self.thresholds = Thresholds.from_dict(self.bundle.thresholds)
        # 0 = the CPUs this process may use (affinity, cgroup quota), for the backend and the _rt kernels
        self.threads = resolve_threads(threads)
        self.bank = None
        self.ensemble = None
        self.device_post = None
        if self.method == ENSEMBLE:
            from .runtime.ensemble import Ensemble

            if engine_path is not None:
                raise BundleError(f"{engine_path}: an ensemble has no engine of its own (its members may)")
            if device_postprocess:
                raise RuntimeError("device_postprocess=True but an ensemble post-processes its members on the CPU")
            # members run stage by stage under the ensemble, never through their own device path
            self.ensemble = Ensemble(self.bundle, lambda b: Detector(b, backend, threads, color, exact_search,
                                                                     device_postprocess=False))
            self.backend = self.ensemble  # type: ignore[assignment]  # runs the members' networks
            self.backend_name = self.ensemble.name
            log.info("Detector: ensemble of %d members (%s) %s on %s", len(self.ensemble.members),
                     self.bundle.backbone, path, self.backend_name)
            return
        self.backend: Backend = make_backend(self.bundle, backend, threads=self.threads, engine_path=engine_path)
        self.backend_name = self.backend.name
        where = str(self.bundle.root / "manifest.json")
        out_shapes = getattr(self.backend, "output_shapes", None)
        try:
            check_against_graph(self.bundle.manifest, self.backend.input_name, self.backend.output_names,
                                getattr(self.backend, "input_shape", None), out_shapes, where=where)
            if self.post["kind"] == "nn_l2":
                from .runtime.bank import Bank

                try:
                    self.bank = Bank.load(self.bundle.file(self.post["bank"]))
                except OSError as e:  # verified by sha256 above, so a parse failure is a writer bug
                    raise BundleError(f"{path}: memory bank {self.post['bank']} cannot be loaded: {e}",
                                      field="postprocess.bank") from e
                emb = (out_shapes or {}).get(self.post["embedding"])
                check_against_bank(self.bundle.manifest, self.bank.dim, len(self.bank),
                                   embedding_dim=emb[-1] if emb and isinstance(emb[-1], int) else None, where=where)
                self.exact_search = exact_search
                log.info("Detector: memory bank %d x %d, %s", len(self.bank), self.bank.dim,
                         self.bank.search_mode(exact_search))
            self.device_post = self._make_device_post(device_postprocess, exact_search)
        except BaseException:
            self.backend.close()
            raise
        log.info("Detector: %s/%s bundle %s on %s%s", self.method, self.bundle.backbone, path, self.backend_name,
                 " (int8 graph)" if self.bundle.cpu_int8 else "")

    def _make_device_post(self, wanted: bool | None, exact_search: bool | None) -> Any:
        """TensorRT backend: maps on the GPU (runtime/device_post.py) unless wanted is False; None = when usable."""
        if wanted is False or (wanted is None and self.backend_name != "tensorrt"):
            return None
        from .runtime.device_post import DevicePostprocess, device_postprocess_available

        ok, why = device_postprocess_available(self.backend)
        if not ok:
            if wanted:
                raise RuntimeError(f"device_postprocess=True but {why}")
            log.info("TensorRT outputs are post-processed on the CPU: %s", why)
            return None
        return DevicePostprocess(self.backend, self.post, self.pre_cfg.size, bank=self.bank,
                                 exact_search=exact_search, threads=self.threads)

    # --- properties ------------------------------------------------------------
    @property
    def threshold(self) -> float:
        return self.thresholds.threshold

    @property
    def input_size(self) -> tuple[int, int]:
        return self.pre_cfg.size

    def severity(self, score: float) -> float:
        """`Result.normalized` without its clip to [0, 1]: 0.5 at the threshold, 1.0 at the top of
        the normalisation range, and beyond it for stronger anomalies (normalised scores of clear
        defects all read 1.00; this tells them apart)."""
        t = self.thresholds
        return float((score - t.threshold) / (t.max - t.min) + 0.5)

    # --- the three stages ------------------------------------------------------
    def preprocess(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        if self.ensemble is not None:
            return self.ensemble.preprocess(frames)  # type: ignore[return-value]  # one input per member
        return _preprocess(frames, self.pre_cfg, color=self.color)

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.backend.run(x)

    def postprocess(self, outputs: dict[str, np.ndarray], frame_sizes: Sequence[tuple[int, int]],
                    return_map: bool = True) -> list[Result]:
        if self.ensemble is not None:
            scores, maps, timings = self.ensemble.postprocess(outputs, frame_sizes, return_map)
        else:
            scores, maps, timings = self.raw_postprocess(outputs, frame_sizes, return_map)
        return self._results(scores, maps, timings)

    def raw_postprocess(self, outputs: dict[str, np.ndarray], frame_sizes: Sequence[tuple[int, int]],
                        return_map: bool = True) -> tuple[np.ndarray, list[np.ndarray] | None, dict[str, float]]:
        """Network outputs -> (raw image scores, raw maps at each frame's size or None, timings in ms)."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        p = self.post
        h, w = self.pre_cfg.size
        if p["kind"] == "cos_pairs":
            pairs = [(outputs[a], outputs[b]) for a, b in p["pairs"]]
            amap, smax, stopk = _maps.cos_map(pairs, (h, w), weights=p.get("weights"),
                                              align_corners=p["align_corners"], sigma=p["sigma"],
                                              topk_frac=p["topk_frac"], threads=self.threads)
            timings["distance_map"] = (time.perf_counter() - t0) * 1e3
        else:
            emb = outputs[p["embedding"]]
            gh, gw = p["grid"]
            b = emb.shape[0]
            if emb.ndim != 3 or emb.shape[1] != gh * gw or emb.shape[2] != self.bank.dim:
                raise BundleError(f"embedding output has shape {emb.shape}, expected (B, {gh * gw}, "
                                  f"{self.bank.dim}) from postprocess.grid and the bank", field="postprocess.grid")
            q = np.ascontiguousarray(emb.reshape(b * gh * gw, -1), dtype=np.float32)
            dist = self.bank.search_patch_scores(q, b=p["reweight_b"], exact=self.exact_search,
                                                 threads=self.threads).reshape(b, gh, gw)
            t1 = time.perf_counter()
            timings["memory_bank"] = (t1 - t0) * 1e3
            amap, smax, stopk = _maps.l2_map(dist, (h, w), align_corners=p["align_corners"], sigma=p["sigma"],
                                             topk_frac=p["topk_frac"], threads=self.threads)
            timings["distance_map"] = (time.perf_counter() - t1) * 1e3
        scores = smax if p["score"] == "max" else stopk
        return scores, self._frame_maps(amap, frame_sizes, return_map, timings), timings

    def _frame_maps(self, amap: np.ndarray | None, frame_sizes: Sequence[tuple[int, int]], return_map: bool,
                    timings: dict[str, float]) -> list[np.ndarray] | None:
        """Maps at the network input's size -> at each frame's size (timed into timings["postprocess"])."""
        if not return_map or amap is None:
            return None
        t = time.perf_counter()
        h, w = self.pre_cfg.size
        maps = [amap[i] if (fh, fw) == (h, w) else cv2.resize(amap[i], (fw, fh), interpolation=cv2.INTER_LINEAR)
                for i, (fh, fw) in enumerate(frame_sizes)]
        timings["postprocess"] = timings.get("postprocess", 0.0) + (time.perf_counter() - t) * 1e3
        return maps

    def _results(self, scores: np.ndarray, maps: list[np.ndarray] | None, timings: dict[str, float]) -> list[Result]:
        """Raw scores and raw maps at the frames' sizes -> normalised results."""
        t = time.perf_counter()
        results = []
        for i in range(len(scores)):
            s = float(scores[i])
            raw = maps[i] if maps is not None else None
            nm = self.thresholds.normalize(raw).astype(np.float32) if raw is not None else None
            results.append(Result(score=s, normalized=float(self.thresholds.normalize(s)),
                                  is_anomaly=bool(s >= self.thresholds.threshold), anomaly_map=nm, raw_map=raw,
                                  timings=dict(timings)))
        post_ms = timings.get("postprocess", 0.0) + (time.perf_counter() - t) * 1e3
        for r in results:
            r.timings["postprocess"] = post_ms
        return results

    # --- convenience -----------------------------------------------------------
    def score(self, frame: np.ndarray, return_map: bool = True) -> Result:
        return self.score_batch([frame], return_map=return_map)[0]

    def score_batch(self, frames: Iterable[np.ndarray], return_map: bool = True) -> list[Result]:
        """Score frames given as a list, tuple, generator/iterable of frames or an N x H x W x 3 array."""
        if isinstance(frames, np.ndarray):
            if frames.ndim != 4:
                raise ValueError(f"score_batch takes frames or an N x H x W x C array, got an array of shape "
                                 f"{frames.shape}; use score() for one frame")
        elif isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable):
            raise TypeError(f"score_batch takes an iterable of frames, got {type(frames).__name__}")
        else:
            frames = list(frames)  # a generator is consumed once, here
        if len(frames) == 0:
            raise ValueError("score_batch: no frames given")
        t0 = time.perf_counter()
        checked = [validate_frame(f, name=f"frame[{i}]") for i, f in enumerate(frames)]
        x = self.preprocess(checked)
        t1 = time.perf_counter()
        if self.device_post is not None:
            return self._score_on_device(x, checked, return_map, t0, t1)
        out = self.infer(x)
        t2 = time.perf_counter()
        for name, v in out.items():
            if not np.all(np.isfinite(v)):
                raise FloatingPointError(f"backend {self.backend_name} returned non-finite values in {name!r}")
        results = self.postprocess(out, [f.shape[:2] for f in checked], return_map=return_map)
        total = (time.perf_counter() - t0) * 1e3
        for r in results:
            r.timings["preprocess"] = (t1 - t0) * 1e3
            r.timings["network"] = (t2 - t1) * 1e3
            r.latency_ms = total
        return results

    def _score_on_device(self, x: np.ndarray, frames: Sequence[np.ndarray], return_map: bool, t0: float,
                         t1: float) -> list[Result]:
        d = self.device_post.run(x, return_map=return_map)
        if not np.all(np.isfinite(d.scores)):  # the outputs never reach the host: check what comes back
            raise FloatingPointError(f"backend {self.backend_name} produced non-finite scores {d.scores.tolist()}")
        timings = dict(d.timings)
        results = self._results(d.scores, self._frame_maps(d.maps, [f.shape[:2] for f in frames], return_map,
                                                            timings), timings)
        total = (time.perf_counter() - t0) * 1e3
        for r in results:
            r.timings["preprocess"] = (t1 - t0) * 1e3
            r.latency_ms = total
        return results

    def stream(self, source: Any, config: Any = None, callback: Any = None, **kwargs: Any):
        """Score a camera index, RTSP/HTTP URL, video file, folder or glob: see `edgeuad.stream`."""
        from .stream import StreamConfig, stream

        if config is None:
            config = StreamConfig(**kwargs)
        elif kwargs:
            raise ValueError("pass either a StreamConfig or keyword options, not both")
        return stream(self, source, config=config, callback=callback)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open(bundle_or_engine: str | os.PathLike | Bundle, expected_digest: str | None,
          allow_provisional: bool) -> tuple[Bundle, Path | None]:
    """(the loaded bundle, the TensorRT engine inside it or None)."""
    if isinstance(bundle_or_engine, Bundle):  # loaded and checked by the caller (an ensemble's members)
        if expected_digest is not None and normalize_digest(expected_digest) != bundle_or_engine.digest:
            raise BundleError(f"bundle {bundle_or_engine.root} has digest {bundle_or_engine.digest}, not the "
                              f"expected {normalize_digest(expected_digest)}", field="digest")
        return bundle_or_engine, None
    path = Path(bundle_or_engine)
    engine_path: Path | None = None
    if path.suffix in ENGINE_SUFFIXES:
        engine_path = path
        path = path.parent  # engines live inside the bundle that describes them
        if not path.joinpath("manifest.json").is_file():
            raise BundleError(f"engine {engine_path} must sit inside its bundle directory (no manifest.json "
                              f"beside it); build it with `edgeuad export --fp16 --bundle DIR`")
    return Bundle.load(path, expected_digest=expected_digest, allow_provisional=allow_provisional), engine_path
