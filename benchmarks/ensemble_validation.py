#!/usr/bin/env python3
"""An ensemble's members, alone and combined, on the runs' synthetic-defect validation split (no test image).

    python benchmarks/ensemble_validation.py --data ../shared/data/magnetic_tile --methods patchcore recontrast

The label-free check behind an ensemble choice (plan: benchmarks/plans/ensemble_patchcore_recontrast_
2026-12-04.md).  Members are the runs + bundles compare_methods.py left in <work>/<dataset>/<method>
<member-suffix>/ (as for ensemble_methods.py).  The split is `edgeuad.selection`'s, made from the
held-out normal images every member's run shares: each image, one blended-defect copy and one thin-crack
copy.  A patch member's shipped bank holds those images (bank_includes_holdout), so it is scored here with
its run's `calibration_bank` instead (the bank its threshold was calibrated on): the held-out normals are
unseen by every member.  Every subset of two or more members is combined as the runtime does
(`runtime.ensemble`: mean of modified z, median/MAD of the normal images' scores; maps likewise).
The result: benchmarks/results/methods/<dataset>_ensemble_validation<suffix>.json.

Both kinds of member chose settings on this same split (a patch run its backbone, a ReContrast run its
checkpoint, score and levels), so each member's number here is optimistic by that choice; the
comparison is between combinations of the same members.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from compare_methods import OUT, stamp
from ensemble_methods import members_of
from safetensors.numpy import load_file

from edgeuad import api
from edgeuad.bundle import read_manifest, write_manifest
from edgeuad.detector import Detector
from edgeuad.runtime.bank import Bank
from edgeuad.runtime.ensemble import modified_z
from edgeuad.selection import load_validation_set, validation_metrics
from edgeuad.thresholds import median_mad

log = logging.getLogger("ensemble_validation")


def unseen_bundle(run: api.Run, bundle: Path, tmp: Path) -> Path:
    """The bundle itself, or for a patch run that shipped its held-out images in the bank a copy whose
    bank is the run's calibration bank (without them)."""
    state = load_file(str(run.root / api.RUN_WEIGHTS))
    if api.CALIBRATION_BANK not in state:
        return bundle
    out = tmp / bundle.parent.name
    shutil.copytree(bundle, out)
    m = read_manifest(out)
    Bank.build(np.ascontiguousarray(state[api.CALIBRATION_BANK], np.float32),
               neighbor_b=int(m["postprocess"]["reweight_b"])).save(out / m["postprocess"]["bank"])
    write_manifest(out, m)
    return out


def member_scores(bundle: Path, images: list[np.ndarray], threads: int, batch: int = 8
                  ) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    with Detector(bundle, backend="onnxruntime", threads=threads) as det:
        for i in range(0, len(images), batch):
            for r in det.score_batch(images[i:i + batch]):
                scores.append(r.score)
                maps.append(np.asarray(r.raw_map, np.float32))  # raw units, as the runtime combines them
    return np.asarray(scores, np.float64), np.stack(maps)


def summary(m: dict[str, float]) -> dict[str, float]:
    keys = ("i_auroc", "i_auroc_blended", "i_auroc_crack", "p_auroc")
    return {k: round(float(m[k]), 4) for k in keys if k in m}


def run_one(data: Path, args: argparse.Namespace) -> dict:
    runs, bundles = members_of(args.work / data.name, args.methods, args.member_suffix)
    holdout = api.holdout_intersection(runs)
    size = runs[0].preprocess.size[0]
    vs = load_validation_set(holdout, size, seed=args.seed)
    good = np.array([d == "good" for d in vs.defects])
    names = [f"{r.method}:{r.config.get('backbone')}" for r in runs]
    z_scores, z_maps, rows = [], [], []
    per_image: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ens-val-") as tmp:
        for name, run, b in zip(names, runs, bundles):
            s, maps = member_scores(unseen_bundle(run, b, Path(tmp)), vs.images, args.threads)
            m = validation_metrics(vs, s, list(maps))
            log.info("%s alone: %s", name, summary(m))
            rows.append({"members": [name], **summary(m)})
            per_image[name] = [round(float(v), 6) for v in s]
            med, mad = median_mad(s[good])
            z_scores.append(modified_z(s, med, mad))
            z_maps.append(modified_z(maps, med, mad))
    for k in range(2, len(runs) + 1):
        for combo in itertools.combinations(range(len(runs)), k):
            s = np.mean([z_scores[i] for i in combo], axis=0)
            maps = np.mean([z_maps[i] for i in combo], axis=0)
            m = validation_metrics(vs, s, list(maps))
            log.info("%s: %s", " + ".join(names[i] for i in combo), summary(m))
            rows.append({"members": [names[i] for i in combo], **summary(m)})
    best_single = max(r["i_auroc"] for r in rows if len(r["members"]) == 1)
    full = rows[-1]
    return {"dataset": data.name, "methods": args.methods, "member_suffix": args.member_suffix,
            "runs": [str(r.root) for r in runs], "held_out_normals": len(holdout), "n_images": len(vs),
            "rows": rows, "best_single_i_auroc": best_single,
            "ensemble_gain_i_auroc": round(full["i_auroc"] - best_single, 4),
            # per validation image (names: <held-out index>_<good|defect type>), each member's raw score
            "images": vs.names, "labels": [int(v) for v in vs.labels], "scores": per_image}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True, type=Path, help="MVTec-layout dataset roots")
    ap.add_argument("--methods", nargs="+", default=["patchcore", "recontrast"],
                    help="member methods (default: patchcore recontrast)")
    ap.add_argument("--member-suffix", default="",
                    help="compare_methods.py --suffix of the member runs (default: none)")
    ap.add_argument("--suffix", default="", help="result file <dataset>_ensemble_validation<suffix>.json")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic defects (default: 0, as api.train)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeuad-compare"),
                    help="compare_methods.py's work dir (default: /tmp/edgeuad-compare)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"results directory (default: {OUT})")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    for data in args.data:
        r = stamp(run_one(data, args))
        f = args.out / f"{data.name}_ensemble_validation{args.suffix}.json"
        f.write_text(json.dumps(r, indent=2) + "\n")
        for row in r["rows"]:
            print(f"{data.name}: {' + '.join(row['members'])}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                                               if k != "members"))


if __name__ == "__main__":
    main()
