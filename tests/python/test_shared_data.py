"""The readers on the real datasets beside the project (skipped with a reason when they are absent)."""
from __future__ import annotations

import numpy as np

from edgeuad import data

from conftest import shared_dataset


def test_bottle_layout_image_labels_only() -> None:
    root = shared_dataset("bottle")
    train = data.list_mvtec(root, "train")
    test = data.list_mvtec(root, "test")
    assert len(train) == 209 and all(s.label == 0 for s in train)
    assert {s.defect for s in test} == {"good", "broken_large", "broken_small", "contamination"}
    assert sum(s.label for s in test) == 63
    assert all(s.mask_path is None for s in test)  # bottle here ships no pixel masks
    img = data.read_image(test[0].path)
    assert img.shape == (384, 384, 3) and img.dtype == np.uint8


def test_magnetic_tile_masks_and_variable_sizes() -> None:
    root = shared_dataset("magnetic_tile")
    test = data.list_mvtec(root, "test")
    bad = [s for s in test if s.label == 1]
    assert len(bad) == 115 + 85 + 57 + 32 + 103
    assert all(s.mask_path is not None for s in bad)
    sizes = set()
    for s in bad[::40]:
        img = data.read_image(s.path)
        m = data.read_mask(s.mask_path)
        assert m.shape == img.shape[:2] and m.any(), s.path
        sizes.add(img.shape[:2])
    assert len(sizes) > 1  # variable image sizes really occur
