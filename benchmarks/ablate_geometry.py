#!/usr/bin/env python3
"""Aspect ratio: squash every image to the square input (the product) or letterbox it (issue #13).

    python benchmarks/ablate_geometry.py --data ../shared/data/magnetic_tile --train-every 3 \
        --arms squash,256 letterbox,256 letterbox,320

magnetic_tile's images have aspect ratios 0.4-2.6 (width/height) and the product resizes them to a
square, which stretches each one differently.  An arm is resize,size:
  squash     resize to size x size (edgeuad.preprocess; what every bundle does);
  letterbox  resize so the long side is `size`, keeping the aspect ratio, and fill the rest of the
             size x size input by mirroring the image (BORDER_REFLECT_101: texture continues, so the
             padding looks like material to the backbone, not like a defect); the map is cropped
             back to the image's region before the image score (max) is taken.
PatchCore-Lite0 as `ablate_patchcore.py` builds it (stages 2+3, zero padding counted, raw
concatenation, 1% greedy coreset, exact 1-NN, bilinear align_corners=True, blur sigma 4).  Every
arm's maps are resampled to one squashed 256 x 256 frame for the pixel metrics, where the masks are.

SELECTION uses the validation split only: the held-out 10% of normal images (seed 0, as `api.train`)
and a synthetic-defect copy of each (`edgeuad.selection.make_validation_set`: defects blended in at
20-60 %), made on the squashed 256 px image and resampled to the image's own size, so both arms see
the same defects.  Test-split numbers (overall and per defect type) are printed for the record only.
Writes benchmarks/results/methods/<dataset>_patchcore_geometry.jsonl.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ablate_patchcore import embed, nn_distance, stage_features
from edgeuad import data as D
from edgeuad.backbones import build_backbone
from edgeuad.methods.common import gaussian_blur_torch
from edgeuad.methods.coreset import greedy_coreset
from edgeuad.metrics import auroc, pixel_auroc
from edgeuad.preprocess import resize
from edgeuad.selection import make_validation_set

HERE = Path(__file__).resolve().parent
FRAME = 256  # the frame the masks and metrics live in
log = logging.getLogger("ablate_geometry")


def region(shape: tuple[int, ...], mode: str, size: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the size x size input."""
    if mode == "squash":
        return 0, 0, size, size
    h, w = shape[:2]
    s = size / max(h, w)
    nh, nw = max(8, round(h * s)), max(8, round(w * s))
    return (size - nh) // 2, (size - nw) // 2, nh, nw


def to_input(img: np.ndarray, mode: str, size: int) -> np.ndarray:
    y, x, nh, nw = region(img.shape, mode, size)
    r = resize(np.ascontiguousarray(img), (nh, nw))
    if mode == "squash":
        return r
    return cv2.copyMakeBorder(r, y, size - nh - y, x, size - nw - x, cv2.BORDER_REFLECT_101)


def load(root: Path, every: int) -> dict:
    train_p, hold_p = D.split_holdout(sorted((root / "train" / "good").iterdir()), 0.1, seed=0)
    hold = [D.read_image(p) for p in hold_p]
    vs = make_validation_set(hold, seed=0, size=FRAME, cracks=False)  # pairs, as it ran (c42da14)
    # back to each held-out image's own size: a pair (good, defect) shares its original's shape
    val = [cv2.resize(im, (hold[i // 2].shape[1], hold[i // 2].shape[0]), interpolation=cv2.INTER_LINEAR)
           for i, im in enumerate(vs.images)]
    test = D.list_mvtec(root, "test")
    return {"imgs": {"train": [D.read_image(p) for p in train_p[::every]], "val": val,
                     "test": [D.read_image(s.path) for s in test]},
            "labels": {"val": vs.labels, "test": np.array([s.label for s in test])},
            "masks": {"val": vs.masks, "test": [D.load_mask(s, (FRAME, FRAME)) for s in test]},
            "defects": {"val": vs.defects, "test": [s.defect for s in test]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--train-every", type=int, default=3, help="keep every N-th training image")
    ap.add_argument("--arms", nargs="+", default=["squash,256", "letterbox,256", "letterbox,320"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = args.out or HERE / "results" / "methods" / f"{args.data.name}_patchcore_geometry.jsonl"
    sp = load(args.data, args.train_every)
    bb = build_backbone("efficientnet_lite0", True).eval()
    for arm in args.arms:
        mode, size = arm.split(",")[0], int(arm.split(",")[1])
        if mode not in ("squash", "letterbox"):
            raise SystemExit(f"unknown resize mode {mode!r} (squash, letterbox)")
        t0 = time.time()
        # the inputs are already size x size: "product" resizing is the identity on them
        fx = {k: stage_features(bb, [to_input(im, mode, size) for im in v], "product", size)
              for k, v in sp["imgs"].items()}
        tr, grid = embed(*fx["train"], True, "raw")
        x = tr.reshape(-1, tr.shape[-1]).numpy()
        bank = torch.from_numpy(x[np.sort(greedy_coreset(x, 0.01, proj_dim=128, seed=0, min_items=1000))])
        for split in ("val", "test"):
            q, _ = embed(*fx[split], True, "raw")
            d = nn_distance(q.reshape(-1, q.shape[-1]), bank).reshape(q.shape[0], 1, *grid)
            maps = gaussian_blur_torch(F.interpolate(d, size=(size, size), mode="bilinear", align_corners=True)[:, 0],
                                       4.0).numpy()
            scores, frame_maps = [], []
            for i, im in enumerate(sp["imgs"][split]):
                y, x0, nh, nw = region(im.shape, mode, size)
                m = np.ascontiguousarray(maps[i, y:y + nh, x0:x0 + nw])
                scores.append(float(m.max()))
                frame_maps.append(cv2.resize(m, (FRAME, FRAME), interpolation=cv2.INTER_LINEAR))
            scores_a = np.array(scores)
            masks = sp["masks"][split]
            keep = [i for i, m in enumerate(masks) if m is not None]
            rec = {"dataset": args.data.name, "backbone": "efficientnet_lite0", "train_every": args.train_every,
                   "n_train": len(sp["imgs"]["train"]), "resize": mode, "size": size, "split": split,
                   "i_auroc": round(auroc(sp["labels"][split], scores_a), 4),
                   "p_auroc": round(pixel_auroc([masks[i][::4, ::4] for i in keep],
                                                [frame_maps[i][::4, ::4] for i in keep]), 4),
                   "seconds": round(time.time() - t0)}
            labels = sp["labels"][split]
            for t in sorted(set(sp["defects"][split]) - {"good"}):  # each type against all normals
                sel = [i for i, dt in enumerate(sp["defects"][split]) if dt in (t, "good")]
                rec[f"i_auroc_{t}"] = round(auroc(labels[sel], scores_a[sel]), 4)
            log.info("%s", rec)
            with open(out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
