"""`edgeuad predict SOURCE`: stream any source through the Detector, log every frame, save overlays.

Outputs in --out: predictions.jsonl (one line per frame), overlays/<index>.png for anomalous
frames (every frame with --all-overlays).  --show opens a live window; it needs the GUI build of
OpenCV (`pip install opencv-python`), and says so instead of failing obscurely.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from . import viz
from .detector import Detector
from .stream import StreamConfig

log = logging.getLogger(__name__)


def _source(s: str) -> str | int:
    return int(s) if s.isdigit() else s  # a digit string is a camera index


def run_predict(a: argparse.Namespace) -> int:
    det = Detector(a.bundle, backend=a.backend, threads=a.threads, color="rgb")
    cfg = StreamConfig(batch_size=a.batch, fps_limit=a.fps, return_map=bool(a.out or a.show),
                       return_frame=bool(a.out or a.show))
    out = Path(a.out) if a.out else None
    log_f = None
    if out is not None:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
        log_f = open(out / "predictions.jsonl", "w")
    if a.show:
        _check_gui()
    n = n_bad = 0
    try:
        with det.stream(_source(a.source), config=cfg) as st:
            for r in st:
                n += 1
                n_bad += int(r.is_anomaly)
                rec = {"index": r.index, "timestamp": r.timestamp, "source": r.source_name, "score": r.score,
                       "normalized": r.normalized, "is_anomaly": r.is_anomaly, "latency_ms": round(r.latency_ms, 2)}
                if log_f is not None:
                    log_f.write(json.dumps(rec) + "\n")
                else:
                    sys.stdout.write(json.dumps(rec) + "\n")
                if r.frame is not None and r.anomaly_map is not None:
                    ov = viz.annotate(viz.overlay(r.frame, r.anomaly_map, vmin=0.0, vmax=1.0),
                                      [f"#{r.index} {r.normalized:.2f} {'NG' if r.is_anomaly else 'OK'}"])
                    if out is not None and (r.is_anomaly or a.all_overlays):
                        viz.write_png(out / "overlays" / f"{r.index:06d}.png", ov)
                    if a.show:
                        import cv2

                        cv2.imshow("edgeuad", np.ascontiguousarray(ov[:, :, ::-1]))
                        if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                            break
                if a.max_frames is not None and n >= a.max_frames:
                    break
            stats = st.stats
    finally:
        if log_f is not None:
            log_f.close()
        det.close()
    log.info("%d frames, %d anomalous; stream stats: %s", n, n_bad, stats)
    sys.stderr.write(f"{n} frames scored, {n_bad} anomalous" + (f"; results in {out}" if out else "") + "\n")
    return 0


def _check_gui() -> None:
    import cv2

    info = cv2.getBuildInformation()
    gui = [ln for ln in info.splitlines() if ln.strip().startswith(("GTK", "QT", "Win32 UI", "Cocoa"))]
    if not any("YES" in ln or "ON" in ln for ln in gui):
        raise RuntimeError("--show needs OpenCV with GUI support: pip uninstall opencv-python-headless && "
                           "pip install opencv-python (and a display)")
