#!/usr/bin/env python3
"""ReContrast training step time: float32 against bfloat16 autocast, measured in one run (issue #13's CPU budget).

    python benchmarks/bench_train_step.py [--data ../shared/data/magnetic_tile] [--rounds 4 --steps 5]
    python benchmarks/bench_train_step.py --device cuda --stem train_step_cuda     # a GPU (tools/gpu_smoke.sh)

Each precision gets its own model built from the same ImageNet weights and seed, and trains through the
shipped step (`recontrast_train._Arm.step`: batch from the shuffled sampler, forward, the official loss,
both AdamW steps). The two alternate in blocks of `--steps` timed steps (after one untimed warm-up block
each), `--rounds` times, so a drift of this shared machine spreads over both. The OpenMP wait policy is the
CLI's (PASSIVE unless you set one: `edgeuad train` runs under it). Reported: median and spread of the
seconds per step and the ratio of the medians. Training images come from `--data` (its train/good, resized
to the input size) or, without it, are random.
On CUDA every timed step ends with torch.cuda.synchronize() (the step's kernels, not their launch), and
`precision=auto` keeps float32 there until this comparison says otherwise.
Writes benchmarks/results/<stem>.md (default train_step).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgeuad import cpus  # noqa: E402

cpus.prefer_passive_openmp()  # before torch loads OpenMP: the policy `edgeuad train` runs under

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _results import publish  # noqa: E402
from edgeuad.methods.common import EpochShuffleSampler, ImageArrayDataset, resolve_device  # noqa: E402
from edgeuad.methods.recontrast import ReContrastConfig  # noqa: E402
from edgeuad.methods.recontrast_train import _Arm, native_bf16  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def images(data: Path | None, n: int, size: int) -> np.ndarray:
    if data is None:
        return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
    from edgeuad import api
    from edgeuad import data as D
    from edgeuad.preprocess import PreprocessConfig

    paths = sorted(D.list_folder(data / "train" / "good"))[:n]
    x, _ = api.load_array(paths, PreprocessConfig(size=(size, size)))
    return x


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="MVTec-layout set (default: random images)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per block")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the usable CPUs)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--stem", default="train_step", help="results/<stem>.md")
    args = ap.parse_args(argv)
    n = cpus.set_torch_threads(torch, args.threads)
    x = images(args.data, 4 * args.batch_size, args.image_size)
    data = ImageArrayDataset(x)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    arms, samplers = {}, {}
    for p in PRECISIONS:
        cfg = ReContrastConfig(image_size=args.image_size, batch_size=args.batch_size, encoder_bn="train", precision=p,
                               iterations=2000)
        arms[p] = _Arm(cfg, "train", device, None)
        arms[p].model.train()
        samplers[p] = EpochShuffleSampler(len(data), args.batch_size, cfg.seed)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}

    def block(p: str, k: int, keep: bool) -> None:
        for _ in range(k):
            t0 = time.perf_counter()
            arms[p].step(data, samplers[p])
            sync()
            if keep:
                times[p].append(time.perf_counter() - t0)

    for p in PRECISIONS:
        block(p, 2, keep=False)
    for r in range(args.rounds):
        for p in (PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]):
            block(p, args.steps, keep=True)
    med = {p: statistics.median(v) for p, v in times.items()}
    rows = ["| precision | s per step (median) | min - max | steps timed | last loss |", "|---|---:|---:|---:|---:|"]
    for p in PRECISIONS:
        rows.append(f"| {p} | {med[p]:.3f} | {min(times[p]):.3f} - {max(times[p]):.3f} | {len(times[p])} | "
                    f"{arms[p].loss:.4f} |")
    where = (f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}" if device.type == "cuda"
             else f"{n} torch threads")
    body = (f"#### ReContrast-Lite0 training step, float32 vs bfloat16 autocast (batch {args.batch_size}, "
            f"{args.image_size} px, {where}, native bf16: {'yes' if native_bf16(device) else 'no'}, "
            f"images: {args.data.name if args.data else 'random'})\n\n" + "\n".join(rows)
            + f"\n\nbf16 step = x{med['fp32'] / med['bf16']:.2f} faster than float32 (ratio of the medians; blocks of "
            f"{args.steps} alternating, {args.rounds} rounds).\n")
    publish(args.stem, body)


if __name__ == "__main__":
    main()
