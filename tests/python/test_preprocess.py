from __future__ import annotations

import numpy as np
import pytest

from edgeuad.preprocess import PreprocessConfig, preprocess, validate_frame


def test_preprocess_shapes_colour_and_values() -> None:
    cfg = PreprocessConfig(size=(32, 48))
    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    x = preprocess([rgb], cfg)
    assert x.shape == (1, 3, 32, 48) and x.dtype == np.float32
    assert x[0, 0].mean() == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)
    xb = preprocess([rgb[..., ::-1].copy()], cfg, color="bgr")
    np.testing.assert_allclose(x, xb)
    gray = np.full((40, 40), 128, np.uint8)
    assert preprocess([gray], cfg).shape == (1, 3, 32, 48)


@pytest.mark.parametrize("shape", [(480, 640, 3), (256, 256, 3), (100, 90), (300, 200, 1), (20, 600, 3)])
@pytest.mark.parametrize("color", ["rgb", "bgr"])
def test_preprocess_equals_plain_formula(shape: tuple[int, ...], color: str) -> None:
    """The table-driven normalisation and resize-then-reorder are exactly the textbook computation:
    reorder channels, resize (INTER_AREA shrinking, INTER_LINEAR growing), (x/255 - mean) / std."""
    import cv2
    rng = np.random.default_rng(sum(shape))
    cfg = PreprocessConfig(size=(64, 96), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2)]
    ref = []
    for f in frames:
        f = np.repeat(f.reshape(f.shape[0], f.shape[1], -1), 3 // f.reshape(f.shape[0], f.shape[1], -1).shape[2], 2)
        f = np.ascontiguousarray(f[:, :, ::-1] if color == "bgr" else f)
        shrink = f.shape[0] > 64 or f.shape[1] > 96
        r = cv2.resize(f, (96, 64), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR).astype(np.float32)
        mean = np.asarray(cfg.mean, np.float32) * np.float32(255)
        inv_std = np.float32(1) / (np.asarray(cfg.std, np.float32) * np.float32(255))
        ref.append(((r - mean) * inv_std).transpose(2, 0, 1))
    np.testing.assert_array_equal(preprocess(frames, cfg, color=color), np.stack(ref))


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((10, 10, 4), np.uint8), "4 channels"),
    (np.zeros((10, 10, 2), np.uint8), "HxWx3"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((4, 4, 3), np.uint8), "too small"),
    ([[1, 2]], "numpy array"),
])
def test_bad_frames(bad: object, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        validate_frame(bad)


def test_config_roundtrip_and_validation() -> None:
    cfg = PreprocessConfig(size=(100, 120))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        PreprocessConfig.from_dict({"size": [0, 3], "mean": [0, 0, 0], "std": [1, 1, 1]})
