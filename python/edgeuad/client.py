"""Python client for `edgeuad serve`: standard-library HTTP, numpy + OpenCV for frames, no torch, no ray.

    from edgeuad.client import Client, score
    r = score("http://127.0.0.1:8000/bottle", frame_rgb)          # one call, one connection
    with Client("http://127.0.0.1:8000/bottle") as c:               # keep-alive, for many frames
        r = c.score(frame_rgb, map=True)
        r.score, r.normalized, r.is_anomaly, r.digest, r.anomaly_map

A frame is an RGB uint8 numpy array (sent raw with its shape: nothing to encode or decode), the
bytes of a JPEG/PNG file, or a path to one.  Scoring is idempotent, so a request that fails for the
server's reasons (connection lost, 5xx: a replica restarting) is retried with the same request id;
a 4xx (the request itself is wrong) is raised at once as `ServeError`.  A `Client` holds one
connection: use one per thread.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlsplit

import numpy as np

from .serve import protocol as P

log = logging.getLogger(__name__)

Frame = Union[np.ndarray, bytes, bytearray, str, os.PathLike]
RETRY_STATUS = (500, 502, 503, 504)


class ServeError(RuntimeError):
    """The server answered with an error (status, type and message from its JSON body), or could not
    be reached within the retries (status 0)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(f"HTTP {status} {kind}: {message}" if status else f"{kind}: {message}")
        self.status = status
        self.kind = kind
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status == 0 or self.status in RETRY_STATUS


@dataclass
class ScoreResult:
    score: float
    normalized: float
    is_anomaly: bool
    threshold: float
    bundle: str
    digest: str
    replica: str
    request_id: Optional[str]
    batch_size: int
    frame_shape: list[int]
    latency_ms: dict[str, float]            # the server's split: read, decode, queue, preprocess, network, ...
    round_trip_ms: float = 0.0              # this client's view, retries included
    attempts: int = 1
    anomaly_map: Optional[np.ndarray] = field(default=None, repr=False)   # HxW float32 0..1 with map=True

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ScoreResult":
        return cls(score=float(d["score"]), normalized=float(d["normalized"]), is_anomaly=bool(d["is_anomaly"]),
                   threshold=float(d["threshold"]), bundle=d["bundle"], digest=d["digest"], replica=d["replica"],
                   request_id=d.get("request_id"), batch_size=int(d["batch_size"]),
                   frame_shape=list(d["frame_shape"]), latency_ms=dict(d["latency_ms"]))


def encode_frame(frame: Frame, encoding: str = "raw") -> tuple[bytes, dict[str, str]]:
    """(body, headers) for a frame: numpy arrays raw (or png/jpeg), bytes and files as they are."""
    if isinstance(frame, np.ndarray):
        if encoding == "raw":
            from .serve.codec import encode_raw

            body, headers = encode_raw(frame)
            return body, {**headers, "Content-Type": P.RAW_TYPE}
        if encoding in ("png", "jpeg"):
            import cv2

            if frame.dtype != np.uint8:
                raise ValueError("frames must be uint8")
            bgr = frame[:, :, ::-1] if frame.ndim == 3 and frame.shape[2] == 3 else frame
            ok, buf = cv2.imencode(".png" if encoding == "png" else ".jpg", np.ascontiguousarray(bgr))
            if not ok:
                raise ValueError(f"cannot encode the frame as {encoding}")
            return buf.tobytes(), {"Content-Type": P.PNG_TYPE if encoding == "png" else P.JPEG_TYPE}
        raise ValueError(f"encoding must be raw, png or jpeg, got {encoding!r}")
    if isinstance(frame, (str, os.PathLike)):
        frame = Path(frame).read_bytes()
    if isinstance(frame, (bytes, bytearray)):
        from .serve.codec import JPEG_MAGIC, PNG_MAGIC

        data = bytes(frame)
        kind = P.PNG_TYPE if data.startswith(PNG_MAGIC) else P.JPEG_TYPE if data.startswith(JPEG_MAGIC) else None
        if kind is None:
            raise ValueError("bytes are neither a PNG nor a JPEG file; send a numpy array for raw pixels")
        return data, {"Content-Type": kind}
    raise TypeError(f"a frame is a numpy array, image bytes or a path, got {type(frame).__name__}")


class Client:
    """Keep-alive HTTP client for one served bundle (base URL `http://host:port/<name>`)."""

    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.1) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"expected http(s)://host:port/<bundle name>, got {url!r}")
        self.url = url
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self._https = u.scheme == "https"
        base = u.path.rstrip("/")
        for suffix in (P.SCORE_PATH, P.HEALTH_PATH, P.INFO_PATH):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        self.base = base
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._conn: Optional[http.client.HTTPConnection] = None

    # --- public --------------------------------------------------------------------------------
    def score(self, frame: Frame, map: bool = False, encoding: str = "raw",
              request_id: Optional[str] = None) -> ScoreResult:
        body, headers = encode_frame(frame, encoding)
        rid = request_id or uuid.uuid4().hex
        headers[P.REQUEST_ID_HEADER] = rid
        path = self.base + P.SCORE_PATH + (f"?{P.MAP_QUERY}=png" if map else "")
        t0 = time.perf_counter()
        status, rheaders, data, attempts = self._request("POST", path, body, headers)
        if map:
            from .serve.codec import png_to_map

            res = ScoreResult.from_json(json.loads(rheaders[P.RESULT_HEADER.lower()]))
            res.anomaly_map = png_to_map(data)
        else:
            res = ScoreResult.from_json(json.loads(data))
        res.round_trip_ms = (time.perf_counter() - t0) * 1e3
        res.attempts = attempts
        if res.request_id != rid:  # a mixed-up answer must never pass as this frame's
            raise ServeError(status, "request_id_mismatch", f"sent {rid}, answer is for {res.request_id}")
        return res

    def health(self) -> dict[str, Any]:
        return json.loads(self._request("GET", self.base + P.HEALTH_PATH, None, {})[2])

    def info(self) -> dict[str, Any]:
        return json.loads(self._request("GET", self.base + P.INFO_PATH, None, {})[2])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self.host, self.port, timeout=self.timeout_s)
        return self._conn

    def _request(self, method: str, path: str, body: Optional[bytes],
                 headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, int]:
        last: Optional[ServeError] = None
        stale_retry = True
        attempt = 0
        while attempt <= self.retries:
            attempt += 1
            reused = self._conn is not None
            try:
                conn = self._connection()
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                rheaders = {k.lower(): v for k, v in resp.getheaders()}
                if resp.will_close:
                    self.close()
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timeout, half-closed keep-alive
                self.close()
                if reused and stale_retry and isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError,
                                                             BrokenPipeError)):
                    # the server closed an idle keep-alive connection: one fresh try, outside the retry budget
                    stale_retry = False
                    attempt -= 1
                    continue
                last = ServeError(0, "connection", f"{method} {self.host}:{self.port}{path}: {type(e).__name__}: {e}")
            else:
                if resp.status < 400:
                    return resp.status, rheaders, data, attempt
                last = _error_from(resp.status, data)
                if not last.retryable:
                    raise last
            if attempt <= self.retries:
                log.info("retrying %s %s after %s (attempt %d)", method, path, last, attempt + 1)
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        assert last is not None
        raise last


def _error_from(status: int, data: bytes) -> ServeError:
    try:
        e = json.loads(data)["error"]
        return ServeError(status, str(e.get("type", "error")), str(e.get("message", "")))
    except (ValueError, KeyError, TypeError):  # a proxy's plain-text error page
        return ServeError(status, "http_error", data[:200].decode("utf-8", "replace"))


def score(url: str, frame: Frame, map: bool = False, encoding: str = "raw", timeout_s: float = 30.0,
          retries: int = 3) -> ScoreResult:
    """Score one frame on a served bundle (`url` = http://host:port/<name>): see `Client.score`."""
    with Client(url, timeout_s=timeout_s, retries=retries) as c:
        return c.score(frame, map=map, encoding=encoding)


__all__ = ["Client", "ScoreResult", "ServeError", "encode_frame", "score"]
