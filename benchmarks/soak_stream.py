#!/usr/bin/env python
"""Soak: many frames through `Detector.stream` from a looping video file, sampling the process's
resident memory, open file descriptors and threads.  After warm-up none of them may grow: RSS by
less than 5% (median of the last tenth of the samples vs the first tenth after warm-up), fds and
threads by at most one (a capture being reopened at the loop point).

    python benchmarks/soak_stream.py                      # 20,000 frames, writes benchmarks/results/soak_stream.md
    python benchmarks/soak_stream.py --frames 2000 --no-write

The bundle is a small untrained PatchCore (resource use does not depend on the weight values;
`--bundle` takes a real one).  tests/python/test_soak.py runs a CI-sized version (500 frames).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))  # run from a checkout without installing

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from edgeuad.stream import CaptureSource, FrameSource, SourceError  # noqa: E402

log = logging.getLogger("edgeuad.benchmarks.soak")

RSS_GROWTH_LIMIT = 0.05


class _LoopingConnection:
    """Reads a video file over and over (reopening it at the end) until `total` frames were read."""

    def __init__(self, source: "LoopingVideoSource") -> None:
        self._src = source
        self._conn = source.inner.connect()

    def read(self) -> Optional[np.ndarray]:
        if self._src.delivered >= self._src.total:
            return None
        frame = self._conn.read()
        if frame is None:  # end of the file: the loop point
            self._conn.release()
            self._conn = self._src.inner.connect()
            self._src.loops += 1
            frame = self._conn.read()
            if frame is None:
                return None
        self._src.delivered += 1
        return frame

    def release(self) -> None:
        self._conn.release()


class LoopingVideoSource(FrameSource):
    """A video file played in a loop for `total` frames (a file source, so no frame is dropped)."""

    is_live = False
    color = "bgr"

    def __init__(self, path: Path, total: int) -> None:
        super().__init__()
        self.inner = CaptureSource(str(path), is_live=False)
        self.name = f"loop:{path.name}"
        self.total = total
        self.delivered = 0
        self.loops = 0

    def connect(self) -> _LoopingConnection:
        return _LoopingConnection(self)


def write_video(path: Path, frames: int = 60, size: tuple[int, int] = (120, 160), seed: int = 0) -> Path:
    """A short MJPEG .avi of textured frames with a moving blob (OpenCV's built-in encoder)."""
    rng = np.random.default_rng(seed)
    h, w = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (w, h))
    if not vw.isOpened():
        raise SourceError(f"OpenCV cannot write MJPEG video to {path}")
    base = (rng.random((h, w, 3)) * 60 + 100).astype(np.uint8)
    for i in range(frames):
        f = base.copy()
        cv2.circle(f, (int(w * (i % frames) / frames), h // 2), 6, (20, 20, 200), -1)
        vw.write(f)
    vw.release()
    return path


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "Threads"):
                out[k] = int(v.split()[0])
    return {"rss_kb": out["VmRSS"], "threads": out["Threads"], "fds": len(os.listdir("/proc/self/fd"))}


@dataclass
class SoakResult:
    frames: int
    scored: int
    loops: int
    seconds: float
    samples: list[dict[str, float]] = field(default_factory=list)
    warmup_frames: int = 0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_growth: float = 0.0
    fds_start: float = 0.0
    fds_end: float = 0.0
    threads_start: float = 0.0
    threads_end: float = 0.0
    fds_growth: int = 0
    threads_growth: int = 0
    python_threads_end: int = 0

    @property
    def passed(self) -> bool:
        return (self.scored == self.frames and self.rss_growth < RSS_GROWTH_LIMIT and self.fds_growth <= 1
                and self.threads_growth <= 1)

    def to_markdown(self) -> str:
        return "\n".join([
            "## Soak: Detector.stream over a looping video",
            "",
            f"{self.scored} of {self.frames} frames scored in {self.seconds:.0f} s ({self.loops} loops of the file), "
            f"{len(self.samples)} samples, warm-up {self.warmup_frames} frames.",
            "",
            "| measure | after warm-up | end | growth | limit |",
            "|---|---|---|---|---|",
            f"| RSS (MB, median of a tenth of the samples) | {self.rss_start_mb:.1f} | {self.rss_end_mb:.1f} | "
            f"{100 * self.rss_growth:+.2f}% | < {100 * RSS_GROWTH_LIMIT:.0f}% |",
            f"| open fds (median, same windows) | {self.fds_start:g} | {self.fds_end:g} | {self.fds_growth:+d} | <= 1 |",
            f"| threads (median, same windows) | {self.threads_start:g} | {self.threads_end:g} | "
            f"{self.threads_growth:+d} | <= 1 |",
            "",
            f"Result: {'PASS' if self.passed else 'FAIL'}.",
            "",
        ])


def soak(bundle: Path, video: Path, frames: int, sample_every: int = 50, warmup_frac: float = 0.2,
         batch_size: int = 2, threads: int = 1) -> SoakResult:
    from edgeuad.detector import Detector

    src = LoopingVideoSource(video, frames)
    warm = int(frames * warmup_frac)
    samples: list[dict[str, float]] = []
    t0 = time.perf_counter()
    scored = 0
    with Detector(bundle, threads=threads, color="bgr") as det:
        with det.stream(src, batch_size=batch_size, return_map=True) as st:
            for r in st:
                scored += 1
                assert np.isfinite(r.score)
                if scored > warm and (scored - warm) % sample_every == 0:
                    samples.append({"frame": scored, **_proc_status()})
    res = SoakResult(frames=frames, scored=scored, loops=src.loops, seconds=time.perf_counter() - t0,
                     samples=samples, warmup_frames=warm, python_threads_end=threading.active_count())
    if len(samples) >= 2:
        k = max(1, len(samples) // 10)
        first = float(np.median([s["rss_kb"] for s in samples[:k]]))
        last = float(np.median([s["rss_kb"] for s in samples[-k:]]))
        res.rss_start_mb, res.rss_end_mb = first / 1024, last / 1024
        res.rss_growth = (last - first) / first
        for key in ("fds", "threads"):
            start = float(np.median([s[key] for s in samples[:k]]))
            end = float(np.median([s[key] for s in samples[-k:]]))
            setattr(res, f"{key}_start", start)
            setattr(res, f"{key}_end", end)
            setattr(res, f"{key}_growth", int(np.ceil(end - start)))
    return res


def tiny_bundle(work: Path, image_size: int = 64) -> Path:
    """An untrained 64 px PatchCore bundle through the normal train -> export path."""
    from edgeuad import api
    from edgeuad.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(work / "data", kind="texture", n_train=10, n_test_good=1, n_test_defect=1,
                                  size=image_size, seed=2)
    run = api.train("patchcore", data, work / "run",
                    {"image_size": image_size, "coreset_ratio": 0.1, "pretrained": False},
                    holdout_fraction=0.2, progress=False)
    return api.export(run, work / "bundle").root


def _publish(stem: str, md: str, data: dict) -> None:
    """STEM.md headed by the machine/commit/date line (benchmarks/_results.py), STEM.json beside it."""
    from _results import machine_line  # benchmarks/ is on sys.path when this runs as a script

    from edgeuad.atomic import atomic_write_bytes

    text = machine_line() + md
    sys.stdout.write(text)
    atomic_write_bytes(Path(stem + ".md"), text.encode())
    atomic_write_bytes(Path(stem + ".json"), json.dumps(data, indent=2).encode())


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20000, help="frames to stream (default 20000)")
    ap.add_argument("--bundle", default=None, help="bundle to use (default: a tiny untrained PatchCore)")
    ap.add_argument("--video", default=None, help="video file to loop (default: a synthetic 60-frame MJPEG)")
    ap.add_argument("--sample-every", type=int, default=50, help="frames between samples (default 50)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak_stream"),
                    help="result stem: writes STEM.md and STEM.json")
    ap.add_argument("--no-write", action="store_true", help="print the report only")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="edgeuad-soak-") as tmp:
        work = Path(tmp)
        bundle = Path(a.bundle) if a.bundle else tiny_bundle(work)
        video = Path(a.video) if a.video else write_video(work / "loop.avi")
        res = soak(bundle, video, a.frames, sample_every=a.sample_every, batch_size=a.batch_size)
    md = res.to_markdown()
    if a.no_write:
        sys.stdout.write(md)
    else:
        _publish(a.out, md, {**asdict(res), "passed": res.passed})
    return 0 if res.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
