"""The Ray Serve deployment: every replica holds one `Detector`; requests are batched by `@serve.batch`.

Two doors lead to the same batch queue:
  * HTTP (`__call__`): the API of `protocol.py`, bodies checked by `codec.decode_frame` before they
    queue, so a bad request is a 4xx for that caller only and the replica keeps serving;
  * a Ray `DeploymentHandle` (`score_array`): numpy frames from the camera actors, no HTTP.

Why the Detector runs on one worker thread: `@serve.batch` runs one batch at a time per replica, and
keeping the CPU-bound `score_batch` off the event loop lets the replica read, decode and queue the
next requests while a batch computes (onnxruntime and `_rt` release the GIL).
Runtime side: never imports torch.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from .._version import __version__
from ..bundle import sha256_file
from ..detector import Detector
from ..preprocess import validate_frame
from . import protocol as P
from .codec import Limits, check_body_size, decode_frame, map_to_png
from .config import REQUEST_PATH_KEYS, ReplicaConfig

log = logging.getLogger(__name__)

MAP_MODES = ("never", "always", "anomalous")
_MAX_REQUEST_ID = 128


@dataclass
class _Job:
    frame: np.ndarray
    map_mode: str
    t_queued: float


def bundle_digest(bundle_root: os.PathLike | str) -> str:
    """sha256 of manifest.json: the manifest holds the sha256 of every other file, so this names the bundle."""
    return sha256_file(os.path.join(bundle_root, "manifest.json"))


def _json(obj: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> Response:
    return Response(P.dumps(obj), status_code=status, media_type=P.JSON_TYPE, headers=headers)


@serve.deployment(max_ongoing_requests=64, graceful_shutdown_timeout_s=30.0)
class BundleScorer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = ReplicaConfig.from_dict(config)
        self.limits = Limits(self.cfg.max_body_bytes, self.cfg.max_pixels)
        self.det = Detector(self.cfg.bundle, backend=self.cfg.backend, threads=self.cfg.threads, color="rgb")
        self.digest = bundle_digest(self.det.bundle.root)
        self._infer = ThreadPoolExecutor(1, thread_name_prefix="edgeuad-infer")
        self._decode = ThreadPoolExecutor(2, thread_name_prefix="edgeuad-decode")
        self._score.set_max_batch_size(self.cfg.max_batch)
        self._score.set_batch_wait_timeout_s(self.cfg.batch_wait_ms / 1000.0)
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a replica (unit use): no id
            self.replica = f"pid{os.getpid()}"
        log.info("replica %s: bundle %s (%s) digest %s", self.replica, self.cfg.name, self.cfg.bundle, self.digest[:12])

    # --- the batch ---------------------------------------------------------------------------
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _score(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        t_start = time.perf_counter()
        want_map = any(j.map_mode != "never" for j in jobs)
        frames = [j.frame for j in jobs]
        results = await asyncio.get_running_loop().run_in_executor(
            self._infer, lambda: self.det.score_batch(frames, return_map=want_map))
        out = []
        for j, r in zip(jobs, results):
            lat = {k: round(float(v), 3) for k, v in r.timings.items()}
            lat["queue"] = round((t_start - j.t_queued) * 1e3, 3)
            lat["batch"] = round(float(r.latency_ms), 3)
            keep = j.map_mode == "always" or (j.map_mode == "anomalous" and r.is_anomaly)
            out.append({"score": float(r.score), "normalized": float(r.normalized), "is_anomaly": bool(r.is_anomaly),
                        "threshold": float(self.det.threshold), "batch_size": len(jobs), "latency_ms": lat,
                        "map": r.anomaly_map if keep else None})
        return out

    def _stamp(self, res: dict[str, Any]) -> dict[str, Any]:
        res.update(bundle=self.cfg.name, digest=self.digest, replica=self.replica)
        return res

    # --- handle door (camera actors) -----------------------------------------------------------
    async def score_array(self, frame: np.ndarray, map_mode: str = "never") -> dict[str, Any]:
        """Score one RGB uint8 frame; `map_mode` never | always | anomalous decides whether the
        normalised map comes back.  ValueError for a bad frame (it never reaches the batch)."""
        if map_mode not in MAP_MODES:
            raise ValueError(f"map_mode must be one of {MAP_MODES}, got {map_mode!r}")
        frame = validate_frame(frame, name="frame")
        res = await self._score(_Job(frame, map_mode, time.perf_counter()))
        return self._stamp(res)

    # --- HTTP door -----------------------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        t0 = time.perf_counter()
        path = request.url.path
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        path = path.rstrip("/") or "/"
        try:
            if path == P.SCORE_PATH:
                self._method(request, "POST")
                return await self._http_score(request, t0)
            if path == P.HEALTH_PATH:
                self._method(request, "GET")
                return _json({"status": "ok", "bundle": self.cfg.name, "digest": self.digest, "replica": self.replica})
            if path == P.INFO_PATH:
                self._method(request, "GET")
                return _json(self.info())
            raise P.RequestError(404, "not_found", f"no endpoint {path!r} under /{self.cfg.name}; try "
                                                   f"{P.SCORE_PATH}, {P.HEALTH_PATH} or {P.INFO_PATH}")
        except P.RequestError as e:
            return _json(e.to_dict(), e.status, e.headers or None)
        except Exception as e:  # noqa: BLE001 - a server fault: 500 (retryable), the replica keeps serving
            log.exception("replica %s: request failed", self.replica)
            return _json(P.error_body(500, "internal", f"{type(e).__name__}: {e}"), 500)

    @staticmethod
    def _method(request: Request, allowed: str) -> None:
        if request.method != allowed:
            raise P.RequestError(405, "method_not_allowed", f"{request.url.path} accepts {allowed}, not "
                                                            f"{request.method}", headers={"Allow": allowed})

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise P.RequestError(400, "bad_content_length", f"Content-Length {declared!r} is not a number") from None
            check_body_size(n, self.limits)  # refuse before reading a byte of it
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            check_body_size(total, self.limits)  # chunked bodies have no Content-Length
            chunks.append(chunk)
        return b"".join(chunks)

    async def _http_score(self, request: Request, t0: float) -> Response:
        q = request.query_params
        unknown = set(q.keys()) - {P.MAP_QUERY}
        if unknown:
            raise P.RequestError(400, "bad_query", f"unknown query parameter(s) {sorted(unknown)}; "
                                                   f"only {P.MAP_QUERY}={'|'.join(P.MAP_FORMATS)}")
        map_fmt = q.get(P.MAP_QUERY)
        if map_fmt is not None and map_fmt not in P.MAP_FORMATS:
            raise P.RequestError(400, "bad_query", f"{P.MAP_QUERY}={map_fmt!r}: supported {list(P.MAP_FORMATS)}")
        rid = request.headers.get(P.REQUEST_ID_HEADER)
        if rid is not None and len(rid) > _MAX_REQUEST_ID:
            raise P.RequestError(400, "bad_request_id", f"{P.REQUEST_ID_HEADER} longer than {_MAX_REQUEST_ID} chars")
        body = await self._read_body(request)
        t_read = time.perf_counter()
        frame = await asyncio.get_running_loop().run_in_executor(
            self._decode, decode_frame, body, request.headers.get("content-type"), request.headers, self.limits)
        t_dec = time.perf_counter()
        res = await self._score(_Job(frame, "always" if map_fmt else "never", t_dec))
        amap = res.pop("map")
        res = self._stamp(res)
        res["request_id"] = rid
        res["frame_shape"] = [int(frame.shape[0]), int(frame.shape[1])]
        res["latency_ms"].update(read=round((t_read - t0) * 1e3, 3), decode=round((t_dec - t_read) * 1e3, 3))
        if map_fmt == "png":
            png = map_to_png(amap)
            res["latency_ms"]["server"] = round((time.perf_counter() - t0) * 1e3, 3)
            return Response(png, media_type=P.PNG_TYPE, headers={P.RESULT_HEADER: P.dumps(res)})
        res["latency_ms"]["server"] = round((time.perf_counter() - t0) * 1e3, 3)
        return _json(res)

    # --- info ----------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        import cv2
        import onnxruntime
        import ray

        m = self.det.bundle.manifest
        return {
            "name": self.cfg.name, "digest": self.digest, "replica": self.replica,
            "bundle": {"path": str(self.cfg.bundle), "method": m["method"], "backbone": m["backbone"],
                       "input_size": list(m["preprocess"]["size"]), "postprocess": m["postprocess"]["kind"],
                       "threshold": float(m["thresholds"]["threshold"]),
                       "threshold_source": m["thresholds"].get("source"), "files": len(m["files"]),
                       "graph": self.det.bundle.graph_kind,
                       "schema_version": m["schema_version"], "edgeuad_version": m.get("edgeuad_version")},
            "server": {"edgeuad": __version__, "ray": ray.__version__, "onnxruntime": onnxruntime.__version__,
                       "numpy": np.__version__, "opencv": cv2.__version__, "backend": self.det.backend_name,
                       "threads": self.cfg.threads, "pid": os.getpid(),
                       # the request-path settings this replica's Ray Serve runs with (config.REQUEST_PATH_ENV)
                       "ray_serve_env": {k: os.environ.get(k) for k in REQUEST_PATH_KEYS}},
            "batching": {"max_batch": self.cfg.max_batch, "batch_wait_ms": self.cfg.batch_wait_ms},
            "limits": {"max_body_bytes": self.limits.max_body_bytes, "max_pixels": self.limits.max_pixels},
            "api": {"score": P.SCORE_PATH, "health": P.HEALTH_PATH, "info": P.INFO_PATH,
                    "content_types": list(P.CONTENT_TYPES), "map": list(P.MAP_FORMATS)},
        }

    def __del__(self) -> None:
        # Replicas are stopped by Ray; free the inference session and threads when that happens.
        for pool in (getattr(self, "_infer", None), getattr(self, "_decode", None)):
            if pool is not None:
                pool.shutdown(wait=False)
        det = getattr(self, "det", None)
        if det is not None:
            det.close()
