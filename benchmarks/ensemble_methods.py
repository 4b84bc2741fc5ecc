#!/usr/bin/env python3
"""An ensemble (ReConPatch Eq. 11) of the runs compare_methods.py finished, evaluated like one more method.

    python benchmarks/ensemble_methods.py --data ../shared/data/magnetic_tile --methods patchcore reconpatch

Nothing is trained: for each dataset the members are the runs and bundles compare_methods.py left in its
work dir, <work>/<dataset>/<method><member-suffix>/{run,bundle}.  `api.ensemble` combines the bundles,
calibrated on the held-out normal images every member's run shares (--runs), into
<work>/<dataset>/ensemble<suffix>/bundle; `api.evaluate` scores it through the runtime Detector.  The
result goes to benchmarks/results/methods/<dataset>_ensemble<suffix>.json in compare_methods.py's format
(method "ensemble", the members under `overrides`), so compare_methods.py's table.md lists it too.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from compare_methods import OUT, stamp, table

from edgeuad import api
from edgeuad.atomic import atomic_write_bytes


def members_of(work: Path, methods: list[str], member_suffix: str) -> tuple[list[api.Run], list[Path]]:
    runs, bundles, missing = [], [], []
    for m in methods:
        d = work / f"{m}{member_suffix}"
        if not (d / "run" / "run.json").is_file() or not (d / "bundle" / "manifest.json").is_file():
            missing.append(str(d))
            continue
        runs.append(api.Run.load(d / "run"))
        bundles.append(d / "bundle")
    if missing:
        raise SystemExit(f"no finished run + bundle in {', '.join(missing)}: run compare_methods.py for these "
                         "methods first (same --work and --suffix)")
    return runs, bundles


def member_args(doc: str | None, methods: list[str]) -> argparse.ArgumentParser:
    """The options that name the member runs (shared with ensemble_validation.py)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True, type=Path, help="MVTec-layout dataset roots")
    ap.add_argument("--methods", nargs="+", default=methods, help=f"member methods (default: {' '.join(methods)})")
    ap.add_argument("--member-suffix", default="",
                    help="compare_methods.py --suffix of the member runs (default: none)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeuad-compare"),
                    help="compare_methods.py's work dir (default: /tmp/edgeuad-compare)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"results directory (default: {OUT})")
    return ap


def run_one(data: Path, args: argparse.Namespace) -> dict:
    work = args.work / data.name
    runs, bundles = members_of(work, args.methods, args.member_suffix)
    t0 = time.perf_counter()
    bundle = api.ensemble(bundles, work / f"ensemble{args.suffix}" / "bundle", runs=runs, fpr=args.fpr,
                          threads=args.threads)
    res = api.evaluate(bundle.root, data, work / f"ensemble{args.suffix}" / "report", threads=args.threads,
                       progress=False)
    entries = bundle.manifest["postprocess"]["members"]
    normal = bundle.manifest["training"]["normal"]
    return {"dataset": data.name, "method": "ensemble",
            "overrides": {"members": "+".join(args.methods), "member_suffix": args.member_suffix, "fpr": args.fpr},
            "metrics": res.metrics,
            "train_seconds": sum(r.info["train_seconds"] for r in runs),  # the members' trainings
            "total_seconds": round(time.perf_counter() - t0, 1),           # ensemble build + eval
            "latency_ms_per_frame": round(res.latency_ms_mean, 2), "eval_threads": args.threads,
            "n_train": runs[0].info["n_train"], "bundle": str(bundle.root),
            "threshold": bundle.thresholds["threshold"], "reused_run": True,
            "members": [{"method": e["method"], "backbone": e["backbone"], "bundle": str(b), "digest": e["digest"],
                         "median": e["median"], "mad": e["mad"]} for e, b in zip(entries, bundles)],
            "normal": {"source": normal["source"], "n_images": normal["n_images"]}}


def main() -> None:
    ap = member_args(__doc__, ["patchcore", "reconpatch"])
    ap.add_argument("--suffix", default="", help="result file <dataset>_ensemble<suffix>.json (default: none)")
    ap.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate of the threshold (default: 0.01)")
    ap.add_argument("--force", action="store_true", help="rebuild and re-evaluate even when the result exists")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for data in args.data:
        f = args.out / f"{data.name}_ensemble{args.suffix}.json"
        if f.exists() and not args.force:
            rows.append(json.loads(f.read_text()))
            continue
        r = stamp(run_one(data, args))
        atomic_write_bytes(f, (json.dumps(r, indent=2) + "\n").encode())  # reused by the next run
        logging.info("%s/ensemble(%s): %s", data.name, r["overrides"]["members"], r["metrics"])
        rows.append(r)
    print(table(rows))


if __name__ == "__main__":
    main()
