"""Fused CPU anomaly map (edgeuad._rt.cos_map) vs torch eager ops vs the numpy reference.

Workload: 256x256 output from the default backbone's three levels (efficientnet_lite0,
strides 4/8/16, channels 24/40/112 -> 64x64, 32x32, 16x16) with two (a, b) pairs per
level (6 pairs), sigma 4, batch 1 and 8.  torch runs with 2 threads, `_rt` with 2 OpenMP
threads.  Prints a markdown table (ms per call, median of --repeat runs).

    python benchmarks/bench_maps.py [--repeat 30] [--threads 2]
"""
from __future__ import annotations

import argparse
import io

import numpy as np
import torch
import torch.nn.functional as F

from edgeuad import _rt
from edgeuad.bench.timing import median_ms
from _results import publish  # benchmarks/_results.py (scripts run from anywhere: python puts their dir on sys.path)
from edgeuad.runtime.maps import cos_map_reference
from edgeuad.methods.common import gaussian_blur_torch

LEVELS = [(24, 64, 64), (40, 32, 32), (112, 16, 16)]
OUT = (256, 256)
SIGMA = 4.0


def make_pairs(batch: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for c, h, w in LEVELS:
        for _ in range(2):
            a = rng.standard_normal((batch, c, h, w), dtype=np.float32)
            pairs.append((a, (a + 0.3 * rng.standard_normal(a.shape, dtype=np.float32)).astype(np.float32)))
    return pairs


def torch_eager(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """What a torch user writes: pairs at the same resolution summed before upsampling (bilinear
    upsampling is linear), one interpolation per resolution, then the blur."""
    by_size: dict[tuple[int, int], torch.Tensor] = {}
    for a, b in pairs:
        d = 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)
        hw = tuple(d.shape[-2:])
        by_size[hw] = d if hw not in by_size else by_size[hw] + d
    total = sum(F.interpolate(d.unsqueeze(1), size=OUT, mode="bilinear", align_corners=True)[:, 0]
                for d in by_size.values())
    m = gaussian_blur_torch(total, SIGMA)   # the one torch blur (methods/common.py)
    flat = m.flatten(1)
    k = max(1, int(0.01 * flat.shape[1]))
    return m, flat.max(1).values, flat.topk(k, dim=1).values.mean(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for batch in args.batches:
        pairs = make_pairs(batch)
        tpairs = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in pairs]
        with torch.inference_mode():
            ref_map = torch_eager(tpairs)[0].numpy()
            t_torch = median_ms(lambda: torch_eager(tpairs), args.repeat)
        rt_map = _rt.cos_map(pairs, OUT, sigma=SIGMA, threads=args.threads)[0]
        err = float(np.abs(rt_map - ref_map).max())
        t_rt = median_ms(lambda: _rt.cos_map(pairs, OUT, sigma=SIGMA, threads=args.threads), args.repeat)
        pairs16 = [(a.astype(np.float16), b.astype(np.float16)) for a, b in pairs]
        t_rt16 = median_ms(lambda: _rt.cos_map(pairs16, OUT, sigma=SIGMA, threads=args.threads), args.repeat)
        t_np = median_ms(lambda: cos_map_reference(pairs, OUT, sigma=SIGMA), max(3, args.repeat // 10))
        rows.append((batch, t_rt, t_rt16, t_torch, t_np, err))

    out = io.StringIO()
    out.write(f"\nFused anomaly map, {len(LEVELS) * 2} pairs -> {OUT[0]}x{OUT[1]}, sigma {SIGMA}, "
              f"{args.threads} threads (torch {torch.__version__}), median of {args.repeat}\n\n")
    out.write("| batch | _rt fp32 (ms) | _rt fp16 in (ms) | torch eager (ms) | numpy ref (ms) "
              "| torch / _rt | numpy / _rt | max abs diff vs torch |\n")
    out.write("|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for batch, t_rt, t_rt16, t_torch, t_np, err in rows:
        out.write(f"| {batch} | {t_rt:.3f} | {t_rt16:.3f} | {t_torch:.3f} | {t_np:.1f} | {t_torch / t_rt:.1f}x "
                  f"| {t_np / t_rt:.0f}x | {err:.1e} |\n")

    publish("maps", out.getvalue())


if __name__ == "__main__":
    main()
