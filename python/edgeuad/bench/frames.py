"""Frames of the benchmark: synthetic textured JPEGs or a folder's images, kept encoded so decode is timed."""
from __future__ import annotations

import logging
from typing import Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)


def synthetic_frames(n: int, size_hw: tuple[int, int], seed: int = 0, quality: int = 90) -> list[np.ndarray]:
    """n JPEG-encoded BGR frames with texture (flat frames would compress and decode unrealistically fast)."""
    rng = np.random.default_rng(seed)
    h, w = size_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        base = 110 + 40 * np.sin(xx / (17 + 3 * i)) * np.cos(yy / (23 + 2 * i))
        img = np.stack([base + 10 * c for c in range(3)], axis=2) + rng.normal(0, 12, (h, w, 3))
        ok, buf = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out.append(buf.reshape(-1))
    return out


def folder_frames(images: str, n_max: int) -> list[np.ndarray]:
    """Encoded bytes of up to n_max readable images (unreadable ones skipped with a warning)."""
    from ..data import list_folder

    out = []
    for p in list_folder(images):
        buf = np.fromfile(str(p), dtype=np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
        if img is None or min(img.shape[:2]) < 8:
            log.warning("bench: skipping unreadable image %s", p)
            continue
        out.append(buf)
        if len(out) >= n_max:
            break
    if not out:
        raise ValueError(f"no readable image in {images}")
    return out


def decode(bufs: Sequence[np.ndarray]) -> list[np.ndarray]:
    imgs = [cv2.imdecode(b, cv2.IMREAD_COLOR) for b in bufs]
    if any(i is None for i in imgs):
        raise RuntimeError("frame decode failed")
    return imgs


def batch_of(frames: Sequence[np.ndarray], it: int, bs: int) -> list[np.ndarray]:
    n = len(frames)
    return [frames[(it * bs + k) % n] for k in range(bs)]
