"""The benchmark's results: per-pipeline stage statistics, agreement, speed-ups; text, markdown, plot, files."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from ..atomic import atomic_write_bytes
from .config import REFERENCES

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    """One (pipeline, threads, batch size) measurement, pooled over all rounds.  Stage values: ms per batch."""

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
    # per thread count, how a Detector's memory bank searched (DetectorPipeline.stats); empty otherwise
    bank: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PipelineReport":
        d = dict(d)
        d["runs"] = [RunStats(**r) for r in d.get("runs", [])]
        return cls(**d)


@dataclass
class ParityReport:
    backend: str
    reference: str
    n_frames: int
    max_abs_score_diff: float
    max_abs_map_diff: Optional[float]
    score_tolerance: float
    ok: bool


def compare_parity(backend: str, cand: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                   atol: float, rtol: float, reference: str = "torch-eager") -> ParityReport:
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
    return ParityReport(backend=backend, reference=reference, n_frames=int(cs.size),
                        max_abs_score_diff=float(ds.max()), max_abs_map_diff=dmap, score_tolerance=tol, ok=ok)


PROTOCOL = ("Protocol: every pipeline runs in its own worker process for the whole run; per thread count and "
            "batch size, {reps} rounds; in each round every pipeline in turn times {block} batches of the same "
            "frames after one untimed re-warm batch ({warmup} more in the first round), the order reversed every "
            "other round. Stage percentiles pool all rounds. Speed-up = per round, reference block median / "
            "runtime block median of the pipeline time (preprocess .. results); median [min-max] over rounds.")


@dataclass
class BenchReport:
    config: dict[str, Any]
    machine: dict[str, Any]
    bundle_info: dict[str, Any]
    pipelines: list[PipelineReport]
    parity: list[ParityReport]
    speedups: list[dict[str, Any]]   # see run.compute_speedups

    # --- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "machine": self.machine, "bundle": self.bundle_info,
                "pipelines": [asdict(p) for p in self.pipelines], "parity": [asdict(p) for p in self.parity],
                "speedups": self.speedups}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchReport":
        return cls(config=d["config"], machine=d["machine"], bundle_info=d["bundle"],
                   pipelines=[PipelineReport.from_dict(p) for p in d["pipelines"]],
                   parity=[ParityReport(**p) for p in d["parity"]], speedups=list(d["speedups"]))

    def pipeline(self, name: str) -> Optional[PipelineReport]:
        for p in self.pipelines:
            if p.name == name:
                return p
        return None

    # --- text ------------------------------------------------------------------------------
    HEADER = ["pipeline", "threads", "batch", "frames/s", "total p50", "p95", "p99", "decode",
              "preproc", "network", "bank", "map", "torch post"]

    def _rows(self) -> list[list[str]]:
        rows = []
        for p in self.pipelines:
            for r in p.runs if p.available else []:
                tot = r.stages["total"]
                rows.append([p.name, _threads_label(r), str(r.batch_size), _fmt_opt(r.throughput_fps, 1),
                             _fmt_opt(tot["p50"], 2), _fmt_opt(tot["p95"], 2), _fmt_opt(tot["p99"], 2)]
                            + [_fmt_opt(r.p50(s), 2) for s in ("decode", "preprocess", "network", "memory_bank",
                                                               "distance_map", "torch_post")])
        return rows

    def _speedup_rows(self) -> list[list[str]]:
        return [[s["runtime"], s["reference"], s["threads_label"], str(s["batch_size"]), f"{s['runtime_ms']:.2f}",
                 f"{s['reference_ms']:.2f}", f"x{s['speedup_median']:.2f}",
                 f"x{s['speedup_min']:.2f}-x{s['speedup_max']:.2f}", str(s["reps"])] for s in self.speedups]

    SPEEDUP_HEADER = ["runtime", "reference", "threads", "batch", "runtime ms", "reference ms", "speed-up",
                      "min-max", "rounds"]

    def table(self) -> str:
        """Plain-text tables (ms per batch, p50 unless named)."""
        def fmt(header: list[str], rows: list[list[str]]) -> list[str]:
            widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
            return ["  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
                    for cells in [header] + rows]

        out = [f"edgeuad bench: {self.bundle_info.get('method')} / {self.bundle_info.get('backbone')}, "
               f"input {self.bundle_info.get('input_size')}, frames {self.config.get('frame_desc')}",
               "ms per batch (p50 unless named); frames/s end to end incl. decode"]
        out += fmt(self.HEADER, self._rows())
        out += [f"{p.name}: not available ({p.reason})" for p in self.pipelines if not p.available]
        if self.speedups:
            out += ["", "speed-up of the pipeline time (median over rounds, min-max):"]
            out += fmt(self.SPEEDUP_HEADER, self._speedup_rows())
        int8_graph = str(self.bundle_info.get("graph", "")).startswith("int8")
        for q in self.parity:
            out.append(f"parity {q.backend} vs {q.reference} ({q.n_frames} frames): max |d score| "
                       f"{q.max_abs_score_diff:.2e}, max |d map| {_fmt_opt(q.max_abs_map_diff, 2, 'e')} -> "
                       f"{'OK' if q.ok else 'MISMATCH'}"
                       + (" (expected: this bundle's graph is int8, the reference fp32; its accuracy cost is "
                          "the export's validation check)" if int8_graph and not q.ok else ""))
        return "\n".join(out)

    def to_markdown(self) -> str:
        """A section ready to be quoted in benchmarks/RESULTS.md."""
        m, b, c = self.machine, self.bundle_info, self.config
        lines = [f"## Pipeline benchmark: {b.get('method')} / {b.get('backbone')} ({m.get('date', '')[:10]})", "",
                 f"- Machine: {m.get('cpu_model')} ({', '.join(m.get('simd', [])) or 'no SIMD flags read'}), "
                 f"{m.get('logical_cores')} logical cores ({m.get('usable_cores')} usable), {m.get('os')}",
                 f"- Software: Python {m.get('python')}, " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
                 f"- edgeuad {m.get('edgeuad')}, git {m.get('git_commit')}{' (dirty tree)' if m.get('git_dirty') else ''}",
                 f"- Bundle: `{b.get('path')}`, input {b.get('input_size')}, post-processing {b.get('postprocess')}"
                 + (f", graph {b['graph']}" if b.get("graph") else "")
                 + (f", weights {b['weights']}" if b.get("weights") else ""),
                 f"- Frames: {c.get('frame_desc')}; times are ms per batch",
                 "- " + PROTOCOL.format(reps=c.get("repetitions"), block=c.get("block"), warmup=c.get("warmup"))]
        if c.get("openmp"):
            o = c["openmp"]
            lines.append(f"- OpenMP wait policy, each side at its faster one: runtime pipelines {o['runtime']} "
                         f"(edgeuad's, `edgeuad.cpus.prefer_passive_openmp`), the onnxruntime + torch peer "
                         f"{o['peer']}, eager and compiled torch {o['torch']} "
                         "(as the bench was launched, without edgeuad's preference)")
        lines += ["", "| " + " | ".join(self.HEADER) + " |", "|" + "---|" * len(self.HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in self._rows()]
        missing = [p for p in self.pipelines if not p.available]
        if missing:
            lines += [""] + [f"- {p.name}: not available ({p.reason})" for p in missing]
        if self.speedups:
            lines += ["", "Speed-up of the Detector over each reference (pipeline time, same frames and threads; "
                          "median over rounds of the per-round ratio, with its min and max):", "",
                      "| " + " | ".join(self.SPEEDUP_HEADER) + " |", "|" + "---|" * len(self.SPEEDUP_HEADER)]
            lines += ["| " + " | ".join(r) + " |" for r in self._speedup_rows()]
        if self.parity:
            lines += ["", "Agreement (raw scores and maps at the network input size):", "",
                      "| pipeline | vs | frames | max abs score diff | max abs map diff | within tolerance |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {q.backend} | {q.reference} | {q.n_frames} | {q.max_abs_score_diff:.2e} | "
                      f"{_fmt_opt(q.max_abs_map_diff, 2, 'e')} | {'yes' if q.ok else 'NO'} |" for q in self.parity]
        banks = [(p.name, b) for p in self.pipelines if p.available for b in p.bank]
        if banks:
            lines += [""] + [
                f"- Bank search, {name} at {b['threads']} thread(s): {b['search']}; {b['exact_queries']:,} exact-search "
                f"queries, {100 * b['full_queries'] / max(b['exact_queries'], 1):.1f}% searched in full "
                f"({b['direct_queries']:,} by direct differences"
                + (f"; {b['refined_queries']:,} whose bf16 candidates were not certified, searched again in float32"
                   if b.get("refined_queries") else "") + ")" for name, b in banks]
        lines += ["", "| pipeline | peak RSS (MB) | baseline RSS (MB) | note |", "|---|---|---|---|"]
        lines += [f"| {p.name} | {_fmt_opt(p.peak_rss_mb, 0)} | {_fmt_opt(p.baseline_rss_mb, 0)} | {p.rss_note} |"
                  for p in self.pipelines if p.available]
        lines += ["", "Columns: decode = cv2.imdecode of the JPEG frames; network = the network only; bank = memory-bank "
                      "search and map = anomaly map + blur + score (the Detector's `_rt` stages); torch post = a "
                      "reference's whole torch post-processing (search, map, blur, score); frames/s = batch size / "
                      f"mean total. References: {', '.join(REFERENCES)} (bench/torch_ref.py).", ""]
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
