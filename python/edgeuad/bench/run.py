"""run_bench: frames, workers, the interleaved rounds of protocol.py, and the report."""
from __future__ import annotations

import importlib.util
import logging
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from ..cpus import describe_openmp_policy
from .config import PEER, REFERENCES, RUNTIMES, TORCH_EAGER, BenchConfig
from .frames import folder_frames, synthetic_frames
from .machine import machine_info
from .pipelines import DetectorFactory, ReferenceFactory
from .protocol import LocalWorker, ProcessWorker, WorkerError, openmp_environ
from .report import BenchReport, ParityReport, PipelineReport, RunStats, compare_parity
from .stats import ratio_summary, summarize_stages, throughput

log = logging.getLogger(__name__)

Key = tuple[str, int, int]   # (pipeline, threads, batch size)


def backend_unavailable_reason(name: str) -> Optional[str]:
    """Why a pipeline cannot be benchmarked here (None = try it).  Checked without importing."""
    mod = {"onnxruntime": "onnxruntime", "onnxruntime-int8": "onnxruntime", "torch": "torch", "tensorrt": "tensorrt",
           PEER: "torch"}.get(name, "torch")
    if importlib.util.find_spec(mod) is None:
        return f"python package {mod!r} is not installed"
    return None


def _threads_label(threads: int, effective: Optional[int]) -> str:
    return str(threads) if threads > 0 else (f"default({effective})" if effective else "default")


def compute_speedups(cfg: BenchConfig, blocks: dict[Key, list[float]],
                     effective: dict[tuple[str, int], Optional[int]]) -> list[dict[str, Any]]:
    """Every runtime against every reference, per (threads, batch size), from the per-round block medians."""
    out = []
    runtimes = [n for n in cfg.backends if any(k[0] == n for k in blocks)]
    refs = [n for n in cfg.references if any(k[0] == n for k in blocks)]
    for t in cfg.threads:
        for bs in cfg.batch_sizes:
            for rt in runtimes:
                for ref in refs:
                    a, b = blocks.get((ref, t, bs), []), blocks.get((rt, t, bs), [])
                    if not a or len(a) != len(b):
                        continue
                    r = ratio_summary(a, b)
                    out.append({"runtime": rt, "reference": ref, "threads": t,
                                "threads_label": _threads_label(t, effective.get((rt, t))), "batch_size": bs,
                                "runtime_ms": float(np.median(b)), "reference_ms": float(np.median(a)),
                                "speedup_median": r["median"], "speedup_min": r["min"], "speedup_max": r["max"],
                                "reps": r["reps"], "per_rep": r["per_rep"]})
    return out


def _frames(cfg: BenchConfig) -> list[np.ndarray]:
    n = max(cfg.n_frames, max(cfg.batch_sizes))
    if cfg.images:
        return folder_frames(cfg.images, n)
    return synthetic_frames(n, cfg.frame_size, cfg.seed, cfg.jpeg_quality)


def _bundle_info(cfg: BenchConfig) -> dict[str, Any]:
    try:
        from ..bundle import Bundle

        b = Bundle.load(cfg.bundle, verify=False)
        return {"path": cfg.bundle, "method": b.method, "backbone": b.backbone,
                "input_size": list(b.preprocess.size), "postprocess": b.postprocess.get("kind"),
                # an `export --cpu-int8` bundle: its "onnxruntime" rows run int8, the torch references fp32
                "graph": b.graph_kind}
    except Exception as e:  # noqa: BLE001 - a fake bundle in tests; the pipelines report real errors
        return {"path": cfg.bundle, "method": "?", "backbone": "?", "input_size": None, "postprocess": None,
                "error": str(e)}


def run_bench(cfg: BenchConfig, detector_factory: Optional[DetectorFactory] = None,
              reference_factory: Optional[ReferenceFactory] = None,
              frames: Optional[Sequence[np.ndarray]] = None) -> BenchReport:
    """Benchmark every requested pipeline with the interleaved protocol (protocol.py), compare, and
    write the report to cfg.out_dir when it is set.

    detector_factory / reference_factory / frames: injection points for tests (a factory forces
    in-process workers: it cannot cross a process boundary)."""
    from tqdm.auto import tqdm

    if cfg.expected_digest is not None:  # before any timing: the references read the bundle too
        from ..bundle import Bundle

        Bundle.load(cfg.bundle, verify=False, expected_digest=cfg.expected_digest)

    frames = list(frames) if frames is not None else _frames(cfg)
    shapes = sorted({cv2.imdecode(f, cv2.IMREAD_COLOR).shape[:2] for f in frames})
    frame_desc = (f"{len(frames)} {'images from ' + cfg.images if cfg.images else 'synthetic JPEG frames'}, "
                  + ", ".join(f"{w}x{h}" for h, w in shapes[:3]) + ("..." if len(shapes) > 3 else ""))
    in_process = not cfg.isolate or detector_factory is not None or reference_factory is not None
    reasons: dict[str, str] = {}
    samples: dict[Key, list[dict[str, float]]] = {}
    blocks: dict[Key, list[float]] = {}
    effective: dict[tuple[str, int], Optional[int]] = {}
    parity_data: dict[str, dict[str, np.ndarray]] = {}
    rss: dict[str, dict[str, Optional[float]]] = {}
    bank_stats: dict[str, list[dict[str, Any]]] = {}
    workers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgeuad-bench-") as tmp:
        work = Path(tmp)
        frame_dir = work / "frames"
        frame_dir.mkdir()
        for i, f in enumerate(frames):
            f.tofile(str(frame_dir / f"{i:04d}.bin"))
        for name in cfg.pipelines:
            injected = (detector_factory is not None and name in RUNTIMES) or \
                       (reference_factory is not None and name in REFERENCES)
            reason = None if injected else backend_unavailable_reason(name)
            if reason is not None:
                log.warning("bench: %s not available: %s", name, reason)
                reasons[name] = reason
                continue
            workers[name] = (LocalWorker(name, cfg, frames, work, detector_factory, reference_factory) if in_process
                             else ProcessWorker(name, cfg, frame_dir, work))

        def fail(name: str, e: Exception) -> None:
            msg = str(e) if isinstance(e, WorkerError) else f"failed: {type(e).__name__}: {e}"
            log.warning("bench: %s %s", name, msg)
            reasons[name] = msg
            w = workers.pop(name)
            try:
                w.close()
            except Exception:  # noqa: BLE001 - already failed; its reason is recorded
                pass

        total = len(cfg.threads) * len(cfg.batch_sizes) * cfg.repetitions * len(workers)
        bar = tqdm(total=total, desc="bench", unit="block", disable=not cfg.progress, leave=False)
        try:
            for t in cfg.threads:
                for name in list(workers):
                    bar.set_postfix_str(f"{name}: building ({t} threads)")
                    try:
                        effective[(name, t)] = workers[name].prepare(t)
                        if name not in parity_data and cfg.parity_frames > 0:
                            parity_data[name] = workers[name].parity(cfg.parity_frames)
                    except Exception as e:  # noqa: BLE001 - one pipeline failing must not lose the others
                        fail(name, e)
                for bs in cfg.batch_sizes:
                    for rep in range(cfg.repetitions):
                        order = list(workers) if rep % 2 == 0 else list(reversed(list(workers)))
                        for name in order:
                            bar.set_postfix_str(f"{name} t={t} batch={bs} round {rep + 1}/{cfg.repetitions}")
                            try:
                                rec = workers[name].block(bs, rep * cfg.block, cfg.block,
                                                          1 + (cfg.warmup if rep == 0 else 0))
                            except Exception as e:  # noqa: BLE001
                                fail(name, e)
                                continue
                            samples.setdefault((name, t, bs), []).extend(rec)
                            blocks.setdefault((name, t, bs), []).append(float(np.median([r["pipeline"] for r in rec])))
                            bar.update(1)
                for name in list(workers):  # before the next thread count rebuilds the pipeline
                    try:
                        st = workers[name].stats()
                    except Exception as e:  # noqa: BLE001
                        fail(name, e)
                        continue
                    if st:
                        bank_stats.setdefault(name, []).append({"threads": t, **st})
            for name in list(workers):
                try:
                    rss[name] = workers[name].rss()
                except Exception as e:  # noqa: BLE001
                    fail(name, e)
        finally:
            bar.close()
            for w in workers.values():
                w.close()

    pipelines = []
    note = ("in-process: one peak for all pipelines" if in_process else "its own worker process")
    for name in cfg.pipelines:
        if name in reasons or name not in rss:
            pipelines.append(PipelineReport(name=name, available=False, reason=reasons.get(name, "not measured")))
            continue
        runs = []
        for t in cfg.threads:
            for bs in cfg.batch_sizes:
                rec = samples.get((name, t, bs))
                if rec:
                    runs.append(RunStats(pipeline=name, threads=t, effective_threads=effective.get((name, t)),
                                         batch_size=bs, iterations=len(rec),
                                         throughput_fps=throughput(bs, [d["total"] for d in rec]),
                                         stages=summarize_stages(rec)))
        pipelines.append(PipelineReport(name=name, available=True, runs=runs, rss_note=note,
                                        bank=bank_stats.get(name, []), **rss[name]))
    ok_names = {p.name for p in pipelines if p.available}
    blocks = {k: v for k, v in blocks.items() if k[0] in ok_names}
    ref_name = TORCH_EAGER if TORCH_EAGER in parity_data else next((r for r in cfg.references if r in parity_data), None)
    parity: list[ParityReport] = []
    if ref_name is not None:
        for name, d in parity_data.items():
            if name != ref_name and name in ok_names:
                parity.append(compare_parity(name, d, parity_data[ref_name], cfg.score_atol, cfg.score_rtol, ref_name))
    cdict = cfg.to_dict()
    cdict["frame_desc"] = frame_desc
    if not in_process:  # what each worker started with (protocol.openmp_environ)
        cdict["openmp"] = {"runtime": describe_openmp_policy(openmp_environ(RUNTIMES[0])),
                           "peer": describe_openmp_policy(openmp_environ(PEER)),
                           "torch": describe_openmp_policy(openmp_environ(TORCH_EAGER))}
    report = BenchReport(config=cdict, machine=machine_info(), bundle_info=_bundle_info(cfg), pipelines=pipelines,
                         parity=parity, speedups=compute_speedups(cfg, blocks, effective))
    for q in parity:
        if not q.ok:
            log.warning("bench: %s disagrees with %s: max |d score| %.3g, max |d map| %s",
                        q.backend, q.reference, q.max_abs_score_diff, q.max_abs_map_diff)
    if cfg.out_dir:
        report.write(cfg.out_dir, cfg.stem)
    return report
