"""Throughput and per-stage latency of the runtime pipeline, against the eager torch reference.

    report = run_bench(BenchConfig(bundle="bundles/bottle"))
    print(report.table()); report.write("bench_out")      # bench.json, bench.md, bench.png

What is measured, per available backend x thread count x batch size, on the same frames:

    decode       cv2.imdecode of JPEG bytes (what an MJPEG/RTSP camera or a folder delivers)
    preprocess   Detector.preprocess (resize + normalise to the network input)
    network      Detector.infer (the backend only)
    memory_bank  nearest-neighbour search (patch methods)          } from the timings that
    distance_map anomaly map + blur + image score                  } Detector.postprocess
    postprocess  normalisation / resize of maps to the frame size  } reports itself
    pipeline     preprocess .. results (what the torch reference is compared on)
    total        decode .. results; throughput = frames / sum(total)

The torch reference (`methods/reference.py`: eager model + torch post-processing) runs on the
same frames with torch's thread count set to the Detector's; the report gives the speed-up at
batch 1 and the max abs difference of image scores and maps.

Paired speed-up: separate runs of the two pipelines drift apart on a shared machine (the eager
torch p50 moved by 40% between runs here while onnxruntime moved by 10%), so the headline ratio
comes from one extra process that alternates the Detector (onnxruntime) and the reference in
blocks of frames (ABBA) and reports the median of the per-round ratios with its quartiles.

Each pipeline runs in a fresh subprocess by default so peak RSS (VmHWM) is per backend; the
parent never imports torch.  Timings are wall clock (time.perf_counter) per batch.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np

from .atomic import atomic_write_bytes

log = logging.getLogger(__name__)

REFERENCE = "torch-reference"
PAIRED = "paired"  # worker name of the interleaved runtime-vs-reference measurement
STAGES = ("decode", "preprocess", "network", "memory_bank", "distance_map", "postprocess", "score_torch",
          "pipeline", "total")
QUANTILES = (50, 95, 99)
_PKG_PARENT = Path(__file__).resolve().parents[1]

DetectorFactory = Callable[[str, int], Any]        # (backend, threads) -> Detector-like
ReferenceFactory = Callable[[int], Any]            # threads -> ReferencePipeline-like


# ---------------------------------------------------------------------------------------------
# pure statistics
# ---------------------------------------------------------------------------------------------
def percentiles(samples_ms: Sequence[float], qs: Sequence[int] = QUANTILES) -> dict[str, float]:
    """{'p50': .., 'p95': .., 'p99': .., 'mean': .., 'min': .., 'max': .., 'n': ..} of the samples (ms).

    Linear interpolation between order statistics (numpy's default), so p99 of 20 samples is
    between the two largest, not the largest: with few iterations, read p99 as a rough tail."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("percentiles of no samples")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("timings must be finite and >= 0")
    out = {f"p{q}": float(np.percentile(a, q)) for q in qs}
    out.update(mean=float(a.mean()), min=float(a.min()), max=float(a.max()), n=int(a.size))
    return out


def throughput(frames_per_iter: int, total_ms: Sequence[float]) -> float:
    """Frames per second over the timed iterations: (frames_per_iter * iterations) / sum(times)."""
    t = np.asarray(total_ms, dtype=np.float64)
    if t.size == 0 or frames_per_iter <= 0:
        raise ValueError("need at least one iteration and frames_per_iter > 0")
    s = float(t.sum())
    if s <= 0:
        raise ValueError("total time must be > 0")
    return frames_per_iter * t.size / (s / 1000.0)


def summarize_stages(per_iter: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-iteration {stage: ms} dicts -> {stage: percentiles}; a stage missing from some
    iterations is an error (it would bias the percentiles)."""
    if not per_iter:
        raise ValueError("no iterations")
    names = set(per_iter[0])
    for d in per_iter:
        if set(d) != names:
            raise ValueError(f"inconsistent stages across iterations: {sorted(names)} vs {sorted(d)}")
    order = [s for s in STAGES if s in names] + sorted(names - set(STAGES))
    return {s: percentiles([d[s] for d in per_iter]) for s in order}


def speedup(reference_ms: float, candidate_ms: float) -> float:
    """How many times faster the candidate is (ratio of latencies)."""
    if candidate_ms <= 0 or reference_ms <= 0:
        raise ValueError("latencies must be > 0")
    return reference_ms / candidate_ms


# ---------------------------------------------------------------------------------------------
# configuration and report
# ---------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """What to benchmark.

    images: folder/glob of images used as frames (their encoded bytes are decoded in the
        timed loop); None = synthetic textured frames of `frame_size`, JPEG-encoded.
    frame_size: (height, width) of synthetic frames: a camera size, resized by preprocess.
    isolate: run each pipeline in a fresh subprocess (separable peak RSS); False runs in
        this process (tests, or where subprocesses are not allowed) and says so in the report.
    parity_frames: frames scored by each backend and the reference for the score/map diff.
    """

    bundle: str
    out_dir: Optional[str] = "bench_out"
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 8])
    threads: list[int] = field(default_factory=lambda: [1, 2])
    backends: list[str] = field(default_factory=lambda: ["onnxruntime", "torch", "tensorrt"])
    iterations: int = 20
    warmup: int = 3
    images: Optional[str] = None
    frame_size: tuple[int, int] = (480, 640)
    n_frames: int = 8
    jpeg_quality: int = 90
    reference: bool = True
    isolate: bool = True
    parity_frames: int = 4
    return_map: bool = True
    score_atol: float = 1e-4
    score_rtol: float = 1e-3
    seed: int = 0
    stem: str = "bench"
    worker_timeout_s: float = 3600.0
    paired_iterations: int = 40   # interleaved runtime/reference frames per thread count (0 = skip)
    paired_block: int = 8         # frames per side per round of the interleaved measurement
    paired_backend: str = "onnxruntime"

    def __post_init__(self) -> None:
        self.bundle = str(self.bundle)
        self.batch_sizes = sorted({int(b) for b in self.batch_sizes})
        self.threads = [int(t) for t in self.threads]
        self.frame_size = (int(self.frame_size[0]), int(self.frame_size[1]))
        if not self.batch_sizes or self.batch_sizes[0] < 1:
            raise ValueError(f"batch sizes must be >= 1, got {self.batch_sizes}")
        if not self.threads or min(self.threads) < 0:
            raise ValueError(f"thread counts must be >= 0 (0 = library default), got {self.threads}")
        if self.iterations < 1 or self.warmup < 0 or self.paired_iterations < 0 or self.paired_block < 1:
            raise ValueError("need iterations >= 1, warmup >= 0, paired_iterations >= 0 and paired_block >= 1")
        unknown = set(self.backends) - {"onnxruntime", "torch", "tensorrt"}
        if unknown:
            raise ValueError(f"unknown backends {sorted(unknown)}")
        if min(self.frame_size) < 8:
            raise ValueError("frame_size too small")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frame_size"] = list(self.frame_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown BenchConfig keys {sorted(unknown)}")
        return cls(**d)


@dataclass
class RunStats:
    """One (pipeline, threads, batch size) measurement.  Stage values are ms per batch."""

    pipeline: str
    threads: int
    effective_threads: Optional[int]
    batch_size: int
    iterations: int
    throughput_fps: float
    stages: dict[str, dict[str, float]]

    def p50(self, stage: str) -> Optional[float]:
        s = self.stages.get(stage)
        return None if s is None else s["p50"]


@dataclass
class PipelineReport:
    name: str
    available: bool
    reason: str = ""
    runs: list[RunStats] = field(default_factory=list)
    peak_rss_mb: Optional[float] = None
    baseline_rss_mb: Optional[float] = None
    rss_note: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PipelineReport":
        d = dict(d)
        d["runs"] = [RunStats(**r) for r in d.get("runs", [])]
        return cls(**d)


@dataclass
class ParityReport:
    backend: str
    n_frames: int
    max_abs_score_diff: float
    max_abs_map_diff: Optional[float]
    score_tolerance: float
    ok: bool


@dataclass
class BenchReport:
    config: dict[str, Any]
    machine: dict[str, Any]
    bundle_info: dict[str, Any]
    pipelines: list[PipelineReport]
    parity: list[ParityReport]
    speedups: list[dict[str, Any]]
    paired: list[dict[str, Any]] = field(default_factory=list)   # see measure_paired

    # --- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "machine": self.machine, "bundle": self.bundle_info,
                "pipelines": [asdict(p) for p in self.pipelines], "parity": [asdict(p) for p in self.parity],
                "speedups": self.speedups, "paired": self.paired}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchReport":
        return cls(config=d["config"], machine=d["machine"], bundle_info=d["bundle"],
                   pipelines=[PipelineReport.from_dict(p) for p in d["pipelines"]],
                   parity=[ParityReport(**p) for p in d["parity"]], speedups=list(d["speedups"]),
                   paired=list(d.get("paired", [])))

    def pipeline(self, name: str) -> Optional[PipelineReport]:
        for p in self.pipelines:
            if p.name == name:
                return p
        return None

    # --- text ------------------------------------------------------------------------------
    def _rows(self) -> list[list[str]]:
        def f(v: Optional[float], nd: int = 2) -> str:
            return "-" if v is None else f"{v:.{nd}f}"

        rows = []
        for p in self.pipelines:
            for r in p.runs if p.available else []:
                tot = r.stages["total"]
                bank_map = r.p50("score_torch") if "score_torch" in r.stages else None
                rows.append([p.name, _threads_label(r), str(r.batch_size), f(r.throughput_fps, 1),
                             f(tot["p50"]), f(tot["p95"]), f(tot["p99"]),
                             f(r.p50("decode")), f(r.p50("preprocess")),
                             f(r.p50("network") if bank_map is None else bank_map),
                             f(r.p50("memory_bank")), f(r.p50("distance_map"))])
        return rows

    HEADER = ["pipeline", "threads", "batch", "frames/s", "total p50", "p95", "p99", "decode",
              "preproc", "network", "bank", "map"]

    def table(self) -> str:
        """Plain-text table (ms per batch, p50 unless named)."""
        rows = self._rows()
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(self.HEADER)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        out = [f"edgeuad bench: {self.bundle_info.get('method')} / {self.bundle_info.get('backbone')}, "
               f"input {self.bundle_info.get('input_size')}, frames {self.config.get('frame_desc')}",
               "ms per batch (p50 unless named); frames/s end to end incl. decode", line(self.HEADER)]
        out += [line(r) for r in rows]
        out += [f"{p.name}: not available ({p.reason})" for p in self.pipelines if not p.available]
        for p in self.pipelines:
            if p.available and p.peak_rss_mb is not None:
                out.append(f"peak RSS {p.name}: {p.peak_rss_mb:.0f} MB (baseline after imports "
                           f"{_fmt_opt(p.baseline_rss_mb, 0)} MB) {p.rss_note}".rstrip())
        for s in self.speedups:
            out.append(f"speed-up vs torch reference, {s['backend']} threads={s['threads_label']} batch "
                       f"{s['batch_size']}: x{s['speedup_p50']:.2f} (pipeline p50 {s['candidate_ms']:.2f} ms vs "
                       f"{s['reference_ms']:.2f} ms)")
        for s in self.paired:
            out.append(f"paired speed-up (interleaved), {s['backend']} threads={s['threads_label']} batch 1: "
                       f"x{s['speedup_median']:.2f} (quartiles x{s['speedup_p25']:.2f}-x{s['speedup_p75']:.2f}; "
                       f"{s['runtime_p50_ms']:.2f} vs {s['reference_p50_ms']:.2f} ms, {s['iterations']} frames)")
        for q in self.parity:
            out.append(f"parity {q.backend} vs torch reference ({q.n_frames} frames): max |d score| "
                       f"{q.max_abs_score_diff:.2e}, max |d map| {_fmt_opt(q.max_abs_map_diff, 2, 'e')} -> "
                       f"{'OK' if q.ok else 'MISMATCH'}")
        return "\n".join(out)

    def to_markdown(self) -> str:
        """A section ready to paste into benchmarks/RESULTS.md."""
        m, b, c = self.machine, self.bundle_info, self.config
        lines = [f"## Pipeline benchmark: {b.get('method')} / {b.get('backbone')} ({m.get('date', '')[:10]})", "",
                 f"- Machine: {m.get('cpu_model')}, {m.get('logical_cores')} logical cores "
                 f"({m.get('usable_cores')} usable), {m.get('os')}",
                 f"- Software: Python {m.get('python')}, " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
                 f"- edgeuad {m.get('edgeuad')}, git {m.get('git_commit')}{' (dirty tree)' if m.get('git_dirty') else ''}",
                 f"- Bundle: `{b.get('path')}`, input {b.get('input_size')}, post-processing {b.get('postprocess')}"
                 + (f", weights {b['weights']}" if b.get("weights") else ""),
                 f"- Frames: {c.get('frame_desc')}; {c.get('warmup')} warm-up + {c.get('iterations')} timed "
                 f"iterations per setting; times are ms per batch",
                 "", "| " + " | ".join(self.HEADER) + " |", "|" + "---|" * len(self.HEADER)]
        for r in self._rows():
            lines.append("| " + " | ".join(r) + " |")
        missing = [p for p in self.pipelines if not p.available]
        if missing:
            lines += [""] + [f"- {p.name}: not available ({p.reason})" for p in missing]
        lines += ["", "| pipeline | peak RSS (MB) | baseline RSS (MB) | note |", "|---|---|---|---|"]
        for p in self.pipelines:
            if p.available:
                lines.append(f"| {p.name} | {_fmt_opt(p.peak_rss_mb, 0)} | {_fmt_opt(p.baseline_rss_mb, 0)} | {p.rss_note} |")
        if self.speedups:
            lines += ["", "Speed-up over the eager torch reference (same frames, same thread count, pipeline = "
                          "preprocess .. results, p50):", "",
                      "| backend | threads | batch | runtime ms | torch ms | speed-up |", "|---|---|---|---|---|---|"]
            for s in self.speedups:
                lines.append(f"| {s['backend']} | {s['threads_label']} | {s['batch_size']} | {s['candidate_ms']:.2f} | "
                             f"{s['reference_ms']:.2f} | x{s['speedup_p50']:.2f} |")
        if self.paired:
            lines += ["", "Paired speed-up (one process alternates the Detector and the torch reference in rounds of "
                          "a block of the same frames each, ABBA, one untimed re-warm frame per block; batch 1; "
                          "median over rounds of the ratio of block medians, with quartiles):", "",
                      "| backend | threads | rounds x frames | runtime p50 ms | torch p50 ms | speed-up | quartiles |",
                      "|---|---|---|---|---|---|---|"]
            for s in self.paired:
                lines.append(f"| {s['backend']} | {s['threads_label']} | {s.get('rounds', '?')} x {s.get('block', '?')} | "
                             f"{s['runtime_p50_ms']:.2f} | "
                             f"{s['reference_p50_ms']:.2f} | x{s['speedup_median']:.2f} | "
                             f"x{s['speedup_p25']:.2f}-x{s['speedup_p75']:.2f} |")
        if self.parity:
            lines += ["", "Agreement with the torch reference (raw scores and maps at the network input size):", "",
                      "| backend | frames | max abs score diff | max abs map diff | within tolerance |",
                      "|---|---|---|---|---|"]
            for q in self.parity:
                lines.append(f"| {q.backend} | {q.n_frames} | {q.max_abs_score_diff:.2e} | "
                             f"{_fmt_opt(q.max_abs_map_diff, 2, 'e')} | {'yes' if q.ok else 'NO'} |")
        lines += ["", f"Peak RSS: {self.config.get('rss_method')}.",
                  "Columns: decode = cv2.imdecode of the JPEG frames; network = the backend only (for the torch "
                  "reference of patch methods it is `score_torch`: network + search + map in one call); bank = "
                  "memory-bank search; map = anomaly map + blur + score; frames/s = batch size / mean total.", ""]
        return "\n".join(lines)

    # --- plot ------------------------------------------------------------------------------
    def plot(self, size: tuple[int, int] = (520, 860)) -> np.ndarray:
        """Throughput vs batch size, one line per (pipeline, threads); BGR uint8 image (cv2 only)."""
        series: list[tuple[str, list[tuple[int, float]]]] = []
        for p in self.pipelines:
            if not p.available:
                continue
            by_t: dict[str, list[tuple[int, float]]] = {}
            for r in p.runs:
                by_t.setdefault(_threads_label(r), []).append((r.batch_size, r.throughput_fps))
            for t, pts in by_t.items():
                series.append((f"{p.name} t={t}", sorted(pts)))
        return _line_plot(series, "throughput vs batch size (frames/s, end to end)", "batch size", "frames/s", size)

    def write(self, out_dir: str | os.PathLike, stem: Optional[str] = None) -> dict[str, Path]:
        """Write <stem>.json, <stem>.md, <stem>.png atomically; returns their paths."""
        out = Path(out_dir)
        stem = stem or str(self.config.get("stem") or "bench")
        paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
        atomic_write_bytes(paths["json"], self.to_json().encode())
        atomic_write_bytes(paths["md"], self.to_markdown().encode())
        ok, buf = cv2.imencode(".png", self.plot())
        if not ok:
            raise OSError("PNG encoding failed")
        atomic_write_bytes(paths["png"], buf.tobytes())
        log.info("bench report written to %s", ", ".join(str(p) for p in paths.values()))
        return paths


def _fmt_opt(v: Optional[float], nd: int, kind: str = "f") -> str:
    return "-" if v is None else f"{v:.{nd}{kind}}"


def _threads_label(r: RunStats) -> str:
    if r.threads == 0:
        return f"default({r.effective_threads})" if r.effective_threads else "default"
    return str(r.threads)


_PALETTE = [(200, 80, 30), (40, 140, 230), (60, 170, 60), (40, 40, 200), (150, 60, 160), (30, 160, 170),
            (120, 120, 120), (0, 100, 200)]


def _line_plot(series: Sequence[tuple[str, Sequence[tuple[int, float]]]], title: str, xlabel: str, ylabel: str,
               size: tuple[int, int]) -> np.ndarray:
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 80, 250, 50, 60
    pw, ph = w - left - right, h - top - bottom
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (left, 22), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    xs = sorted({x for _, pts in series for x, _ in pts}) or [1]
    ymax = max([y for _, pts in series for _, y in pts] or [1.0]) * 1.1 or 1.0
    # batch sizes on a log2 axis: 1, 4, 8, 16 are spread as they are usually chosen
    lx = [np.log2(x) for x in xs]
    lo, hi = min(lx), max(lx)
    span = (hi - lo) or 1.0

    def px(x: float) -> int:
        return int(left + (np.log2(x) - lo) / span * pw) if len(xs) > 1 else left + pw // 2

    def py(y: float) -> int:
        return int(top + ph - y / ymax * ph)

    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    for k in range(6):
        yv = ymax * k / 5
        y = py(yv)
        cv2.line(img, (left, y), (left + pw, y), (225, 225, 225), 1)
        cv2.putText(img, f"{yv:.0f}" if ymax >= 10 else f"{yv:.1f}", (8, y + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for x in xs:
        cv2.line(img, (px(x), top + ph), (px(x), top + ph + 5), (0, 0, 0), 1)
        cv2.putText(img, str(x), (px(x) - 5, top + ph + 20), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (left + pw // 2 - 35, h - 15), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, ylabel, (8, top - 18), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (name, pts) in enumerate(series):
        color = _PALETTE[i % len(_PALETTE)]
        p = [(px(x), py(y)) for x, y in pts]
        for a, b in zip(p, p[1:]):
            cv2.line(img, a, b, color, 2, cv2.LINE_AA)
        for q in p:
            cv2.circle(img, q, 4, color, -1, cv2.LINE_AA)
        ly = top + 15 + 20 * i
        cv2.line(img, (left + pw + 15, ly - 4), (left + pw + 35, ly - 4), color, 2)
        cv2.putText(img, name[:30], (left + pw + 40, ly), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    if not series:
        cv2.putText(img, "no pipeline available", (left + 20, top + ph // 2), font, 0.6, (0, 0, 200), 1)
    return img


# ---------------------------------------------------------------------------------------------
# machine info and memory
# ---------------------------------------------------------------------------------------------
def _proc_status_kb(key: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb() -> Optional[float]:
    """Peak resident set size of this process (VmHWM; getrusage as the fallback)."""
    kb = _proc_status_kb("VmHWM")
    if kb is None:
        try:
            import resource

            kb = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            if sys.platform == "darwin":  # bytes there, kB on Linux
                kb /= 1024.0
        except (ImportError, OSError):
            return None
    return kb / 1024.0


def current_rss_mb() -> Optional[float]:
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to clear_refs) so in-process peaks are per pipeline."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(args: list[str]) -> Optional[str]:
    try:
        r = subprocess.run(["git", *args], cwd=_PKG_PARENT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    """CPU, cores, OS, Python, library versions, git commit, date: the context a number needs."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    from ._version import __version__

    commit = _git(["rev-parse", "--short=12", "HEAD"]) or "unknown (no commit)"
    dirty = bool(_git(["status", "--porcelain", "--untracked-files=no"]))
    return {
        "cpu_model": cpu, "logical_cores": os.cpu_count(), "usable_cores": usable,
        "os": platform.platform(), "python": platform.python_version(), "edgeuad": __version__,
        # versions from package metadata: reading torch's version must not import torch
        "versions": {"onnxruntime": _version("onnxruntime"), "numpy": np.__version__, "opencv": cv2.__version__,
                     "torch": _version("torch"), "tensorrt": _version("tensorrt")},
        "git_commit": commit, "git_dirty": dirty,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------
def synthetic_frames(n: int, size_hw: tuple[int, int], seed: int = 0, quality: int = 90) -> list[np.ndarray]:
    """n JPEG-encoded BGR frames with texture (flat frames would compress and decode unrealistically fast)."""
    rng = np.random.default_rng(seed)
    h, w = size_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        base = 110 + 40 * np.sin(xx / (17 + 3 * i)) * np.cos(yy / (23 + 2 * i))
        img = np.stack([base + 10 * c for c in range(3)], axis=2) + rng.normal(0, 12, (h, w, 3))
        ok, buf = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out.append(buf.reshape(-1))
    return out


def folder_frames(images: str, n_max: int) -> list[np.ndarray]:
    """Encoded bytes of up to n_max readable images (unreadable ones skipped with a warning)."""
    from .data import list_folder

    out = []
    for p in list_folder(images):
        buf = np.fromfile(str(p), dtype=np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
        if img is None or min(img.shape[:2]) < 8:
            log.warning("bench: skipping unreadable image %s", p)
            continue
        out.append(buf)
        if len(out) >= n_max:
            break
    if not out:
        raise ValueError(f"no readable image in {images}")
    return out


def decode(bufs: Sequence[np.ndarray]) -> list[np.ndarray]:
    imgs = [cv2.imdecode(b, cv2.IMREAD_COLOR) for b in bufs]
    if any(i is None for i in imgs):
        raise RuntimeError("frame decode failed")
    return imgs


def _batch(frames: Sequence[np.ndarray], it: int, bs: int) -> list[np.ndarray]:
    n = len(frames)
    return [frames[(it * bs + k) % n] for k in range(bs)]


# ---------------------------------------------------------------------------------------------
# measuring one pipeline (in a worker subprocess or in-process)
# ---------------------------------------------------------------------------------------------
def _effective_threads(backend: str, threads: int) -> Optional[int]:
    if threads > 0:
        return threads
    if backend in ("torch", REFERENCE) and "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    return os.cpu_count()  # onnxruntime's default intra-op pool = physical/logical cores


# One frame step: decoded BGR images -> (number of results, stage timings in ms, in table order).
FrameStep = Callable[[list[np.ndarray]], tuple[int, dict[str, float]]]


def _timed_runs(label: str, frames: Sequence[np.ndarray], threads: int, effective: Optional[int],
                cfg: BenchConfig, step: FrameStep) -> list[RunStats]:
    """The timing loop every pipeline shares: per batch size, warm-up, then decode + `step` per batch.

    "pipeline" is everything after decode, "total" includes it; a step returning the wrong number of
    results for its batch is an error (a pipeline that drops frames must not look fast)."""
    runs = []
    for bs in cfg.batch_sizes:
        rec: list[dict[str, float]] = []
        for it in range(cfg.warmup + cfg.iterations):
            bufs = _batch(frames, it, bs)
            t0 = time.perf_counter()
            imgs = decode(bufs)
            t1 = time.perf_counter()
            n, stages = step(imgs)
            t2 = time.perf_counter()
            if n != bs:
                raise RuntimeError(f"{label}: {n} results for a batch of {bs}")
            if it < cfg.warmup:
                continue
            rec.append({"decode": (t1 - t0) * 1e3, **stages, "pipeline": (t2 - t1) * 1e3, "total": (t2 - t0) * 1e3})
        runs.append(RunStats(pipeline=label, threads=threads, effective_threads=effective, batch_size=bs,
                             iterations=cfg.iterations, throughput_fps=throughput(bs, [d["total"] for d in rec]),
                             stages=summarize_stages(rec)))
        log.info("%s threads=%s batch=%d: %.1f frames/s", label, threads, bs, runs[-1].throughput_fps)
    return runs


def measure_detector(det: Any, frames: Sequence[np.ndarray], backend: str, threads: int,
                     cfg: BenchConfig) -> list[RunStats]:
    """Time det.preprocess / det.infer / det.postprocess for every batch size."""

    def step(imgs: list[np.ndarray]) -> tuple[int, dict[str, float]]:
        t0 = time.perf_counter()
        x = det.preprocess(imgs)
        t1 = time.perf_counter()
        out = det.infer(x)
        t2 = time.perf_counter()
        res = det.postprocess(out, [im.shape[:2] for im in imgs], return_map=cfg.return_map)
        d = {"preprocess": (t1 - t0) * 1e3, "network": (t2 - t1) * 1e3}
        for k in ("memory_bank", "distance_map", "postprocess"):
            if res and k in res[0].timings:  # batch-level timings, identical in every result of the batch
                d[k] = float(res[0].timings[k])
        return len(res), d

    return _timed_runs(backend, frames, threads, _effective_threads(backend, threads), cfg, step)


def measure_reference(ref: Any, pre_cfg: Any, frames: Sequence[np.ndarray], threads: int,
                      cfg: BenchConfig) -> list[RunStats]:
    """Same loop for the torch reference: decode, the same preprocess, ref.run (model + torch post)."""
    from .preprocess import preprocess

    def step(imgs: list[np.ndarray]) -> tuple[int, dict[str, float]]:
        t0 = time.perf_counter()
        x = preprocess(imgs, pre_cfg, color="bgr")
        t1 = time.perf_counter()
        out = ref.run(x)
        return len(out.scores), {"preprocess": (t1 - t0) * 1e3, **{k: float(v) for k, v in out.timings.items()}}

    effective = getattr(ref, "threads", None) or _effective_threads(REFERENCE, threads)
    return _timed_runs(REFERENCE, frames, threads, effective, cfg, step)


def detector_parity_outputs(det: Any, frames: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Raw scores and raw maps at the network input size (no resize), for the diff vs torch."""
    imgs = decode(frames)
    x = det.preprocess(imgs)
    h, w = x.shape[2], x.shape[3]
    res = det.postprocess(det.infer(x), [(h, w)] * len(imgs), return_map=True)
    out = {"scores": np.asarray([r.score for r in res], np.float64)}
    maps = [getattr(r, "raw_map", None) for r in res]
    if all(m is not None for m in maps):
        out["maps"] = np.stack(maps).astype(np.float32)
    return out


def reference_parity_outputs(ref: Any, pre_cfg: Any, frames: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    from .preprocess import preprocess

    o = ref.run(preprocess(decode(frames), pre_cfg, color="bgr"))
    return {"scores": np.asarray(o.scores, np.float64), "maps": np.asarray(o.maps, np.float32)}


def measure_paired(det_factory: DetectorFactory, ref_factory: ReferenceFactory, frames: Sequence[np.ndarray],
                   cfg: BenchConfig) -> list[dict[str, Any]]:
    """Detector and torch reference interleaved in blocks in one process (batch 1), per thread count.

    Rounds of `paired_block` frames: the Detector scores the block, then the reference scores the same
    frames (the next round starts with the reference: ABBA), each block after one untimed re-warm
    frame, so neither side pays for the other's cache footprint and slow drifts of the machine hit
    both sides of every round.  Alternating single frames instead slowed eager torch at 1 thread by
    1.8x here (every call found its weights evicted), which flattered the runtime.  The speed-up is the
    median over rounds of (reference block median / runtime block median), with its quartiles."""
    from .preprocess import preprocess

    block = max(1, min(cfg.paired_block, cfg.paired_iterations))
    rounds = -(-cfg.paired_iterations // block)
    out = []
    for t in cfg.threads:
        det, ref = det_factory(cfg.paired_backend, t), ref_factory(t)

        def once(which: int, i: int) -> float:
            imgs = decode(_batch(frames, i, 1))
            t0 = time.perf_counter()
            if which == 0:
                det.postprocess(det.infer(det.preprocess(imgs)), [im.shape[:2] for im in imgs],
                                return_map=cfg.return_map)
            else:
                ref.run(preprocess(imgs, ref.pre_cfg, color="bgr"))
            return (time.perf_counter() - t0) * 1e3

        try:
            for i in range(cfg.warmup):
                once(0, i)
                once(1, i)
            samples: tuple[list[float], list[float]] = ([], [])
            ratios = []
            for r in range(rounds):
                med = [0.0, 0.0]
                for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                    once(which, r * block)  # re-warm after the switch (untimed)
                    ms = [once(which, r * block + j) for j in range(block)]
                    samples[which].extend(ms)
                    med[which] = float(np.median(ms))
                ratios.append(med[1] / max(med[0], 1e-9))
        finally:
            if hasattr(det, "close"):
                det.close()
        eff = _effective_threads(cfg.paired_backend, t)
        out.append({"backend": cfg.paired_backend, "threads": t,
                    "threads_label": str(t) if t > 0 else f"default ({eff})", "batch_size": 1,
                    "iterations": rounds * block, "rounds": rounds, "block": block,
                    "runtime_p50_ms": float(np.median(samples[0])), "reference_p50_ms": float(np.median(samples[1])),
                    "speedup_median": float(np.median(ratios)), "speedup_p25": float(np.percentile(ratios, 25)),
                    "speedup_p75": float(np.percentile(ratios, 75))})
        log.info("paired %s threads=%s: x%.2f", cfg.paired_backend, t, out[-1]["speedup_median"])
    return out


def _default_detector_factory(cfg: BenchConfig) -> DetectorFactory:
    def make(backend: str, threads: int) -> Any:
        from .detector import Detector

        # color="bgr": frames come from cv2.imdecode, as from an OpenCV camera
        return Detector(cfg.bundle, backend=backend, threads=threads, color="bgr")
    return make


def _default_reference_factory(cfg: BenchConfig) -> ReferenceFactory:
    def make(threads: int) -> Any:
        from .methods.reference import ReferencePipeline  # torch: only in the reference worker

        return ReferencePipeline(cfg.bundle, threads=threads)
    return make


def run_pipeline(name: str, cfg: BenchConfig, frames: Sequence[np.ndarray], parity_path: Optional[Path],
                 detector_factory: Optional[DetectorFactory] = None,
                 reference_factory: Optional[ReferenceFactory] = None,
                 in_process: bool = False) -> PipelineReport:
    """Measure one pipeline (a backend, or REFERENCE) over all thread counts and batch sizes."""
    reset_ok = reset_peak_rss() if in_process else True
    baseline = current_rss_mb()
    runs: list[RunStats] = []
    parity: Optional[dict[str, np.ndarray]] = None
    pframes = list(frames[:max(1, cfg.parity_frames)])
    if name == REFERENCE:
        make_ref = reference_factory or _default_reference_factory(cfg)
        for t in cfg.threads:
            ref = make_ref(t)
            pc = ref.pre_cfg
            if parity is None and parity_path is not None:
                parity = reference_parity_outputs(ref, pc, pframes)
            runs += measure_reference(ref, pc, frames, t, cfg)
    else:
        make_det = detector_factory or _default_detector_factory(cfg)
        for t in cfg.threads:
            det = make_det(name, t)
            try:
                if parity is None and parity_path is not None:
                    parity = detector_parity_outputs(det, pframes)
                runs += measure_detector(det, frames, name, t, cfg)
            finally:
                if hasattr(det, "close"):
                    det.close()
    if parity is not None and parity_path is not None:
        np.savez(parity_path, **parity)
    if in_process:
        note = ("in-process, peak reset per pipeline (clear_refs)" if reset_ok else
                "in-process and the peak could not be reset: includes earlier pipelines")
    else:
        note = "fresh subprocess"
    return PipelineReport(name=name, available=True, runs=runs, peak_rss_mb=peak_rss_mb(),
                          baseline_rss_mb=baseline, rss_note=note)


def compare_parity(backend: str, cand: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                   atol: float, rtol: float) -> ParityReport:
    """Max abs differences; ok when every |d| <= atol + rtol * |reference| (scores and maps)."""
    cs, rs = np.asarray(cand["scores"], np.float64), np.asarray(ref["scores"], np.float64)
    if cs.shape != rs.shape:
        raise ValueError(f"{backend}: {cs.shape} scores vs reference {rs.shape}")
    ds = np.abs(cs - rs)
    ok = bool(np.all(ds <= atol + rtol * np.abs(rs)))
    tol = float(atol + rtol * np.max(np.abs(rs))) if rs.size else atol
    dmap = None
    if "maps" in cand and "maps" in ref:
        cm, rm = np.asarray(cand["maps"], np.float64), np.asarray(ref["maps"], np.float64)
        if cm.shape != rm.shape:
            raise ValueError(f"{backend}: maps {cm.shape} vs reference {rm.shape}")
        dm = np.abs(cm - rm)
        dmap = float(dm.max())
        ok = ok and bool(np.all(dm <= atol + rtol * np.abs(rm)))
    return ParityReport(backend=backend, n_frames=int(cs.size), max_abs_score_diff=float(ds.max()),
                        max_abs_map_diff=dmap, score_tolerance=tol, ok=ok)


def compute_speedups(pipelines: Sequence[PipelineReport], batch_size: int = 1) -> list[dict[str, Any]]:
    ref = next((p for p in pipelines if p.name == REFERENCE and p.available), None)
    if ref is None:
        return []
    ref_by_t = {r.threads: r for r in ref.runs if r.batch_size == batch_size}
    out = []
    for p in pipelines:
        if p.name == REFERENCE or not p.available:
            continue
        for r in p.runs:
            if r.batch_size != batch_size or r.threads not in ref_by_t:
                continue
            rr = ref_by_t[r.threads]
            cand, refm = r.stages["pipeline"]["p50"], rr.stages["pipeline"]["p50"]
            out.append({"backend": p.name, "threads": r.threads, "threads_label": _threads_label(r),
                        "batch_size": batch_size, "candidate_ms": cand, "reference_ms": refm,
                        "speedup_p50": speedup(refm, cand),
                        "throughput_ratio": r.throughput_fps / rr.throughput_fps})
    return out


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------
def backend_unavailable_reason(name: str) -> Optional[str]:
    """Why a backend cannot be benchmarked here (None = try it).  Checked without importing."""
    mods = {"onnxruntime": "onnxruntime", "torch": "torch", "tensorrt": "tensorrt", REFERENCE: "torch"}
    mod = mods[name]
    if importlib.util.find_spec(mod) is None:
        return f"python package {mod!r} is not installed"
    return None


def _spawn_worker(name: str, cfg: BenchConfig, frame_dir: Path, parity_path: Path,
                  work: Path) -> tuple[Optional[dict[str, Any]], str]:
    """Run `python -m edgeuad.bench --worker` for `name`: (its result JSON, "") or (None, why not)."""
    spec = {"name": name, "config": cfg.to_dict(), "frames": str(frame_dir), "parity": str(parity_path),
            "result": str(work / f"{_safe(name)}.result.json")}
    spec_path = work / f"{_safe(name)}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    # the child must import this very package, whatever the caller's sys.path was
    env["PYTHONPATH"] = os.pathsep.join([str(_PKG_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    try:
        r = subprocess.run([sys.executable, "-m", "edgeuad.bench", "--worker", str(spec_path)], env=env,
                           capture_output=True, text=True, timeout=cfg.worker_timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {cfg.worker_timeout_s:.0f} s"
    if r.returncode != 0 or not Path(spec["result"]).is_file():
        err = (r.stderr or "").strip().splitlines()
        log.warning("bench: %s failed (exit %d):\n%s", name, r.returncode, "\n".join(err[-20:]))
        # the exception line is the reason; the traceback went to the log above
        return None, "failed: " + (err[-1].strip() if err else f"exit {r.returncode}")
    return json.loads(Path(spec["result"]).read_text()), ""


def _run_worker(name: str, cfg: BenchConfig, frame_dir: Path, parity_path: Path, work: Path) -> PipelineReport:
    """One pipeline in a fresh process (its own peak RSS)."""
    d, reason = _spawn_worker(name, cfg, frame_dir, parity_path, work)
    return PipelineReport(name=name, available=False, reason=reason) if d is None else PipelineReport.from_dict(d)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _bundle_info(cfg: BenchConfig) -> dict[str, Any]:
    try:
        from .bundle import Bundle

        b = Bundle.load(cfg.bundle, verify=False)
        return {"path": cfg.bundle, "method": b.method, "backbone": b.backbone,
                "input_size": list(b.preprocess.size), "postprocess": b.postprocess.get("kind")}
    except Exception as e:  # noqa: BLE001 - a fake bundle in tests; the pipelines report real errors
        return {"path": cfg.bundle, "method": "?", "backbone": "?", "input_size": None, "postprocess": None,
                "error": str(e)}


def run_bench(cfg: BenchConfig, detector_factory: Optional[DetectorFactory] = None,
              reference_factory: Optional[ReferenceFactory] = None,
              frames: Optional[Sequence[np.ndarray]] = None) -> BenchReport:
    """Benchmark every requested backend (and the torch reference), compare, and write the
    report to cfg.out_dir when it is set.

    detector_factory / reference_factory / frames: injection points for tests (they force
    in-process measurement: a factory cannot cross a process boundary)."""
    if frames is None:
        n = max(cfg.n_frames, max(cfg.batch_sizes))
        frames = folder_frames(cfg.images, n) if cfg.images else synthetic_frames(n, cfg.frame_size, cfg.seed,
                                                                                  cfg.jpeg_quality)
    frames = list(frames)
    shapes = sorted({cv2.imdecode(f, cv2.IMREAD_COLOR).shape[:2] for f in frames})
    frame_desc = (f"{len(frames)} {'images from ' + cfg.images if cfg.images else 'synthetic JPEG frames'}, "
                  + ", ".join(f"{w}x{h}" for h, w in shapes[:3]) + ("..." if len(shapes) > 3 else ""))
    in_process = not cfg.isolate or detector_factory is not None or reference_factory is not None
    names = list(dict.fromkeys(cfg.backends)) + ([REFERENCE] if cfg.reference else [])
    pipelines: list[PipelineReport] = []
    parity_data: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="edgeuad-bench-") as tmp:
        work = Path(tmp)
        frame_dir = work / "frames"
        frame_dir.mkdir()
        for i, f in enumerate(frames):
            f.tofile(str(frame_dir / f"{i:04d}.bin"))
        for name in names:
            injected = (detector_factory is not None and name != REFERENCE) or \
                       (reference_factory is not None and name == REFERENCE)
            reason = None if injected else backend_unavailable_reason(name)
            if reason is not None:
                log.warning("bench: %s not available: %s", name, reason)
                pipelines.append(PipelineReport(name=name, available=False, reason=reason))
                continue
            ppath = work / f"{_safe(name)}.parity.npz"
            log.info("bench: measuring %s (%s)", name, "in-process" if in_process else "subprocess")
            if in_process:
                try:
                    rep = run_pipeline(name, cfg, frames, ppath, detector_factory, reference_factory, in_process=True)
                except Exception as e:  # noqa: BLE001 - one backend failing must not lose the others' numbers
                    log.warning("bench: %s failed: %s", name, e)
                    rep = PipelineReport(name=name, available=False, reason=f"failed: {type(e).__name__}: {e}")
            else:
                rep = _run_worker(name, cfg, frame_dir, ppath, work)
            pipelines.append(rep)
            if rep.available and ppath.is_file():
                with np.load(ppath) as z:
                    parity_data[name] = {k: z[k] for k in z.files}
        paired = _run_paired(cfg, pipelines, frames, frame_dir, work, in_process, detector_factory,
                             reference_factory)
    parity = []
    if REFERENCE in parity_data:
        for name, d in parity_data.items():
            if name != REFERENCE:
                parity.append(compare_parity(name, d, parity_data[REFERENCE], cfg.score_atol, cfg.score_rtol))
    cdict = cfg.to_dict()
    cdict["frame_desc"] = frame_desc
    cdict["rss_method"] = ("VmHWM of a fresh subprocess per pipeline (all its thread counts and batch sizes; "
                           "includes the Python, numpy and OpenCV baseline)" if not in_process else
                           "VmHWM of this process, reset before each pipeline where Linux allows (clear_refs); "
                           "includes everything already loaded")
    report = BenchReport(config=cdict, machine=machine_info(), bundle_info=_bundle_info(cfg), pipelines=pipelines,
                         parity=parity, speedups=compute_speedups(pipelines, 1), paired=paired)
    for q in parity:
        if not q.ok:
            log.warning("bench: %s disagrees with the torch reference: max |d score| %.3g, max |d map| %s",
                        q.backend, q.max_abs_score_diff, q.max_abs_map_diff)
    if cfg.out_dir:
        report.write(cfg.out_dir, cfg.stem)
    return report


def _run_paired(cfg: BenchConfig, pipelines: Sequence[PipelineReport], frames: Sequence[np.ndarray], frame_dir: Path,
                work: Path, in_process: bool, detector_factory: Optional[DetectorFactory],
                reference_factory: Optional[ReferenceFactory]) -> list[dict[str, Any]]:
    """The interleaved measurement, when both sides were measured on their own successfully."""
    ok = {p.name for p in pipelines if p.available}
    if cfg.paired_iterations == 0 or REFERENCE not in ok or cfg.paired_backend not in ok:
        return []
    log.info("bench: paired %s vs %s (%s)", cfg.paired_backend, REFERENCE, "in-process" if in_process else "subprocess")
    if in_process:
        try:
            return measure_paired(detector_factory or _default_detector_factory(cfg),
                                  reference_factory or _default_reference_factory(cfg), frames, cfg)
        except Exception as e:  # noqa: BLE001 - the separate runs are still reported
            log.warning("bench: paired measurement failed: %s", e)
            return []
    d, reason = _spawn_worker(PAIRED, cfg, frame_dir, work / "paired.parity.npz", work)
    if d is None:
        log.warning("bench: paired measurement %s", reason)
        return []
    return list(d["paired"])


# ---------------------------------------------------------------------------------------------
# worker entry point: python -m edgeuad.bench --worker spec.json
# ---------------------------------------------------------------------------------------------
def _worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    cfg = BenchConfig.from_dict({k: v for k, v in spec["config"].items()})
    frames = [np.fromfile(str(p), dtype=np.uint8) for p in sorted(Path(spec["frames"]).glob("*.bin"))]
    if spec["name"] == PAIRED:
        paired = measure_paired(_default_detector_factory(cfg), _default_reference_factory(cfg), frames, cfg)
        atomic_write_bytes(Path(spec["result"]), json.dumps({"paired": paired}).encode())
        return 0
    rep = run_pipeline(spec["name"], cfg, frames, Path(spec["parity"]))
    atomic_write_bytes(Path(spec["result"]), json.dumps(asdict(rep)).encode())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeuad.bench",
                                 description="internal worker of `edgeuad bench` (one pipeline per process)")
    ap.add_argument("--worker", required=True, help="spec JSON written by run_bench")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return _worker_main(a.worker)


if __name__ == "__main__":
    sys.exit(main())
