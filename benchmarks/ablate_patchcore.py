#!/usr/bin/env python3
"""PatchCore feature ablation on an MVTec-layout set: which feature choices make the default lose to a
plain PatchCore recipe (issue #13).  One factor at a time, on cached backbone features.

    python benchmarks/ablate_patchcore.py --data ../shared/data/magnetic_tile --train-every 3 \
        --spaces product,F,proj256 product,F,raw product,T,raw area,T,raw

A "space" is interp,count_include_pad(T/F),features:
  interp   product = edgeuad.preprocess (INTER_AREA when shrinking, INTER_LINEAR when enlarging),
           area = always INTER_AREA (the plain recipe);
  T/F      whether the 3x3 local average counts the zero padding (PatchCore's zero-padded unfold: T);
  features proj256 = PatchCore's adaptive-average channel projection to 256 (replicates thin levels),
           raw = the plain concatenation of the two stages,
           raw+s4 = raw plus the stride-4 stage (3x3 average at stride 4, bilinearly resampled to the
           stride-8 grid): the product's `layers=(1, 0, 2)`.
Every space gets its own 1% greedy coreset (seed 0) over the training patches; scores are exact 1-NN
Euclidean distances, bilinear upsampling (align_corners True and False), Gaussian blur sigma 4, image score
= max.  The SELECTION criterion is the validation split: the held-out normal images (10%, the split
`api.train` makes with seed 0) and one synthetic-defect copy of each (edgeuad.synthetic.add_defect at full
strength).  Test-split numbers are printed for the record only.  `--train-every 3` keeps every third
training image so that a space costs minutes instead of ~10 minutes on 2 cores.

Training-set size (does a bank over more normal images score better?):
    python benchmarks/ablate_patchcore.py --data ../shared/data/magnetic_tile --spaces product,T,raw \
        --val blended --splits val --train-drop 9        # 560 of the 630 training images
`--train-drop K` leaves out every K-th training image; `--val blended` uses the label-free selection's
validation set instead (`edgeuad.selection.load_validation_set`: the same held-out normals, defects
blended in at 20-60 %, so the AUROC does not saturate) without its thin cracks (as it ran before they
existed), `--val blended+crack` with them (the selection set `edgeuad train` uses; its I-AUROC is the
mean of the two families'); `--splits val` skips the test split.

Post-processing and bank size (one factor at a time against the default, issue #13):
    python benchmarks/ablate_patchcore.py --data ../shared/data/magnetic_tile --spaces product,T,raw \
        --val blended+crack --coreset 0.01 0.03 --sigmas 4 2 --scores max topk --align true
Every (coreset ratio) gets its own coreset; sigmas and scores (max, or the mean of the top 1 % of map
pixels) are read from the same distances.
The stride-4 stage (issue #13; written down on 2026-12-03 before its first run):
    python benchmarks/ablate_patchcore.py --data ../shared/data/magnetic_tile --backbone efficientnet_lite0 \
        --spaces product,T,raw product,T,raw+s4 --val blended+crack --splits val --align true
(and --backbone efficientnet_lite2, and both on bottle).  Criterion: the selection split's I-AUROC (mean of
the blended and crack families), seed 0.  raw+s4 becomes a default candidate if it gains >= +0.010 on
magnetic_tile with both Lite0 and Lite2 (the backbones `auto` chose there) and loses <= 0.010 on bottle;
a candidate then runs 3 seeds through the shipped path.  The test split is not read for the decision.

Which features of the backbone (benchmarks/plans/patchcore_expand_taps_2026-12-05.md, written before its first run):
    python benchmarks/ablate_patchcore.py --data ../shared/data/magnetic_tile --backbone efficientnet_lite2 \
        --input-norm inception --taps block expand --spaces product,T,raw --val blended+crack --splits val --align true
`--taps expand` reads the next blocks' post-ReLU6 expansions at the same strides (`edgeuad.backbones`);
`--input-norm` the input normalisation (`edgeuad.preprocess.INPUT_NORMS`; default imagenet, as every run above).

Writes benchmarks/results/methods/<dataset>_patchcore_ablation.jsonl (one record per space x coreset x
split x align x sigma x score).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from edgeuad import data as D
from edgeuad.backbones import LITE_TAPS, build_backbone
from edgeuad.methods.common import gaussian_blur_torch
from edgeuad.methods.coreset import greedy_coreset
from edgeuad.methods.patch_features import adaptive_avg_matrix
from edgeuad.metrics import auroc, pixel_auroc
from edgeuad.preprocess import INPUT_NORMS, PreprocessConfig, preprocess
from edgeuad.selection import type_aurocs
from edgeuad.synthetic import add_defect

HERE = Path(__file__).resolve().parent
S = 256
NORM = "imagenet"  # one input normalisation per run (--input-norm)
log = logging.getLogger("ablate_patchcore")


def load_splits(root: Path, every: int, drop: int = 0, val_kind: str = "full", splits: tuple = ("val", "test")) -> dict:
    """Images, labels, masks and defect names of the train / val / test splits."""
    train_p, hold_p = D.split_holdout(sorted((root / "train" / "good").iterdir()), 0.1, seed=0)
    train_p = train_p[::every]
    if drop:
        train_p = [p for i, p in enumerate(train_p) if (i + 1) % drop]
    test = D.list_mvtec(root, "test") if "test" in splits else []
    imgs = {"train": [D.read_image(p) for p in train_p], "test": [D.read_image(s.path) for s in test]}
    test_defects = [s.defect for s in test]
    if val_kind in ("blended", "blended+crack"):
        from edgeuad.selection import load_validation_set

        vs = load_validation_set(hold_p, S, seed=0, cracks=val_kind == "blended+crack")
        imgs["val"] = vs.images
        return {"imgs": imgs, "labels": {"val": vs.labels, "test": np.array([s.label for s in test])},
                "masks": {"val": vs.masks, "test": [D.load_mask(s, (S, S)) for s in test]},
                "defects": {"val": vs.defects, "test": test_defects}}
    val, vlab, vmask = [], [], []
    for i, p in enumerate(hold_p):
        r = cv2.resize(D.read_image(p), (S, S), interpolation=cv2.INTER_AREA)
        d, m = add_defect(r, ("scratch", "blob", "cutout")[i % 3], np.random.default_rng([0, i]))
        val += [r, d]
        vlab += [0, 1]
        vmask += [np.zeros((S, S), bool), m]
    imgs["val"] = val
    return {"imgs": imgs, "labels": {"val": np.array(vlab), "test": np.array([s.label for s in test])},
            "masks": {"val": vmask, "test": [D.load_mask(s, (S, S)) for s in test]},
            "defects": {"val": ["good" if y == 0 else ("scratch", "blob", "cutout")[i // 2 % 3]
                                for i, y in enumerate(vlab)], "test": test_defects}}


def stage_features(bb: torch.nn.Module, ims: list, interp: str, size: int = 0,
                   stride4: bool = False) -> tuple[torch.Tensor, ...]:
    """The stride-8 and stride-16 stages of `ims` resized to size x size (0: this run's --size), and the
    stride-4 stage third when `stride4`."""
    size = size or S
    if interp == "area":
        ims = [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in ims]
    mean, std = INPUT_NORMS[NORM]
    x = preprocess(ims, PreprocessConfig(size=(size, size), mean=mean, std=std))
    out: list[list[torch.Tensor]] = [[], [], []]
    with torch.inference_mode():
        for s in range(0, len(x), 32):
            f = bb(torch.from_numpy(x[s:s + 32]))
            out[0].append(f[1])
            out[1].append(f[2])
            if stride4:
                out[2].append(f[0])
    return tuple(torch.cat(o) for o in out if o)


def embed(a: torch.Tensor, b: torch.Tensor, cip: bool, feats: str,
          s4: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch features on the stride-8 grid of `a`.  feats raw+s4 also concatenates the stride-4 stage `s4`
    (averaged over 3x3 at its own stride, then bilinearly resampled to the grid: the product's
    layers=(1, 0, 2))."""
    a = F.avg_pool2d(a, 3, 1, 1, count_include_pad=cip)
    b = F.avg_pool2d(b, 3, 1, 1, count_include_pad=cip)
    b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
    parts = [a, b]
    if feats == "raw+s4":
        if s4 is None:
            raise ValueError("features raw+s4 need the stride-4 stage")
        s4 = F.avg_pool2d(s4, 3, 1, 1, count_include_pad=cip)
        parts.insert(1, F.interpolate(s4, size=a.shape[-2:], mode="bilinear", align_corners=False))
    m = torch.cat(parts, 1)
    n, c, h, w = m.shape
    m = m.permute(0, 2, 3, 1).reshape(n, h * w, c)
    if feats == "proj256":
        ca, cb = a.shape[1], b.shape[1]
        p = adaptive_avg_matrix(512, 256) @ torch.block_diag(adaptive_avg_matrix(ca, 256), adaptive_avg_matrix(cb, 256))
        m = m @ p.float().T
    return m.contiguous(), (h, w)


def nn_distance(q: torch.Tensor, bank: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    out = torch.empty(q.shape[0])
    bn = (bank * bank).sum(1)
    for s in range(0, q.shape[0], chunk):
        qc = q[s:s + chunk]
        d2 = (qc * qc).sum(1, keepdim=True) - 2 * qc @ bank.T + bn
        out[s:s + chunk] = d2.min(1).values.clamp_min(0).sqrt()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--train-every", type=int, default=1, help="keep every N-th training image")
    ap.add_argument("--spaces", nargs="+", default=["product,F,proj256", "product,F,raw", "product,T,raw", "area,T,raw"])
    ap.add_argument("--train-drop", type=int, default=0, help="leave out every K-th training image (0: none)")
    ap.add_argument("--val", choices=("full", "blended", "blended+crack"), default="full",
                    help="synthetic-defect validation set")
    ap.add_argument("--coreset", nargs="+", type=float, default=[0.01], help="coreset ratios (one coreset each)")
    ap.add_argument("--sigmas", nargs="+", type=float, default=[4.0], help="Gaussian blur sigmas of the map")
    ap.add_argument("--scores", nargs="+", choices=("max", "topk"), default=["max"], help="image scores")
    ap.add_argument("--align", nargs="+", choices=("true", "false"), default=["true", "false"],
                    help="bilinear align_corners values (the product: true)")
    ap.add_argument("--splits", nargs="+", choices=("val", "test"), default=["val", "test"])
    ap.add_argument("--size", type=int, default=256, help="input size (square, a multiple of 32)")
    ap.add_argument("--input-norm", choices=sorted(INPUT_NORMS), default="imagenet")
    ap.add_argument("--taps", nargs="+", choices=LITE_TAPS, default=["block"],
                    help="backbone features: stage outputs (block) or the next blocks' expansions (expand)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    global S, NORM
    S = args.size  # one input size per run (the loaders and the map read it)
    NORM = args.input_norm
    out = args.out or HERE / "results" / "methods" / f"{args.data.name}_patchcore_ablation.jsonl"
    spaces = [(i, c == "T", f) for i, c, f in (s.split(",") for s in args.spaces)]
    args.align = [a == "true" for a in args.align]
    t0 = time.time()
    sp = load_splits(args.data, args.train_every, args.train_drop, args.val, tuple(args.splits))
    s4 = any(s[2] == "raw+s4" for s in spaces)
    for taps in args.taps:
        bb = build_backbone(args.backbone, True, taps=taps).eval()
        feats = {(interp, k): stage_features(bb, ims, interp, stride4=s4)
                 for interp in sorted({s[0] for s in spaces}) for k, ims in sp["imgs"].items() if ims}
        log.info("%s features in %.0f s", taps, time.time() - t0)
        for interp, cip, kind in spaces:
            score_space(args, sp, feats, interp, cip, kind, taps, out)


def score_space(args: argparse.Namespace, sp: dict, feats: dict, interp: str, cip: bool, kind: str, taps: str,
                out: Path) -> None:
    """One feature space: its coresets, then every (split, align, sigma, score) record."""
    tr, grid = embed(*feats[interp, "train"][:2], cip, kind, *feats[interp, "train"][2:])
    x = tr.reshape(-1, tr.shape[-1]).numpy()
    queries = {split: embed(*feats[interp, split][:2], cip, kind, *feats[interp, split][2:])[0]
               for split in args.splits}
    for ratio in args.coreset:
        tc = time.time()
        bank = torch.from_numpy(x[np.sort(greedy_coreset(x, ratio, proj_dim=128, seed=0, min_items=1000))])
        log.info("coreset %.3f: %d entries in %.0f s", ratio, len(bank), time.time() - tc)
        for split, q in queries.items():
            d = nn_distance(q.reshape(-1, q.shape[-1]), bank).reshape(q.shape[0], 1, *grid)
            masks = sp["masks"][split]
            keep = [i for i, m in enumerate(masks) if m is not None]
            for align, sigma in itertools.product(args.align, args.sigmas):
                mm = gaussian_blur_torch(F.interpolate(d, size=(S, S), mode="bilinear", align_corners=align)[:, 0],
                                         sigma).numpy()
                p_auroc = round(pixel_auroc([masks[i][::4, ::4] for i in keep], [mm[i][::4, ::4] for i in keep]), 4)
                flat = mm.reshape(len(mm), -1)
                for score in args.scores:
                    if score == "max":
                        img = flat.max(1)
                    else:  # the runtime's topk_mean: the mean of the max(1, int(0.01 H W)) largest values
                        k = max(1, int(0.01 * flat.shape[1]))
                        img = np.sort(flat, axis=1)[:, -k:].mean(1)
                    rec = {"dataset": args.data.name, "backbone": args.backbone, "taps": taps,
                           "input_norm": NORM, "train_every": args.train_every,
                           "train_drop": args.train_drop, "val": args.val, "size": S,
                           "n_train": len(sp["imgs"]["train"]), "split": split, "interp": interp,
                           "count_include_pad": cip, "features": kind, "coreset": ratio, "bank": len(bank),
                           "align_corners": align, "sigma": sigma, "score": score,
                           "i_auroc": round(auroc(sp["labels"][split], img), 4), "p_auroc": p_auroc}
                    rec.update({k: round(v, 4) for k, v in
                                type_aurocs(sp["labels"][split], img, sp["defects"][split]).items()})
                    log.info("%s", rec)
                    with open(out, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
