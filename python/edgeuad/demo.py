"""`edgeuad demo`: the whole product on its own synthetic data, on a CPU, in about a minute.

synthetic data -> train -> export (ONNX bundle, parity-checked) -> Detector on the test split
-> metrics table + overlay grid + score histogram, then the commands to try next (each one is
run by tests/python/test_commands.py).
"""
from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes

log = logging.getLogger(__name__)

# How long `edgeuad demo` takes, as `demo --help` and the README say it: measured with
# benchmarks/bench_demo_load.py (benchmarks/results/demo_load.md, float32 training) and 36 s in
# results/demo_summary.json (bf16 training since c88ba4a, AVX512_BF16 CPU): "about a minute" covers both.
DEMO_TIME = "about a minute on an idle 2-core CPU"

# Small but real settings: every number below is passed to the method's config.
DEMO_CONFIGS: dict[str, dict[str, Any]] = {
    "recontrast": {"image_size": 128, "iterations": 120, "batch_size": 8, "checkpoint_every": 60},
    "patchcore": {"image_size": 128, "coreset_ratio": 0.1},
    "reconpatch": {"image_size": 128, "steps": 60, "coreset_ratio": 0.1},
}
DEMO_DATA = {"kind": "texture", "n_train": 60, "n_test_good": 16, "n_test_defect": 8, "size": 128}


def run_demo(out_dir: str | Path, method: str = "recontrast", iterations: int | None = None, seed: int = 0) -> int:
    from . import api
    from .synthetic import make_synthetic_dataset

    out = Path(out_dir)
    t0 = time.perf_counter()
    data = make_synthetic_dataset(out / "data", seed=seed, **DEMO_DATA)
    log.info("synthetic dataset written to %s", data)
    overrides = dict(DEMO_CONFIGS[method], seed=seed)
    if iterations is not None:
        overrides["iterations" if method == "recontrast" else "steps"] = iterations
    run = api.train(method, data, out / "run", overrides, holdout_fraction=0.15)
    bundle = api.export(run, out / "bundle")
    res = api.evaluate(bundle.root, data, out / "report")
    total = time.perf_counter() - t0
    summary = {"method": method, "config": overrides, "metrics": res.metrics,
               "train_seconds": run.info["train_seconds"], "total_seconds": round(total, 1),
               "latency_ms_mean": res.latency_ms_mean, "bundle": str(bundle.root)}
    atomic_write_bytes(out / "demo_summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    sys.stdout.write(f"\nedgeuad demo ({method}) on synthetic data: trained in {run.info['train_seconds']:.0f} s, "
                     f"total {total:.0f} s\n{api.format_metrics(res.metrics)}\n"
                     f"bundle:   {bundle.root}\noverlays: {out / 'report' / 'overlays.png'}\n"
                     + "".join(f"try:      {c}\n" for c in next_steps(out, data, bundle.root)))
    return 0


def next_steps(out: Path, data: Path, bundle: Path) -> list[str]:
    """The commands the demo suggests, as shell lines (paths quoted)."""
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    return [f"edgeuad predict {q(data / 'test')} --bundle {q(bundle)} --out {q(out / 'predict')}",
            f"edgeuad eval --bundle {q(bundle)} --data {q(data)} --out {q(out / 'eval')}",
            f"edgeuad info --bundle {q(bundle)}"]
