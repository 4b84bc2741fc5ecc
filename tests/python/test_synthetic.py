"""Synthetic dataset: layout, determinism, defect size/visibility, argument checks."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeuad.data import list_mvtec, load_mask, read_image
from edgeuad.metrics import auroc
from edgeuad.synthetic import add_defect, defect_types, make_normal_image, make_synthetic_dataset


def _arrays(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): read_image(p) for p in sorted(root.rglob("*.png"))}


def test_layout_counts_and_masks(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "ds", n_train=5, n_test_good=3, n_test_defect=2, size=64, seed=1)
    assert defect_types() == ["scratch", "blob", "cutout"]
    assert (root / "README.txt").read_text().startswith("edgeuad synthetic")
    train = list_mvtec(root, "train")
    test = list_mvtec(root, "test")
    assert len(train) == 5 and all(s.label == 0 for s in train)
    assert sorted({s.defect for s in test}) == ["blob", "cutout", "good", "scratch"]
    assert sum(s.label for s in test) == 6 and len(test) == 9
    for s in test:
        assert read_image(s.path).shape == (64, 64, 3)
        if s.label:
            assert s.mask_path is not None and s.mask_path.name == f"{s.path.stem}_mask.png"
            m = load_mask(s, (64, 64))
            # small but present: 0.3 % .. 5 % of the image
            assert 0.003 <= m.mean() <= 0.05, (s.path, m.mean())


@pytest.mark.parametrize("kind", ["texture", "object"])
def test_deterministic_for_a_seed(tmp_path: Path, kind: str) -> None:
    kw = dict(kind=kind, n_train=3, n_test_good=2, n_test_defect=2, size=48)
    a = _arrays(make_synthetic_dataset(tmp_path / "a", seed=7, **kw))
    b = _arrays(make_synthetic_dataset(tmp_path / "b", seed=7, **kw))
    c = _arrays(make_synthetic_dataset(tmp_path / "c", seed=8, **kw))
    assert a.keys() == b.keys() == c.keys() and len(a) == 3 + 2 + 3 * 2 * 2
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train/good/000.png"], c["train/good/000.png"])
    # normal images vary within the family (not one image copied)
    assert not np.array_equal(a["train/good/000.png"], a["train/good/001.png"])


@pytest.mark.parametrize("kind", ["texture", "object"])
@pytest.mark.parametrize("defect", ["scratch", "blob", "cutout"])
def test_defect_visible_and_local(kind: str, defect: str) -> None:
    for i in range(4):
        rng = np.random.default_rng(i)
        img, region = make_normal_image(kind, 96, rng)
        out, mask = add_defect(img, defect, rng, region=region, kind=kind)
        assert out.shape == img.shape and out.dtype == np.uint8 and mask.dtype == bool
        diff = np.abs(out.astype(int) - img.astype(int)).max(axis=2)
        assert diff[mask].mean() > 10, "defect must be visible inside its mask"
        # outside a small band around the mask nothing changes (blob edges are soft: wider band)
        band = 15 if defect == "blob" else 5
        near = cv2.dilate(mask.astype(np.uint8), np.ones((band, band), np.uint8)).astype(bool)
        assert diff[~near].max() <= (30 if defect == "blob" else 0)


def test_defects_not_found_by_global_brightness(tmp_path: Path) -> None:
    # "not trivial": mean image brightness alone must not separate good from defective
    root = make_synthetic_dataset(tmp_path / "ds", n_train=1, n_test_good=12, n_test_defect=4, size=64)
    test = list_mvtec(root, "test")
    means = [read_image(s.path).mean() for s in test]
    assert auroc([s.label for s in test], means) < 0.85


def test_overwrite_and_bad_arguments(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "ds", n_train=4, n_test_good=1, n_test_defect=1, size=32)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_dataset(root, n_train=2, size=32)
    (root / "keep.txt").write_text("user file")
    make_synthetic_dataset(root, n_train=2, n_test_good=1, n_test_defect=1, size=32, overwrite=True)
    assert len(list((root / "train" / "good").iterdir())) == 2  # stale images removed
    assert (root / "keep.txt").exists()  # only the dataset's own entries are removed
    with pytest.raises(ValueError, match="kind"):
        make_synthetic_dataset(tmp_path / "x", kind="metal")
    with pytest.raises(ValueError, match="size"):
        make_synthetic_dataset(tmp_path / "x", size=16)
    with pytest.raises(ValueError, match="n_train"):
        make_synthetic_dataset(tmp_path / "x", n_train=0)
    with pytest.raises(ValueError, match="unknown defect"):
        add_defect(np.zeros((32, 32, 3), np.uint8), "crack", np.random.default_rng(0))
