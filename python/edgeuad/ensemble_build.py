"""Build an ensemble bundle: finished member bundles + held-out normal images -> one bundle.

Layout: the ensemble directory holds its manifest.json (method "ensemble") and one sub-directory per
member, `m<i>_<method>/`, a byte-for-byte copy of that member bundle (its own manifest and sha256
list).  The ensemble manifest records each member's manifest sha256, so changing any member file is
caught at load (member manifest -> file hashes), and the median/MAD of the member's image scores on
the normal images (ReConPatch Eq. 11, runtime/ensemble.py).  The ensemble's thresholds come from the
combined scores of the same images by the project's default rule (`thresholds.from_normal_robust`).

The normal images must be held out from every member's training: the caller says where they come
from (`provenance`, recorded in the manifest).  Everything is scored by the copies inside the new
bundle with the runtime Detector, except images a patch member's shipped bank holds (its held-out
images, bank_includes_holdout): for those the scores recorded at its calibration are used.  The
finished bundle is checked to reproduce the combined live scores of its members before it is swapped
in whole (atomic.atomic_dir).  Sits beside `api` (it drives the Detector); no torch.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import data as _data
from .atomic import atomic_dir
from .bundle import MANIFEST, Bundle, sha256_file, write_manifest
from .detector import Detector
from .manifest_schema import ENSEMBLE
from .runtime.ensemble import EnsembleError, combine_scores
from .thresholds import from_normal_robust, median_mad
from .limits import MAD_RANGE, MAX_ENSEMBLE_MEMBERS

log = logging.getLogger(__name__)

# The finished bundle must reproduce the scores it was calibrated on (float32 maps, float64 combination).
_CHECK_IMAGES = 4
_CHECK_RTOL = 1e-5
_CHECK_ATOL = 1e-5


def load_members(bundles: Sequence[str | Path]) -> list[Bundle]:
    """Load and verify the member bundles; refuse what cannot be ensembled (EnsembleError)."""
    if not bundles:
        raise EnsembleError("an ensemble needs at least one member bundle, got none")
    if len(bundles) > MAX_ENSEMBLE_MEMBERS:
        raise EnsembleError(f"at most {MAX_ENSEMBLE_MEMBERS} members, got {len(bundles)}")
    members = [Bundle.load(b) for b in bundles]
    for src, b in zip(bundles, members):
        if b.method == ENSEMBLE:
            raise EnsembleError(f"{src} is itself an ensemble: list its members instead (ensembles do not nest)")
    seen: dict[str, str] = {}
    for src, b in zip(bundles, members):
        if b.digest in seen:
            log.warning("%s is the same bundle as %s: it counts twice in the ensemble mean", src, seen[b.digest])
        seen[b.digest] = str(src)
    return members


def build_ensemble(bundles: Sequence[str | Path], out: Path, normal_images: Sequence[str | Path],
                   provenance: dict[str, Any], fpr: float = 0.01, backend: str = "onnxruntime",
                   threads: int = 0, batch: int = 8, validation: dict[str, Any] | None = None) -> Bundle:
    """Write the ensemble bundle to `out` (replaced whole); returns it loaded.

    provenance: where `normal_images` come from, e.g. {"source": "runs_holdout", "runs": [...]} or
    {"source": "user_heldout", "dir": ...}; recorded in the manifest's `training.normal`.
    validation: `ensemble_check.check`'s record, kept as `training.validation` (informational)."""
    members = load_members(bundles)
    if not normal_images:
        raise EnsembleError("no normal images: an ensemble is calibrated on held-out normal images")
    try:
        loaded = _data.load_images(normal_images, None)
    except ValueError as e:
        raise EnsembleError(f"no readable normal image: {e}") from e
    images = loaded.images
    if len(images) < 2:
        raise EnsembleError(f"{len(images)} readable normal image: the median/MAD of each member's scores need "
                            "at least 2 (hold out more normal images)")
    if loaded.skipped:
        log.warning("%d of %d normal images could not be read and are not used", len(loaded.skipped),
                    len(normal_images))

    with atomic_dir(out) as tmp:
        entries, scores, live = [], [], []
        n_check = min(_CHECK_IMAGES, len(images))
        for i, (src, b) in enumerate(zip(bundles, members)):
            d = f"m{i}_{b.method}"
            copy = _copy_bundle(b, tmp / d)
            with Detector(copy, backend=backend, threads=threads) as det:
                s, recorded = _normal_scores(b, det, images, loaded.paths, batch)
                # the finished bundle is checked against live member scores (recorded ones are not live)
                live.append(_score(det, images[:n_check], batch) if recorded else s[:n_check])
            med, mad = median_mad(s)
            if not MAD_RANGE[0] <= mad <= MAD_RANGE[1]:
                raise EnsembleError(f"member {src} gives the {len(s)} normal images scores with MAD {mad:.3g} "
                                    f"(allowed {MAD_RANGE[0]:g}..{MAD_RANGE[1]:g}): its scores cannot be normalised")
            log.info("member %d %s (%s/%s): median %.6g, MAD %.6g on %d normal images", i, src, b.method,
                     b.backbone, med, mad, len(s))
            entries.append({"dir": d, "digest": copy.digest, "method": b.method, "backbone": b.backbone,
                            "median": med, "mad": mad, "n_normal": len(s)})
            if recorded:
                log.info("member %d: %d of the normal images are in its bank; their scores are the ones its "
                         "threshold was calibrated on, from the bank without them", i, recorded)
            scores.append(s)
        z = combine_scores(np.stack(scores), [e["median"] for e in entries], [e["mad"] for e in entries])
        th = from_normal_robust(z, fpr=fpr)
        largest = max((b.preprocess.size for b in members), key=lambda hw: hw[0] * hw[1])
        manifest: dict[str, Any] = {
            "method": ENSEMBLE,
            "backbone": "+".join(dict.fromkeys(b.backbone for b in members)),
            # size: where evaluation compares maps with masks (the largest member input); mean/std are
            # the first member's, for the record: each member normalises the frame its own way
            "preprocess": {**members[0].manifest["preprocess"], "size": list(largest)},
            "postprocess": {"kind": "modified_z", "members": entries},
            "thresholds": th.to_dict(),
            "training": {"normal": {**provenance, "n_images": len(images),
                                    "images": [str(p) for p in loaded.paths]},
                         "members": [str(b) for b in bundles],
                         **({"validation": validation} if validation is not None else {})},
            "files": {},
        }
        write_manifest(tmp, manifest)
        want = combine_scores(np.stack(live), [e["median"] for e in entries], [e["mad"] for e in entries])
        with Detector(tmp, backend=backend, threads=threads) as det:  # what is published must score as built
            got = _score(det, images[:n_check], batch)
        if not np.allclose(got, want, rtol=_CHECK_RTOL, atol=_CHECK_ATOL):
            raise RuntimeError(f"the ensemble bundle scores {got} where its members' combined scores are {want}")
    log.info("ensemble %s: %d members, threshold %.4g (%s, %d normal images)", out, len(members), th.threshold,
             th.source, len(images))
    return Bundle.load(out)


def _copy_bundle(b: Bundle, dest: Path) -> Bundle:
    """Copy a loaded bundle's manifest and listed files (nothing else) and load the copy, pinned to the
    original's digest."""
    dest.mkdir()
    for name in (MANIFEST, *b.manifest["files"]):
        shutil.copyfile(b.root / name, dest / name)
    return Bundle.load(dest, expected_digest=b.digest)


def _normal_scores(b: Bundle, det: Detector, images: Sequence[np.ndarray], paths: Sequence[Path],
                   batch: int) -> tuple[np.ndarray, int]:
    """The member's image scores of the normal images, and how many of them are recorded ones.

    A patch bundle whose shipped bank holds its held-out images (bank_includes_holdout) would score
    them like training images: for those its manifest records the scores its threshold came from, on
    the bank without them (`training.calibration`), and they are used instead.  Images are matched by
    the sha256 of their file, so a copy of a held-out image elsewhere is still recognised.  Other
    images are scored live."""
    cal = (b.manifest.get("training") or {}).get("calibration")
    if not isinstance(cal, dict) or cal.get("bank") != "without_holdout":
        return _score(det, images, batch), 0
    digests, values = cal.get("sha256"), cal.get("scores")
    if (not isinstance(digests, list) or not isinstance(values, list) or len(digests) != len(values)
            or not all(isinstance(n, str) for n in digests)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)):
        raise EnsembleError(f"{b.root}: training.calibration must list as many image sha256 as finite scores")
    recorded = dict(zip(digests, values))
    keys = [sha256_file(Path(p)) for p in paths]
    out = np.empty(len(images), dtype=np.float64)
    todo = [i for i, k in enumerate(keys) if k not in recorded]
    for i, k in enumerate(keys):
        if k in recorded:
            out[i] = recorded[k]
    if todo:
        out[todo] = _score(det, [images[i] for i in todo], batch)
    return out, len(keys) - len(todo)


def _score(det: Detector, images: Sequence[np.ndarray], batch: int) -> np.ndarray:
    out: list[float] = []
    for i in range(0, len(images), batch):
        out += [r.score for r in det.score_batch(images[i:i + batch], return_map=False)]
    return np.asarray(out, dtype=np.float64)
