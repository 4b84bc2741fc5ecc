"""INT8 calibration images: the user's normal images, preprocessed exactly as the runtime does.

Shared by the TensorRT Q/DQ export (`edgeuad export --int8`, trt_export.py) and the onnxruntime CPU
int8 bundle (`edgeuad export --cpu-int8`, api.export).  Calibration never uses random data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import data as _data
from ..preprocess import PreprocessConfig, preprocess

LIMIT = 256  # images read at most: the ranges settle long before (minmax / percentile of activations)


def calibration_images(calib: str | Path, limit: int = LIMIT) -> list[Path]:
    """The image paths of `calib`: an MVTec-layout root (its train/good) or a folder of images."""
    root = Path(calib)
    paths = ([s.path for s in _data.list_mvtec(root, "train")] if (root / "train" / "good").is_dir()
             else _data.list_folder(calib))[:limit]
    if not paths:
        raise ValueError(f"no calibration images in {calib}: INT8 ranges must come from normal images")
    return paths


def calibration_batches(calib: str | Path, pre_cfg: PreprocessConfig, batch: int = 8,
                        limit: int = LIMIT) -> list[np.ndarray]:
    """Preprocessed float32 N x C x H x W batches of `calibration_images(calib)`."""
    res = _data.load_images(calibration_images(calib, limit), None)
    x = preprocess(res.images, pre_cfg)
    return [x[i:i + batch] for i in range(0, len(x), batch)]


__all__ = ["LIMIT", "calibration_batches", "calibration_images"]
