"""Image preprocessing shared by training and the runtime.

One function turns frames into network input so that the training side and the
Detector can never disagree (anomalib users hit train/serve skew when the two
paths resize differently).  numpy + OpenCV only: the runtime imports this.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What Google's edge models (EfficientNet-Lite) were trained with: (x - 127) / 128, "inception-style"
INCEPTION_MEAN = (127 / 255,) * 3
INCEPTION_STD = (128 / 255,) * 3
INPUT_NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "inception": (INCEPTION_MEAN, INCEPTION_STD)}


@dataclass(frozen=True)
class PreprocessConfig:
    """How a frame becomes a network input.

    size: (height, width) of the network input.  Frames of any size and aspect
    ratio are resized to it (no crop: defects at the border must stay visible).
    mean/std: per-channel RGB normalisation applied after scaling to [0, 1].
    """

    size: tuple[int, int] = (256, 256)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "area_or_linear"  # INTER_AREA when shrinking, else INTER_LINEAR

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        size = tuple(int(v) for v in d["size"])
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"preprocess.size must be two positive ints, got {d['size']!r}")
        mean = tuple(float(v) for v in d["mean"])
        std = tuple(float(v) for v in d["std"])
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError("preprocess.mean/std must be three numbers (std > 0)")
        return cls(size=size, mean=mean, std=std,  # type: ignore[arg-type]
                   interpolation=str(d.get("interpolation", "area_or_linear")))


def renormalise(x: np.ndarray, src: PreprocessConfig, dst: PreprocessConfig) -> np.ndarray:
    """Network inputs (N x 3 x H x W) that `preprocess` made with src -> exactly what it makes with dst's
    mean/std from the same frames (bit-identical), without a second decode and resize: each value is
    one of src's 256 table entries per channel, so its uint8 level is recovered and dst's table applied."""
    if src.size != dst.size or src.interpolation != dst.interpolation:
        raise ValueError(f"renormalise changes mean/std only, not size/interpolation ({src} -> {dst})")
    mean = np.asarray(src.mean, np.float32)[:, None, None] * np.float32(255.0)
    std = np.asarray(src.std, np.float32)[:, None, None] * np.float32(255.0)
    levels = np.clip(np.rint(x * std + mean), 0, 255).astype(np.uint8)
    luts = _normalise_luts(dst)
    out = np.empty(x.shape, dtype=np.float32)
    for c in range(3):
        np.take(luts[c], levels[:, c], out=out[:, c])
    return out


def validate_frame(frame: Any, name: str = "frame") -> np.ndarray:
    """Check one image and return it as an HxWx3 uint8 array.

    Accepts HxW (gray) and HxWx1 too, expanded to 3 channels.  Raises ValueError
    naming the problem for anything else, so a bad frame never reaches the network.
    """
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(frame).__name__}")
    if frame.size == 0:
        raise ValueError(f"{name}: empty array with shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8 (0-255 image), got {frame.dtype}; "
                         "convert with (x * 255).clip(0, 255).astype(np.uint8) if it is float in [0, 1]")
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    elif frame.ndim == 3 and frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        raise ValueError(f"{name}: 4 channels (BGRA/RGBA) given; drop alpha first, e.g. frame[..., :3]")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"{name}: expected HxWx3 image, got shape {frame.shape}")
    if frame.shape[0] < 8 or frame.shape[1] < 8:
        raise ValueError(f"{name}: image {frame.shape[1]}x{frame.shape[0]} is too small (min 8x8)")
    return frame


def resize(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    if img.shape[0] == h and img.shape[1] == w:
        return img
    shrink = img.shape[0] > h or img.shape[1] > w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def preprocess(frames: Sequence[np.ndarray] | np.ndarray, cfg: PreprocessConfig,
               color: str = "rgb") -> np.ndarray:
    """uint8 HxWx3 frames (RGB, or BGR when color='bgr') -> float32 Nx3xHxW network input."""
    if color not in ("rgb", "bgr"):
        raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    if len(frames) == 0:
        raise ValueError("no frames given")
    h, w = cfg.size
    out = np.empty((len(frames), 3, h, w), dtype=np.float32)
    luts = _normalise_luts(cfg)
    # Channel order is applied after the resize (cv2.resize treats channels independently, so the
    # result is identical) and normalisation is a per-channel 256-entry table: one pass over the
    # small image instead of flip-copy + float copy + subtract + multiply + transpose of the frame.
    order = (2, 1, 0) if color == "bgr" else (0, 1, 2)
    for i, f in enumerate(frames):
        f = validate_frame(f, name=f"frame[{i}]")
        r = resize(np.ascontiguousarray(f), (h, w))
        for c, src in enumerate(order):
            np.take(luts[c], r[:, :, src], out=out[i, c])
    return out


def _normalise_luts(cfg: PreprocessConfig) -> np.ndarray:
    """(3, 256) float32: (v - 255*mean_c) / (255*std_c) for every uint8 value v, in float32 exactly as
    the element-wise formula computes it (the table is bit-identical to normalising the image)."""
    mean = np.asarray(cfg.mean, np.float32).reshape(3, 1) * np.float32(255.0)
    inv_std = np.float32(1.0) / (np.asarray(cfg.std, np.float32).reshape(3, 1) * np.float32(255.0))
    return ((np.arange(256, dtype=np.float32)[None, :] - mean) * inv_std).astype(np.float32)
