#!/usr/bin/env python3
"""An ensemble's members, alone and combined, on the runs' synthetic-defect validation split (no test image).

    python benchmarks/ensemble_validation.py --data ../shared/data/magnetic_tile --methods patchcore recontrast

The label-free check behind an ensemble choice (plan: benchmarks/plans/ensemble_patchcore_recontrast_
2026-12-04.md).  Members are the runs + bundles compare_methods.py left in <work>/<dataset>/<method>
<member-suffix>/ (as for ensemble_methods.py).  The split is `edgeuad.selection`'s, made from the
held-out normal images every member's run shares: each image, one blended-defect copy and one thin-crack
copy.  The scoring is `edgeuad.ensemble_check`'s (what `edgeuad ensemble --runs` records as
training.validation): a patch member with its run's bank without the held-out images, every subset of two
or more members combined as the runtime does.
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
from pathlib import Path

from compare_methods import OUT, stamp
from ensemble_methods import member_args, members_of
from safetensors.numpy import load_file

from edgeuad import api
from edgeuad.atomic import atomic_write_bytes
from edgeuad.ensemble_check import combination, split_outputs

log = logging.getLogger("ensemble_validation")


def run_one(data: Path, args: argparse.Namespace) -> dict:
    runs, bundles = members_of(args.work / data.name, args.methods, args.member_suffix)
    holdout = api.holdout_intersection(runs)
    banks = [load_file(str(r.root / api.RUN_WEIGHTS)).get(api.CALIBRATION_BANK) for r in runs]
    vs, outs = split_outputs(bundles, banks, holdout, seed=args.seed, threads=args.threads)
    rows = []
    for k in range(1, len(outs) + 1):
        for combo in itertools.combinations(outs, k):
            row = {"members": [o.name for o in combo], **combination(vs, combo)}
            log.info("%s: %s", " + ".join(row["members"]), {n: v for n, v in row.items() if n != "members"})
            rows.append(row)
    best_single = max(r["i_auroc"] for r in rows if len(r["members"]) == 1)
    return {"dataset": data.name, "methods": args.methods, "member_suffix": args.member_suffix,
            "runs": [str(r.root) for r in runs], "held_out_normals": len(holdout), "n_images": len(vs),
            "rows": rows, "best_single_i_auroc": best_single,
            "ensemble_gain_i_auroc": round(rows[-1]["i_auroc"] - best_single, 4),
            # per validation image (names: <held-out index>_<good|defect type>), each member's raw score
            "images": vs.names, "labels": [int(v) for v in vs.labels],
            "scores": {o.name: [round(float(v), 6) for v in o.scores] for o in outs}}


def main() -> None:
    ap = member_args(__doc__, ["patchcore", "recontrast"])
    ap.add_argument("--suffix", default="", help="result file <dataset>_ensemble_validation<suffix>.json")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic defects (default: 0, as api.train)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    for data in args.data:
        r = stamp(run_one(data, args))
        f = args.out / f"{data.name}_ensemble_validation{args.suffix}.json"
        atomic_write_bytes(f, (json.dumps(r, indent=2) + "\n").encode())
        for row in r["rows"]:
            print(f"{data.name}: {' + '.join(row['members'])}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                                               if k != "members"))


if __name__ == "__main__":
    main()
