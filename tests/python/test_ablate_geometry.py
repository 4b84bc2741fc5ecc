"""benchmarks/ablate_geometry.py: the letterbox arm keeps the aspect ratio, puts the image where its
map crop says, and pads with mirrored material (the squash arm is `preprocess.resize`)."""
from __future__ import annotations

import numpy as np
import pytest
from script_helpers import load_benchmark

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def geo():
    return load_benchmark("ablate_geometry")  # it imports its sibling ablate_patchcore at load time


def test_letterbox_region_keeps_aspect_and_centres(geo) -> None:
    assert geo.region((398, 105, 3), "letterbox", 256) == (0, 94, 256, 68)   # tall: width 105*256/398
    assert geo.region((231, 632, 3), "letterbox", 256) == (81, 0, 94, 256)   # wide: height 231*256/632
    assert geo.region((231, 632, 3), "squash", 320) == (0, 0, 320, 320)
    assert geo.region((300, 300, 3), "letterbox", 256) == (0, 0, 256, 256)


def test_letterbox_input_holds_the_resized_image_and_mirrors_it(geo) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (200, 80, 3), dtype=np.uint8)
    out = geo.to_input(img, "letterbox", 128)
    y, x, h, w = geo.region(img.shape, "letterbox", 128)
    assert out.shape == (128, 128, 3) and (y, x, h, w) == (0, 38, 128, 51)
    from edgeuad.preprocess import resize

    np.testing.assert_array_equal(out[:, x:x + w], resize(img, (h, w)))
    # BORDER_REFLECT_101: the column left of the image mirrors its second column
    np.testing.assert_array_equal(out[:, x - 1], out[:, x + 1])
    np.testing.assert_array_equal(geo.to_input(img, "squash", 128), resize(img, (128, 128)))
