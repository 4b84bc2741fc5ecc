"""Synthetic-defect validation set and label-free selection metrics."""
from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from edgeuad.selection import evaluate_selection, make_validation_set, validation_metrics
from edgeuad.synthetic import make_normal_image


def _normals(n: int = 6, size: int = 64, kind: str = "texture") -> list[np.ndarray]:
    return [make_normal_image(kind, size, np.random.default_rng(100 + i))[0] for i in range(n)]


def test_balanced_labels_masks_and_names() -> None:
    vs = make_validation_set(_normals(6), seed=3, cracks=False)
    assert len(vs) == 12 and vs.labels.tolist() == [0, 1] * 6
    assert vs.defects[0::2] == ["good"] * 6
    assert vs.defects[1::2] == ["scratch", "blob", "cutout"] * 2      # types spread evenly
    assert vs.names[:2] == ["000_good", "000_scratch"]
    for img, mask, y in zip(vs.images, vs.masks, vs.labels):
        assert img.dtype == np.uint8 and img.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert mask.any() == bool(y)


def test_defects_change_pixels_inside_the_mask_only() -> None:
    normals = _normals(9)
    vs = make_validation_set(normals, seed=0, strength=(1.0, 1.0), cracks=False)
    for i, src in enumerate(normals):
        good, bad, mask = vs.images[2 * i], vs.images[2 * i + 1], vs.masks[2 * i + 1]
        assert np.array_equal(good, src)                     # the normal copy is untouched
        diff = np.abs(bad.astype(int) - src.astype(int)).max(axis=2)
        assert diff[~mask].max() == 0                        # nothing changes outside the mask
        assert diff[mask].mean() > 10                        # and the defect is visible inside it
        assert 0.002 < mask.mean() < 0.1


def test_strength_blends_the_same_defect() -> None:
    normals = _normals(6)
    full = make_validation_set(normals, seed=4, strength=(1.0, 1.0), cracks=False)
    half = make_validation_set(normals, seed=4, strength=(0.5, 0.5), cracks=False)
    for i, src in enumerate(normals):
        mask = full.masks[2 * i + 1]
        assert np.array_equal(mask, half.masks[2 * i + 1])          # same place and shape
        d_full = full.images[2 * i + 1].astype(float) - src
        d_half = half.images[2 * i + 1].astype(float) - src
        assert np.abs(d_half - 0.5 * d_full).max() <= 1.0           # half the change (rounding)
        assert d_half[~mask].max() == 0 and np.abs(d_half[mask]).mean() > 3
    vs = make_validation_set(normals, seed=4, cracks=False)           # default: a range of strengths
    st = np.array(vs.strengths)
    assert np.all(st[0::2] == 0) and np.all((st[1::2] >= 0.2) & (st[1::2] <= 0.6)) and np.unique(st[1::2]).size == 6
    with pytest.raises(ValueError, match="strength"):
        make_validation_set(normals, strength=(0.0, 0.5))


def test_deterministic_per_seed_and_independent_of_count() -> None:
    normals = _normals(4)
    a = make_validation_set(normals, seed=5)
    b = make_validation_set(normals, seed=5)
    c = make_validation_set(normals, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    assert not all(np.array_equal(x, y) for x, y in zip(a.masks[1::3], c.masks[1::3]))
    assert not all(np.array_equal(x, y) for x, y in zip(a.masks[2::3], c.masks[2::3]))
    head = make_validation_set(normals[:2], seed=5)          # image i's defects depend on (seed, i) only
    assert all(np.array_equal(x, y) for x, y in zip(head.images, a.images[:6]))


def test_gray_images_get_gray_defects_and_resize() -> None:
    rng = np.random.default_rng(0)
    gray = [rng.integers(20, 90, size=(50, 70), dtype=np.uint8) for _ in range(3)]  # dark, non-square
    with pytest.raises(ValueError, match="not square"):
        make_validation_set(gray)
    vs = make_validation_set(gray, size=48, strength=(1.0, 1.0), cracks=False)
    for img, mask in zip(vs.images[1::2], vs.masks[1::2]):
        assert img.shape == (48, 48, 3)
        assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])
    # image 2's cutout (a hole with this seed) shows a bright backing on dark material, not a dark one
    assert vs.defects[5] == "cutout"
    hole = vs.images[5]
    assert hole[vs.masks[5]].mean() > vs.images[4][vs.masks[5]].mean() + 40


def test_oracle_and_constant_scores() -> None:
    vs = make_validation_set(_normals(6), seed=1)

    def oracle(images):  # type: ignore[no-untyped-def]
        idx = [next(j for j, v in enumerate(vs.images) if v is im) for im in images]
        return vs.labels[idx].astype(float), np.stack([vs.masks[j].astype(np.float32) for j in idx])

    m = evaluate_selection(oracle, vs, batch=5)
    assert m["i_auroc"] == 1.0 and m["p_auroc"] == 1.0
    assert m["i_auroc_scratch"] == m["i_auroc_blob"] == m["i_auroc_cutout"] == m["i_auroc_crack"] == 1.0
    assert m["i_auroc_blended"] == 1.0
    const = evaluate_selection(lambda ims: np.zeros(len(ims)), vs)
    assert const["i_auroc"] == 0.5 and "p_auroc" not in const
    inverted = validation_metrics(vs, 1.0 - vs.labels)
    assert inverted["i_auroc"] == 0.0


def test_maps_are_resized_to_the_mask_size() -> None:
    vs = make_validation_set(_normals(3), seed=2)
    small = [m.astype(np.float32)[::2, ::2] for m in vs.masks]  # 32 x 32 oracle maps
    m = validation_metrics(vs, vs.labels, small)
    assert 0.9 < m["p_auroc"] < 1.0  # a half-resolution oracle map is good but blurred at the edges


def test_cracks_are_thin_dark_lines_after_each_blended_copy() -> None:
    normals = _normals(6, size=128)
    vs = make_validation_set(normals, seed=2, strength=(1.0, 1.0))
    plain = make_validation_set(normals, seed=2, strength=(1.0, 1.0), cracks=False)
    assert len(vs) == 18 and vs.labels.tolist() == [0, 1, 1] * 6
    assert vs.defects[2::3] == ["crack"] * 6 and vs.names[:3] == ["000_good", "000_scratch", "000_crack"]
    # the blended family is the set without cracks, image for image
    assert all(np.array_equal(x, y) for x, y in zip(vs.images[1::3], plain.images[1::2]))
    assert all(np.array_equal(x, y) for x, y in zip(vs.masks[1::3], plain.masks[1::2]))
    kernel = np.ones((3, 3), np.uint8)
    for i, src in enumerate(normals):
        bad, mask = vs.images[3 * i + 2], vs.masks[3 * i + 2]
        assert 10 <= mask.sum() <= 200                         # a line, not a region (128 px)
        diff = bad.astype(int) - src.astype(int)
        near = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
        assert np.all(diff[~near] == 0)                        # only the line and its anti-aliased edge
        assert np.all(diff <= 0) and diff[mask].mean() < -15   # darker, visibly, at full strength
        # 1 px wide: no 2 x 2 block of the mask is full (a 2 px line would fill many)
        m = mask.astype(int)
        assert (m[:-1, :-1] + m[1:, :-1] + m[:-1, 1:] + m[1:, 1:]).max() <= 3


def test_black_material_gets_a_light_crack() -> None:
    vs = make_validation_set([np.zeros((64, 64, 3), np.uint8)], seed=0, strength=(1.0, 1.0))
    bad, mask = vs.images[2], vs.masks[2]
    assert mask.any() and bad[mask].min() > 40


def test_overall_auroc_is_the_mean_of_the_two_families() -> None:
    vs = make_validation_set(_normals(8), seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.normal(size=len(vs)) + 0.7 * vs.labels * (np.asarray(vs.defects) == "crack")
        scores = np.round(scores, 1)  # ties count half in both
        m = validation_metrics(vs, scores)
        assert m["i_auroc"] == pytest.approx((m["i_auroc_blended"] + m["i_auroc_crack"]) / 2, abs=1e-12)
        assert m["i_auroc_blended"] != m["i_auroc_crack"]


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one"):
        make_validation_set([])
    with pytest.raises(ValueError, match="defects"):
        make_validation_set(_normals(1), defects=["crack"])
    with pytest.raises(ValueError, match="uint8"):
        make_validation_set([np.zeros((64, 64, 3), np.float32)])
    vs = make_validation_set(_normals(2))
    with pytest.raises(ValueError, match="scores"):
        evaluate_selection(lambda ims: np.zeros(len(ims) + 1), vs)
    with pytest.raises(ValueError, match="maps"):
        evaluate_selection(lambda ims: (np.zeros(len(ims)), np.zeros((1, 8, 8))), vs)


def test_selection_is_torch_free() -> None:
    import subprocess

    code = "import sys, edgeuad.selection; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_type_aurocs_on_a_split_without_generator_types() -> None:
    """A real test split may name a type "crack" too; with no generator type beside it there is no
    blended family, only per-type I-AUROCs."""
    from edgeuad.selection import type_aurocs

    defects = ["good", "crack", "good", "fray", "good", "crack"]
    labels = np.array([0, 1, 0, 1, 0, 1])
    scores = np.array([0.1, 0.9, 0.2, 0.15, 0.3, 0.25])
    out = type_aurocs(labels, scores, defects)
    assert out == {"i_auroc_crack": pytest.approx(5 / 6), "i_auroc_fray": pytest.approx(1 / 3)}
