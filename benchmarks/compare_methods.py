#!/usr/bin/env python3
"""ReContrast vs ReConPatch vs PatchCore on MVTec-layout datasets: one command, one table.

    python benchmarks/compare_methods.py --data ../shared/data/bottle ../shared/data/magnetic_tile \
        --methods patchcore recontrast reconpatch --iterations 500

Each method's default backbone unless --backbone (patch methods: "auto", chosen per run on synthetic
defects in the held-out normals, recorded as `backbone` and `backbone_choice`; ReContrast:
efficientnet_lite0), and the same input size for every method.  Each (dataset, method) trains through
`edgeuad.api.train`, exports a bundle through `api.export` and is evaluated through `api.evaluate` (the
runtime Detector: onnxruntime + _rt), so the numbers are those of the shipped path.
Results go to benchmarks/results/methods/<dataset>_<method>.json and a markdown table is printed and
written to benchmarks/results/methods/table.md.  Existing JSON results are reused unless --force.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import time
from pathlib import Path

from edgeuad import api
from edgeuad.atomic import atomic_write_bytes
from edgeuad.bench.machine import git_dirty
from edgeuad.cli import _kv  # the `edgeuad train --set` argument type

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "methods"


def run_one(data: Path, method: str, args: argparse.Namespace, work: Path) -> dict:
    ov: dict = {"image_size": args.image_size, "seed": args.seed}
    if args.backbone:
        ov["backbone"] = args.backbone
    if method == "recontrast":
        ov.update(iterations=args.iterations, batch_size=args.batch_size)
    elif method == "reconpatch":
        ov.update(steps=args.steps)
    ov.update(dict(args.set))  # text, parsed by the field's type where the method's config is built
    t0 = time.perf_counter()
    run = None if args.force else _reusable_run(work / "run", method, ov)
    reused = run is not None
    if run is None:
        run = api.train(method, data, work / "run", ov, holdout_fraction=args.holdout, progress=False)
    bundle = api.export(run, work / "bundle", threads=args.threads)
    res = api.evaluate(bundle.root, data, work / "report", threads=args.threads, progress=False)
    return {"dataset": data.name, "method": method, "overrides": ov, "metrics": res.metrics,
            "train_seconds": run.info["train_seconds"], "total_seconds": round(time.perf_counter() - t0, 1),
            "latency_ms_per_frame": round(res.latency_ms_mean, 2), "eval_threads": args.threads,
            "n_train": run.info["n_train"], "bundle": str(bundle.root), "backbone": run.config.get("backbone"),
            **({"backbone_choice": run.info["backbone_choice"]} if run.info.get("backbone_choice") else {}),
            **({"bank": run.info["bank"]} if run.info.get("bank") else {}),  # bank_includes_holdout
            "threshold": bundle.thresholds["threshold"],
            "reused_run": reused,  # True: total_seconds covers export + eval only
            # what label-free selection chose and its validation curve (ReContrast), for the record
            **({"selection": run.info["selection"]} if run.info.get("selection") else {})}


def _reusable_run(root: Path, method: str, ov: dict) -> api.Run | None:
    """A finished run in the work dir with exactly these settings is exported again, not retrained
    (a ReContrast training is ~35 min here; an export failure should not cost another one)."""
    if not (root / "run.json").exists() or not (root / "weights.safetensors").exists():
        return None
    run = api.Run.load(root)
    want = api.method_config(method, ov).to_dict()  # --set values parsed as the run's config holds them
    if run.method != method or any(run.config.get(k) != want[k] for k in ov):
        return None
    logging.info("reusing finished run %s (trained in %.0f s)", root, run.info["train_seconds"])
    return run


def stamp(r: dict) -> dict:
    """Where and when a result was measured: machine, commit (marked when the tree is dirty), date."""
    r["machine"] = f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores"
    r["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, cwd=HERE).stdout.strip()
    if git_dirty():  # changed outside benchmarks/results (this script's own output)
        r["commit"] += " (dirty tree)"
    r["date"] = time.strftime("%Y-%m-%d")
    return r


def table(rows: list[dict]) -> str:
    head = ("| dataset | method | I-AUROC | P-AUROC | AUPRO@0.3 | F1-max | Acc@thr | train s | ms/frame | settings "
            "| commit, date |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|\n")
    lines = []
    for r in rows:
        m = r["metrics"]
        f = lambda k: f"{m[k]:.4f}" if k in m else "n/a (no masks)"  # noqa: E731
        settings = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        if r.get("backbone_choice"):  # the method's default backbone "auto" and what it chose
            settings += f", backbone=auto -> {r['backbone'].replace('efficientnet_', '')}"
            norm = r["backbone_choice"].get("input_norm")
            if norm:  # recorded since input_norm=auto (plan input_normalisation_2026-12-04.md)
                settings += f", input_norm=auto -> {norm}"
        lines.append(f"| {r['dataset']} | {r['method']} | {f('i_auroc')} | {f('p_auroc')} | {f('aupro')} | "
                     f"{f('f1_max')} | {f('accuracy_at_threshold')} | {r['train_seconds']:.0f} | {r['latency_ms_per_frame']:.1f} | {settings} | "
                     f"{r.get('commit', '?')}, {r.get('date', '?')} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True, type=Path)
    ap.add_argument("--methods", nargs="+", default=["patchcore", "recontrast", "reconpatch"])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--backbone", default=None, help="backbone override (default: each method's default)")
    ap.add_argument("--iterations", type=int, default=500, help="ReContrast iterations (paper: 2000)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=500, help="ReConPatch steps")
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                    help="a config field of every method run (as `edgeuad train --set`), e.g. decoder_width=4")
    ap.add_argument("--suffix", default="",
                    help="result file <dataset>_<method><suffix>.json (e.g. _seed1): kept beside the main table, not in it")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeuad-compare"))
    ap.add_argument("--force", action="store_true", help="retrain and re-evaluate even when results exist")
    ap.add_argument("--reeval", action="store_true",
                    help="export and evaluate again (current code), reusing finished runs with the same settings")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for data in args.data:
        for method in args.methods:
            f = OUT / f"{data.name}_{method}{args.suffix}.json"
            if f.exists() and not (args.force or args.reeval):
                rows.append(json.loads(f.read_text()))
                continue
            r = stamp(run_one(data, method, args, args.work / data.name / f"{method}{args.suffix}"))
            # atomic: a killed run must not leave a truncated JSON that the next run would reuse
            atomic_write_bytes(f, (json.dumps(r, indent=2) + "\n").encode())
            logging.info("%s/%s: %s", data.name, method, r["metrics"])
            rows.append(r)
    print(table(rows))
    # table.md holds every <dataset>_<method>.json on disk (archived variants such as *_400it.json are
    # left out), so per-dataset invocations with different iteration counts add up to one table
    every = []
    for f in sorted(OUT.glob("*.json")):
        r = json.loads(f.read_text())
        if f.name == f"{r.get('dataset')}_{r.get('method')}.json":
            every.append(r)
    atomic_write_bytes(OUT / "table.md", table(every).encode())


if __name__ == "__main__":
    main()
