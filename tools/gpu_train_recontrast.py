#!/usr/bin/env python3
"""Train ReContrast for several seeds at once on one GPU (a lent machine's few minutes), for evaluation here.

    python3 tools/gpu_train_recontrast.py --data DATA --work WORK [--seeds 0,1,2] [--iterations 2000]
                                          [--image-size 256] [--time-limit 390]

Each seed trains in its own process (one GPU holds all three: ReContrast-Lite0 at batch 16 leaves it
mostly idle) through `edgeuad.api.train` with exactly the overrides of
`benchmarks/compare_methods.py --methods recontrast --iterations N --seed S --set device=auto`, into
WORK/recontrast_gpu_seed<S>/run. That is the run directory compare_methods reuses with
`--suffix _gpu_seed<S> --work <parent of WORK>`, so export and evaluation run later on the shipped CPU
path (the runs record device=auto: CUDA where trained, CPU where exported). Logs: WORK/seed<S>.log. A
seed still training at --time-limit is killed and reported (exit 1), never left half-written: run.json
is written last.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("gpu_train_recontrast")


def overrides(seed: int, iterations: int, image_size: int) -> dict:
    """compare_methods' ReContrast overrides (batch 16) plus device=auto."""
    return {"image_size": image_size, "seed": seed, "iterations": iterations, "batch_size": 16, "device": "auto"}


def train_one(seed: int, iterations: int, image_size: int, data: Path, work: Path) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from edgeuad import api

    t0 = time.time()
    run = api.train("recontrast", data, work / f"recontrast_gpu_seed{seed}" / "run",
                    overrides(seed, iterations, image_size), holdout_fraction=0.1, progress=False)
    log.info("seed %d: %s", seed, json.dumps({"wall_s": round(time.time() - t0, 1),
                                              "train_seconds": run.info["train_seconds"],
                                              "checkpoint": run.info.get("selection", {}).get("checkpoint")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="MVTec-layout dataset (train/good is enough)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--time-limit", type=float, default=390.0, help="seconds before unfinished seeds are killed")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process: train this seed
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data, work = args.data.resolve(), args.work.resolve()
    if args.one is not None:
        return train_one(args.one, args.iterations, args.image_size, data, work)
    seeds = [int(s) for s in args.seeds.split(",")]
    work.mkdir(parents=True, exist_ok=True)
    procs = {}
    for s in seeds:
        with open(work / f"seed{s}.log", "w") as f:  # the child keeps its own descriptor
            procs[s] = subprocess.Popen([sys.executable, __file__, "--data", str(data), "--work", str(work),
                                         "--iterations", str(args.iterations), "--image-size", str(args.image_size),
                                         "--one", str(s)], stdout=f, stderr=subprocess.STDOUT)
    t0 = time.time()
    while time.time() - t0 < args.time_limit and any(p.poll() is None for p in procs.values()):
        time.sleep(1)
    rc = 0
    for s, p in procs.items():
        if p.poll() is None:
            p.kill()
            p.wait()
            log.error("seed %d: still training after %.0f s, killed (no run kept)", s, args.time_limit)
            rc = 1
        else:
            log.info("seed %d: exit %d after %.0f s", s, p.returncode, time.time() - t0)
            rc |= int(p.returncode != 0)
    return rc


if __name__ == "__main__":
    sys.exit(main())
