"""Streaming: sources, queue policies, reconnect/stall handling, shutdown.  No camera needed:
live sources are fake captures injected through `capture_factory`."""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pytest

from edgeuad import stream as st
from edgeuad.stream import (CaptureSource, ImageFolderSource, SourceError, Stream, StreamConfig,
                            open_source)


# --- fakes ---------------------------------------------------------------------------------
@dataclass
class FakeResult:
    score: float
    normalized: float
    is_anomaly: bool
    anomaly_map: Optional[np.ndarray]
    latency_ms: float
    timings: dict


class FakeDetector:
    """Follows the Detector contract: score = mean of the frame's first channel."""

    def __init__(self, color: str = "rgb", delay: float = 0.0, raise_on_call: Optional[int] = None,
                 exc: type[BaseException] = KeyboardInterrupt) -> None:
        self.color = color
        self.delay = delay
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.frames: list[np.ndarray] = []
        self.raise_on_call = raise_on_call
        self.exc = exc

    def score_batch(self, frames, return_map=True):
        self.calls += 1
        if self.raise_on_call is not None and self.calls == self.raise_on_call:
            raise self.exc()
        if self.delay:
            time.sleep(self.delay)
        self.batch_sizes.append(len(frames))
        self.frames.extend(frames)
        out = []
        for f in frames:
            s = float(f[..., 0].mean())
            m = np.full(f.shape[:2], s / 255.0, np.float32) if return_map else None
            out.append(FakeResult(s, s / 255.0, s > 127, m, 1.0, {}))
        return out


class FakeCapture:
    """A cv2.VideoCapture stand-in.  frames: number of frames before read fails (None = forever);
    block_s: after the frames, read blocks this long (a stalled camera) and then fails."""

    def __init__(self, opened=True, frames: Optional[int] = 5, start=0, block_s=0.0, period=0.0):
        self.opened = opened
        self.frames = frames
        self.n = 0
        self.start = start
        self.block_s = block_s
        self.period = period
        self.released = False
        self.reads_after_release = 0

    def isOpened(self):
        return self.opened

    def set(self, prop, value):
        return True

    def read(self):
        if self.released:
            self.reads_after_release += 1
            return False, None
        if self.frames is not None and self.n >= self.frames:
            if self.block_s:
                time.sleep(self.block_s)
            return False, None
        if self.period:
            time.sleep(self.period)
        v = (self.start + self.n) % 256
        self.n += 1
        f = np.zeros((16, 16, 3), np.uint8)
        f[..., 0] = v          # B channel carries the frame number
        f[..., 2] = 200        # R channel constant, to check colour conversion
        return True, f

    def release(self):
        self.released = True


class Factory:
    def __init__(self, caps):
        self.caps = list(caps)
        self.made: list[FakeCapture] = []
        self.times: list[float] = []

    def __call__(self, spec, params):
        self.times.append(time.monotonic())
        cap = self.caps.pop(0) if self.caps else FakeCapture(opened=False)
        self.made.append(cap)
        return cap


def our_threads():
    return [t for t in threading.enumerate() if t.name.startswith("edgeuad-") and t.is_alive()]


@pytest.fixture(autouse=True)
def no_leftover_threads():
    yield
    assert our_threads() == [], f"threads left: {our_threads()}"


def write_images(d: Path, values, corrupt: tuple[str, ...] = ()) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(values):
        img = np.zeros((24, 32, 3), np.uint8)
        img[..., 0] = v  # BGR on disk: blue = v
        cv2.imwrite(str(d / f"img_{i:03d}.png"), img)
    for name in corrupt:
        (d / name).write_bytes(b"this is not a png" * 10)


# --- sources -------------------------------------------------------------------------------
def test_open_source_kinds(tmp_path):
    write_images(tmp_path / "imgs", [1, 2])
    assert isinstance(open_source(0), CaptureSource) and open_source(0).is_live
    s = open_source("1")
    assert isinstance(s, CaptureSource) and s.spec == 1 and s.is_live
    u = open_source("rtsp://127.0.0.1:8554/cam")
    assert u.is_live and u.name == "rtsp://127.0.0.1:8554/cam"
    assert cv2.CAP_PROP_READ_TIMEOUT_MSEC in u._params()
    f = open_source(tmp_path / "imgs")
    assert isinstance(f, ImageFolderSource) and not f.is_live and len(f.paths) == 2
    g = open_source(str(tmp_path / "imgs" / "*_001.png"))
    assert isinstance(g, ImageFolderSource) and [p.name for p in g.paths] == ["img_001.png"]
    (tmp_path / "clip.avi").write_bytes(b"x")
    v = open_source(tmp_path / "clip.avi")
    assert isinstance(v, CaptureSource) and not v.is_live
    with pytest.raises(SourceError):
        open_source(tmp_path / "missing")
    with pytest.raises(SourceError):
        open_source(str(tmp_path / "imgs" / "*.nothing"))


def test_config_validation_and_backoff():
    with pytest.raises(ValueError):
        StreamConfig(policy="newest")
    with pytest.raises(ValueError):
        StreamConfig(batch_size=0)
    c = StreamConfig(reconnect_initial_s=0.5, reconnect_max_s=10.0)
    assert [c.backoff(k) for k in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert StreamConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError):
        StreamConfig.from_dict({"bogus": 1})


# --- files ---------------------------------------------------------------------------------
def test_folder_order_count_clean_end_corrupt_counted(tmp_path, caplog):
    values = [10, 60, 110, 160, 210]
    write_images(tmp_path, values, corrupt=("img_002b.png",))  # sorts between 002 and 003
    det = FakeDetector()
    with caplog.at_level(logging.WARNING, logger="edgeuad.stream"):
        with Stream(det, tmp_path) as s:
            assert s.policy == "block"
            res = list(s)
    assert [r.index for r in res] == list(range(5))
    # blue on disk -> channel 2 in RGB; channel 0 (red) stays 0, so recompute from frames
    assert [int(f[..., 2].mean()) for f in det.frames] == values
    assert all(r.source_name == str(tmp_path) for r in res)
    assert s.stats.read_errors == 1 and s.stats.scored == 5 and s.stats.dropped == 0
    assert any("img_002b.png" in m for m in caplog.messages)
    with pytest.raises(StopIteration):
        next(s)
    # every result names its file, the corrupt one skipped (indices count readable frames only)
    assert [r.path for r in res] == [str(p) for p in sorted(tmp_path.glob("*.png")) if p.name != "img_002b.png"]
    assert all(r.position_ms is None for r in res)


def test_folder_recursion_is_opt_in_and_root_is_the_common_folder(tmp_path):
    write_images(tmp_path / "top" / "good", [10, 20])
    write_images(tmp_path / "top" / "crack", [30])
    with pytest.raises(SourceError, match="recursive"):
        open_source(tmp_path / "top")
    src = open_source(tmp_path / "top", recursive=True)
    assert isinstance(src, ImageFolderSource) and len(src.paths) == 3 and src.root == tmp_path / "top"
    res = list(Stream(FakeDetector(), src))
    assert sorted(Path(r.path).relative_to(tmp_path / "top").as_posix() for r in res) == \
        ["crack/img_000.png", "good/img_000.png", "good/img_001.png"]


def test_video_file_roundtrip(tmp_path):
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert w.isOpened()
    values = [20, 60, 100, 140, 180, 220]
    for v in values:
        w.write(np.full((48, 64, 3), v, np.uint8))
    w.release()
    det = FakeDetector(color="bgr")
    s = st.stream(det, path, StreamConfig(return_frame=True, batch_size=2))
    res = list(s)
    assert len(res) == len(values)
    assert [r.index for r in res] == list(range(6))
    # MJPG is lossy: values come back within a few grey levels
    assert np.allclose([r.score for r in res], values, atol=4)
    assert res[0].frame is not None and res[0].frame.shape == (48, 64, 3)
    assert max(det.batch_sizes) <= 2 and sum(det.batch_sizes) == 6
    # each frame's time in the file (10 fps: 100 ms apart), for seeking back to it
    assert [r.position_ms for r in res] == pytest.approx([100.0 * i for i in range(6)], abs=1.0)
    assert all(r.path is None for r in res)


def test_batches_never_exceed_batch_size_and_colour(tmp_path):
    write_images(tmp_path, list(range(0, 100, 10)))
    det = FakeDetector(color="bgr")
    with Stream(det, tmp_path, StreamConfig(batch_size=4, queue_size=8, return_map=True)) as s:
        res = list(s)
    assert len(res) == 10 and max(det.batch_sizes) <= 4 and sum(det.batch_sizes) == 10
    # detector asked for BGR: channel 0 is blue = the written value
    assert [r.score for r in res] == [float(v) for v in range(0, 100, 10)]
    assert res[3].anomaly_map is not None and res[3].anomaly_map.shape == (24, 32)


# --- live ----------------------------------------------------------------------------------
def live_cfg(**kw) -> StreamConfig:
    base = dict(reconnect_initial_s=0.01, reconnect_max_s=0.04, stall_timeout_s=None, close_timeout_s=3.0)
    base.update(kw)
    return StreamConfig(**base)


def test_drop_oldest_keeps_newest_frames():
    fac = Factory([FakeCapture(frames=30)])
    det = FakeDetector(color="bgr", delay=0.02)
    s = Stream(det, "rtsp://127.0.0.1/fake", live_cfg(queue_size=2, max_reconnects=0), capture_factory=fac)
    assert s.policy == "drop_oldest"
    res = []
    with pytest.raises(SourceError, match="gave up"):
        for r in s:
            res.append(r)
    idx = [r.index for r in res]
    assert idx == sorted(idx) and idx[-2:] == [28, 29]   # the newest frames survive
    assert s.stats.dropped == 30 - len(res) > 0
    assert res[-1].dropped_so_far == s.stats.dropped
    assert [r.score for r in res] == [float(i) for i in idx]
    assert all(c.released for c in fac.made)


def test_reconnect_with_backoff_after_two_failed_opens(caplog):
    fac = Factory([FakeCapture(opened=False), FakeCapture(opened=False), FakeCapture(frames=5)])
    det = FakeDetector(color="bgr")
    cfg = live_cfg(max_reconnects=2, reconnect_initial_s=0.02, reconnect_max_s=1.0, policy="block")
    with caplog.at_level(logging.WARNING, logger="edgeuad.stream"):
        s = Stream(det, "http://127.0.0.1:9/cam", cfg, capture_factory=fac)
        res = []
        with pytest.raises(SourceError):
            for r in s:
                res.append(r)
    assert [r.index for r in res] == [0, 1, 2, 3, 4]
    assert s.stats.reconnects == 2
    assert len(fac.times) == 3          # the 4th attempt would exceed max_reconnects
    gaps = np.diff(fac.times)
    assert gaps[0] >= cfg.backoff(1) and gaps[1] >= cfg.backoff(2) == 0.04
    assert sum(bool(re.search(r"reconnect attempt \d+ in", m)) for m in caplog.messages) == 2
    assert all(c.released for c in fac.made)


def test_failure_mid_stream_reconnects_and_continues_indexing():
    fac = Factory([FakeCapture(frames=3), FakeCapture(frames=3, start=100)])
    det = FakeDetector(color="bgr")
    s = Stream(det, 0, live_cfg(max_reconnects=1, policy="block"), capture_factory=fac)
    with pytest.raises(SourceError):
        res = []
        for r in s:
            res.append(r)
    assert [r.index for r in res] == list(range(6))
    assert [r.score for r in res] == [0, 1, 2, 100, 101, 102]
    assert s.stats.reconnects == 1 and s.stats.read_errors >= 1


def test_stall_detected_and_reconnected():
    # first connection: 3 frames, then read blocks 1.5 s (stall); second: 3 frames then fails
    fac = Factory([FakeCapture(frames=3, block_s=1.5), FakeCapture(frames=3, start=50)])
    det = FakeDetector(color="bgr")
    s = Stream(det, "rtsp://127.0.0.1/stall", live_cfg(stall_timeout_s=0.2, max_reconnects=1, policy="block"),
               capture_factory=fac)
    res = []
    t0 = time.monotonic()
    with pytest.raises(SourceError):
        for r in s:
            res.append(r)
    assert [r.score for r in res] == [0, 1, 2, 50, 51, 52]
    assert s.stats.stalls == 1 and s.stats.reconnects == 1
    # the second connection was opened while the first read was still blocked
    assert fac.times[1] - t0 < 1.4
    assert all(c.released for c in fac.made) and fac.made[0].reads_after_release == 0


def test_close_mid_stream_joins_threads_and_releases():
    cap = FakeCapture(frames=None, period=0.002)
    fac = Factory([cap])
    det = FakeDetector(color="bgr")
    s = Stream(det, 3, live_cfg(), capture_factory=fac)
    it = iter(s)
    got = [next(it) for _ in range(3)]
    assert len(got) == 3 and our_threads()
    s.close()
    assert our_threads() == []
    assert cap.released
    with pytest.raises(StopIteration):
        next(it)
    s.close()  # idempotent


def test_keyboard_interrupt_in_consumer_stops_everything():
    cap = FakeCapture(frames=None, period=0.002)
    det = FakeDetector(color="bgr", raise_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        with Stream(det, 0, live_cfg(), capture_factory=Factory([cap])) as s:
            for _ in s:
                pass
    assert our_threads() == [] and cap.released


def test_fps_limit_skips_on_live_source():
    cap = FakeCapture(frames=40)
    det = FakeDetector(color="bgr")
    s = Stream(det, 0, live_cfg(fps_limit=5.0, max_reconnects=0, policy="block"),
               capture_factory=Factory([cap]))
    with pytest.raises(SourceError):
        list(s)
    st_ = s.stats
    # 40 frames read within far less than a second at 5 fps: almost all are skipped
    assert st_.skipped + st_.captured == 40 and st_.skipped > 0
    assert st_.captured == st_.scored


# --- callback mode -------------------------------------------------------------------------
def test_callback_mode(tmp_path):
    write_images(tmp_path, [5, 15, 25, 35])
    got = []
    det = FakeDetector(color="bgr")
    s = st.stream(det, tmp_path, StreamConfig(batch_size=3), callback=got.append)
    assert s.wait(timeout=10.0) is True
    assert [r.score for r in got] == [5.0, 15.0, 25.0, 35.0]
    with pytest.raises(RuntimeError):
        iter(s)


def test_callback_error_is_reraised_by_wait(tmp_path):
    write_images(tmp_path, [5, 15, 25])

    def bad(r):
        raise ValueError("boom")

    s = st.stream(FakeDetector(), tmp_path, StreamConfig(), callback=bad)
    with pytest.raises(ValueError, match="boom"):
        s.wait(timeout=10.0)


def test_unopenable_video_file_raises_source_error(tmp_path):
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"\x00not a video" * 50)
    s = Stream(FakeDetector(), bad, StreamConfig())
    assert not s.is_live and s.policy == "block"
    with pytest.raises(SourceError, match="cannot open"):
        list(s)
    assert our_threads() == []


def test_detector_error_propagates_and_cleans_up():
    cap = FakeCapture(frames=None, period=0.002)
    det = FakeDetector(color="bgr", raise_on_call=2, exc=RuntimeError)
    s = Stream(det, 0, live_cfg(), capture_factory=Factory([cap]))
    with pytest.raises(RuntimeError):
        list(s)
    assert our_threads() == [] and cap.released
