"""Synthetic-defect dataset in the MVTec-AD layout (for demos and tests).

Normal images are a seeded procedural family with natural variation; defects
(scratch, blob, cutout) are small (~0.5-3 % of the image), visible to a person
but not trivially separable by brightness alone, and come with exact masks.

Every image has its own RNG derived from (seed, split, index), so an image does
not change when the counts of other splits change, and the same seed always
gives identical pixels.  numpy + OpenCV only.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np

from .viz import write_png

log = logging.getLogger(__name__)

KINDS = ("texture", "object")
_DEFECTS = ("scratch", "blob", "cutout")
_SPLIT_IDS = {"train": 0, "test_good": 1, "scratch": 2, "blob": 3, "cutout": 4}


def defect_types() -> list[str]:
    """Names of the synthetic defect types (folders under test/ and ground_truth/)."""
    return list(_DEFECTS)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a random cells x cells grid, upsampled."""
    g = rng.normal(size=(cells, cells)).astype(np.float32)
    return cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)


def _texture(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Woven-fabric-like texture: two crossing thread sinusoids with random phase,
    slight period/orientation jitter, low-frequency shading and fine grain."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / 16.0 * rng.uniform(0.95, 1.05)
    ang = np.deg2rad(rng.uniform(-3.0, 3.0))
    u = xx * np.cos(ang) + yy * np.sin(ang)
    v = -xx * np.sin(ang) + yy * np.cos(ang)
    pu, pv = rng.uniform(0, 2 * np.pi, 2)
    warp = np.sin(2 * np.pi * u / period + pu)
    weft = np.sin(2 * np.pi * v / period + pv)
    # Over/under weave: which thread is on top alternates like a checkerboard.
    weave = 0.5 * (warp * (weft > 0) + weft * (warp <= 0))
    shade = 0.25 * _smooth_noise(rng, size, 4)
    grain = 0.08 * rng.normal(size=(size, size)).astype(np.float32)
    lum = 0.55 + 0.18 * weave + 0.05 * shade + 0.05 * grain
    lum *= rng.uniform(0.94, 1.06)  # brightness jitter between images
    tint = np.array([1.0, 0.86, 0.66], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    img = np.clip(lum[..., None] * tint * 255.0, 0, 255)
    region = np.ones((size, size), bool)  # defects may appear anywhere
    return img.astype(np.uint8), region


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _object(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Top view of a bottle-like object: a shaded disc with a rim and a dark
    opening, centred with small position/size jitter, on a noisy background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + rng.uniform(-0.02, 0.02, 2) * size
    r = size * 0.34 * rng.uniform(0.97, 1.03)
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    bg = 0.18 + 0.03 * _smooth_noise(rng, size, 3) + 0.015 * rng.normal(size=(size, size)).astype(np.float32)
    body = _smoothstep(r + 1.0, r - 1.0, d)                       # anti-aliased disc
    radial = 0.62 + 0.18 * np.cos(np.clip(d / r, 0, 1) * np.pi / 2)  # brighter centre
    rim = 0.12 * np.exp(-((d - 0.78 * r) ** 2) / (2 * (0.04 * r) ** 2))
    hole = _smoothstep(0.36 * r + 1.0, 0.36 * r - 1.0, d)
    lum = bg * (1 - body) + body * (radial + rim) * rng.uniform(0.95, 1.05)
    lum = lum * (1 - 0.7 * hole) + 0.012 * rng.normal(size=(size, size)).astype(np.float32)
    tint = np.array([0.82, 0.95, 0.85], np.float32)  # faint green glass
    img = np.clip(lum[..., None] * tint * 255.0, 0, 255).astype(np.uint8)
    # Defects go on the body (between the opening and the edge), like real ones.
    region = (d < 0.85 * r) & (d > 0.45 * r)
    return img, region


def make_normal_image(kind: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One normal image (RGB uint8 size x size) and the bool region where defects may be placed."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    return _texture(rng, size) if kind == "texture" else _object(rng, size)


def _pick_centre(rng: np.random.Generator, region: np.ndarray, margin: int) -> tuple[int, int]:
    h, w = region.shape
    inner = np.zeros_like(region)
    inner[margin:h - margin, margin:w - margin] = region[margin:h - margin, margin:w - margin]
    ys, xs = np.nonzero(inner)
    if ys.size == 0:
        raise ValueError("defect region is empty (image too small for the defect margin)")
    i = int(rng.integers(ys.size))
    return int(ys[i]), int(xs[i])


def _contrast_colour(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mean = img[mask].reshape(-1, 3).mean(axis=0)
    # Dark marks on bright material, bright marks on dark material.
    return np.where(mean.mean() > 110, mean * 0.35, np.minimum(mean * 1.8 + 60, 255)).astype(np.float32)


def _scratch(img: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    th = max(2, round(size / 64))
    layer = np.zeros(img.shape[:2], np.uint8)
    for _ in range(int(rng.integers(1, 3))):  # one or two strokes
        cy, cx = _pick_centre(rng, region, margin=size // 8)
        ang = rng.uniform(0, np.pi)
        half = 0.5 * size * rng.uniform(0.18, 0.32)
        dy, dx = half * np.sin(ang), half * np.cos(ang)
        p0 = (int(round(cx - dx)), int(round(cy - dy)))
        p1 = (int(round(cx + dx)), int(round(cy + dy)))
        cv2.line(layer, p0, p1, 255, th, lineType=cv2.LINE_AA)
    # Keep the scratch on the material (an object's body), not on the table behind it.
    alpha = layer.astype(np.float32) / 255.0 * region
    mask = alpha >= 0.5
    colour = _contrast_colour(img, mask | cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool))
    out = img.astype(np.float32) * (1 - 0.85 * alpha[..., None]) + colour * (0.85 * alpha[..., None])
    return np.clip(out, 0, 255).astype(np.uint8), mask


def _ellipse_alpha(size: int, cy: float, cx: float, a: float, b: float, ang: float, soft: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)  # 1 on the ellipse boundary
    return _smoothstep(1.0 + soft, 1.0 - soft, rho)


def _blob(img: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    cy, cx = _pick_centre(rng, region, margin=size // 8)
    a, b = size * rng.uniform(0.06, 0.10), size * rng.uniform(0.04, 0.07)
    alpha = _ellipse_alpha(size, cy, cx, a, b, rng.uniform(0, np.pi), soft=0.35)
    # Irregular stain: modulate the opacity with noise so it is not a clean ellipse.
    alpha *= np.clip(0.8 + 0.25 * _smooth_noise(rng, size, 12), 0.5, 1.0)
    mask = alpha >= 0.5
    # Colour shift towards a brownish/dark contamination, keeping the texture underneath.
    stain = np.array(rng.choice([[0.55, 0.40, 0.25], [0.35, 0.45, 0.60]]), np.float32)
    src = img.astype(np.float32)
    lum = src.mean(axis=2, keepdims=True)
    tinted = lum * stain * 1.05
    out = src * (1 - 0.8 * alpha[..., None]) + tinted * (0.8 * alpha[..., None])
    return np.clip(out, 0, 255).astype(np.uint8), mask


def _cutout(img: np.ndarray, region: np.ndarray, rng: np.random.Generator,
            background: np.ndarray, shifted_ok: bool) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    cy, cx = _pick_centre(rng, region, margin=size // 8)
    hh, hw = (size * rng.uniform(0.05, 0.08, 2)).astype(int)
    ang = float(rng.uniform(0, 180))
    rect = ((float(cx), float(cy)), (float(2 * hw), float(2 * hh)), ang)
    layer = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(layer, [np.round(cv2.boxPoints(rect)).astype(np.int32)], 255, lineType=cv2.LINE_AA)
    alpha = layer.astype(np.float32) / 255.0
    mask = alpha >= 0.5
    # Objects are smooth and radially symmetric, so displaced material would look
    # like the surroundings: an object cutout is always a hole.
    if not shifted_ok or rng.random() < 0.5:
        # A hole: whatever is behind the material shows through.
        fill = background.astype(np.float32)
    else:
        # Misplaced material: the same texture rotated, rescaled and shifted, so the
        # threads inside run at another angle and period than their surroundings
        # while colour statistics stay the same (not findable by brightness).
        rot = float(rng.uniform(20, 45)) * (1 if rng.random() < 0.5 else -1)
        m = cv2.getRotationMatrix2D((float(cx), float(cy)), rot, float(rng.uniform(1.3, 1.6)))
        m[:, 2] += rng.uniform(0.25, 0.45, 2) * size
        fill = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT).astype(np.float32)
        # Loose material sits higher/lower: a mild shading change makes it visible at
        # 128 px without making it a trivial brightness outlier.
        fill *= rng.uniform(0.78, 0.86) if rng.random() < 0.5 else rng.uniform(1.14, 1.22)
    out = img.astype(np.float32) * (1 - alpha[..., None]) + fill * alpha[..., None]
    return np.clip(out, 0, 255).astype(np.uint8), mask


def add_defect(img: np.ndarray, defect: str, rng: np.random.Generator, region: np.ndarray | None = None,
               background: np.ndarray | None = None, kind: str = "texture") -> tuple[np.ndarray, np.ndarray]:
    """Apply one defect to an RGB uint8 square image; returns (image, bool mask).

    region: where the defect may go (default: anywhere).  background: the content
    a `cutout` hole reveals (default: a dark uniform backing).  kind: the image
    family ("object" cutouts are always holes).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if defect not in _DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; expected one of {list(_DEFECTS)}")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
        raise ValueError(f"expected a square RGB uint8 image, got {img.shape} {img.dtype}")
    if region is None:
        region = np.ones(img.shape[:2], bool)
    if defect == "scratch":
        return _scratch(img, region, rng)
    if defect == "blob":
        return _blob(img, region, rng)
    if background is None:
        background = np.full_like(img, 40)
    return _cutout(img, region, rng, background, shifted_ok=kind == "texture")


def _backing(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """What a hole reveals: dark noisy backing (texture) / the table (object)."""
    base = 35.0 if kind == "texture" else 0.18 * 255 * 0.9
    g = base + 6.0 * _smooth_noise(rng, size, 4) + 3.0 * rng.normal(size=(size, size)).astype(np.float32)
    return np.clip(np.repeat(g[..., None], 3, axis=2), 0, 255).astype(np.uint8)


_NORMAL_DESCRIPTION = {
    "texture": "woven fabric texture (random thread phase, slight period/angle jitter, shading, grain, "
               "brightness jitter)",
    "object": "top view of a bottle-like disc with rim and opening (position/size/brightness jitter, "
              "background noise)",
}


def _readme(kind: str, n_train: int, n_test_good: int, n_test_defect: int, size: int, seed: int) -> str:
    return f"""edgeuad synthetic anomaly-detection dataset (MVTec AD layout)

kind: {kind}   image size: {size}x{size} RGB PNG   seed: {seed}
normal images: {_NORMAL_DESCRIPTION[kind]}

train/good/            {n_train} normal images
test/good/             {n_test_good} normal images
test/<defect>/         {n_test_defect} images per defect type: {", ".join(_DEFECTS)}
ground_truth/<defect>/ <stem>_mask.png, 255 = defect pixel

defects (each about 0.5-3 % of the image area):
  scratch  one or two thin anti-aliased lines, random angle and length, contrasting colour
  blob     soft-edged irregular elliptic stain that shifts the colour of the material
  cutout   a rotated rectangular patch that is missing (backing visible) or, for
           textures, holds rotated and rescaled material (threads at another angle)

Generated by edgeuad.synthetic.make_synthetic_dataset; the same arguments give identical pixels.
"""


def make_synthetic_dataset(root: str | Path, kind: str = "texture", n_train: int = 60, n_test_good: int = 15,
                           n_test_defect: int = 8, size: int = 128, seed: int = 0,
                           overwrite: bool = False) -> Path:
    """Write a small MVTec-layout dataset under `root` and return `root`.

    Refuses to write into a non-empty folder unless overwrite=True, which then
    removes only the dataset's own entries (train/, test/, ground_truth/,
    README.txt) so stale images from a bigger earlier run cannot linger.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    for name, n in (("n_train", n_train), ("n_test_good", n_test_good), ("n_test_defect", n_test_defect)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    if n_train == 0:
        raise ValueError("n_train must be >= 1 (a model needs normal training images)")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty; pass overwrite=True to replace the dataset there")
        for sub in ("train", "test", "ground_truth"):
            if (root / sub).is_dir():
                shutil.rmtree(root / sub)
        (root / "README.txt").unlink(missing_ok=True)

    def normal(split: str, i: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        rng = _rng(seed, split, i)
        img, region = make_normal_image(kind, size, rng)
        return img, region, rng

    for i in range(n_train):
        write_png(root / "train" / "good" / f"{i:03d}.png", normal("train", i)[0])
    for i in range(n_test_good):
        write_png(root / "test" / "good" / f"{i:03d}.png", normal("test_good", i)[0])
    for defect in _DEFECTS:
        for i in range(n_test_defect):
            img, region, rng = normal(defect, i)
            bgd = _backing(kind, size, rng) if defect == "cutout" else None
            out, mask = add_defect(img, defect, rng, region=region, background=bgd, kind=kind)
            write_png(root / "test" / defect / f"{i:03d}.png", out)
            write_png(root / "ground_truth" / defect / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    (root / "README.txt").write_text(_readme(kind, n_train, n_test_good, n_test_defect, size, seed),
                                     encoding="utf-8")
    log.info("wrote synthetic %s dataset to %s (%d train, %d test good, %d x %d defects)",
             kind, root, n_train, n_test_good, n_test_defect, len(_DEFECTS))
    return root
