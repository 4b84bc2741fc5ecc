"""Visualisation: shapes/dtypes, overlay locality, PNG round trip, histogram content."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeuad.data import read_image
from edgeuad.viz import (annotate, colorbar, colorize, grid, overlay, panel, score_histogram, verdict_lines,
                         with_colorbar, write_png)


def test_overlay_differs_where_map_is_high() -> None:
    img = np.full((40, 60, 3), 128, np.uint8)
    amap = np.zeros((10, 15), np.float32)  # smaller than the image: resized
    amap[2:5, 3:6] = 1.0
    out = overlay(img, amap, vmin=0, vmax=1, alpha=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    hot, cold = out[10:18, 14:22].astype(int), out[30:38, 45:55].astype(int)
    # high values -> red dominant; low values leave the image as it is (heat only where it matters)
    assert hot[..., 0].mean() > hot[..., 2].mean() + 40
    np.testing.assert_array_equal(cold, img[30:38, 45:55])
    # the old uniform blend tints low values blue (JET)
    flat = overlay(img, amap, vmin=0, vmax=1, alpha=0.5, alpha_by_value=False)[30:38, 45:55].astype(int)
    assert flat[..., 2].mean() > flat[..., 0].mean() + 40
    # alpha 0 leaves the image untouched
    np.testing.assert_array_equal(overlay(img, amap, alpha=0.0), img)


def test_heat_opacity_grows_with_the_value() -> None:
    from edgeuad.viz import HEAT_FROM, HEAT_FULL

    img = np.full((1, 5, 3), 128, np.uint8)
    vals = np.array([[0.0, HEAT_FROM, (HEAT_FROM + HEAT_FULL) / 2, HEAT_FULL, 1.0]], np.float32)
    out = overlay(img, vals, vmin=0, vmax=1, alpha=0.8).astype(int)
    change = np.abs(out - 128).sum(axis=2)[0]
    assert change[0] == 0 and change[1] == 0            # below the ramp: untouched
    assert 0 < change[2] < change[3]                    # half way: partly blended
    heat = colorize(vals, 0, 1).astype(float)[0]
    expect = np.rint(128 * 0.2 + heat[3:] * 0.8)        # full alpha from HEAT_FULL up
    np.testing.assert_allclose(out[0, 3:], expect, atol=1)


def test_overlay_contours_and_constant_map() -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    flat = np.zeros((32, 32))
    plain = overlay(img, flat, alpha=0.5)  # constant map: no division by zero, all 'low'
    with_mask = overlay(img, flat, alpha=0.5, mask=mask, contour_color=(0, 255, 0))
    assert np.array_equal(plain, overlay(img, flat + 3.0, alpha=0.5))
    changed = np.any(with_mask != plain, axis=2)
    assert changed[8, 8:24].any() and not changed[16, 16] and not changed[0, 0]
    heat = overlay(img, mask.astype(float))
    thr = overlay(img, mask.astype(float), threshold=0.5, contour_color=(0, 255, 0))
    greener = thr[..., 1].astype(int) - heat[..., 1] > 100
    assert greener[8, 8:24].all() and not greener[16, 16]  # outline only, interior untouched
    with pytest.raises(ValueError, match="NaN"):
        overlay(img, np.full((32, 32), np.nan))
    with pytest.raises(ValueError, match="uint8"):
        overlay(img.astype(np.float32), flat)


def test_colorize_range() -> None:
    c = colorize(np.array([[0.0, 1.0]]), vmin=0, vmax=1)
    assert c.shape == (1, 2, 3) and c[0, 0, 2] > c[0, 0, 0] and c[0, 1, 0] > c[0, 1, 2]
    with pytest.raises(ValueError, match="vmax"):
        colorize(np.zeros((2, 2)), vmin=1, vmax=0)


def test_annotate_adds_bar_above() -> None:
    img = np.full((50, 80, 3), 200, np.uint8)
    out = annotate(img, ["score 0.73", "NG"], ok=False)
    bar_h = out.shape[0] - 50
    assert out.shape[1] == 80 and bar_h > 10 and out.dtype == np.uint8
    np.testing.assert_array_equal(out[bar_h:], img)  # image itself not covered
    bar = out[:bar_h]
    assert (bar == 255).all(axis=2).any(), "text drawn in white"
    assert tuple(bar[0, -1]) == (200, 40, 40)  # red NG bar
    assert tuple(annotate(img, ["ok"], ok=True)[0, -1]) == (40, 150, 60)
    # long text still fits (shrinks), no crash
    assert annotate(img, ["x" * 200]).shape[1] == 80


def test_grid_tiles_and_letterboxes() -> None:
    a = np.full((10, 10, 3), 255, np.uint8)
    b = np.full((20, 10), 100, np.uint8)  # gray, taller
    g = grid([a, b, a], cols=2, cell=(16, 16), pad=2)
    assert g.shape == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2, 3) and g.dtype == np.uint8
    assert (g[2:18, 2:18] == 255).all()  # first cell filled by the white image
    cell_b = g[2:18, 20:36]
    assert (cell_b[:, 8] == 100).all() and (cell_b[:, 0] != 100).all()  # tall image letterboxed
    with pytest.raises(ValueError, match="no images"):
        grid([], cols=2)


def test_write_png_round_trip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (12, 17, 3), dtype=np.uint8)
    p = write_png(tmp_path / "deep" / "dir" / "x.png", rgb)
    np.testing.assert_array_equal(read_image(p), rgb)
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    np.testing.assert_array_equal(read_image(write_png(tmp_path / "g.png", gray))[..., 0], gray)
    with pytest.raises(ValueError, match=".png"):
        write_png(tmp_path / "x.jpg", rgb)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        write_png(tmp_path / "file" / "sub" / "y.png", rgb)  # parent is a file


def test_score_histogram() -> None:
    rng = np.random.default_rng(0)
    h = score_histogram(rng.normal(0, 1, 200), rng.normal(4, 1, 50), threshold=2.0, size=(240, 360))
    assert h.shape == (240, 360, 3) and h.dtype == np.uint8
    px = h.reshape(-1, 3).astype(int)
    blue = ((px[:, 2] > px[:, 0] + 60) & (px[:, 2] > 150)).sum()
    red = ((px[:, 0] > px[:, 2] + 60) & (px[:, 1] < 150)).sum()
    assert blue > 500 and red > 200
    # threshold line is drawn (yellow) somewhere in the middle
    yellow = (px[:, 0] > 200) & (px[:, 1] > 150) & (px[:, 2] < 60)
    assert yellow.sum() > 100
    assert score_histogram([0.1, 0.2], [], size=(200, 300)).shape == (200, 300, 3)
    with pytest.raises(ValueError, match="no scores"):
        score_histogram([], [])
    with pytest.raises(ValueError, match="NaN"):
        score_histogram([np.nan], [1.0])


def test_colorbar_scale_and_threshold_tick() -> None:
    bar = colorbar(200, 0.0, 1.0, threshold=0.5, title="norm")
    assert bar.shape == (200, 64, 3) and bar.dtype == np.uint8
    col = bar[:, 10].astype(int)  # inside the gradient strip
    top, bottom = col[25], col[185]
    assert top[0] > top[2] + 80 and bottom[2] > bottom[0] + 80  # vmax red at the top, vmin blue at the bottom
    # the threshold tick: a white line across the strip at the middle of the scale
    rows = [y for y in range(200) if (bar[y, 4:22] > 225).all()]
    assert any(abs(y - (18 + 0.5 * (192 - 18))) <= 2 for y in rows)
    img = np.zeros((120, 80, 3), np.uint8)
    wc = with_colorbar(img, threshold=0.5)
    assert wc.shape == (120, 144, 3) and (wc[:, :80] == 0).all()
    with pytest.raises(ValueError, match="vmax > vmin"):
        colorbar(100, 1.0, 1.0)


def test_panel_outlines_ground_truth_and_labels_severity() -> None:
    img = np.full((64, 64, 3), 100, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    lines = verdict_lines("crack/007.png", 12.3456, 3.21, True)
    assert lines == ["crack/007.png", "score 12.35  severity 3.21  NG"]
    p = panel(img, np.zeros((64, 64), np.float32), lines, ok=False, mask=mask, longest=256)
    bar_h = p.shape[0] - 256
    assert p.shape[1] == 256 and bar_h > 20
    body = p[bar_h:]
    white = (body > 230).all(axis=2)
    assert white[64, 64:192].any() and not white[128, 128] and not white[10, 10]  # outline, not fill
    assert (body[10, 10] == 100).all()  # a zero map leaves the image as it is
