"""The pipelines the benchmark times, behind one small interface (torch-free at import).

A `Pipeline` scores decoded BGR frames: `step(imgs)` -> (number of results, {stage: ms}), `parity(imgs)`
-> raw scores and maps at the network input size, `close()`.  Runtimes wrap a `Detector`; references
wrap a `bench.torch_ref.TorchReference` (imported only when a reference is built: torch).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np

from .config import REFERENCES, BenchConfig

log = logging.getLogger(__name__)

DetectorFactory = Callable[[str, int], Any]    # (backend, threads) -> Detector-like
ReferenceFactory = Callable[[str, int], Any]   # (reference name, threads) -> TorchReference-like


class Pipeline(Protocol):
    name: str
    effective_threads: Optional[int]

    def step(self, imgs: list[np.ndarray]) -> tuple[int, dict[str, float]]: ...

    def parity(self, imgs: list[np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def _effective_threads(name: str, threads: int) -> Optional[int]:
    if threads > 0:
        return threads
    if name in REFERENCES and "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    from ..cpus import resolve_threads

    return resolve_threads(0)  # what the Detector sizes its pool to (the CPUs this process may use)


class DetectorPipeline:
    """Detector.preprocess / infer / postprocess, timed separately ("network" = the backend only)."""

    def __init__(self, name: str, det: Any, threads: int, return_map: bool = True) -> None:
        self.name, self.det, self.return_map = name, det, return_map
        self.effective_threads = _effective_threads(name, threads)

    def step(self, imgs: list[np.ndarray]) -> tuple[int, dict[str, float]]:
        det = self.det
        t0 = time.perf_counter()
        x = det.preprocess(imgs)
        t1 = time.perf_counter()
        out = det.infer(x)
        t2 = time.perf_counter()
        res = det.postprocess(out, [im.shape[:2] for im in imgs], return_map=self.return_map)
        d = {"preprocess": (t1 - t0) * 1e3, "network": (t2 - t1) * 1e3}
        for k in ("memory_bank", "distance_map", "postprocess"):
            if res and k in res[0].timings:  # batch-level timings, identical in every result of the batch
                d[k] = float(res[0].timings[k])
        return len(res), d

    def parity(self, imgs: list[np.ndarray]) -> dict[str, np.ndarray]:
        x = self.det.preprocess(imgs)
        h, w = self.det.input_size  # maps at the network input's size (an ensemble's: its largest member's)
        res = self.det.postprocess(self.det.infer(x), [(h, w)] * len(imgs), return_map=True)
        out = {"scores": np.asarray([r.score for r in res], np.float64)}
        maps = [getattr(r, "raw_map", None) for r in res]
        if all(m is not None for m in maps):
            out["maps"] = np.stack(maps).astype(np.float32)
        return out

    def stats(self) -> dict[str, Any]:
        """How the Detector's memory bank searched during the run (none: {}): the mode in words and the
        exact-search query counts (all calls so far, warm-up and parity included)."""
        bank = getattr(self.det, "bank", None)
        if bank is None:
            return {}
        st = bank.rt.exact_stats()
        return {"search": bank.search_mode(getattr(self.det, "exact_search", None)), "exact_queries": st["queries"],
                "full_queries": st["full_queries"], "direct_queries": st["direct_queries"],
                "refined_queries": st["refined_queries"]}

    def close(self) -> None:
        if hasattr(self.det, "close"):
            self.det.close()


class ReferencePipeline:
    """The same preprocess as the Detector (edgeuad.preprocess), then the reference's torch code."""

    def __init__(self, name: str, ref: Any, threads: int) -> None:
        self.name, self.ref = name, ref
        self.effective_threads = getattr(ref, "threads", None) or _effective_threads(name, threads)

    def step(self, imgs: list[np.ndarray]) -> tuple[int, dict[str, float]]:
        from ..preprocess import preprocess

        t0 = time.perf_counter()
        x = preprocess(imgs, self.ref.pre_cfg, color="bgr")
        t1 = time.perf_counter()
        out = self.ref.run(x)
        return len(out.scores), {"preprocess": (t1 - t0) * 1e3, **{k: float(v) for k, v in out.timings.items()}}

    def parity(self, imgs: list[np.ndarray]) -> dict[str, np.ndarray]:
        from ..preprocess import preprocess

        o = self.ref.run(preprocess(imgs, self.ref.pre_cfg, color="bgr"))
        return {"scores": np.asarray(o.scores, np.float64), "maps": np.asarray(o.maps, np.float32)}

    def close(self) -> None:
        pass


def int8_onnx(cfg: BenchConfig, frames: Sequence[np.ndarray], work: Path) -> Path:
    """The bundle's graph in onnxruntime's int8 layout (export/quantize.insert_qdq, target "onnxruntime":
    what `edgeuad export --cpu-int8` ships), calibrated on cfg.int8_calib's images or, without it, on
    the benchmark frames (timing only); cached in `work`, with insert_qdq's report as model.int8.json."""
    from ..atomic import atomic_write_bytes
    from ..bundle import Bundle
    from ..export.calibration import calibration_batches
    from ..export.quantize import insert_qdq
    from ..preprocess import preprocess
    from .frames import decode

    out = work / "model.int8.onnx"
    if out.is_file():
        return out
    bundle = Bundle.load(cfg.bundle, verify=False)
    if cfg.int8_calib:  # the images and preprocessing `edgeuad export --cpu-int8 --calib` uses
        batches = calibration_batches(cfg.int8_calib, bundle.preprocess)
    else:
        batches = [preprocess(decode(frames[i:i + 8]), bundle.preprocess, color="bgr")
                   for i in range(0, len(frames), 8)]
    rep = insert_qdq(bundle.onnx_path, out, batches, target="onnxruntime")
    # the report beside the graph: benchmarks/int8_accuracy.py records its per-output errors
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(rep.to_dict(), indent=1) + "\n").encode())
    log.info("INT8 graph: %d quantised convs, fp32-vs-int8 cosine %.5f on the first calibration batch",
             rep.quantized_ops, rep.fp32_vs_qdq_cosine)
    return out


def build_pipeline(name: str, threads: int, cfg: BenchConfig, frames: Sequence[np.ndarray], work: Path,
                   detector_factory: Optional[DetectorFactory] = None,
                   reference_factory: Optional[ReferenceFactory] = None) -> Pipeline:
    """One pipeline at one thread count; factories are the tests' injection points."""
    if name in REFERENCES:
        if reference_factory is not None:
            return ReferencePipeline(name, reference_factory(name, threads), threads)
        from .torch_ref import TorchReference  # torch: only in a reference's worker

        return ReferencePipeline(name, TorchReference(cfg.bundle, name, threads), threads)
    if detector_factory is not None:
        return DetectorPipeline(name, detector_factory(name, threads), threads, cfg.return_map)
    from ..detector import Detector

    # color="bgr": frames come from cv2.imdecode, as from an OpenCV camera
    if name == "onnxruntime-int8":
        from ..runtime.backends import OrtBackend

        det = Detector(cfg.bundle, backend="onnxruntime", threads=threads, color="bgr",
                       expected_digest=cfg.expected_digest)
        det.backend.close()
        det.backend = OrtBackend(int8_onnx(cfg, frames, work), threads=threads)
        det.backend_name = name
    else:
        det = Detector(cfg.bundle, backend=name, threads=threads, color="bgr", expected_digest=cfg.expected_digest)
    return DetectorPipeline(name, det, threads, cfg.return_map)
