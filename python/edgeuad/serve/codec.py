"""Request bodies -> frames and anomaly maps -> PNG, for the server and the client.

Everything a caller can get wrong is caught here, before a frame reaches a batch, and turned into
a `RequestError` with a 4xx status: an unsupported content type (415), a body or image that is too
large (413: the size is read from the PNG/JPEG header before decoding, so a small file that would
decode to gigapixels is refused without allocating them), bytes that do not decode, a raw body
whose length does not match its shape header, an image too small for the model (400).
numpy + OpenCV only (runtime side).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from ..data import ImageReadError, decode_image
from ..preprocess import validate_frame
from ..viz import encode_png
from .protocol import (COLOR_HEADER, CONTENT_TYPES, JPEG_TYPE, MAP_PNG_SCALE, PNG_TYPE, RAW_TYPE,
                       SHAPE_HEADER, RequestError, media_type, parse_shape)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class Limits:
    """What one request may carry.  max_pixels bounds the decoded frame (H*W), whatever its encoding."""

    max_body_bytes: int = 32 << 20
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_pixels < 64:
            raise ValueError("Limits: max_body_bytes must be >= 1 and max_pixels >= 64")


def check_body_size(n: int, limits: Limits) -> None:
    if n > limits.max_body_bytes:
        raise RequestError(413, "body_too_large", f"request body of {n} bytes exceeds the limit of "
                                                  f"{limits.max_body_bytes} bytes")


def image_size(buf: bytes) -> Optional[tuple[int, int]]:
    """(height, width) from a PNG or JPEG header without decoding; None if the header is not readable."""
    if buf.startswith(PNG_MAGIC) and len(buf) >= 24 and buf[12:16] == b"IHDR":
        w, h = struct.unpack(">II", buf[16:24])
        return h, w
    if buf.startswith(JPEG_MAGIC):
        i = 2
        n = len(buf)
        while i + 4 <= n:
            if buf[i] != 0xFF:
                return None
            marker = buf[i + 1]
            if marker == 0xFF:          # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:   # no length field
                i += 2
                continue
            seg_len = struct.unpack(">H", buf[i + 2:i + 4])[0]
            if marker in _SOF:
                if i + 9 > n:
                    return None
                h, w = struct.unpack(">HH", buf[i + 5:i + 9])
                return h, w
            if seg_len < 2:
                return None
            i += 2 + seg_len
    return None


def _check_pixels(h: int, w: int, limits: Limits) -> None:
    if h * w > limits.max_pixels:
        raise RequestError(413, "image_too_large", f"a {w}x{h} image has {h * w} pixels, more than the limit "
                                                   f"of {limits.max_pixels}")


def decode_frame(body: bytes, content_type: Optional[str], headers: Mapping[str, str],
                 limits: Limits = Limits()) -> np.ndarray:
    """One request body -> an RGB uint8 HxWx3 frame the Detector accepts, or RequestError (4xx).

    `headers` needs only the raw-frame headers (any mapping with case-insensitive .get works,
    e.g. Starlette's); lookups use the canonical names and their lower-case forms."""
    check_body_size(len(body), limits)
    kind = media_type(content_type)
    if kind not in CONTENT_TYPES:
        raise RequestError(415, "unsupported_content_type",
                           f"Content-Type {content_type!r} is not one of {', '.join(CONTENT_TYPES)}")
    if not body:
        raise RequestError(400, "empty_body", "the request body is empty")
    if kind == RAW_TYPE:
        frame = _raw_frame(body, headers, limits)
    else:
        magic = PNG_MAGIC if kind == PNG_TYPE else JPEG_MAGIC
        if not body.startswith(magic):
            raise RequestError(400, "undecodable", f"the body is not a {kind[6:].upper()} file (wrong signature)")
        hw = image_size(body)
        if hw is not None:
            _check_pixels(hw[0], hw[1], limits)
        try:
            frame = decode_image(body, name=f"{kind} body")
        except ImageReadError as e:
            raise RequestError(400, "undecodable", str(e)) from None
        _check_pixels(frame.shape[0], frame.shape[1], limits)
    try:
        return validate_frame(frame, name="frame")
    except ValueError as e:
        raise RequestError(400, "bad_frame", str(e)) from None


def _header(headers: Mapping[str, str], name: str) -> Optional[str]:
    v = headers.get(name)
    return v if v is not None else headers.get(name.lower())


def _raw_frame(body: bytes, headers: Mapping[str, str], limits: Limits) -> np.ndarray:
    shape = parse_shape(_header(headers, SHAPE_HEADER))
    h, w = shape[0], shape[1]
    c = shape[2] if len(shape) == 3 else 1
    _check_pixels(h, w, limits)
    if len(body) != h * w * c:
        raise RequestError(400, "shape_mismatch", f"{SHAPE_HEADER} {h},{w},{c} needs {h * w * c} bytes, "
                                                  f"the body has {len(body)}")
    color = (_header(headers, COLOR_HEADER) or "rgb").strip().lower()
    if color not in ("rgb", "bgr"):
        raise RequestError(400, "bad_color", f"{COLOR_HEADER} must be rgb or bgr, got {color!r}")
    frame = np.frombuffer(body, dtype=np.uint8).reshape(shape)
    if color == "bgr" and c == 3:
        frame = frame[:, :, ::-1]
    return np.ascontiguousarray(frame)


def encode_raw(frame: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A uint8 HxW[xC] frame -> (body, headers) of a raw request (the client side of `_raw_frame`)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3):
        raise ValueError("encode_raw: expected a uint8 HxW or HxWxC numpy array")
    return np.ascontiguousarray(frame).tobytes(), {SHAPE_HEADER: ",".join(str(v) for v in frame.shape)}


def map_to_png(normalized_map: np.ndarray) -> bytes:
    """A normalised anomaly map (0..1, 0.5 = threshold) -> 16-bit gray PNG bytes (lossless to 1/65535)."""
    q = np.rint(np.clip(normalized_map, 0.0, 1.0) * MAP_PNG_SCALE).astype(np.uint16)
    return encode_png(q, name="anomaly map").tobytes()


def png_to_map(data: bytes) -> np.ndarray:
    """The inverse of `map_to_png`: float32 HxW in 0..1."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint16 or img.ndim != 2:
        raise ValueError("not an edgeuad anomaly-map PNG (16-bit gray)")
    return img.astype(np.float32) / np.float32(MAP_PNG_SCALE)
