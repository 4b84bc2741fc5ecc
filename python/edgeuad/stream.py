"""Real-time streaming: capture threads, bounded queues, reconnect, `Detector.stream`.

Layout of one `Stream`::

    supervisor thread ── connects the source (with exponential backoff for live sources),
         │               watches for stalls, reconnects, gives up after `max_reconnects`
         └─ reader thread (one per connection) ── source.read() -> colour convert -> queue
    consumer ── the iterator (`for r in stream`) or a worker thread when a callback is given:
                takes up to `batch_size` queued frames (never waits for a full batch) and
                calls `detector.score_batch`.

Why a reader thread per connection instead of reading in the supervisor: a blocked
`VideoCapture.read()` (a camera unplugged, an RTSP server that stops sending) cannot be
interrupted safely from another thread in OpenCV, so the supervisor never waits on it.  On a
stall it abandons the connection, opens a new one and lets the old reader release its handle
(always on the thread that reads it) when the read finally returns; URL sources are opened
with OpenCV's FFmpeg read/open timeouts so that happens within `read_timeout_s`.

Runtime side: numpy + OpenCV only, never torch.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence, Union

import cv2
import numpy as np

from . import data as _data
from .preprocess import validate_frame

log = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
POLICIES = ("drop_oldest", "block")


class SourceError(RuntimeError):
    """A source cannot be opened, or a live source could not be recovered within max_reconnects."""


# ---------------------------------------------------------------------------------------------
# configuration and results
# ---------------------------------------------------------------------------------------------
@dataclass
class StreamConfig:
    """How frames flow from a source to the detector.

    policy: what the capture thread does when the queue is full.  "drop_oldest" (default for
        live sources) discards the oldest queued frame so results stay current; "block"
        (default for files/folders) waits so that no frame is lost.  None = pick by source.
    batch_size: at most this many queued frames per `score_batch` call.  The consumer takes
        what is queued and never waits for a full batch (waiting would add latency on a
        live source).
    fps_limit: cap on frames entering the queue.  Live sources: frames above the rate are
        read and discarded (counted as `skipped`); files: reading is paced.
    reconnect_initial_s / reconnect_max_s: backoff before reconnect attempt k is
        min(initial * 2**(k-1), max); it resets after a connection delivers a frame.
    max_reconnects: attempts before a live source is declared dead (None = forever).
    stall_timeout_s: a live connection that delivers no frame for this long is treated as
        dead and reconnected (None = never).
    read_timeout_s / open_timeout_s: passed to OpenCV's FFmpeg backend for URL sources so a
        blocked read or open returns instead of hanging.
    close_timeout_s: how long close() waits for each thread.
    """

    queue_size: int = 4
    policy: Optional[str] = None
    batch_size: int = 1
    fps_limit: Optional[float] = None
    return_map: bool = False
    return_frame: bool = False
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    max_reconnects: Optional[int] = None
    stall_timeout_s: Optional[float] = 5.0
    read_timeout_s: float = 5.0
    open_timeout_s: float = 10.0
    close_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.policy is not None and self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES} or None, got {self.policy!r}")
        if self.fps_limit is not None and self.fps_limit <= 0:
            raise ValueError(f"fps_limit must be > 0 or None, got {self.fps_limit}")
        if self.reconnect_initial_s < 0 or self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("need 0 <= reconnect_initial_s <= reconnect_max_s")
        if self.max_reconnects is not None and self.max_reconnects < 0:
            raise ValueError("max_reconnects must be >= 0 or None")
        if self.stall_timeout_s is not None and self.stall_timeout_s <= 0:
            raise ValueError("stall_timeout_s must be > 0 or None")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StreamConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown StreamConfig keys: {sorted(unknown)}")
        return cls(**d)

    def backoff(self, attempt: int) -> float:
        """Delay before reconnect attempt `attempt` (1-based)."""
        return min(self.reconnect_initial_s * (2.0 ** max(attempt - 1, 0)), self.reconnect_max_s)


@dataclass
class StreamResult:
    """One scored frame.

    index: position of the frame in the capture order (counts dropped frames too, so gaps show
    drops).  timestamp: wall-clock capture time (time.time()).  latency_ms: capture to result,
    queueing included; inference_ms: the detector's own latency for the frame (its whole batch).
    frame: the frame in the detector's colour order when StreamConfig.return_frame is set.
    path: the image file the frame came from (folder, glob and file sources).
    position_ms: the frame's time in a video file (None for live sources and images).
    """

    index: int
    timestamp: float
    source_name: str
    score: float
    normalized: float
    is_anomaly: bool
    anomaly_map: Optional[np.ndarray]
    frame: Optional[np.ndarray]
    latency_ms: float
    inference_ms: float
    dropped_so_far: int
    path: Optional[str] = None
    position_ms: Optional[float] = None


@dataclass
class StreamStats:
    captured: int = 0      # frames read from the source (after fps skipping)
    scored: int = 0        # frames that produced a StreamResult
    dropped: int = 0       # frames discarded by the drop_oldest policy
    skipped: int = 0       # frames discarded by fps_limit
    read_errors: int = 0   # corrupt images skipped, failed reads on live sources
    reconnects: int = 0    # (re)connection attempts after the first one
    stalls: int = 0        # connections abandoned because no frame arrived within stall_timeout


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameOrigin:
    """Where the last frame a connection read came from (what makes a prediction traceable)."""

    path: Optional[str] = None           # image file
    position_ms: Optional[float] = None  # time in a video file


class Connection(Protocol):
    def read(self) -> Optional[np.ndarray]:
        """Next uint8 HxWx3 frame (in the source's `color` order), or None when this
        connection has no more (end of file or failure)."""

    def release(self) -> None: ...

    # optional: `def origin(self) -> FrameOrigin` describes the frame read() just returned


def _origin_of(conn: Connection) -> Optional[FrameOrigin]:
    fn = getattr(conn, "origin", None)
    return fn() if fn is not None else None


class FrameSource:
    """A place frames come from.  `connect()` opens a fresh connection (called again on reconnect)."""

    name: str = "source"
    is_live: bool = False
    color: str = "bgr"   # channel order of the frames connections return (cv2 captures: BGR)

    def __init__(self) -> None:
        self.read_errors = 0
        self._lock = threading.Lock()

    def connect(self) -> Connection:
        raise NotImplementedError

    def _count_error(self) -> None:
        with self._lock:
            self.read_errors += 1


CaptureFactory = Callable[[Union[int, str], Sequence[int]], Any]


def _default_capture_factory(spec: Union[int, str], params: Sequence[int]) -> Any:
    if isinstance(spec, str) and spec.startswith(URL_SCHEMES):
        # FFmpeg with open/read timeouts: a dead server makes read() return False instead of hanging.
        return cv2.VideoCapture(spec, cv2.CAP_FFMPEG, list(params))
    return cv2.VideoCapture(spec)


class _CaptureConnection:
    def __init__(self, cap: Any, source: "CaptureSource") -> None:
        self._cap = cap
        self._source = source
        self._released = False

    def read(self) -> Optional[np.ndarray]:
        ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        return frame

    def origin(self) -> FrameOrigin:
        if self._source.is_live or not hasattr(self._cap, "get"):
            return FrameOrigin()  # a live frame is identified by source, index and timestamp
        ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)  # of the frame just read (FFmpeg backend)
        return FrameOrigin(position_ms=float(ms) if ms is not None and ms >= 0 else None)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._cap.release()


class CaptureSource(FrameSource):
    """Camera index, URL or video file read through (by default) cv2.VideoCapture.

    capture_factory(spec, params) -> object with isOpened()/read()/release(): injectable so tests
    (and exotic capture libraries) need no camera.
    """

    def __init__(self, spec: Union[int, str], is_live: bool, name: Optional[str] = None,
                 capture_factory: Optional[CaptureFactory] = None,
                 open_timeout_s: float = 10.0, read_timeout_s: float = 5.0) -> None:
        super().__init__()
        self.spec = spec
        self.is_live = is_live
        self.name = name or (f"camera:{spec}" if isinstance(spec, int) else str(spec))
        self._factory = capture_factory or _default_capture_factory
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s

    def _params(self) -> list[int]:
        if isinstance(self.spec, str) and self.spec.startswith(URL_SCHEMES):
            return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000)]
        return []

    def connect(self) -> Connection:
        cap = self._factory(self.spec, self._params())
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            raise SourceError(f"cannot open {self.name}")
        if self.is_live and isinstance(self.spec, int) and hasattr(cap, "set"):
            # A 1-frame driver buffer keeps a slow consumer from seeing seconds-old frames
            # (not every backend honours it; harmless where it does not).
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return _CaptureConnection(cap, self)


class _FolderConnection:
    def __init__(self, source: "ImageFolderSource") -> None:
        self._source = source
        self._pos = 0
        self._last: Optional[Path] = None

    def origin(self) -> FrameOrigin:
        return FrameOrigin(path=None if self._last is None else str(self._last))

    def read(self) -> Optional[np.ndarray]:
        paths = self._source.paths
        while self._pos < len(paths):
            p = paths[self._pos]
            self._pos += 1
            try:
                # the project's reader: np.fromfile + imdecode, 16-bit/gray/alpha handled, RGB out
                frame = validate_frame(_data.read_image(p), name=str(p))
                self._last = p
                return frame
            except ValueError as e:  # ImageReadError is a ValueError
                # A corrupt file in a folder of thousands must not stop a run: skip, warn, count.
                log.warning("skipping unreadable image %s: %s", p, e)
                self._source._count_error()
        return None

    def release(self) -> None:
        pass


class ImageFolderSource(FrameSource):
    """Images from a folder, a glob pattern or one image file, in sorted path order (RGB frames).
    root: the deepest folder holding all of them (names of outputs are made relative to it)."""

    is_live = False
    color = "rgb"

    def __init__(self, paths: Sequence[Union[str, Path]], name: str) -> None:
        super().__init__()
        self.paths = sorted(Path(p) for p in paths)
        self.name = name
        if not self.paths:
            raise SourceError(f"{name}: no images found")
        self.root = Path(os.path.commonpath([str(p.parent) for p in self.paths]))

    def connect(self) -> Connection:
        return _FolderConnection(self)


def open_source(source: Union[int, str, os.PathLike, FrameSource],
                capture_factory: Optional[CaptureFactory] = None,
                open_timeout_s: float = 10.0, read_timeout_s: float = 5.0,
                recursive: bool = False) -> FrameSource:
    """Turn a user's source spec into a FrameSource.

    int or digit string -> camera (live); rtsp/http/... URL -> stream (live); directory -> its
    images (with `recursive`, those in subfolders too); glob pattern -> matching images; image
    file -> that image; any other existing file -> video file.  A FrameSource is returned unchanged.
    """
    if isinstance(source, FrameSource):
        return source
    kw: dict[str, Any] = dict(capture_factory=capture_factory, open_timeout_s=open_timeout_s,
                              read_timeout_s=read_timeout_s)
    if isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)):
        raise SourceError(f"not a source: {source!r}")
    if isinstance(source, int):
        return CaptureSource(source, is_live=True, **kw)
    s = os.fspath(source)
    if s.strip().isdigit():
        return CaptureSource(int(s), is_live=True, **kw)
    if s.lower().startswith(URL_SCHEMES):
        return CaptureSource(s, is_live=True, **kw)
    p = Path(s)
    if p.is_file() and not _data.is_image_file(p):
        return CaptureSource(str(p), is_live=False, **kw)
    try:
        # same listing rules as training/eval: sorted, image extensions
        paths = _data.list_folder(s, recursive=recursive)
    except FileNotFoundError as e:
        raise SourceError(f"{e} (expected a camera index, URL, video file, image folder or glob pattern)") from e
    return ImageFolderSource(paths, name=s)


# ---------------------------------------------------------------------------------------------
# the bounded queue
# ---------------------------------------------------------------------------------------------
@dataclass
class _Item:
    index: int
    timestamp: float      # wall clock
    t_mono: float         # monotonic, for latency
    frame: np.ndarray
    origin: Optional[FrameOrigin] = None


class _FrameQueue:
    """Bounded deque + condition.  queue.Queue cannot drop its oldest item atomically."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._dq: collections.deque[_Item] = collections.deque()
        self._cv = threading.Condition()
        self._ended = False
        self._closed = False
        self.dropped = 0

    def put(self, item: _Item, policy: str) -> bool:
        """Returns False when the queue was closed (the item is discarded)."""
        with self._cv:
            if policy == "drop_oldest":
                while len(self._dq) >= self.maxsize:
                    self._dq.popleft()
                    self.dropped += 1
            else:
                while len(self._dq) >= self.maxsize and not self._closed:
                    self._cv.wait(0.1)
            if self._closed:
                return False
            self._dq.append(item)
            self._cv.notify_all()
            return True

    def end(self) -> None:
        """No more items will come; consumers drain what is left, then see the end."""
        with self._cv:
            self._ended = True
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._ended = True
            self._dq.clear()
            self._cv.notify_all()

    def get_batch(self, max_n: int) -> Optional[list[_Item]]:
        """Wait for at least one item, return up to max_n without waiting for more; None at end."""
        with self._cv:
            while not self._dq and not self._ended:
                self._cv.wait(0.1)
            if not self._dq:
                return None
            n = min(max_n, len(self._dq))
            batch = [self._dq.popleft() for _ in range(n)]
            self._cv.notify_all()
            return batch

    def __len__(self) -> int:
        with self._cv:
            return len(self._dq)


# ---------------------------------------------------------------------------------------------
# the stream
# ---------------------------------------------------------------------------------------------
class _Reader:
    """One connection's reader thread."""

    def __init__(self, stream: "Stream", conn: Connection, serial: int) -> None:
        self.stream = stream
        self.conn = conn
        self.abandoned = threading.Event()
        self.finished = threading.Event()
        self.delivered = 0
        # Stall = time spent inside one read(), not time since the last frame: a reader blocked
        # on a full queue (policy "block", slow consumer) is not a dead camera.
        self.read_started: Optional[float] = None
        self.thread = threading.Thread(target=self._run, name=f"edgeuad-reader-{serial}", daemon=True)

    def _run(self) -> None:
        st = self.stream
        try:
            while not st._stop.is_set() and not self.abandoned.is_set():
                self.read_started = time.monotonic()
                frame = self.conn.read()
                self.read_started = None
                if frame is None:
                    break
                if self.abandoned.is_set():
                    break  # a stalled read came back after we were replaced; the new reader owns the queue
                if not st._admit(time.monotonic()):
                    continue
                self.delivered += 1
                if not st._push(frame, _origin_of(self.conn)):
                    break
        except Exception:  # a backend raising on read is a failed connection, not a dead program
            log.exception("%s: read failed", st.source.name)
        finally:
            try:
                self.conn.release()  # on the reading thread: cv2 captures are not thread-safe
            except Exception:
                log.exception("%s: release failed", st.source.name)
            self.finished.set()


class Stream:
    """Score frames from a source as they arrive.

    Iterate (`for r in stream`) or give a callback (results are delivered on a worker thread;
    call `wait()` or `close()`).  Use as a context manager so threads and capture handles are
    released on every exit path, Ctrl-C included.
    """

    def __init__(self, detector: Any, source: Union[int, str, os.PathLike, FrameSource],
                 config: Optional[StreamConfig] = None,
                 callback: Optional[Callable[[StreamResult], None]] = None,
                 capture_factory: Optional[CaptureFactory] = None) -> None:
        self.detector = detector
        self.config = config or StreamConfig()
        cfg = self.config
        self.source = open_source(source, capture_factory=capture_factory,
                                  open_timeout_s=cfg.open_timeout_s, read_timeout_s=cfg.read_timeout_s)
        self.policy = cfg.policy or ("drop_oldest" if self.source.is_live else "block")
        qsize = cfg.queue_size
        if cfg.batch_size > qsize:
            log.info("queue_size %d < batch_size %d: using a queue of %d", qsize, cfg.batch_size, cfg.batch_size)
            qsize = cfg.batch_size
        # Frames reach the detector in the colour order it expects (cv2 captures give BGR,
        # folder images RGB); convert once here, in the capture thread.
        want = str(getattr(detector, "color", "rgb")).lower()
        self._convert = want != self.source.color
        self._queue = _FrameQueue(qsize)
        self._callback = callback
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stats = StreamStats()
        self._next_index = 0
        self._last_admit: Optional[float] = None
        self._pending: collections.deque[StreamResult] = collections.deque()
        self._error: Optional[BaseException] = None
        self._readers: list[_Reader] = []
        self._supervisor: Optional[threading.Thread] = None
        self._worker: Optional[threading.Thread] = None
        self._started = False
        self._closed = False
        self._done = threading.Event()

    # --- public ----------------------------------------------------------------------------
    @property
    def is_live(self) -> bool:
        return self.source.is_live

    @property
    def stats(self) -> StreamStats:
        """A snapshot of the counters."""
        with self._lock:
            s = StreamStats(**asdict(self._stats))
        s.dropped = self._queue.dropped
        s.read_errors += self.source.read_errors
        return s

    @property
    def reconnects(self) -> int:
        return self.stats.reconnects

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    @property
    def read_errors(self) -> int:
        return self.stats.read_errors

    @property
    def error(self) -> Optional[BaseException]:
        return self._error

    def start(self) -> "Stream":
        if self._closed:
            raise RuntimeError("stream is closed")
        if self._started:
            return self
        self._started = True
        self._supervisor = threading.Thread(target=self._supervise, name="edgeuad-capture", daemon=True)
        self._supervisor.start()
        if self._callback is not None:
            self._worker = threading.Thread(target=self._work, name="edgeuad-stream-worker", daemon=True)
            self._worker.start()
        return self

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Callback mode: wait until the source ends (True) or the timeout passes (False).
        Re-raises the error that ended the stream (a dead live source, a detector/callback error)."""
        if self._callback is None:
            raise RuntimeError("wait() is for callback mode; iterate the stream instead")
        self.start()
        finished = self._done.wait(timeout)
        if finished:
            self.close()
            if self._error is not None:
                raise self._error
        return finished

    def close(self) -> None:
        """Stop every thread and release capture handles.  Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._queue.close()
        me = threading.current_thread()
        t_end = time.monotonic() + self.config.close_timeout_s

        def join(t: Optional[threading.Thread]) -> None:
            if t is None or t is me or not t.is_alive():
                return
            t.join(max(0.0, t_end - time.monotonic()))
            if t.is_alive():
                # Only a read blocked inside the capture library gets here (see module doc).
                log.warning("thread %s still blocked after %.1fs; left as a daemon", t.name,
                            self.config.close_timeout_s)

        # the supervisor first: once it is gone no new reader can appear, then the rest
        join(self._supervisor)
        join(self._worker)
        with self._lock:
            readers = list(self._readers)
        for r in readers:
            join(r.thread)
        self._done.set()

    def __enter__(self) -> "Stream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[StreamResult]:
        if self._callback is not None:
            raise RuntimeError("a stream with a callback delivers results to it; do not iterate it")
        self.start()
        return self

    def __next__(self) -> StreamResult:
        if self._pending:
            return self._pending.popleft()
        if self._closed:
            raise StopIteration
        try:
            batch = self._queue.get_batch(self.config.batch_size)
            if batch is None:
                self.close()
                if self._error is not None:
                    raise self._error
                raise StopIteration
            self._pending.extend(self._score(batch))
        except StopIteration:
            raise
        except BaseException:
            # KeyboardInterrupt (Ctrl-C) or a detector error: stop the threads and release the
            # cameras before the exception leaves, so nothing keeps the device open.
            self.close()
            raise
        return self._pending.popleft()

    # --- internals ---------------------------------------------------------------------------
    def _score(self, batch: list[_Item]) -> list[StreamResult]:
        cfg = self.config
        frames = [it.frame for it in batch]
        results = self.detector.score_batch(frames, return_map=cfg.return_map)
        if len(results) != len(batch):
            raise RuntimeError(f"detector returned {len(results)} results for {len(batch)} frames")
        now = time.monotonic()
        dropped = self._queue.dropped
        out = []
        for it, r in zip(batch, results):
            out.append(StreamResult(
                index=it.index, timestamp=it.timestamp, source_name=self.source.name,
                score=float(r.score), normalized=float(r.normalized), is_anomaly=bool(r.is_anomaly),
                anomaly_map=r.anomaly_map if cfg.return_map else None,
                frame=it.frame if cfg.return_frame else None,
                latency_ms=(now - it.t_mono) * 1000.0, inference_ms=float(r.latency_ms),
                dropped_so_far=dropped, path=it.origin.path if it.origin else None,
                position_ms=it.origin.position_ms if it.origin else None))
        with self._lock:
            self._stats.scored += len(out)
        return out

    def _work(self) -> None:
        assert self._callback is not None
        try:
            while not self._stop.is_set():
                batch = self._queue.get_batch(self.config.batch_size)
                if batch is None:
                    break
                for r in self._score(batch):
                    self._callback(r)
        except BaseException as e:  # surfaced by wait(); a broken callback must not fail silently
            log.exception("stream worker stopped")
            if self._error is None:
                self._error = e
            self._stop.set()
            self._queue.close()
        finally:
            self._done.set()

    def _admit(self, t: float) -> bool:
        """fps_limit gate, called by the reader for every frame read."""
        fps = self.config.fps_limit
        if fps is None:
            return True
        interval = 1.0 / fps
        if self._last_admit is not None and t - self._last_admit < interval:
            if self.source.is_live:
                with self._lock:
                    self._stats.skipped += 1
                return False
            # files: pace instead of discarding
            self._stop.wait(interval - (t - self._last_admit))
            t = time.monotonic()
        self._last_admit = t
        return True

    def _push(self, frame: np.ndarray, origin: Optional[FrameOrigin] = None) -> bool:
        if self._convert:
            frame = np.ascontiguousarray(frame[:, :, ::-1])  # RGB <-> BGR
        with self._lock:
            idx = self._next_index
            self._next_index += 1
            self._stats.captured += 1
        item = _Item(index=idx, timestamp=time.time(), t_mono=time.monotonic(), frame=frame, origin=origin)
        return self._queue.put(item, self.policy)

    def _supervise(self) -> None:
        cfg = self.config
        src = self.source
        attempt = 0          # consecutive failed attempts, drives the backoff
        connections = 0
        try:
            while not self._stop.is_set():
                if connections > 0 or attempt > 0:
                    # every attempt after the first is a reconnect
                    with self._lock:
                        self._stats.reconnects += 1
                        n = self._stats.reconnects
                    if cfg.max_reconnects is not None and n > cfg.max_reconnects:
                        with self._lock:
                            self._stats.reconnects -= 1  # this attempt is not made
                        raise SourceError(f"{src.name}: gave up after {cfg.max_reconnects} reconnect attempts")
                    delay = cfg.backoff(max(attempt, 1))
                    log.warning("%s: reconnect attempt %d in %.2fs", src.name, n, delay)
                    if self._stop.wait(delay):
                        break
                try:
                    conn = src.connect()
                except SourceError as e:
                    if not src.is_live:
                        raise
                    attempt += 1
                    log.warning("%s: %s", src.name, e)
                    continue
                if self._stop.is_set():  # closed while connecting: do not start a reader
                    conn.release()
                    break
                connections += 1
                reader = _Reader(self, conn, connections)
                with self._lock:
                    self._readers = [r for r in self._readers if r.thread.is_alive()] + [reader]
                reader.thread.start()
                stalled = self._watch(reader)
                if self._stop.is_set():
                    break
                if not src.is_live:
                    break  # a file/folder ended
                if reader.delivered > 0:
                    attempt = 0  # the connection worked: the next failure starts the backoff afresh
                attempt += 1
                if stalled:
                    log.warning("%s: no frame for %.2fs, reconnecting", src.name, cfg.stall_timeout_s)
                else:
                    with self._lock:
                        self._stats.read_errors += 1
                    log.warning("%s: read failed (stream ended or device lost)", src.name)
        except SourceError as e:
            log.error("%s", e)
            self._error = e
        except BaseException as e:
            log.exception("capture thread failed")
            self._error = e
        finally:
            self._queue.end()

    def _watch(self, reader: _Reader) -> bool:
        """Wait until the reader ends; True if it was abandoned because of a stall."""
        stall = self.config.stall_timeout_s if self.source.is_live else None
        while not reader.finished.wait(0.02):
            if self._stop.is_set():
                return False
            started = reader.read_started
            if stall is not None and started is not None and time.monotonic() - started > stall:
                reader.abandoned.set()
                with self._lock:
                    self._stats.stalls += 1
                return True
        return False


def stream(detector: Any, source: Union[int, str, os.PathLike, FrameSource],
           config: Optional[StreamConfig] = None,
           callback: Optional[Callable[[StreamResult], None]] = None,
           capture_factory: Optional[CaptureFactory] = None) -> Stream:
    """What `Detector.stream(source, **cfg)` calls.  With a callback the stream is started and
    results go to the callback on a worker thread; without one, iterate the returned Stream."""
    s = Stream(detector, source, config, callback=callback, capture_factory=capture_factory)
    if callback is not None:
        s.start()
    return s
