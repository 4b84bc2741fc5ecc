#!/usr/bin/env python
"""Pipeline benchmark in one command: the full sweep of `edgeuad bench --full` (every backend, INT8
included, vs the float32 eager torch, torch.compile and onnxruntime + torch-post references).

    python benchmarks/bench_pipeline.py --bundle bundles/bottle --stem pipeline_patchcore_bottle
    python benchmarks/bench_pipeline.py --make-bundle recontrast --quick   # no bundle at hand; seconds

Writes benchmarks/results/<stem>.{json,md,png} (the .md is the section RESULTS.md quotes).
--quick runs `edgeuad bench`'s quick default instead of the full sweep (to check the command works).

--make-bundle builds a bundle from *untrained* weights (random init, one optimisation step on a
few synthetic images) through the normal train -> export path: latency and memory depend on the
architecture and input size, not on the weight values, and torch-vs-runtime agreement is just as
meaningful; detection quality is not, and the report says the weights are untrained.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))  # run from a checkout without installing

from edgeuad.bench import FULL, BenchConfig, run_bench  # noqa: E402

log = logging.getLogger("edgeuad.benchmarks")

# One optimisation step / tiny coreset: enough for export to run its parity check and thresholds.
UNTRAINED = {
    "recontrast": {"iterations": 1, "batch_size": 2, "pretrained": False},
    "patchcore": {"coreset_ratio": 0.05, "pretrained": False},
    "reconpatch": {"steps": 1, "coreset_ratio": 0.05, "pretrained": False},
}


def make_timing_bundle(out: Path, method: str, image_size: int, seed: int = 0) -> Path:
    """A real bundle (ONNX, weights, bank, thresholds) with untrained weights, for timing only."""
    from edgeuad import api
    from edgeuad.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(out / "data", kind="texture", n_train=6, n_test_good=1, n_test_defect=1,
                                  size=image_size, seed=seed)
    overrides = dict(UNTRAINED[method], image_size=image_size, seed=seed)
    run = api.train(method, data, out / "run", overrides, holdout_fraction=0.34, progress=False)
    return api.export(run, out / "bundle").root


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="bundle directory or .tar to benchmark")
    src.add_argument("--make-bundle", choices=sorted(UNTRAINED), help="build an untrained bundle of this method")
    ap.add_argument("--image-size", type=int, default=256, help="network input size for --make-bundle")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--stem", default="pipeline")
    ap.add_argument("--quick", action="store_true", help="the quick default of `edgeuad bench` instead of --full")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default: the sweep's 1,2)")
    ap.add_argument("--repetitions", type=int, default=None, help="interleaved rounds (default: the sweep's)")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes (default: the sweep's 1,4,8)")
    ap.add_argument("--images", default=None, help="folder/glob of frames (default: synthetic 640x480 JPEG)")
    ap.add_argument("--int8-calib", default=None, help="normal images calibrating the INT8 row (default: the frames)")
    ap.add_argument("--frame-size", default="480x640", help="HxW of synthetic frames")
    ap.add_argument("--in-process", action="store_true", help="no worker process per pipeline (peak RSS shared)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    fh, fw = (int(v) for v in a.frame_size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="edgeuad-bench-bundle-") as tmp:
        bundle = a.bundle
        if bundle is None:
            log.info("building an untrained %s bundle (%d px) for timing", a.make_bundle, a.image_size)
            bundle = str(make_timing_bundle(Path(tmp), a.make_bundle, a.image_size))
        kw = {} if a.quick else dict(FULL)
        if a.threads:
            kw["threads"] = [int(x) for x in a.threads.split(",") if x]
        if a.repetitions:
            kw["repetitions"] = a.repetitions
        if a.batch_sizes:
            kw["batch_sizes"] = [int(x) for x in a.batch_sizes.split(",") if x]
        cfg = BenchConfig(bundle=bundle, out_dir=a.out, stem=a.stem, images=a.images, frame_size=(fh, fw),
                          int8_calib=a.int8_calib, isolate=not a.in_process, progress=True, **kw)
        report = run_bench(cfg)
        if a.make_bundle:
            # say so in every output: these numbers must never be read as a trained model's
            report.bundle_info["path"] = f"(temporary untrained {a.make_bundle} bundle, {a.image_size} px)"
            report.bundle_info["weights"] = "untrained (timing only)"
            report.write(a.out, a.stem)
    sys.stdout.write(report.table() + "\n")
    sys.stdout.write(f"written: {Path(a.out) / (a.stem + '.json')}, .md, .png\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
