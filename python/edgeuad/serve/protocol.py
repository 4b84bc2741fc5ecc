"""The HTTP contract between `edgeuad serve` and its clients: one definition for both sides.

Every bundle is one Ray Serve application under `/<name>`; its API:

    POST /<name>/v1/score      body: a JPEG or PNG file (Content-Type image/jpeg | image/png), or
                               raw uint8 pixels (application/octet-stream) with the header
                               X-Frame-Shape: H,W[,C] (C = 1 or 3) and optionally X-Frame-Color: rgb|bgr
                               -> JSON result; with ?map=png the body is the anomaly map as a 16-bit
                               gray PNG (value = round(normalized * 65535)) and the JSON result travels
                               in the X-Edgeuad-Result header
    GET  /<name>/v1/health     -> {"status": "ok", ...}
    GET  /<name>/v1/info       -> bundle manifest summary, digest, versions, batching settings

Errors are JSON `{"error": {"status": int, "type": str, "message": str}}` with a 4xx status for
the caller's mistakes (never retried) and 5xx for the server's (idempotent: safe to retry).
No third-party imports: the client side of a plant (no torch, maybe no ray) reads this file.
"""
from __future__ import annotations

import json
import re
from typing import Any

API = "/v1"
SCORE_PATH = "/v1/score"
HEALTH_PATH = "/v1/health"
INFO_PATH = "/v1/info"

JPEG_TYPE = "image/jpeg"
PNG_TYPE = "image/png"
RAW_TYPE = "application/octet-stream"
JSON_TYPE = "application/json"
CONTENT_TYPES = (JPEG_TYPE, PNG_TYPE, RAW_TYPE)

SHAPE_HEADER = "X-Frame-Shape"          # raw bodies: "H,W" or "H,W,C"
COLOR_HEADER = "X-Frame-Color"          # raw bodies: "rgb" (default) or "bgr"
REQUEST_ID_HEADER = "X-Request-Id"      # echoed in the result: lets a client match answers to requests
RESULT_HEADER = "X-Edgeuad-Result"      # the JSON result when the body is the map (?map=png)

MAP_QUERY = "map"
MAP_FORMATS = ("png",)
MAP_PNG_SCALE = 65535                   # ?map=png: uint16 value = round(normalized * 65535)

# A bundle name is a URL path segment and a Ray application name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RequestError(ValueError):
    """A request the server refuses: carries the HTTP status (4xx) and a short error type."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or {}    # e.g. Allow for a 405

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.status, self.kind, self.message)


def error_body(status: int, kind: str, message: str) -> dict[str, Any]:
    return {"error": {"status": int(status), "type": kind, "message": message}}


def media_type(content_type: str | None) -> str:
    """'image/png; charset=x' -> 'image/png' (lower case); '' when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_shape(value: str | None) -> tuple[int, ...]:
    """X-Frame-Shape "H,W" or "H,W,C" -> a tuple of positive ints; RequestError(400) otherwise."""
    if value is None or not value.strip():
        raise RequestError(400, "missing_shape", f"raw ({RAW_TYPE}) bodies need the {SHAPE_HEADER} header: H,W or H,W,C")
    try:
        dims = tuple(int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        raise RequestError(400, "bad_shape", f"{SHAPE_HEADER} {value!r} is not H,W or H,W,C") from None
    if len(dims) not in (2, 3) or min(dims) <= 0:
        raise RequestError(400, "bad_shape", f"{SHAPE_HEADER} {value!r} is not H,W or H,W,C with positive sizes")
    if len(dims) == 3 and dims[2] not in (1, 3):
        raise RequestError(400, "bad_shape", f"{SHAPE_HEADER} {value!r}: C must be 1 (gray) or 3 (colour)")
    return dims


def format_shape(shape: tuple[int, ...]) -> str:
    return ",".join(str(int(v)) for v in shape)


def dumps(obj: Any) -> str:
    """Compact JSON (one line: fits in a header and a JSONL file)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)
