#!/usr/bin/env python3
"""EfficientNet-Lite input normalisation: ImageNet mean/std (what every bundle used) vs the weights' own
inception-style (x - 127) / 128.  Plan: benchmarks/plans/input_normalisation_2026-12-04.md.

    python benchmarks/ablate_input_norm.py --data ../shared/data/magnetic_tile ../shared/data/bottle

1. stem statistics: on the first 32 normal training images, the stem convolution's output against the
   stem BatchNorm's running statistics (what the weights saw in training): median over channels of the
   batch-mean shift in running standard deviations, and of the batch / running variance ratio;
2. the patch methods' proxy (PatchCore with the default patch settings, as backbone auto fits it) on the
   run's training images and synthetic-defect split (seed 0, api.train's split), per Lite backbone, per
   normalisation.  No test image is read.
Results: benchmarks/results/methods/<dataset>_input_norm.json.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from compare_methods import OUT, stamp

from edgeuad import api
from edgeuad.atomic import atomic_write_bytes
from edgeuad import data as _data
from edgeuad.backbones import build_backbone
from edgeuad.methods.backbone_choice import CANDIDATES, choose_backbone
from edgeuad.preprocess import PreprocessConfig

NORMS = {"imagenet": PreprocessConfig().mean, "inception": (127 / 255,) * 3}
STDS = {"imagenet": PreprocessConfig().std, "inception": (128 / 255,) * 3}


def pre_for(norm: str, size: int) -> PreprocessConfig:
    return PreprocessConfig(size=(size, size), mean=NORMS[norm], std=STDS[norm])


def stem_stats(paths: list[Path], size: int) -> list[dict]:
    rows = []
    for name in CANDIDATES:
        bb = build_backbone(name).eval()
        rm, rv = bb._bn0.running_mean, bb._bn0.running_var
        for norm in NORMS:
            x, _ = api.load_array(paths[:32], pre_for(norm, size))
            with torch.inference_mode():
                h = bb._conv_stem(torch.from_numpy(x))
            bm, bv = h.mean((0, 2, 3)), h.var((0, 2, 3))
            rows.append({"backbone": name, "norm": norm,
                         "mean_shift_sd": round(float(((bm - rm) / rv.sqrt()).abs().median()), 4),
                         "var_ratio": round(float((bv / rv).median()), 4)})
            logging.info("stem %s %s: %s", name, norm, rows[-1])
    return rows


def proxy(data: Path, norm: str, seed: int, train_every: int) -> dict:
    cfg = api.method_config("patchcore", {"seed": seed})
    paths = api.normal_image_paths(data)
    train_paths, holdout = _data.split_holdout(paths, fraction=0.1, seed=seed, min_holdout=2)
    pre = pre_for(norm, int(cfg.image_size))
    x, _ = api.load_array(train_paths[::train_every], pre)
    vs, vx = api._selection_split(holdout, cfg, pre)
    choice = choose_backbone(cfg, x, vs, vx)
    return {"norm": norm, "candidates": choice.report["candidates"], "chosen": choice.report["chosen"],
            "best_i_auroc": max(c["i_auroc"] for c in choice.report["candidates"].values() if "i_auroc" in c),
            "n_train": len(x), "held_out_normals": len(holdout)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True, type=Path, help="MVTec-layout dataset roots")
    ap.add_argument("--norms", nargs="+", default=list(NORMS), choices=list(NORMS),
                    help="normalisations to fit the proxy with (default: imagenet inception)")
    ap.add_argument("--seed", type=int, default=0, help="split and defect seed (default: 0)")
    ap.add_argument("--train-every", type=int, default=1, help="keep every n-th training image (default: 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"results directory (default: {OUT})")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    for data in args.data:
        paths = api.normal_image_paths(data)
        r = {"dataset": data.name, "seed": args.seed, "stem": stem_stats(paths, 256),
             "proxy": [proxy(data, n, args.seed, args.train_every) for n in args.norms]}
        f = args.out / f"{data.name}_input_norm.json"
        atomic_write_bytes(f, (json.dumps(stamp(r), indent=2) + "\n").encode())
        for p in r["proxy"]:
            print(data.name, p["norm"], {k: v.get("i_auroc") for k, v in p["candidates"].items()}, "best", p["best_i_auroc"])


if __name__ == "__main__":
    main()
