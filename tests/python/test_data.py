"""Readers: MVTec layout, folders, robust decoding, skip-and-count loading, holdout split."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeuad.data import (ImageReadError, list_folder, list_mvtec, load_images, load_mask, read_image,
                          read_mask, split_holdout)
from edgeuad.preprocess import PreprocessConfig


def _write(path: Path, arr: np.ndarray, ext: str | None = None) -> Path:
    """Write with OpenCV (arr is in OpenCV channel order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(ext or path.suffix, arr)
    assert ok
    buf.tofile(str(path))
    return path


def _rgb(h: int = 16, w: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- read_image
def test_read_image_colour_order_and_unicode_path(tmp_path: Path) -> None:
    rgb = _rgb()
    p = _write(tmp_path / "ünïcödé 画像" / "a.PNG", rgb[:, :, ::-1].copy(), ".png")  # stored as BGR
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (16, 20, 3)
    np.testing.assert_array_equal(out, rgb)


def test_read_image_gray_16bit_rgba(tmp_path: Path) -> None:
    gray = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    g = read_image(_write(tmp_path / "g.bmp", gray))
    assert g.shape == (16, 16, 3) and np.array_equal(g[:, :, 0], gray) and np.array_equal(g[:, :, 2], gray)

    g16 = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    r16 = read_image(_write(tmp_path / "g16.tif", g16))
    np.testing.assert_array_equal(r16[:, :, 1], np.arange(256, dtype=np.uint8).reshape(16, 16))

    bgra = np.zeros((12, 12, 4), np.uint8)
    bgra[..., 2] = 200  # red in OpenCV order
    bgra[..., 3] = 50  # alpha dropped, colour kept
    rgba = read_image(_write(tmp_path / "a.png", bgra))
    assert rgba.shape == (12, 12, 3) and (rgba[..., 0] == 200).all() and (rgba[..., 1:] == 0).all()


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"not an image at all", "decodable")])
def test_read_image_bad_files(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match=match):
        read_image(p)
    with pytest.raises(ValueError):  # ImageReadError is a ValueError
        read_image(tmp_path / "missing.png")


def test_read_image_truncated(tmp_path: Path) -> None:
    ok, buf = cv2.imencode(".png", _rgb(32, 32))
    p = tmp_path / "trunc.png"
    p.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(ImageReadError):
        read_image(p)


def test_read_mask_nonzero_and_nearest_resize(tmp_path: Path) -> None:
    m = np.zeros((8, 8), np.uint8)
    m[2:4, 2:4] = 1  # any nonzero counts, not only 255
    p = _write(tmp_path / "m.png", m)
    r = read_mask(p)
    assert r.dtype == bool and r.sum() == 4
    big = read_mask(p, (16, 24))
    assert big.shape == (16, 24) and big.dtype == bool
    assert set(np.unique(big)) == {False, True} and big.sum() == 4 * 2 * 3  # nearest: no blur


# --------------------------------------------------------------------------- MVTec listing
def _mvtec(root: Path) -> Path:
    for i in range(3):
        _write(root / "train" / "good" / f"{i:03d}.png", _rgb(seed=i))
    (root / "train" / "good" / "notes.txt").write_text("not an image")
    _write(root / "test" / "good" / "000.JPG", _rgb(seed=9), ".jpg")
    _write(root / "test" / "crack" / "000.png", _rgb(seed=10))
    _write(root / "test" / "crack" / "001.png", _rgb(seed=11))  # no mask
    m = np.zeros((16, 20), np.uint8)
    m[3:6, 4:9] = 255
    _write(root / "ground_truth" / "crack" / "000_mask.png", m)
    return root


def test_list_mvtec(tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "cat")
    train = list_mvtec(root, "train")
    assert [s.path.name for s in train] == ["000.png", "001.png", "002.png"]
    assert all(s.label == 0 and s.defect == "good" and s.mask_path is None for s in train)
    test = list_mvtec(root, "test")
    assert [(s.defect, s.label, s.path.name) for s in test] == [
        ("crack", 1, "000.png"), ("crack", 1, "001.png"), ("good", 0, "000.JPG")]
    assert test[0].mask_path == root / "ground_truth" / "crack" / "000_mask.png"
    assert test[1].mask_path is None
    assert load_mask(test[0], (16, 20)).sum() == 15
    assert load_mask(test[1], (16, 20)) is None  # anomalous without mask: no pixel label
    good = load_mask(test[2], (16, 20))
    assert good is not None and good.shape == (16, 20) and not good.any()


def test_list_mvtec_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_mvtec(tmp_path / "nope", "train")
    (tmp_path / "cat").mkdir()
    with pytest.raises(FileNotFoundError, match="train/good"):
        list_mvtec(tmp_path / "cat", "train")
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        list_mvtec(tmp_path / "cat", "train")
    with pytest.raises(FileNotFoundError, match="expected an MVTec"):
        list_mvtec(tmp_path / "cat", "test")
    with pytest.raises(ValueError, match="split"):
        list_mvtec(tmp_path / "cat", "val")


# --------------------------------------------------------------------------- folders
def test_list_folder(tmp_path: Path) -> None:
    _write(tmp_path / "b.jpeg", _rgb(), ".jpg")
    _write(tmp_path / "a.TIFF", _rgb(), ".tiff")
    _write(tmp_path / "sub" / "c.png", _rgb())
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    assert [p.name for p in list_folder(tmp_path)] == ["a.TIFF", "b.jpeg"]
    assert [p.name for p in list_folder(tmp_path, recursive=True)] == ["a.TIFF", "b.jpeg", "c.png"]
    assert [p.name for p in list_folder(str(tmp_path / "*.jp*g"))] == ["b.jpeg"]
    assert [p.name for p in list_folder(str(tmp_path / "**" / "*.png"))] == ["c.png"]
    assert list_folder(tmp_path / "b.jpeg") == [tmp_path / "b.jpeg"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_folder(tmp_path / "missing")
    (tmp_path / "only_sub" / "inner").mkdir(parents=True)
    _write(tmp_path / "only_sub" / "inner" / "d.png", _rgb())
    with pytest.raises(FileNotFoundError, match="recursive=True"):
        list_folder(tmp_path / "only_sub")
    with pytest.raises(FileNotFoundError, match="matched no image"):
        list_folder(str(tmp_path / "*.bmp"))


# --------------------------------------------------------------------------- load_images
def test_load_images_skips_and_counts(tmp_path: Path) -> None:
    good = [_write(tmp_path / f"{i}.png", _rgb(20 + i, 30, seed=i)) for i in range(3)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    tiny = _write(tmp_path / "tiny.png", _rgb(4, 4))
    res = load_images([good[0], bad, good[1], tiny, good[2]])
    assert len(res) == 3 and res.paths == good
    assert [p for p, _ in res.skipped] == [bad, tiny]
    assert "too small" in res.skipped[1][1]
    assert res.images[1].shape == (21, 30, 3)  # original size without cfg

    res = load_images(good, PreprocessConfig(size=(24, 32)))
    assert all(im.shape == (24, 32, 3) and im.dtype == np.uint8 for im in res.images)
    assert not res.skipped
    with pytest.raises(ValueError, match="none of the 1"):
        load_images([bad])
    with pytest.raises(ValueError, match="no paths"):
        load_images([])


# --------------------------------------------------------------------------- holdout
def test_split_holdout_deterministic_and_order_independent() -> None:
    paths = [Path(f"img_{i:02d}.png") for i in range(25)]
    tr, ho = split_holdout(paths, fraction=0.2, seed=3)
    assert len(ho) == 5 and len(tr) == 20 and set(tr).isdisjoint(ho) and set(tr) | set(ho) == set(paths)
    assert tr == [p for p in paths if p in set(tr)]  # input order kept
    tr2, ho2 = split_holdout(list(reversed(paths)), fraction=0.2, seed=3)
    assert set(ho2) == set(ho)
    assert set(split_holdout(paths, fraction=0.2, seed=4)[1]) != set(ho)
    assert len(split_holdout(paths[:3], fraction=0.1)[1]) == 1  # min_holdout
    assert split_holdout(paths[:3], fraction=0.0, min_holdout=0)[1] == []
    with pytest.raises(ValueError, match="at least one"):
        split_holdout(paths[:1])
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(paths, fraction=1.0)
