#!/usr/bin/env python3
"""Which feature levels of a trained ReContrast model carry its anomaly signal (issue #13)?

    python benchmarks/ablate_recontrast_levels.py --run RUN_DIR --data ../shared/data/magnetic_tile

Reads a finished `edgeuad train --method recontrast` run (its weights and config, the checkpoint its
label-free selection kept) and scores the run's own selection split (its held-out normals with blended
and thin-crack copies, `edgeuad.selection`) and, with `--splits val test`, the test split, once per
subset of the three levels (strides 4, 8, 16; each level = its two crossed pairs).  The map of a subset
is the sum of its pairs' bilinearly upsampled cosine distances, blurred with the run's sigma: the shipped
`anomaly_map_torch` with pair weights 1 (in) and 0 (out), which a bundle's `postprocess.weights` express.

Per subset and split it records I-AUROC (max and top-1 % mean), P-AUROC, the I-AUROC of each defect
type, and the share of normal images whose map maximum lies within 16 px of the border (the issue's
lead).  Selection reads the validation rows only; the test rows are for the record.
Written down on 2026-12-03 before the first run on magnetic_tile (a 500-iteration run, encoder BN train,
seed 0): if dropping the stride-4 level (levels 2+3) beats all three levels by >= +0.010 validation
I-AUROC under the run's image score, ReContrast gets a label-free level choice (all vs 2+3, made on this
split at the kept checkpoint) and a full run through the shipped path; otherwise the finding is recorded
and nothing changes.
`--groups both frozen train` also splits each level subset by crossed pair set (arms E1/E2 of
benchmarks/plans/recontrast_pairs_2026-12-05.md, written before their first run): "frozen" = the
`l<k>_frozen` pairs (heads fed by the trainable branch, reconstructing the frozen encoder), "train" = the
`l<k>_train` pairs, "both" = the shipped map; each record names its `pairs`.
`--pool 1 3 5` scores each subset again with every encoder and decoder feature map averaged over k x k
(stride 1, in-image neighbours) before the cosine (arm G of
benchmarks/plans/recontrast_feature_pool_2026-12-05.md, written before its first run); each record names its
`pool` (1 = the shipped map).
`--center none mean std` scores each subset again with every pair's encoder target and reconstruction centred
(`mean`: minus the target's per-channel mean) or standardised (`std`: also divided by its per-channel standard
deviation) before the cosine, the statistics taken over 64 of the run's training images (never a held-out or
test image): arms J1/J2 of benchmarks/plans/recontrast_centred_cosine_2026-12-05.md, written before their first
run; each record names its `center` (none = the shipped map).
Writes benchmarks/results/methods/<dataset>_recontrast_levels.jsonl (`--out` for another file).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeuad import api
from edgeuad import data as D
from edgeuad.methods.recontrast import ReContrastConfig, anomaly_map_torch, load_model
from edgeuad.metrics import auroc, pixel_auroc
from edgeuad.preprocess import preprocess
from edgeuad.selection import load_validation_set, type_aurocs

HERE = Path(__file__).resolve().parent
log = logging.getLogger("ablate_recontrast_levels")
BORDER = 16


SUBSETS = [sub for n in (3, 2, 1) for sub in itertools.combinations((1, 2, 3), n)]
GROUPS = {"both": ("frozen", "train"), "frozen": ("frozen",), "train": ("train",)}


CENTERS = ("none", "mean", "std")
STATS_IMAGES = 64


def local_mean(t: torch.Tensor, k: int) -> torch.Tensor:
    """k x k average at stride 1 over the in-image neighbours (k = 1: unchanged)."""
    return t if k == 1 else F.avg_pool2d(t, k, 1, k // 2, count_include_pad=False)


@torch.inference_mode()
def target_stats(model, x: np.ndarray, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per output pair, the encoder target's per-channel mean and standard deviation over every position of `x`
    (shapes (1, C, 1, 1)), accumulated in float64."""
    sums: list[list[torch.Tensor]] = []   # per pair: [sum, sum of squares, count]
    for s in range(0, len(x), batch):
        enc, _ = model(torch.from_numpy(x[s:s + batch]))
        for i, e in enumerate(enc):
            e = e.double()
            part = [e.sum((0, 2, 3)), (e * e).sum((0, 2, 3)), torch.tensor(e.numel() / e.shape[1])]
            if len(sums) <= i:
                sums.append(part)
            else:
                sums[i] = [u + v for u, v in zip(sums[i], part)]
    out = []
    for a, b, n in sums:
        mu = a / n
        sd = (b / n - mu * mu).clamp_min(0).sqrt().clamp_min(1e-6)
        out.append((mu.float().view(1, -1, 1, 1), sd.float().view(1, -1, 1, 1)))
    return out


def centre(ts: list[torch.Tensor], stats: list[tuple[torch.Tensor, torch.Tensor]] | None, how: str) -> list:
    """Pair i's tensor minus its target's mean (how="mean"), also divided by its standard deviation ("std")."""
    if how == "none":
        return ts
    return [(t - mu) / sd if how == "std" else t - mu for t, (mu, sd) in zip(ts, stats)]


@torch.inference_mode()
def subset_maps(model, x: np.ndarray, cfg: ReContrastConfig, batch: int = 8, groups: tuple[str, ...] = ("both",),
                pools: tuple[int, ...] = (1,), centers: tuple[str, ...] = ("none",),
                stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> dict[tuple[tuple[int, ...], str, int, str], dict]:
    """Per (subset of levels, pair group, pool size, centring): the image scores (max, top-1 % mean), the maps at a
    quarter of the resolution (for P-AUROC) and each map's maximum position, all from `anomaly_map_torch` (the
    shipped reference) with weight 1 on the subset's pairs and 0 on the others, on features centred by `stats`
    (`centre`) and then averaged over pool x pool (`local_mean`); the model runs once per batch for every subset."""
    names = list(model.pair_names())
    acc: dict[tuple[tuple[int, ...], str, int, str], dict[str, list]] = {
        (sub, g, k, c): {"max": [], "topk": [], "maps": [], "argmax": []}
        for sub in SUBSETS for g in groups for k in pools for c in centers}
    for s in range(0, len(x), batch):
        enc0, dec0 = model(torch.from_numpy(x[s:s + batch]))
        feats = {(k, c): ([local_mean(t, k) for t in centre(enc0, stats, c)],
                          [local_mean(t, k) for t in centre(dec0, stats, c)]) for k in pools for c in centers}
        for (sub, g, k, c), a in acc.items():
            enc, dec = feats[(k, c)]
            # "l1_frozen" -> level 1, set "frozen"
            w = [1.0 if int(n[1]) in sub and n.split("_")[1] in GROUPS[g] else 0.0 for n in names]
            maps, mx, tk = anomaly_map_torch(enc, dec, cfg.image_size, sigma=cfg.sigma, weights=w,
                                             topk_frac=cfg.topk_frac)
            a["max"].append(mx.numpy())
            a["topk"].append(tk.numpy())
            a["maps"].append(maps[:, ::4, ::4].numpy())
            a["argmax"].append(maps.flatten(1).argmax(1).numpy())
    return {sub: {k: np.concatenate(v) for k, v in a.items()} for sub, a in acc.items()}


def evaluate(sm: dict, size: int, labels: np.ndarray, masks: list, defects: list[str]) -> dict:
    keep = [i for i, m in enumerate(masks) if m is not None]
    rec = {"i_auroc_max": auroc(labels, sm["max"]), "i_auroc_topk_mean": auroc(labels, sm["topk"])}
    if any(masks[i].any() for i in keep):  # a set with image labels only (bottle here) has no P-AUROC
        rec["p_auroc"] = pixel_auroc([masks[i][::4, ::4] for i in keep], [sm["maps"][i] for i in keep])
    rec.update(type_aurocs(labels, sm["max"], defects))
    arg = sm["argmax"][labels == 0]
    r, c = arg // size, arg % size
    near = (r < BORDER) | (c < BORDER) | (r >= size - BORDER) | (c >= size - BORDER)
    rec["normal_max_near_border"] = float(near.mean())
    return {k: round(float(v), 4) for k, v in rec.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished ReContrast training run")
    ap.add_argument("--data", type=Path, required=True, help="the MVTec-layout set the run was trained on")
    ap.add_argument("--splits", nargs="+", choices=("val", "test"), default=["val"])
    ap.add_argument("--groups", nargs="+", choices=tuple(GROUPS), default=["both"],
                    help="crossed pair sets to score separately (default: both sets, the shipped map)")
    ap.add_argument("--pool", nargs="+", type=int, default=[1],
                    help="feature averaging sizes to score (1 = the shipped map; odd sizes)")
    ap.add_argument("--center", nargs="+", choices=CENTERS, default=["none"],
                    help="feature centring to score (none = the shipped map; mean, std: arms J1/J2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if any(k < 1 or k % 2 == 0 for k in args.pool):
        raise SystemExit(f"--pool sizes must be odd and >= 1, got {args.pool}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    run = api.Run.load(args.run)
    if run.method != "recontrast":
        raise SystemExit(f"{args.run} is a {run.method} run, not recontrast")
    cfg = ReContrastConfig.from_dict(run.config)
    from safetensors.torch import load_file

    model = load_model(load_file(str(args.run / api.RUN_WEIGHTS)), cfg)
    size = int(cfg.image_size)
    out = args.out or HERE / "results" / "methods" / f"{args.data.name}_recontrast_levels.jsonl"
    sel = run.info.get("selection", {})
    base = {"dataset": args.data.name, "run": str(args.run), "iterations": cfg.iterations,
            "kept_iteration": sel.get("checkpoint", {}).get("iteration"), "encoder_bn": cfg.encoder_bn,
            "sigma": cfg.sigma, "score": cfg.score, "chosen_levels": cfg.levels, "seed": cfg.seed}
    stats = None
    if set(args.center) - {"none"}:
        held = {Path(p).resolve() for p in run.holdout}
        train = sorted(p for p in (s.path for s in D.list_mvtec(args.data, "train")) if Path(p).resolve() not in held)
        pick = train[::max(1, len(train) // STATS_IMAGES)][:STATS_IMAGES]
        stats = target_stats(model, api.load_array(pick, run.preprocess)[0])
        base["center_images"] = len(pick)
    for split in args.splits:
        t0 = time.time()
        if split == "val":
            vs = load_validation_set([Path(p) for p in run.holdout], size, seed=int(cfg.seed))
            x, labels, masks, defects = preprocess(vs.images, run.preprocess), vs.labels, vs.masks, vs.defects
        else:
            test = D.list_mvtec(args.data, "test")
            x, _ = api.load_array([s.path for s in test], run.preprocess)
            labels = np.array([s.label for s in test])
            masks = [D.load_mask(s, (size, size)) for s in test]
            defects = [s.defect for s in test]
        by_subset = subset_maps(model, x, cfg, groups=tuple(args.groups), pools=tuple(args.pool),
                                centers=tuple(args.center), stats=stats)
        log.info("%s: %d images in %.0f s", split, len(x), time.time() - t0)
        for (subset, group, k, c), sm in by_subset.items():
            rec = {**base, "split": split, "levels": list(subset), "pairs": group, "pool": k, "center": c,
                   **evaluate(sm, size, labels, masks, defects)}
            log.info("%s", rec)
            with open(out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
