#!/usr/bin/env python3
"""Is onnxruntime the bound on the Detector's network stage?  The bundle's graph in two CPU engines.

    python benchmarks/bench_engines.py --bundle BUNDLE [BUNDLE ...] [--threads 1 2] [--stem engines]

Issue #16 asks the Detector for >= 4x a float32 eager torch reference at batch 1.  The pipeline tables
(RESULTS section 2) show the network stage taking most of the Detector's time, so a faster float32 network
engine is the one lever left.  This times the same ONNX graph, on the same preprocessed frames, in
* onnxruntime with the Detector's own session (`edgeuad.cpus.ort_session`: threads, no spinning), and
* OpenVINO's CPU plugin (when `openvino` is installed; it is not an edgeuad dependency) with the
  inference precision forced to f32, and with bf16 (OpenVINO's own default on a CPU with native bf16).

Protocol: all engines in this process; per thread count, `--rounds` rounds, in each every engine in turn
times `--batches` batch-1 steps (preprocess + network, the shared `bench.timing.time_block` loop) after one
untimed warm-up step, the order reversed every other round.  Reported: the network stage's median ms over
all rounds, the ratio to onnxruntime per round (median, min-max), and the largest output difference from
onnxruntime on the benchmark's frames relative to that output's largest magnitude.
Writes benchmarks/results/<stem>.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgeuad import cpus  # noqa: E402

cpus.prefer_passive_openmp()  # the Detector's policy (before anything loads OpenMP)

import numpy as np  # noqa: E402

from _results import publish  # noqa: E402
from edgeuad.bench.frames import decode, synthetic_frames  # noqa: E402
from edgeuad.bench.timing import time_block  # noqa: E402
from edgeuad.bundle import Bundle  # noqa: E402
from edgeuad.preprocess import preprocess  # noqa: E402

Run = Callable[[np.ndarray], list[np.ndarray]]


class NetworkPipe:
    """preprocess + one engine's run of the graph, as a `time_block` pipeline."""

    def __init__(self, name: str, bundle: Bundle, run: Run) -> None:
        self.name, self.bundle, self.run = name, bundle, run

    def step(self, imgs: list[np.ndarray]) -> tuple[int, dict[str, float]]:
        t0 = time.perf_counter()
        x = preprocess(imgs, self.bundle.preprocess, color="bgr")
        t1 = time.perf_counter()
        out = self.run(x)
        t2 = time.perf_counter()
        return int(out[0].shape[0]), {"preprocess": (t1 - t0) * 1e3, "network": (t2 - t1) * 1e3}


def ort_run(path: str, threads: int) -> Run:
    import onnxruntime as ort

    sess = cpus.ort_session(ort, path, threads)  # the Detector's session options
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def openvino_runs(path: str, threads: int) -> tuple[dict[str, Run], dict[str, str]]:
    """OpenVINO f32 and bf16 runs of `path`, or the reason each cannot run here."""
    try:
        import openvino as ov
    except ImportError:
        why = "python package 'openvino' is not installed (not an edgeuad dependency)"
        return {}, {"openvino-f32": why, "openvino-bf16": why}
    core = ov.Core()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    runs: dict[str, Run] = {}
    skipped: dict[str, str] = {}
    for prec in ("f32", "bf16"):
        if prec == "bf16" and "BF16" not in caps:
            skipped["openvino-bf16"] = f"this CPU has no native bf16 (OpenVINO capabilities: {', '.join(caps)})"
            continue
        try:
            cm = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": prec,
                                                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
        except Exception as e:  # noqa: BLE001 - any engine error is this row's reason, the others still run
            skipped[f"openvino-{prec}"] = f"OpenVINO could not compile the graph: {type(e).__name__}: {e}"
            continue
        req = cm.create_infer_request()
        runs[f"openvino-{prec}"] = lambda x, req=req, outs=cm.outputs: _ov_infer(req, outs, x)
    return runs, skipped


def _ov_infer(req: Any, outs: Any, x: np.ndarray) -> list[np.ndarray]:
    res = req.infer({0: x})
    return [np.asarray(res[o]) for o in outs]


def max_rel_diff(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    return max(float(np.abs(g - r).max() / max(float(np.abs(r).max()), 1e-30)) for g, r in zip(got, ref))


def measure(bundle_path: str, threads: int, rounds: int, batches: int, frames: list[np.ndarray]) -> dict[str, Any]:
    bundle = Bundle.load(bundle_path)
    path = str(bundle.onnx_path)
    runs: dict[str, Run] = {"onnxruntime": ort_run(path, threads)}
    ov, skipped = openvino_runs(path, threads)
    runs.update(ov)
    pipes = [NetworkPipe(n, bundle, r) for n, r in runs.items()]
    x = preprocess(decode(frames[:1]), bundle.preprocess, color="bgr")
    ref = runs["onnxruntime"](x)
    diff = {p.name: max_rel_diff(p.run(x), ref) for p in pipes}
    net: dict[str, list[float]] = {p.name: [] for p in pipes}
    per_round: dict[str, list[float]] = {p.name: [] for p in pipes}
    for r in range(rounds):
        order = pipes if r % 2 == 0 else pipes[::-1]
        for p in order:
            rec = time_block(p, frames, start=r, n=batches, batch_size=1, warm=1)
            ms = [s["network"] for s in rec]
            net[p.name] += ms
            per_round[p.name].append(statistics.median(ms))
    rows = []
    for p in pipes:
        ratios = [o / m for o, m in zip(per_round["onnxruntime"], per_round[p.name])]
        rows.append({"engine": p.name, "network_ms": statistics.median(net[p.name]),
                     "vs_ort": statistics.median(ratios), "vs_ort_min": min(ratios), "vs_ort_max": max(ratios),
                     "max_rel_diff": diff[p.name]})
    return {"bundle": bundle_path, "method": bundle.method, "backbone": bundle.backbone,
            "threads": threads, "rows": rows, "skipped": skipped}


def openvino_version() -> str:
    try:
        import openvino as ov
    except ImportError:
        return "not installed"
    return str(ov.__version__)


def table(results: list[dict[str, Any]], rounds: int, batches: int) -> str:
    lines = [f"#### The bundle's graph in two CPU engines (batch 1, {rounds} rounds x {batches} steps)\n",
             f"openvino {openvino_version()}; frames: 8 synthetic 640x480 JPEGs, preprocessed as the Detector does\n",
             "| bundle | threads | engine | network ms (median) | onnxruntime / engine | min-max | max output diff vs onnxruntime |",
             "|---|---|---|---:|---:|---|---:|"]
    skipped: dict[str, str] = {}
    for res in results:
        label = f"{res['method']} ({res['backbone']})"
        for r in res["rows"]:
            lines.append(f"| {label} | {res['threads']} | {r['engine']} | {r['network_ms']:.2f} | x{r['vs_ort']:.2f} | "
                         f"x{r['vs_ort_min']:.2f}-x{r['vs_ort_max']:.2f} | {r['max_rel_diff']:.1e} |")
        skipped.update(res["skipped"])
    lines.append("")
    lines += [f"- {k}: not run ({v})" for k, v in sorted(skipped.items())]
    lines.append("\nonnxruntime / engine > 1: the engine's network stage is faster than the Detector's onnxruntime "
                 "session. Output diff: max |engine - onnxruntime| / max |onnxruntime| over the graph's outputs, "
                 "one benchmark frame.\n")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", nargs="+", required=True, help="trained bundle(s) (directory or .tar)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default: 7)")
    ap.add_argument("--batches", type=int, default=12, help="timed steps per engine per round (default: 12)")
    ap.add_argument("--stem", default="engines", help="results/<stem>.md (default: engines)")
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.batches < 1 or min(a.threads) < 1:
        ap.error("--rounds, --batches and --threads must be >= 1")
    frames = synthetic_frames(8, (480, 640))
    results = [measure(b, t, a.rounds, a.batches, frames) for b in a.bundle for t in a.threads]
    publish(a.stem, table(results, a.rounds, a.batches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
