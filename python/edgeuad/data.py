"""Dataset readers: MVTec-AD layout, plain folders, robust image loading.

numpy + OpenCV only (the runtime side imports this).  Readers return RGB uint8
HxWx3 (the project-wide convention).  Loading many images never dies on one bad
file: it is skipped, logged and counted, so a long training run is not lost to a
single truncated JPEG.
"""
from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from .preprocess import PreprocessConfig, resize, validate_frame

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
_GLOB_CHARS = frozenset("*?[")


class ImageReadError(ValueError):
    """An image file could not be read (missing, empty, corrupt or unsupported)."""


@dataclass
class Sample:
    """One image of an MVTec-layout dataset.

    label: 0 = good, 1 = anomalous.  mask_path is None for good images (their
    mask is all zero) and for anomalous images without a ground-truth file (no
    pixel label: skip them in pixel metrics).  Use `load_mask` to get the mask.
    """

    path: Path
    label: int
    defect: str
    mask_path: Path | None = None


@dataclass
class LoadResult:
    """Images that could be read, their paths, and what was skipped and why."""

    images: list[np.ndarray] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(directory: Path, recursive: bool = False) -> list[Path]:
    it = directory.rglob("*") if recursive else directory.iterdir()
    # Hidden files (.DS_Store, ._foo.png from macOS) are never images.
    return sorted(p for p in it if is_image_file(p) and not p.name.startswith("."))


# --------------------------------------------------------------------------- listing
def list_mvtec(root: str | Path, split: str) -> list[Sample]:
    """List the samples of one split of an MVTec-AD-layout category folder.

    Expected layout::

        <root>/train/good/*.png
        <root>/test/good/*.png
        <root>/test/<defect>/*.png
        <root>/ground_truth/<defect>/<stem>_mask.png   (any nonzero pixel = defect)

    Returns samples sorted by (defect, file name).  Raises FileNotFoundError
    describing the expected layout when a required folder is missing or empty.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    layout = ("expected an MVTec-AD category folder: <root>/train/good/*.png, <root>/test/good/*.png, "
              "<root>/test/<defect>/*.png, <root>/ground_truth/<defect>/<stem>_mask.png")
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist or is not a folder; {layout}")
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} not found; {layout}")

    if split == "train":
        good = split_dir / "good"
        if not good.is_dir():
            raise FileNotFoundError(f"{good} not found (training images must be normal); {layout}")
        others = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name != "good")
        if others:
            log.warning("ignoring non-'good' folders in %s: %s (training uses normal images only)",
                        split_dir, ", ".join(others))
        paths = _images_in(good)
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {good}")
        return [Sample(p, 0, "good", None) for p in paths]

    samples: list[Sample] = []
    missing_masks = 0
    gt_root = root / "ground_truth"
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = 0 if d.name == "good" else 1
        for p in _images_in(d):
            mask = _find_mask(gt_root / d.name, p.stem) if label else None
            if label and mask is None:
                missing_masks += 1
            samples.append(Sample(p, label, d.name, mask))
    if not samples:
        raise FileNotFoundError(f"no images found in any subfolder of {split_dir}; {layout}")
    if not any(s.label == 0 for s in samples):
        log.warning("%s has no 'good' images: image-level AUROC needs both classes", split_dir)
    if not any(s.label == 1 for s in samples):
        log.warning("%s has no defect folders: image-level AUROC needs both classes", split_dir)
    if missing_masks:
        log.warning("%d anomalous test image(s) under %s have no mask in %s; they get no pixel label",
                    missing_masks, split_dir, gt_root)
    return samples


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    # MVTec names masks <stem>_mask.png; other exports (VisA converted) use <stem>.png.
    for name in (f"{stem}_mask", stem):
        for ext in (".png", ".PNG", ".bmp", ".tif", ".tiff", ".jpg"):
            cand = gt_dir / f"{name}{ext}"
            if cand.is_file():
                return cand
    return None


def list_folder(root_or_glob: str | Path, recursive: bool = False) -> list[Path]:
    """Image files of a plain folder (normal images), a glob pattern, or one image file.

    Only files with an image extension (case-insensitive) are returned, sorted.
    Raises FileNotFoundError if the path does not exist or holds no image.
    """
    s = str(root_or_glob)
    if any(c in s for c in _GLOB_CHARS) and not Path(s).exists():
        paths = sorted(Path(p) for p in glob.glob(s, recursive=True))
        paths = [p for p in paths if is_image_file(p)]
        if not paths:
            raise FileNotFoundError(f"glob {s!r} matched no image files "
                                    f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return paths
    p = Path(s)
    if p.is_file():
        if not is_image_file(p):
            raise FileNotFoundError(f"{p} is not an image file (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{p} does not exist")
    paths = _images_in(p, recursive)
    if not paths:
        hint = "" if recursive else " (images in subfolders are only found with recursive=True)"
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {p}{hint}")
    return paths


# --------------------------------------------------------------------------- reading
def _decode(path: Path, flags: int) -> np.ndarray:
    path = Path(path)
    try:
        # np.fromfile + imdecode instead of cv2.imread: imread fails on non-ASCII
        # paths on Windows and returns None without saying why.
        buf = np.fromfile(str(path), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot read file ({e})") from e
    return _imdecode(buf, flags, str(path))


def _imdecode(buf: np.ndarray, flags: int, name: str) -> np.ndarray:
    if buf.size == 0:
        raise ImageReadError(f"{name}: file is empty")
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as e:
        raise ImageReadError(f"{name}: decoder error ({e})") from e
    if img is None or img.size == 0:
        raise ImageReadError(f"{name}: not a decodable image (corrupt, truncated or unsupported format)")
    return img


def _to_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        # Full 16-bit range -> 8 bit (rounded).  Industrial cameras store 12-bit data
        # in 16-bit containers too; that stays dark, as any viewer would show it.
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.dtype in (np.float32, np.float64):
        if not np.isfinite(img).all():
            raise ImageReadError(f"{path}: float image contains NaN/inf")
        # Float TIFFs are conventionally [0, 1]; anything larger is taken as 0-255.
        scale = 255.0 if float(img.max()) <= 1.0 else 1.0
        return np.clip(np.rint(img * scale), 0, 255).astype(np.uint8)
    raise ImageReadError(f"{path}: unsupported pixel type {img.dtype}")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB.

    Gray images are expanded to 3 channels, 16-bit/float data is converted to 8
    bit, an alpha channel is dropped.  Raises ImageReadError (a ValueError) for
    missing, empty, corrupt or unsupported files.
    """
    path = Path(path)
    # ANYDEPTH|ANYCOLOR keeps 16-bit and gray as stored (no silent 8-bit
    # truncation by the decoder) and drops alpha; EXIF orientation is applied.
    return _to_rgb(_to_uint8(_decode(path, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR), path), path)


def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) exactly as `read_image` reads a file: HxWx3
    uint8 RGB, or ImageReadError naming `name`."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    img = _imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR, name)
    return _to_rgb(_to_uint8(img, Path(name)), Path(name))


def _to_rgb(img: np.ndarray, path: Path) -> np.ndarray:
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.ndim == 3 and img.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ImageReadError(f"{path}: unsupported image shape {img.shape}")


def read_mask(path: str | Path, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as bool HxW (any nonzero pixel in any channel = defect).

    size_hw: resize to (height, width) with nearest-neighbour (no blurred edges
    inventing half-defect pixels); None keeps the file's size.
    """
    path = Path(path)
    m = _decode(path, cv2.IMREAD_UNCHANGED)
    m = m != 0 if m.ndim == 2 else (m != 0).any(axis=2)
    if size_hw is not None:
        h, w = (int(v) for v in size_hw)
        if h <= 0 or w <= 0:
            raise ValueError(f"size_hw must be positive (height, width), got {size_hw!r}")
        if m.shape != (h, w):
            m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return m


def load_mask(sample: Sample, size_hw: tuple[int, int]) -> np.ndarray | None:
    """Pixel label of a sample at size_hw: zeros for good images, the mask for
    anomalous ones, None when an anomalous image has no mask file."""
    if sample.label == 0:
        return np.zeros(tuple(int(v) for v in size_hw), dtype=bool)
    if sample.mask_path is None:
        return None
    return read_mask(sample.mask_path, size_hw)


def load_images(paths: Iterable[str | Path], cfg: PreprocessConfig | None = None,
                progress: bool = False) -> LoadResult:
    """Read many images, skipping (and counting) the ones that fail.

    Images are RGB uint8, resized to cfg.size with the same resize as
    `preprocess` when cfg is given, else kept at their original size.  Images
    smaller than 8x8 are skipped too (the network cannot use them).  Raises
    ValueError only when no image at all could be read.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("load_images: no paths given")
    it: Iterable[Path] = paths
    if progress:
        from tqdm import tqdm
        it = tqdm(paths, desc="loading images", unit="img")
    res = LoadResult()
    for p in it:
        try:
            img = validate_frame(read_image(p), name=str(p))
        except ValueError as e:  # ImageReadError is a ValueError
            log.warning("skipping %s: %s", p, e)
            res.skipped.append((p, str(e)))
            continue
        if cfg is not None:
            img = resize(img, cfg.size)
        res.images.append(img)
        res.paths.append(p)
    if not res.images:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in res.skipped[:3])
        raise ValueError(f"none of the {len(paths)} image(s) could be read (first errors: {reasons})")
    if res.skipped:
        log.warning("loaded %d image(s), skipped %d unreadable", len(res.images), len(res.skipped))
    return res


# --------------------------------------------------------------------------- splits
def split_holdout(paths: Sequence[str | Path], fraction: float = 0.1, seed: int = 0,
                  min_holdout: int = 1) -> tuple[list[Path], list[Path]]:
    """Deterministically split normal images into (train, holdout).

    The holdout (normal images never trained on) calibrates the threshold.  The
    choice depends only on the set of paths and the seed, not on their order, and
    each returned list keeps the input order.  At least one image stays in train.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if min_holdout < 0:
        raise ValueError(f"min_holdout must be >= 0, got {min_holdout}")
    paths = [Path(p) for p in paths]
    n = len(paths)
    n_hold = max(int(min_holdout), int(round(fraction * n)))
    if n_hold >= n:
        raise ValueError(f"cannot hold out {n_hold} of {n} image(s) and keep at least one for training; "
                         "add images or lower fraction/min_holdout")
    # Permute the sorted order so the result does not depend on listing order.
    order = sorted(range(n), key=lambda i: str(paths[i]))
    perm = np.random.default_rng(seed).permutation(n)
    held = {order[j] for j in perm[:n_hold]}
    train = [p for i, p in enumerate(paths) if i not in held]
    hold = [p for i, p in enumerate(paths) if i in held]
    return train, hold
