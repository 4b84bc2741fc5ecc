"""`edgeuad predict SOURCE`: stream any source through the Detector, log every frame, save overlays.

Outputs in --out, one row per scored frame, written as frames arrive (a live stream never ends;
each row is flushed, so a killed run keeps every row up to the kill):
  predictions.jsonl   the full record (see `record`)
  predictions.csv     the same fields for a spreadsheet
  overlays/           anomalous frames (every frame with --all-overlays), named after their input:
                      folder sources mirror the file's path under the folder (good/003.png),
                      videos and streams are `<source>_<index>.png`.
Every record says where its frame came from: `path` for image files; `source` + `index` (capture
order) + `time` for streams, and `position_ms` in a video file.  `process_ms` is the Detector's
time for the batch that held the frame, `queue_ms` the wait between capture and scoring.
--show opens a live window; it needs the GUI build of OpenCV (`pip install opencv-python`), and
says so instead of failing obscurely.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import logging
import re
import sys
from pathlib import Path
from typing import IO, Any, Optional

import numpy as np

from . import viz
from .detector import Detector
from .stream import FrameSource, ImageFolderSource, StreamConfig, StreamResult, open_source

log = logging.getLogger(__name__)

FIELDS = ["index", "source", "path", "position_ms", "time", "timestamp", "score", "severity", "normalized",
          "verdict", "is_anomaly", "process_ms", "queue_ms", "overlay"]


def _source(s: str) -> str | int:
    return int(s) if s.isdigit() else s  # a digit string is a camera index


def overlay_name(r: StreamResult, src: FrameSource, taken: set[str]) -> str:
    """Overlay file name (relative to overlays/) that says which input it shows."""
    if r.path is not None and isinstance(src, ImageFolderSource):
        name = Path(r.path).relative_to(src.root).with_suffix(".png").as_posix()
        if name in taken:  # a.jpg and a.png in one folder
            name = f"{name[:-4]}_{r.index:06d}.png"
    else:
        spec = src.name if not src.name.startswith("camera:") else src.name.replace(":", "")
        stem = Path(spec).stem if not src.is_live else spec.split("://", 1)[-1]
        name = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', stem).strip('_') or 'frame'}_{r.index:06d}.png"
    taken.add(name)
    return name


def input_label(r: StreamResult, src: FrameSource) -> str:
    """What a picture shows: the file relative to the source folder, or source #index."""
    if r.path is not None and isinstance(src, ImageFolderSource):
        return Path(r.path).relative_to(src.root).as_posix()
    return f"{r.source_name} #{r.index}"


def record(r: StreamResult, det: Detector, overlay: Optional[str]) -> dict[str, Any]:
    process = float(r.inference_ms)
    return {"index": r.index, "source": r.source_name, "path": r.path, "position_ms": r.position_ms,
            "time": _dt.datetime.fromtimestamp(r.timestamp).isoformat(timespec="milliseconds"),
            "timestamp": round(r.timestamp, 3), "score": r.score, "severity": round(det.severity(r.score), 4),
            "normalized": r.normalized, "verdict": "NG" if r.is_anomaly else "OK", "is_anomaly": r.is_anomaly,
            "process_ms": round(process, 2), "queue_ms": round(max(0.0, r.latency_ms - process), 2),
            "overlay": overlay}


class PredictionLog:
    """predictions.jsonl + predictions.csv, one flushed row per frame."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self._jsonl: IO[str] = open(out / "predictions.jsonl", "w", encoding="utf-8")
        self._csv_f: IO[str] = open(out / "predictions.csv", "w", encoding="utf-8", newline="")
        self._csv = csv.DictWriter(self._csv_f, fieldnames=FIELDS)
        self._csv.writeheader()

    def write(self, rec: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(rec) + "\n")
        self._csv.writerow({k: "" if rec[k] is None else rec[k] for k in FIELDS})
        self._jsonl.flush()
        self._csv_f.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._csv_f.close()


def run_predict(a: argparse.Namespace) -> int:
    cfg = StreamConfig(batch_size=a.batch, fps_limit=a.fps, return_map=bool(a.out or a.show),
                       return_frame=bool(a.out or a.show))
    # the source is opened (and a folder listed) before anything is written
    src = open_source(_source(a.source), open_timeout_s=cfg.open_timeout_s, read_timeout_s=cfg.read_timeout_s,
                      recursive=a.recursive)
    if a.show:
        _check_gui()
    det = Detector(a.bundle, backend=a.backend, threads=a.threads, color="rgb",
                   expected_digest=getattr(a, "expect_digest", None))
    out = Path(a.out) if a.out else None
    plog = PredictionLog(out) if out is not None else None
    taken: set[str] = set()
    n = n_bad = 0
    stats = None
    try:
        with det.stream(src, config=cfg) as st:
            for r in st:
                n += 1
                n_bad += int(r.is_anomaly)
                ov_name = None
                if r.frame is not None and r.anomaly_map is not None:
                    lines = viz.verdict_lines(input_label(r, src), r.score, det.severity(r.score), r.is_anomaly)
                    # small frames are drawn at 256 px so the label and the heat stay readable
                    ov = viz.with_colorbar(viz.panel(r.frame, r.anomaly_map, lines, ok=not r.is_anomaly,
                                                     longest=max(256, *r.frame.shape[:2])),
                                           threshold=0.5, title="norm")
                    if out is not None and (r.is_anomaly or a.all_overlays):
                        ov_name = overlay_name(r, src, taken)
                        viz.write_png(out / "overlays" / ov_name, ov)
                    if a.show:
                        import cv2

                        cv2.imshow("edgeuad", np.ascontiguousarray(ov[:, :, ::-1]))
                        if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                            break
                rec = record(r, det, None if ov_name is None else f"overlays/{ov_name}")
                if plog is not None:
                    plog.write(rec)
                else:
                    sys.stdout.write(json.dumps(rec) + "\n")
                if a.max_frames is not None and n >= a.max_frames:
                    break
            stats = st.stats
    finally:
        if plog is not None:
            plog.close()
        det.close()
    log.info("%d frames, %d anomalous; stream stats: %s", n, n_bad, stats)
    unread = stats.read_errors if stats is not None else 0
    sys.stderr.write(f"{n} frames scored, {n_bad} anomalous" + (f", {unread} unreadable skipped" if unread else "")
                     + (f"; results in {out}/predictions.csv (and .jsonl)" if out else "") + "\n")
    # nothing could be read at all: a failure, not an empty success
    return 1 if n == 0 and unread else 0


def _check_gui() -> None:
    import cv2

    info = cv2.getBuildInformation()
    gui = [ln for ln in info.splitlines() if ln.strip().startswith(("GTK", "QT", "Win32 UI", "Cocoa"))]
    if not any("YES" in ln or "ON" in ln for ln in gui):
        raise RuntimeError("--show needs OpenCV with GUI support: pip uninstall opencv-python-headless && "
                           "pip install opencv-python (and a display)")
