"""Does an ensemble beat its best member?  Label-free: on the members' synthetic-defect split.

The split is `selection`'s, made from the held-out normal images every member's run shares (each image,
a blended-defect copy and a thin-crack copy), the split the runs chose their own settings on.  A patch
member whose shipped bank holds those images (bank_includes_holdout) would score them as training
images, so the caller passes its run's calibration bank (the bank without them, `api.CALIBRATION_BANK`)
and the member is scored with that bank, in a temporary copy of the bundle: every member meets the
held-out normals unseen.  Members are combined as the runtime combines them (`runtime.ensemble`: mean
of modified z with the median/MAD of the normal images' scores; raw maps likewise).  Sits beside
`ensemble_build` (drives the Detector); no torch.  Each member's own number is optimistic by what its run
chose on this same split, so the comparison that means something is between combinations of the same
members.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import Bundle, read_manifest, write_manifest
from .detector import Detector
from .preprocess import INPUT_NORMS
from .runtime.bank import Bank
from .runtime.ensemble import modified_z
from .selection import ValidationSet, detector_score_fn, load_validation_set, score_validation, validation_metrics
from .thresholds import median_mad

log = logging.getLogger(__name__)

_KEYS = ("i_auroc", "i_auroc_blended", "i_auroc_crack", "p_auroc")
# under this many held-out normal images the comparison is noise (as backbone_choice's minimum)
MIN_NORMALS = 10


@dataclass
class MemberOutputs:
    name: str                # member_name
    scores: np.ndarray       # raw image scores, one per split image
    maps: np.ndarray         # raw maps, split images x H x W


def member_name(b: Bundle) -> str:
    """"<method>:<backbone>", suffixed "/<normalisation>" unless the input is ImageNet-normalised."""
    norm = next((n for n, (m, sd) in INPUT_NORMS.items() if (b.preprocess.mean, b.preprocess.std) == (m, sd)),
                "custom")
    return f"{b.method}:{b.backbone}" + ("" if norm == "imagenet" else f"/{norm}")


def unseen_bundle(bundle: Path, calibration_bank: np.ndarray | None, tmp: Path) -> Path:
    """`bundle`, or with a calibration bank a copy of it (in tmp) whose bank is that one."""
    if calibration_bank is None:
        return bundle
    out = tmp / f"{len(list(tmp.iterdir()))}_{bundle.name}"
    shutil.copytree(bundle, out)
    m = read_manifest(out)
    if m["postprocess"].get("kind") != "nn_l2":
        raise ValueError(f"{bundle}: a calibration bank was given for a {m['method']} bundle, which has no bank")
    Bank.build(np.ascontiguousarray(calibration_bank, np.float32),
               neighbor_b=int(m["postprocess"]["reweight_b"])).save(out / m["postprocess"]["bank"])
    write_manifest(out, m)
    return out


def split_outputs(bundles: Sequence[Path], calibration_banks: Sequence[np.ndarray | None],
                  holdout: Sequence[Path], seed: int,
                  backend: str = "onnxruntime", threads: int = 0, batch: int = 8
                  ) -> tuple[ValidationSet, list[MemberOutputs]]:
    """The split (at the largest member input; each member resizes for itself) and every member's raw
    scores and maps on it.  calibration_banks: per member, its run's bank without the held-out images,
    or None (a bundle that never saw them)."""
    loaded = [Bundle.load(b) for b in bundles]
    size = max(max(b.preprocess.size) for b in loaded)  # the split is square
    vs = load_validation_set(holdout, size, seed=seed)
    outs = []
    with tempfile.TemporaryDirectory(prefix="edgeuad-ens-check-") as tmp:
        for b, cal in zip(loaded, calibration_banks):
            with Detector(unseen_bundle(b.root, cal, Path(tmp)), backend=backend, threads=threads) as det:
                scores, maps = score_validation(detector_score_fn(det), vs, batch=batch)
            outs.append(MemberOutputs(member_name(b), scores, np.stack(maps)))
    return vs, outs


def combination(vs: ValidationSet, members: Sequence[MemberOutputs]) -> dict[str, float]:
    """validation_metrics of the members' runtime combination (one member: its own numbers)."""
    good = np.array([d == "good" for d in vs.defects])
    z_s, z_m = [], []
    for m in members:
        med, mad = median_mad(m.scores[good])
        z_s.append(modified_z(m.scores, med, mad))
        z_m.append(modified_z(m.maps, med, mad))
    met = validation_metrics(vs, np.mean(z_s, axis=0), list(np.mean(z_m, axis=0)))
    return {k: round(float(met[k]), 4) for k in _KEYS if k in met}


def check(bundles: Sequence[Path], calibration_banks: Sequence[np.ndarray | None], holdout: Sequence[Path],
          seed: int, backend: str = "onnxruntime", threads: int = 0) -> dict[str, Any]:
    """The ensemble and each member alone on the split -> a record for the manifest's training section."""
    vs, outs = split_outputs(bundles, calibration_banks, holdout, seed, backend=backend, threads=threads)
    members = [{"member": o.name, **combination(vs, [o])} for o in outs]
    ens = combination(vs, outs)
    best = max(members, key=lambda m: m["i_auroc"])
    rec = {"split": "synthetic defects in the runs' shared held-out normal images (blended + thin crack)",
           "held_out_normals": len(holdout), "images": len(vs), "seed": seed, "members": members,
           "ensemble": ens, "best_member": best["member"],
           "gain_i_auroc": round(ens["i_auroc"] - best["i_auroc"], 4)}
    msg = ("ensemble validation I-AUROC %.4f vs its best member %s %.4f (%+.4f) on %d synthetic-defect images from "
           "%d held-out normals")
    args = (ens["i_auroc"], best["member"], best["i_auroc"], rec["gain_i_auroc"], len(vs), len(holdout))
    if len(holdout) < MIN_NORMALS:
        log.warning(msg + ": fewer than %d held-out normals, too few to tell", *args, MIN_NORMALS)
    elif rec["gain_i_auroc"] < 0:
        log.warning(msg + ": the ensemble is below its best member here", *args)
    else:
        log.info(msg, *args)
    return rec
