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
