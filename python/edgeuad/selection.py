"""Label-free model selection: a synthetic-defect validation set made from held-out normal images.

A user's data has normal images only, so checkpoints, training options and image-score rules cannot
be compared on real defects without touching a test split.  Here every held-out normal image gets two
defective copies: a blended one (a scratch, blob or cutout from `synthetic.add_defect`, pasted at a
seeded random place) and a thin crack (`_crack`: a 1 px random-walk line), and every defective image
has an exact pixel mask.  `evaluate_selection` scores it with any score function and returns I-AUROC
(and P-AUROC when the function returns maps), which the training side uses to pick what to keep.

Why two families: blended blobs change contrast over a region, which every model here finds, while
real surface defects are often thin (cracks, frays).  On magnetic_tile the blended split alone ranked
3 known pairs of options against the test split's order; a thin-crack split, designed from the
defect names before it was scored, agreed with the test split in 2 of them (benchmarks/RESULTS.md).
With one copy of each per normal image the overall I-AUROC is exactly the mean of the two families'
I-AUROCs (normals vs blended, normals vs cracks: equal group sizes), the pre-registered selection
criterion.

numpy + OpenCV only (no torch): thresholds and the runtime side may use it too.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from .metrics import auroc, pixel_auroc
from .preprocess import resize, validate_frame
from .synthetic import add_defect, defect_types

log = logging.getLogger(__name__)

__all__ = ["ScoreFn", "ValidationSet", "evaluate_selection", "load_validation_set", "make_validation_set",
           "score_validation", "type_aurocs", "validation_metrics"]

# A score function takes a list of uint8 HxWx3 RGB images and returns image scores (N,), or
# (scores, maps) with maps N x h x w (any h, w: they are resized to the image size for P-AUROC).
ScoreFn = Callable[[Sequence[np.ndarray]], "np.ndarray | tuple[np.ndarray, np.ndarray]"]

# The generator's defects at full strength are easy for a trained model: ReContrast-Lite0 at 128 px on
# magnetic_tile's held-out normals reached validation I-AUROC 0.98-0.99 after 75 iterations, which
# cannot tell checkpoints or options apart.  Blended in at 20-60 % (the same model: 0.65 at 0.2, 0.72 at
# 0.3, 0.82 at 0.5) the set stays informative; this range was set on held-out normals only.
DEFAULT_STRENGTH = (0.2, 0.6)
_MAX_TRIES = 8  # redraws of a defect that happened to change no pixel (never seen; a guard, not a loop)


@dataclass(frozen=True)
class ValidationSet:
    """Normal images and their defective copies, in groups per normal image:
    [normal 0, blended 0, crack 0, normal 1, ...] ([normal 0, blended 0, normal 1, ...] without cracks)."""

    images: list[np.ndarray]   # uint8 S x S x 3 RGB
    labels: np.ndarray         # int64 (N,): 0 normal, 1 defective
    masks: list[np.ndarray]    # bool S x S per image (all False for normal images)
    names: list[str]           # "<i>_good" / "<i>_<defect type>"
    defects: list[str]         # "good" or the defect type, per image
    strengths: list[float]     # blend strength of the defect (0.0 for normal images)

    def __len__(self) -> int:
        return len(self.images)


def _is_gray(img: np.ndarray) -> bool:
    return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]))


def _paste(img: np.ndarray, defect: str, rng: np.random.Generator, strength: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """One defect on a copy of img, blended in with `strength` (1 = the generator's defect, 0.3 = 30 %
    of its change); pixels change inside the returned mask only."""
    # What a hole reveals must differ from the material, whatever its brightness (dark magnetic
    # tiles would hide the generator's default dark backing).
    back = np.full_like(img, 40 if img.mean() > 110 else 215)
    gray = _is_gray(img)
    for _ in range(_MAX_TRIES):
        out, mask = add_defect(img, defect, rng, background=back, kind="texture")
        if gray:  # a colour stain on grey material would be found by colour alone
            out = np.repeat(np.round(out.astype(np.float32).mean(axis=2, keepdims=True)), 3, axis=2)
            out = out.astype(np.uint8)
        # The generator's soft edges (alpha < 0.5) leave faint changes outside its mask; dropping them
        # makes the pixel label exactly the set of changed pixels, so P-AUROC is not blurred by a halo.
        out = np.where(mask[..., None], out, img)
        if strength != 1.0:
            src = img.astype(np.float32)
            out = np.clip(np.round(src + strength * (out.astype(np.float32) - src)), 0, 255).astype(np.uint8)
        if mask.any() and np.any(out[mask] != img[mask]):
            return out, mask
    raise RuntimeError(f"could not paste a visible {defect} defect into an image of shape {img.shape}")


# The thin crack, fixed before it was first scored (a 256 px design, scaled with the image height):
# a random-walk polyline of 8-14 segments of 4-8 px whose heading drifts by up to 25 degrees per
# segment, drawn anti-aliased 1 px wide, darkening the material by 35-60 % at full strength.
CRACK_SEGMENTS = (8, 15)      # integers drawn from [8, 15)
CRACK_STEP_PX = (4.0, 8.0)    # per segment, at 256 px
CRACK_TURN_DEG = 25.0
CRACK_DARKEN = (0.35, 0.6)


def _crack(img: np.ndarray, rng: np.random.Generator, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """A thin dark crack on a copy of img (H x W x 3 uint8); the mask is where the line's coverage is
    >= 0.5.  Pixels change only where the anti-aliased line covers them (a superset of the mask by its
    faint edge, as a real crack's edge is faint)."""
    h, w = img.shape[:2]
    layer = np.zeros((h, w), np.float32)
    y, x = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    ang = rng.uniform(0, 2 * np.pi)
    pts = [(x, y)]
    for _ in range(int(rng.integers(*CRACK_SEGMENTS))):
        ang += np.deg2rad(rng.uniform(-CRACK_TURN_DEG, CRACK_TURN_DEG))
        step = rng.uniform(*CRACK_STEP_PX) * h / 256
        x, y = np.clip(x + step * np.cos(ang), 2, w - 3), np.clip(y + step * np.sin(ang), 2, h - 3)
        pts.append((x, y))
    p = np.round(np.array(pts) * 4).astype(np.int32)  # 2 fractional bits: sub-pixel anti-aliased line
    cv2.polylines(layer, [p], False, 1.0, thickness=1, lineType=cv2.LINE_AA, shift=2)
    dark = rng.uniform(*CRACK_DARKEN)
    src = img.astype(np.float32)
    mask = layer >= 0.5
    out = np.clip(np.round(src * (1 - strength * dark * layer[..., None])), 0, 255).astype(np.uint8)
    if not np.any(out[mask] != img[mask]):  # material too dark to darken (black): a light crack instead
        out = np.clip(np.round(src + (255 - src) * (strength * dark * layer[..., None])), 0, 255).astype(np.uint8)
    return out, mask


def make_validation_set(images: Sequence[np.ndarray], seed: int = 0, size: int | None = None,
                        defects: Sequence[str] | None = None,
                        strength: tuple[float, float] = DEFAULT_STRENGTH, cracks: bool = True) -> ValidationSet:
    """Synthetic-defect validation set from held-out normal images (uint8 HxWx3 or HxW).

    size: resize every image to size x size first (with `preprocess.resize`, as the network input
    is made, so a second resize there is the identity); None keeps the images, which must then be
    square.  defects: the defect types to cycle through (default: all of `synthetic.defect_types()`),
    so types are spread evenly.  strength: each defect is blended in with a strength drawn uniformly
    from this range (see DEFAULT_STRENGTH).  cracks: also add a thin-crack copy of every image
    (`_crack`, blended with its own strength from the same range), so the overall I-AUROC is the mean of
    the blended and crack families'.  Deterministic: image i's defects depend only on (seed, i).
    """
    if len(images) == 0:
        raise ValueError("make_validation_set needs at least one normal image")
    kinds = list(defect_types() if defects is None else defects)
    unknown = sorted(set(kinds) - set(defect_types()))
    if not kinds or unknown:
        raise ValueError(f"defects must be a non-empty subset of {defect_types()}, got {list(kinds)}")
    lo, hi = (float(v) for v in strength)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"strength must be a range 0 < lo <= hi <= 1, got {strength}")
    if size is not None and size < 32:
        raise ValueError(f"size must be >= 32 (defects are placed away from the border), got {size}")
    out_images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    names: list[str] = []
    types: list[str] = []
    strengths: list[float] = []
    for i, frame in enumerate(images):
        img = validate_frame(frame, name=f"images[{i}]")
        if size is not None:
            img = resize(np.ascontiguousarray(img), (size, size))
        elif img.shape[0] != img.shape[1]:
            raise ValueError(f"images[{i}] is {img.shape[1]}x{img.shape[0]}, not square; pass size= to resize")
        img = np.ascontiguousarray(img)
        defect = kinds[i % len(kinds)]
        rng = np.random.default_rng([int(seed), i])
        st = float(rng.uniform(lo, hi))
        bad, mask = _paste(img, defect, rng, st)
        strengths += [0.0, st]
        out_images += [img, bad]
        masks += [np.zeros(img.shape[:2], bool), mask]
        names += [f"{i:03d}_good", f"{i:03d}_{defect}"]
        types += ["good", defect]
        if cracks:
            crng = np.random.default_rng([int(seed), 7, i])  # its own stream: the blended copy is unchanged
            cst = float(crng.uniform(lo, hi))
            bad, mask = _crack(img, crng, cst)
            strengths.append(cst)
            out_images.append(bad)
            masks.append(mask)
            names.append(f"{i:03d}_crack")
            types.append("crack")
    labels = np.array([0 if t == "good" else 1 for t in types], np.int64)
    return ValidationSet(images=out_images, labels=labels, masks=masks, names=names, defects=types,
                         strengths=strengths)


def load_validation_set(paths: Sequence[str | Path], size: int, seed: int = 0, cracks: bool = True) -> ValidationSet:
    """`make_validation_set` from image files (a run's held-out normals), resized to size x size
    exactly as `preprocess` resizes network input; unreadable files are skipped with a warning."""
    from .data import load_images

    res = load_images(paths, None)
    return make_validation_set(res.images, seed=seed, size=size, cracks=cracks)


def score_validation(score_fn: ScoreFn, vs: ValidationSet, batch: int = 16) -> tuple[np.ndarray, list | None]:
    """Run score_fn over vs in batches -> (scores (N,), maps or None)."""
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    scores: list[np.ndarray] = []
    maps: list[np.ndarray] | None = None
    for i in range(0, len(vs), batch):
        chunk = vs.images[i:i + batch]
        res = score_fn(chunk)
        if isinstance(res, tuple):
            s, m = res
            m = np.asarray(m)
            if m.ndim != 3 or m.shape[0] != len(chunk):
                raise ValueError(f"score_fn maps must be N x h x w with N={len(chunk)}, got {m.shape}")
            maps = (maps if maps is not None else []) + list(m)
        else:
            s = res
            if maps is not None:
                raise ValueError("score_fn returned maps for some batches but not for others")
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        if s.shape[0] != len(chunk):
            raise ValueError(f"score_fn returned {s.shape[0]} scores for {len(chunk)} images")
        scores.append(s)
    if maps is not None and len(maps) != len(vs):
        raise ValueError("score_fn returned maps for some batches but not for others")
    return np.concatenate(scores), maps


def detector_score_fn(det) -> ScoreFn:
    """A ScoreFn over a Detector (anything with `score_batch` giving `.score` and `.raw_map`): raw
    scores and raw maps, as the label-free checks of shipped bundles compare them."""
    def fn(imgs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        rs = det.score_batch(imgs)
        return np.array([r.score for r in rs]), np.stack([np.asarray(r.raw_map, np.float32) for r in rs])

    return fn


def type_aurocs(labels: np.ndarray, scores: np.ndarray, defects: Sequence[str]) -> dict[str, float]:
    """I-AUROC of the normal images ("good") against each defect type (`i_auroc_<type>`), and against
    the generator's blended types together (`i_auroc_blended`) when thin cracks are beside them.
    Pure: any labelled split with per-image type names (a test split's types get their own keys)."""
    labels, scores, types = np.asarray(labels), np.asarray(scores, dtype=np.float64), np.asarray(defects)
    out: dict[str, float] = {}
    for d in sorted(set(defects) - {"good"}):
        sel = (types == "good") | (types == d)
        out[f"i_auroc_{d}"] = auroc(labels[sel], scores[sel])
    blended = np.isin(types, defect_types())
    if "crack" in defects and blended.any():
        sel = (types == "good") | blended
        out["i_auroc_blended"] = auroc(labels[sel], scores[sel])
    return out


def validation_metrics(vs: ValidationSet, scores: np.ndarray, maps: Sequence[np.ndarray] | None = None
                       ) -> dict[str, float]:
    """I-AUROC overall and per defect type (normals vs that type), and for the blended family as a
    whole (`i_auroc_blended`) when the set has cracks; P-AUROC when maps are given."""
    scores = np.asarray(scores, dtype=np.float64)
    out = {"i_auroc": auroc(vs.labels, scores), "n_images": float(len(vs))}
    out.update(type_aurocs(vs.labels, scores, vs.defects))
    if maps is not None:
        sized = []
        for m, mask in zip(maps, vs.masks):
            m = np.asarray(m, np.float32)
            if m.shape != mask.shape:
                m = cv2.resize(m, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
            sized.append(m)
        out["p_auroc"] = pixel_auroc(vs.masks, sized)
    return out


def evaluate_selection(score_fn: ScoreFn, vs: ValidationSet, batch: int = 16) -> dict[str, float]:
    """Score the validation set with score_fn and return `validation_metrics` (pure: no state kept)."""
    scores, maps = score_validation(score_fn, vs, batch=batch)
    return validation_metrics(vs, scores, maps)
