"""Camera fan-in: cameras.yaml -> one Ray actor per camera -> the bundle's replicas -> JSONL + overlays.

Each camera actor runs an `edgeuad.stream.Stream` (capture thread, bounded queue, reconnect with
backoff, stall detection: none of it re-implemented here) whose "detector" is `RemoteScorer`, which
sends every frame to the bundle's Serve application through a DeploymentHandle, so frames from
many cameras meet in the replicas' `@serve.batch`.  A camera that dies reconnects inside its own
actor (its own process): the other cameras never wait for it.  Actors restart if their process dies.

cameras.yaml::

    out: camera_results            # results root, relative to this file (default: cameras_out)
    cameras:
      - name: line1                # [A-Za-z0-9_.-], also the results sub-folder
        source: rtsp://10.0.0.5/stream1   # anything Detector.stream accepts: index, URL, video, folder, glob
        bundle: bottle             # application name (default: the first --bundle)
        overlays: anomalous        # anomalous (default) | all | none
        live: true                 # optional: treat a video file as a camera (reconnect/replay when it ends)
        stream: {fps_limit: 5, queue_size: 4}   # any edgeuad.stream.StreamConfig field

Results per camera in <out>/<name>/: results.jsonl (one line per scored frame: camera, source,
index, timestamp, score, normalized, is_anomaly, bundle, digest, latency_ms, overlay) and
overlays/<ms>_<index>.png for anomalous frames (written atomically).
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from functools import lru_cache
from typing import Any, Optional, Union

from .. import viz
from ..atomic import atomic_write_bytes
from ..detector import Result
from ..stream import CaptureSource, FrameSource, Stream, StreamConfig, StreamResult, open_source
from . import protocol as P

log = logging.getLogger(__name__)

OVERLAYS = ("anomalous", "all", "none")
_MAP_MODE = {"anomalous": "anomalous", "all": "always", "none": "never"}


@dataclass
class CameraSpec:
    name: str
    source: Union[str, int]
    bundle: Optional[str] = None
    overlays: str = "anomalous"
    live: Optional[bool] = None
    stream: dict[str, Any] = field(default_factory=dict)
    score_retry_s: float = 60.0   # how long a frame is retried while the bundle's replicas are unreachable

    def __post_init__(self) -> None:
        if not P.NAME_RE.match(str(self.name)):
            raise ValueError(f"camera name {self.name!r} must match {P.NAME_RE.pattern}")
        if self.overlays not in OVERLAYS:
            raise ValueError(f"camera {self.name}: overlays must be one of {OVERLAYS}, got {self.overlays!r}")
        if self.bundle is not None and not P.NAME_RE.match(str(self.bundle)):
            raise ValueError(f"camera {self.name}: bundle {self.bundle!r} is not an application name")
        self.stream_config()  # unknown or invalid stream keys fail at load time, not in the actor

    def stream_config(self) -> StreamConfig:
        for k in ("return_map", "return_frame"):
            if k in self.stream:
                raise ValueError(f"camera {self.name}: stream.{k} is set from `overlays`")
        keep = self.overlays != "none"
        return StreamConfig.from_dict({**self.stream, "return_map": keep, "return_frame": keep})

    def frame_source(self) -> FrameSource:
        if self.live is None:
            cfg = self.stream_config()
            return open_source(self.source, open_timeout_s=cfg.open_timeout_s, read_timeout_s=cfg.read_timeout_s)
        src = self.source
        if isinstance(src, str) and src.strip().isdigit():
            src = int(src)
        if not isinstance(src, int) and Path(str(src)).is_dir():
            raise ValueError(f"camera {self.name}: `live` applies to cameras, URLs and video files, not folders")
        cfg = self.stream_config()
        # A file marked live is read like a camera: when it ends or is missing, the stream reconnects.
        return CaptureSource(src, is_live=bool(self.live), name=str(self.source),
                             open_timeout_s=cfg.open_timeout_s, read_timeout_s=cfg.read_timeout_s)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CameraSpec":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"camera {d.get('name', '?')}: unknown keys {sorted(unknown)}")
        if "name" not in d or "source" not in d:
            raise ValueError(f"every camera needs `name` and `source`, got {sorted(d)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CamerasConfig:
    cameras: list[CameraSpec]
    out: str

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike], default_bundle: Optional[str] = None) -> "CamerasConfig":
        import yaml

        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("cameras"), list) or not doc["cameras"]:
            raise ValueError(f"{path}: expected a mapping with a non-empty `cameras` list")
        unknown = set(doc) - {"out", "cameras"}
        if unknown:
            raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
        cams = []
        for i, c in enumerate(doc["cameras"]):
            if not isinstance(c, dict):
                raise ValueError(f"{path}: cameras[{i}] is not a mapping")
            spec = CameraSpec.from_dict(c)
            if spec.bundle is None:
                if default_bundle is None:
                    raise ValueError(f"{path}: camera {spec.name} names no bundle and there is no default")
                spec.bundle = default_bundle
            if isinstance(spec.source, str) and not spec.source.lower().startswith(("rtsp:", "rtsps:", "http:", "https:",
                                                                                      "rtmp:", "udp:", "tcp:", "srt:")) \
                    and not spec.source.strip().isdigit():
                src = Path(spec.source).expanduser()
                spec.source = str(src if src.is_absolute() else path.parent / src)  # relative to the yaml file
            cams.append(spec)
        names = [c.name for c in cams]
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: camera names must be unique, got {names}")
        out = Path(doc.get("out") or "cameras_out").expanduser()
        return cls(cameras=cams, out=str(out if out.is_absolute() else (path.parent / out).resolve()))


# ---------------------------------------------------------------------------------------------
# inside a camera actor
# ---------------------------------------------------------------------------------------------
class RemoteScorer:
    """Detector-shaped front of a Serve application: `Stream` calls `score_batch` as it would on a
    local Detector; every frame becomes one `score_array` call that the replicas batch.

    Calls that fail for the server's reasons (a replica restarting, a swap) are retried for up to
    `retry_s` (scoring is idempotent); a frame the replica rejects (ValueError) is not."""

    color = "rgb"

    def __init__(self, app: str, map_mode: str, retry_s: float = 60.0) -> None:
        from ray import serve

        self.app = app
        self.map_mode = map_mode
        self.retry_s = retry_s
        self.handle = serve.get_app_handle(app)
        self.meta: collections.deque[tuple[str, str]] = collections.deque()  # (bundle, digest) per result
        self.retries = 0

    def _call(self, frame: Any) -> dict[str, Any]:
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            try:
                return self.handle.score_array.remote(frame, self.map_mode).result()
            except ValueError:
                raise
            except Exception as e:  # noqa: BLE001 - replica died / app updating: retry until the deadline
                if time.monotonic() + delay > deadline:
                    raise RuntimeError(f"{self.app}: no answer for {self.retry_s:.0f}s ({type(e).__name__}: {e})") from e
                self.retries += 1
                log.warning("%s: score call failed (%s); retrying in %.2fs", self.app, type(e).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def score_batch(self, frames: list[Any], return_map: bool = True) -> list[Result]:
        # submit all first so that the replica can batch them, then collect
        ref_ret = [self.handle.score_array.remote(f, self.map_mode) for f in frames]
        out = []
        for f, resp in zip(frames, ref_ret):
            try:
                d = resp.result()
            except ValueError:
                raise
            except Exception:  # noqa: BLE001 - retried one by one
                d = self._call(f)
            self.meta.append((d["bundle"], d["digest"]))
            out.append(Result(score=d["score"], normalized=d["normalized"], is_anomaly=d["is_anomaly"],
                              anomaly_map=d["map"] if return_map else None, latency_ms=d["latency_ms"]["batch"],
                              timings=d["latency_ms"]))
        return out


class CameraWriter:
    """Stream callback: one JSONL line per result (one O_APPEND write each: lines never interleave or
    tear short of a crash mid-write) and an atomically written overlay for anomalous frames."""

    def __init__(self, spec: CameraSpec, out_dir: Path, meta: collections.deque) -> None:
        self.spec = spec
        self.out_dir = out_dir
        self.meta = meta
        (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
        self._fd = os.open(out_dir / "results.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self.written = 0
        self.anomalous = 0
        self._lock = threading.Lock()

    def __call__(self, r: StreamResult) -> None:
        bundle, digest = self.meta.popleft()
        overlay = None
        want = self.spec.overlays == "all" or (self.spec.overlays == "anomalous" and r.is_anomaly)
        if want and r.frame is not None and r.anomaly_map is not None:
            img = viz.annotate(viz.overlay(r.frame, r.anomaly_map, vmin=0.0, vmax=1.0),
                               [f"{self.spec.name} #{r.index} {r.normalized:.2f} {'NG' if r.is_anomaly else 'OK'}"],
                               ok=not r.is_anomaly)
            rel = Path("overlays") / f"{int(r.timestamp * 1000)}_{r.index:06d}.png"
            atomic_write_bytes(self.out_dir / rel, viz.encode_png(img).tobytes())
            overlay = str(rel)
        rec = {"camera": self.spec.name, "source": r.source_name, "index": r.index, "timestamp": r.timestamp,
               "score": r.score, "normalized": r.normalized, "is_anomaly": r.is_anomaly, "bundle": bundle,
               "digest": digest, "latency_ms": round(r.latency_ms, 2), "overlay": overlay}
        with self._lock:
            os.write(self._fd, (P.dumps(rec) + "\n").encode())
            self.written += 1
            self.anomalous += int(r.is_anomaly)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class CameraWorker:
    """The body of one camera actor: starts streaming on construction (so a restarted actor resumes)."""

    def __init__(self, spec: dict[str, Any], out_dir: str) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.spec = CameraSpec.from_dict(spec)
        self.scorer = RemoteScorer(str(self.spec.bundle), _MAP_MODE[self.spec.overlays], self.spec.score_retry_s)
        self.writer = CameraWriter(self.spec, Path(out_dir) / self.spec.name, self.scorer.meta)
        self.stream = Stream(self.scorer, self.spec.frame_source(), self.spec.stream_config(), callback=self.writer)
        self.stream.start()

    def _finished(self) -> bool:
        try:
            return self.stream.wait(0)   # True once the source ended or gave up (closes the stream)
        except Exception:  # noqa: BLE001 - the error that ended it; reported through stream.error
            return True

    def status(self) -> dict[str, Any]:
        running = not self._finished()
        err = self.stream.error
        return {"name": self.spec.name, "source": str(self.spec.source), "live": self.stream.is_live,
                "running": running,
                "error": None if err is None else f"{type(err).__name__}: {err}",
                "stats": asdict(self.stream.stats), "written": self.writer.written,
                "anomalous": self.writer.anomalous, "score_retries": self.scorer.retries}

    def stop(self) -> dict[str, Any]:
        self.stream.close()
        self.writer.close()
        return self.status()


@lru_cache(maxsize=1)
def camera_actor() -> Any:
    """The Ray actor class of `CameraWorker` (made on first use: parsing cameras.yaml needs no ray).
    num_cpus=0: a camera waits on I/O and on the replicas, which hold the CPUs; restarted if it dies.
    Its handle calls come from the stream's plain threads, which need Serve's router on its own loop
    (config.LOW_LATENCY_ENV turns that off for the proxy and the replicas, where an event loop runs)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1,
                      runtime_env={"env_vars": {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}})(CameraWorker)


class CameraFleet:
    """The driver's side: one actor per camera, status polling, shutdown."""

    def __init__(self, config: CamerasConfig) -> None:
        self.config = config
        self.actors: dict[str, Any] = {}
        self._last: dict[str, Optional[str]] = {}

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike], default_bundle: Optional[str] = None) -> "CameraFleet":
        return cls(CamerasConfig.from_yaml(path, default_bundle))

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.config.cameras]

    @property
    def out_dir(self) -> str:
        return self.config.out

    def start(self) -> None:
        for spec in self.config.cameras:
            self.actors[spec.name] = camera_actor().remote(spec.to_dict(), self.config.out)

    def poll(self, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
        """Every camera's status; logs a camera's error once when it appears."""
        import ray

        names = list(self.actors)
        refs = [self.actors[n].status.remote() for n in names]
        out: dict[str, dict[str, Any]] = {}
        for n, ref in zip(names, refs):
            try:
                out[n] = ray.get(ref, timeout=timeout_s)
            except Exception as e:  # noqa: BLE001 - an actor restarting answers later
                out[n] = {"name": n, "running": None, "error": f"status unavailable: {type(e).__name__}"}
            err = out[n].get("error")
            if err and self._last.get(n) != err:
                log.warning("camera %s: %s", n, err)
            self._last[n] = err
        return out

    def stop(self, timeout_s: float = 15.0) -> dict[str, dict[str, Any]]:
        import ray

        refs = {n: a.stop.remote() for n, a in self.actors.items()}
        out = {}
        for n, ref in refs.items():
            try:
                out[n] = ray.get(ref, timeout=timeout_s)
            except Exception as e:  # noqa: BLE001 - stopping anyway
                out[n] = {"name": n, "error": f"stop failed: {type(e).__name__}: {e}"}
            ray.kill(self.actors[n], no_restart=True)
        self.actors.clear()
        return out
