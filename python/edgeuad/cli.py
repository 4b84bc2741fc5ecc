"""edgeuad command line: train | export | ensemble | eval | predict | bench | serve | demo | info.

Every flag maps to one named field of a config or one argument of the API function it calls;
`tests/python/test_cli.py` checks that they arrive there.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from .cpus import prefer_passive_openmp

log = logging.getLogger("edgeuad")

METHODS = ("recontrast", "reconpatch", "patchcore")
TRAIN_EXTRA = "install the train extra: pip install 'edgeuad[train]'"
BACKEND_HELP = ("network engine: onnxruntime (CPU, the runtime default), torch (the eager training model, needs "
                "the train extra; a reference), tensorrt (an engine from `edgeuad export --fp16/--int8`, NVIDIA GPU)")
THREADS_HELP = ("CPU threads for the network and the map kernels (0 = OMP_NUM_THREADS if set, else every CPU "
                "this process may use)")


class MissingExtraError(RuntimeError):
    """A command needs an optional dependency group that is not installed."""


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None/False (flags, 'unset'), which say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == []:
            return action.help or ""
        return super()._get_help_string(action) or ""


def _kv(s: str) -> tuple[str, str]:
    # the value stays text: api.method_config parses it by the config field's type
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    return k.strip(), v.strip()


def _require_train_extra(cmd: str) -> None:
    """Fail before anything is written when the training side (torch, onnx) is not installed."""
    missing = []
    for mod in ("torch", "onnx"):
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise MissingExtraError(f"`edgeuad {cmd}` needs {' and '.join(missing)}, which this install lacks "
                                f"(a runtime-only install); {TRAIN_EXTRA}")


_DIGEST_HELP = ("refuse any bundle but this one: the sha256 of its manifest.json, as `edgeuad export` and "
                "`edgeuad info --bundle` print it (default: none, any valid bundle)")


def build_parser() -> argparse.ArgumentParser:
    from .demo import DEMO_TIME

    p = argparse.ArgumentParser(
        prog="edgeuad", formatter_class=_Help,
        description="Unsupervised visual anomaly detection for the edge: train on normal images, "
                    "export a verified bundle, detect on frames, streams and folders.",
        epilog="Typical flow: edgeuad train -> edgeuad export -> edgeuad eval / predict / bench. "
               "`edgeuad demo` runs all of it on synthetic data.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    t = sub.add_parser("train", formatter_class=_Help, help="train a method on normal images (needs the `train` extra: torch)",
                       description="Train on the normal images of an MVTec-layout folder (<data>/train/good) or a "
                                   "plain folder of normal images. A fraction is held out to set the threshold.")
    t.add_argument("--method", choices=METHODS, default="recontrast", help="anomaly detection method")
    t.add_argument("--data", required=True, help="MVTec-layout root or folder/glob of normal images")
    t.add_argument("--out", required=True, help="run directory (weights, config, held-out list)")
    t.add_argument("--backbone", choices=("auto", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                                          "resnet18", "wide_resnet50_2"), default=None,
                   help="feature backbone (default: the method's; patchcore/reconpatch: auto = the cheapest "
                        "EfficientNet-Lite0/1/2 within 0.01 of the best I-AUROC on synthetic defects in the held-out "
                        "normals; recontrast: efficientnet_lite0)")
    t.add_argument("--weights", default=None, help="backbone weights file (.pth/.safetensors) for resnet18/wrn50")
    t.add_argument("--image-size", type=int, default=None, help="square network input size (default 256)")
    t.add_argument("--iterations", type=int, default=None, help="ReContrast iterations (paper: 2000)")
    t.add_argument("--steps", type=int, default=None, help="ReConPatch training steps")
    t.add_argument("--batch-size", type=int, default=None, help="training batch size (ReContrast paper: 16)")
    t.add_argument("--coreset-ratio", type=float, default=None, help="patch methods: memory-bank coreset ratio")
    t.add_argument("--seed", type=int, default=None, help="random seed (default: the config's, 0)")
    t.add_argument("--holdout", type=float, default=0.1, help="fraction of normal images held out for thresholds")
    t.add_argument("--set", dest="overrides", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field, parsed by its type, e.g. --set encoder_bn=eval (repeatable)")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = every CPU this process may use)")
    t.add_argument("--export", dest="export_to", default=None, metavar="BUNDLE",
                   help="also export a bundle to this directory when training ends")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("export", formatter_class=_Help, help="write a verified bundle (ONNX + weights + thresholds), optionally TensorRT",
                       description="Export a training run to a bundle: ONNX (opset 17, dynamic batch, parity-checked "
                                   "against torch), safetensors weights, memory bank, thresholds from held-out normal "
                                   "images (or F1-optimal on --validation), sha256 of every file.")
    e.add_argument("--run", required=True, help="training run directory from `edgeuad train`")
    e.add_argument("--out", required=True, help="bundle directory to write")
    e.add_argument("--validation", default=None, help="labelled MVTec-layout folder: F1-optimal threshold on its test split")
    e.add_argument("--threshold-rule", choices=("robust", "quantile"), default="robust",
                   help="threshold from held-out normal scores: robust = median + z(1-fpr)*1.4826*MAD, "
                        "quantile = the --quantile of the scores")
    e.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate of the robust rule")
    e.add_argument("--quantile", type=float, default=0.99, help="normal-score quantile of the quantile rule")
    e.add_argument("--archive", default=None, help="also pack the bundle into this .tar file")
    e.add_argument("--fp16", action="store_true", help="also build a TensorRT FP16 engine (needs tensorrt + a GPU)")
    e.add_argument("--int8", action="store_true", help="also build a TensorRT INT8 engine from explicit Q/DQ")
    e.add_argument("--cpu-int8", action="store_true",
                   help="make the bundle's graph int8 for onnxruntime on the CPU (its int8 kernels; thresholds "
                        "from the int8 pipeline); not with --fp16/--int8, which build TensorRT engines from fp32")
    e.add_argument("--calib", default=None, help="folder of normal images for INT8 calibration (required with "
                                                 "--int8 and --cpu-int8)")
    e.add_argument("--int8-max-drop", type=float, default=0.005,
                   help="--cpu-int8: the validation I-AUROC (run's synthetic-defect split) the int8 graph may lose; "
                        "more stops the export and writes nothing")
    e.add_argument("--int8-fp32-first", type=int, default=2,
                   help="INT8: leading convs left in fp32 (the stem and first depthwise conv cost the most "
                        "accuracy in int8; 0 = every conv int8)")
    e.add_argument("--max-batch", type=int, default=8, help="TensorRT optimisation profile max batch")
    e.add_argument("--threads", type=int, default=0, help="CPU threads for export checks and thresholds "
                                                          "(0 = every CPU this process may use)")

    en = sub.add_parser("ensemble", help="combine bundles into one ensemble bundle (mean modified z-score)",
                        description="Combine finished bundles (other backbones or methods) into ONE bundle that every "
                                    "command scores like any other: each member's score is normalised by the modified "
                                    "z-score (s - median) / (1.4826 MAD) of its scores on held-out normal images, and "
                                    "the ensemble score is their mean (ReConPatch Eq. 11); maps likewise. The normal "
                                    "images must be held out from every member's training: --runs uses the images "
                                    "every run held out, --normal DIR images you know none of them trained on.",
                        formatter_class=_Help)
    en.add_argument("--bundles", nargs="+", required=True, metavar="BUNDLE", help="member bundles (directories or .tar)")
    src = en.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", nargs="+", metavar="RUN", help="the members' training runs: their shared held-out images")
    src.add_argument("--normal", metavar="DIR", help="folder of normal images none of the members trained on")
    en.add_argument("--out", required=True, help="ensemble bundle directory to write")
    en.add_argument("--archive", default=None, help="also pack the bundle into this .tar file")
    en.add_argument("--fpr", type=float, default=0.01,
                    help="target false-positive rate of the robust threshold on the combined normal scores")
    en.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch", "tensorrt"),
                    help="backend scoring the normal images")
    en.add_argument("--threads", type=int, default=0, help="CPU threads (0 = every CPU this process may use)")
    en.add_argument("--no-check", action="store_true",
                    help="with --runs: skip scoring the members alone and combined on the runs' synthetic-defect "
                         "split (recorded as training.validation; it never changes the bundle)")

    v = sub.add_parser("eval", formatter_class=_Help, help="score a test split and print I-AUROC, P-AUROC, AUPRO, F1-max",
                       description="Evaluate a bundle on <data>/test (and ground_truth masks when present) using the "
                                   "runtime Detector. Prints a table and writes metrics.json, scores.jsonl and plots.")
    v.add_argument("--bundle", required=True, help="bundle directory or .tar")
    v.add_argument("--data", required=True, help="MVTec-layout root")
    v.add_argument("--out", default=None, help="report directory (metrics.json, scores.jsonl, overlays.png)")
    v.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch", "tensorrt"), help=BACKEND_HELP)
    v.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    v.add_argument("--batch", type=int, default=8, help="frames per network call")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    v.add_argument("--expect-digest", default=None, metavar="SHA256", help=_DIGEST_HELP)

    r = sub.add_parser("predict", formatter_class=_Help,
                       help="score images, a folder, a video, a camera or an RTSP stream",
                       description="Stream SOURCE (image file, folder, glob, video file, camera index, rtsp:// or "
                                   "http:// URL) through the Detector. With --out: predictions.jsonl and "
                                   "predictions.csv (one row per frame: file path, or source + frame index + time; "
                                   "score, severity, verdict, processing and queueing ms) and overlays of anomalous "
                                   "frames named after their input; --show opens a live window (needs opencv-python, "
                                   "not -headless).")
    r.add_argument("source", help="image, folder, glob, video, camera index or URL")
    r.add_argument("--bundle", required=True, help="bundle directory, .tar, or engine inside a bundle")
    r.add_argument("--out", default=None, help="output directory (predictions.jsonl, predictions.csv, overlays/)")
    r.add_argument("--all-overlays", action="store_true", help="save overlays for every frame, not only anomalous ones")
    r.add_argument("--show", action="store_true", help="live heatmap window")
    r.add_argument("--fps", type=float, default=None, help="limit capture rate (frames/s)")
    r.add_argument("--batch", type=int, default=1, help="frames per network call (up to)")
    r.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                   help="folder SOURCE: include images in its subfolders")
    r.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "torch", "tensorrt"),
                   help=BACKEND_HELP + "; auto = tensorrt when --bundle names an engine file, else onnxruntime")
    r.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    r.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    r.add_argument("--expect-digest", default=None, metavar="SHA256", help=_DIGEST_HELP)

    b = sub.add_parser("bench", help="throughput and per-stage latency vs torch references (quick; --full sweeps)",
                       description="Benchmark a bundle: frames/s and p50/p95/p99 per stage, and the speed-up over "
                                   "torch references a user would write (float32 eager torch; with --full also "
                                   "torch.compile and onnxruntime + torch post-processing), all on the same frames. "
                                   "Each pipeline runs in its own worker process; rounds interleave them and the "
                                   "speed-up is the median [min-max] of the per-round ratios. The default is a quick "
                                   "run (batch 1, 1 thread, onnxruntime vs eager torch, 3 rounds of 8 frames); "
                                   "--full runs batch 1,4,8 x threads 1,2 x every backend (INT8 included) and "
                                   "reference, 7 rounds of 12 batches.")
    b.add_argument("--bundle", default=None, help="bundle directory or .tar (required unless --serve)")
    b.add_argument("--out", default="bench_out", help="directory for bench.json, bench.md, bench.png "
                                                      "(bench_out/ is git-ignored) (default: bench_out)")
    b.add_argument("--full", action="store_true", help="the full sweep (see above) instead of the quick run")
    b.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes (default: 1; --full: 1,4,8)")
    b.add_argument("--threads", default=None, help="comma-separated CPU thread counts (default: 1; --full: 1,2)")
    b.add_argument("--backends", default=None, help="comma-separated runtimes: onnxruntime, onnxruntime-int8, torch, "
                                                    "tensorrt (default: onnxruntime; --full: all)")
    b.add_argument("--references", default=None, help="comma-separated torch references: torch-eager, torch-compile, "
                                                       "ort+torch-post (default: torch-eager; --full: all)")
    b.add_argument("--no-reference", action="store_true", help="no torch reference (runtime timings only)")
    b.add_argument("--repetitions", type=int, default=None, help="interleaved rounds (default: 3; --full: 7)")
    b.add_argument("--block", type=int, default=None, help="timed batches per pipeline per round (default: 8; --full: 12)")
    b.add_argument("--warmup", type=int, default=2, help="extra untimed batches in the first round (default: 2)")
    b.add_argument("--images", default=None, help="folder of images to use as frames (default: synthetic 640x480)")
    b.add_argument("--int8-calib", default=None, help="folder of normal images calibrating the INT8 graph "
                                                      "(default: the benchmark frames, timing only)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--serve", default=None, metavar="URL",
                   help="instead: closed-loop load on a served bundle, e.g. http://127.0.0.1:8000/bottle (loopback only)")
    b.add_argument("--concurrency", default="1,2,4,8,16,32", help="--serve: comma-separated client counts (default 1,2,4,8,16,32)")
    b.add_argument("--duration", type=float, default=5.0, help="--serve: seconds per client count (default 5)")
    b.add_argument("--max-requests", type=int, default=2000, help="--serve: most answers per client count (default 2000)")
    b.add_argument("--expect-digest", default=None, metavar="SHA256", help=_DIGEST_HELP)

    d = sub.add_parser("demo", formatter_class=_Help,
                       help=f"make synthetic data, train, export, detect and report ({DEMO_TIME})",
                       description="The whole flow on its own data: write a small synthetic MVTec-layout dataset "
                                   "(textures with scratches, blobs and cut-outs + masks), train, export a bundle "
                                   "(ONNX parity-checked), evaluate it through the runtime Detector, and write metrics, "
                                   "overlays, a score histogram and demo_summary.json under --out, then print the "
                                   f"commands to try next. Takes {DEMO_TIME} (recontrast).")
    d.add_argument("--out", default="demo_out", help="output directory")
    d.add_argument("--method", choices=METHODS, default="recontrast", help="anomaly detection method")
    d.add_argument("--iterations", type=int, default=None, help="override training iterations/steps")
    d.add_argument("--seed", type=int, default=0, help="random seed of the data and the training")

    sv = sub.add_parser("serve", help="serve bundles over HTTP on Ray Serve (replicas, batching, cameras, hot swap)",
                        description="Serve bundles on a Ray Serve cluster (a local one unless --address): each bundle "
                                    "NAME at http://HOST:PORT/NAME with POST /v1/score, GET /v1/health, GET /v1/info. "
                                    "Deploying a NAME that is already served swaps its bundle with no failed request. "
                                    "Needs the `serve` extra: pip install 'edgeuad[serve]'.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sv.add_argument("--bundle", dest="bundles", action="append", required=True, metavar="[NAME=]PATH",
                    help="bundle to serve (repeatable); NAME defaults to the folder's name")
    sv.add_argument("--replicas", type=int, default=1, help="replicas per bundle (each holds a Detector)")
    sv.add_argument("--host", default="127.0.0.1", help="HTTP address (0.0.0.0 exposes it to the network)")
    sv.add_argument("--port", type=int, default=8000, help="HTTP port")
    sv.add_argument("--max-batch", type=int, default=8, help="most requests per batch (@serve.batch)")
    sv.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    sv.add_argument("--address", default=None, help="join this Ray cluster (e.g. 10.0.0.2:6379) instead of starting one")
    sv.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local cluster (None: the machine's, or twice what the replicas reserve if more)")
    sv.add_argument("--replica-cpus", type=float, default=1.0, help="logical CPUs each replica reserves")
    sv.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "torch", "tensorrt"),
                    help="inference backend of every replica")
    sv.add_argument("--threads", type=int, default=0, help="CPU threads per replica (0 = library default)")
    sv.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (413 above)")
    sv.add_argument("--max-pixels", type=int, default=40_000_000, help="largest decoded frame, H*W (413 above)")
    sv.add_argument("--cameras", default=None, metavar="YAML", help="cameras.yaml: one Ray actor per camera, JSONL + overlays")
    sv.add_argument("--detach", action="store_true",
                    help="deploy/update and exit, leaving the apps on the cluster (needs --address; the hot swap)")
    sv.add_argument("--low-latency", action="store_true",
                    help="Ray Serve's request path without its extra event-loop threads, gRPC to the replicas "
                         "(a cluster this command starts; benchmarks/RESULTS.md section 7)")
    sv.add_argument("--direct-ingress", action="store_true",
                    help="Ray Serve's direct ingress: each replica also answers on its own HTTP port (printed, "
                         "and again when it changes), no proxy hop; the proxy URL keeps working (a cluster this "
                         "command starts; benchmarks/RESULTS.md section 7)")

    i = sub.add_parser("info", formatter_class=_Help,
                       help="versions, compiled runtime (_rt, CUDA), backends, CPUs; a bundle's manifest",
                       description="Print the versions of edgeuad and its dependencies (which are installed), "
                                   "whether the compiled runtime edgeuad._rt is built and with CUDA, and the CPUs "
                                   "this process may use (the default thread count). With --bundle: verify every "
                                   "file of the bundle (sha256) and print method, backbone, input size, "
                                   "post-processing and threshold.")
    i.add_argument("--bundle", default=None, help="also verify this bundle (directory or .tar) and print its manifest")
    return p


# ----------------------------------------------------------------------------- commands
def cmd_train(a: argparse.Namespace) -> int:
    _require_train_extra("train")
    from . import api

    ov: dict[str, Any] = dict(a.overrides)
    for flag, key in (("backbone", "backbone"), ("image_size", "image_size"), ("iterations", "iterations"),
                      ("steps", "steps"), ("batch_size", "batch_size"), ("coreset_ratio", "coreset_ratio"),
                      ("seed", "seed"), ("weights", "pretrained")):
        val = getattr(a, flag)
        if val is not None:
            ov[key] = val
    run = api.train(a.method, a.data, a.out, ov, holdout_fraction=a.holdout, progress=not a.no_progress,
                    threads=a.threads)
    log.info("run written to %s", run.root)
    if a.export_to:
        bundle = api.export(run, a.export_to)
        log.info("bundle written to %s", bundle.root)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    _require_train_extra("export")
    from . import api
    from .bundle import pack

    if (a.int8 or a.cpu_int8) and not a.calib:
        flag = "--int8" if a.int8 else "--cpu-int8"
        raise SystemExit(f"edgeuad export: {flag} needs --calib DIR (normal images); random calibration is never used")
    if a.cpu_int8 and (a.fp16 or a.int8):
        raise SystemExit("edgeuad export: --cpu-int8 makes an onnxruntime int8 bundle; TensorRT engines "
                         "(--fp16/--int8) are built from an fp32 bundle: export them separately")
    bundle = api.export(a.run, a.out, threads=a.threads, validation=a.validation, quantile=a.quantile,
                        threshold_rule=a.threshold_rule, fpr=a.fpr,
                        cpu_int8_calib=a.calib if a.cpu_int8 else None, int8_fp32_first=a.int8_fp32_first,
                        int8_max_drop=a.int8_max_drop)
    sys.stdout.write(f"bundle: {bundle.root}\ndigest: {bundle.digest}\nthreshold: "
                     f"{bundle.thresholds['threshold']:.6g} ({bundle.thresholds['source']})\n")
    if a.fp16 or a.int8:
        from .export.trt_export import export_engines

        for path in export_engines(bundle, fp16=a.fp16, int8=a.int8, calib=a.calib, max_batch=a.max_batch,
                                   int8_fp32_first=a.int8_fp32_first):
            sys.stdout.write(f"engine: {path}\n")
    if a.archive:
        sys.stdout.write(f"archive: {pack(bundle.root, Path(a.archive))}\n")
    return 0


def cmd_ensemble(a: argparse.Namespace) -> int:
    from . import api
    from .bundle import pack

    bundle = api.ensemble(a.bundles, a.out, normal_images=a.normal, runs=a.runs, fpr=a.fpr, backend=a.backend,
                          threads=a.threads, check=not a.no_check)
    normal = bundle.manifest["training"]["normal"]
    sys.stdout.write(f"bundle: {bundle.root}\ndigest: {bundle.digest}\nmembers: {len(bundle.members)}\n"
                     f"normal images: {normal['n_images']} ({normal['source']})\n"
                     f"threshold: {bundle.thresholds['threshold']:.6g} ({bundle.thresholds['source']})\n")
    val = bundle.manifest["training"].get("validation")
    if val:
        best = next(m for m in val["members"] if m["member"] == val["best_member"])
        sys.stdout.write(f"validation I-AUROC (synthetic defects, {val['images']} images): ensemble "
                         f"{val['ensemble']['i_auroc']:.4f}, best member {val['best_member']} {best['i_auroc']:.4f} "
                         f"({val['gain_i_auroc']:+.4f})\n")
    if a.archive:
        sys.stdout.write(f"archive: {pack(bundle.root, Path(a.archive))}\n")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from . import api

    res = api.evaluate(a.bundle, a.data, a.out, backend=a.backend, threads=a.threads, batch=a.batch,
                       progress=not a.no_progress, expected_digest=a.expect_digest)
    sys.stdout.write(api.format_metrics(res.metrics) + "\n")
    sys.stdout.write(f"{int(res.metrics['n_images'])} images in {res.seconds:.1f} s, "
                     f"{res.latency_ms_mean:.1f} ms/frame\n")
    if a.out:
        sys.stdout.write(f"report: {a.out}/metrics.json\n")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from .predict import run_predict

    return run_predict(a)


def cmd_bench(a: argparse.Namespace) -> int:
    if a.serve:
        from .serve.loadgen import LoadConfig, run_load

        rep = run_load(LoadConfig(url=a.serve, concurrency=[int(x) for x in a.concurrency.split(",") if x],
                                  duration_s=a.duration, max_requests=a.max_requests, warmup_requests=a.warmup,
                                  images=a.images))
        rep.write(a.out)
        sys.stdout.write(rep.table() + "\n")
        return 0
    if not a.bundle:
        raise SystemExit("edgeuad bench: --bundle is required (or --serve URL)")
    from .bench import FULL, BenchConfig, run_bench

    kw: dict[str, Any] = dict(FULL) if a.full else {}
    for flag, key, conv in (("batch_sizes", "batch_sizes", int), ("threads", "threads", int),
                            ("backends", "backends", str), ("references", "references", str)):
        val = getattr(a, flag)
        if val is not None:
            kw[key] = [conv(x) for x in val.split(",") if x]
    for key in ("repetitions", "block"):
        if getattr(a, key) is not None:
            kw[key] = getattr(a, key)
    if a.no_reference:
        kw["references"] = []
    cfg = BenchConfig(bundle=a.bundle, out_dir=a.out, warmup=a.warmup, images=a.images, int8_calib=a.int8_calib,
                      progress=not a.no_progress, expected_digest=a.expect_digest, **kw)
    report = run_bench(cfg)
    sys.stdout.write(report.table() + "\n")
    sys.stdout.write(f"written: {Path(a.out) / 'bench.json'}, bench.md, bench.png\n")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from .serve.server import ServeConfig, parse_bundles, run_server

    return run_server(ServeConfig(
        bundles=parse_bundles(a.bundles), replicas=a.replicas, host=a.host, port=a.port, max_batch=a.max_batch,
        batch_wait_ms=a.batch_wait_ms, address=a.address, num_cpus=a.num_cpus, replica_cpus=a.replica_cpus,
        backend=a.backend, threads=a.threads, max_body_mb=a.max_body_mb, max_pixels=a.max_pixels,
        cameras=a.cameras, detach=a.detach, low_latency=a.low_latency,
        direct_ingress=a.direct_ingress))


def cmd_demo(a: argparse.Namespace) -> int:
    _require_train_extra("demo")
    from .demo import run_demo

    return run_demo(a.out, method=a.method, iterations=a.iterations, seed=a.seed)


def cmd_info(a: argparse.Namespace) -> int:
    import platform

    from ._version import __version__
    from .cpus import (affinity_cpus, available_cpus, cgroup_cpu_quota, describe_openmp_policy, int8_product_saturates,
                       resolve_threads)

    quota = cgroup_cpu_quota()
    lines = [f"edgeuad {__version__} (python {platform.python_version()}, {platform.machine()})",
             f"CPUs: {available_cpus()} available (affinity {affinity_cpus()}, cgroup quota "
             f"{'none' if quota is None else f'{quota:g}'}); default threads: {resolve_threads(0)}",
             # read once by OpenMP when torch or `_rt` loads (cpus.prefer_passive_openmp)
             f"OpenMP wait policy: {describe_openmp_policy()}",
             # whether `export --cpu-int8` bundles pay off on this box (cpus.ort_session_options)
             "int8 (onnxruntime): " + ("no VNNI: precise mode, int8 bundles may be slower than fp32 here"
                                       if int8_product_saturates() else "exact int8 product (VNNI/AMX or not x86)")]
    try:
        from . import _rt

        lines.append(f"_rt: built, CUDA compiled: {_rt.has_cuda()}, CUDA devices: {_rt.cuda_device_count()}")
        kernel = _rt.exact_kernel()  # which tile exact bank searches run on this CPU (same results on all)
        lines.append(f"exact bank search: {kernel}" + (", bf16 candidates re-ranked exactly (EDGEUAD_RT_NO_BF16=1: "
                                                        "float32 tile)" if "bf16" in kernel else ""))
    except ImportError as e:
        lines.append(f"_rt: NOT built ({e}); run pip install -e .")
    for mod in ("onnxruntime", "torch", "tensorrt", "pycuda", "cv2", "numpy"):
        try:
            m = __import__(mod)
            lines.append(f"{mod}: {getattr(m, '__version__', 'present')}")
        except Exception:  # noqa: BLE001 - info only reports
            lines.append(f"{mod}: not installed")
    if a.bundle:
        from .bundle import Bundle

        bd = Bundle.load(a.bundle, allow_provisional=True)  # shown, flagged below; Detector refuses it
        m = bd.manifest
        # a .tar is extracted to a temporary folder: name what the user gave, not that folder
        n_files = len(m["files"]) + sum(1 + len(b.manifest["files"]) for b in bd.members)
        lines += [f"bundle {a.bundle}: verified ({n_files} files, sha256 ok)",
                  f"  digest {bd.digest}",
                  f"  method {m['method']}, backbone {m['backbone']}, input {m['preprocess']['size']}",
                  (f"  outputs {len(m['model']['outputs'])}, " if "model" in m else "  ")
                  + f"post-processing {m['postprocess']['kind']}",
                  f"  threshold {m['thresholds']['threshold']:.6g} ({m['thresholds']['source']})",
                  f"  edgeuad {m.get('edgeuad_version')}, schema {m['schema_version']}"]
        if bd.cpu_int8:
            q = m["quantization"]["cpu_int8"]
            lines.append(f"  graph int8 for onnxruntime on the CPU: {q.get('quantized_ops', '?')} convs int8, "
                         f"{len(q.get('fp32_nodes') or [])} fp32, calibrated on {q.get('calibration_images', '?')} "
                         f"images ({q.get('method', '?')}), cosine to fp32 {q.get('fp32_vs_qdq_cosine', float('nan')):.4f}"
                         + _worst_int8_output(q.get("output_rel_error") or {}))
        for line in (_backbone_choice_line(m.get("training", {})), _selection_line(m.get("training", {}))):
            if line:
                lines.append(line)
        for e, b in zip(m["postprocess"].get("members", []), bd.members):
            lines.append(f"  member {e['dir']}: {e['method']}/{e['backbone']}, input {b.preprocess.size[0]}x"
                         f"{b.preprocess.size[1]}, normal median {e['median']:.6g}, MAD {e['mad']:.6g}, "
                         f"digest {e['digest'][:12]}")
        if bd.members:
            normal = m.get("training", {}).get("normal", {})
            lines.append(f"  normal images: {normal.get('n_images', '?')} ({normal.get('source', '?')})")
        if m["thresholds"]["source"] == "provisional":
            lines.append("  PROVISIONAL thresholds: an unfinished export; Detector refuses this bundle")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _worst_int8_output(rel: dict[str, float]) -> str:
    """", largest relative output error NAME X" from a cpu_int8 record (bundles exported before it: "")."""
    if not rel:
        return ""
    name = max(rel, key=lambda k: rel[k])
    return f", largest relative output error {name} {rel[name]:.3f}"


def _backbone_choice_line(training: Any) -> str | None:
    """'  backbone auto: chose ... (validation I-AUROC lite0 0.75, ...)' from a manifest's training section,
    or None.  That section is informational (never read by the runtime), so anything malformed is skipped."""
    ch = training.get("backbone_choice") if isinstance(training, dict) else None
    if not isinstance(ch, dict) or not isinstance(ch.get("candidates"), dict):
        return None
    scores = [f"{str(n).replace('efficientnet_', '')} {c['i_auroc']:.4f}" for n, c in ch["candidates"].items()
              if isinstance(c, dict) and isinstance(c.get("i_auroc"), (int, float))]
    norm = f", input {ch['input_norm']}" if isinstance(ch.get("input_norm"), str) else ""
    return (f"  backbone auto: chose {ch.get('chosen')}{norm} on synthetic defects in {ch.get('held_out_normals')} "
            f"held-out normal images" + (f" (validation I-AUROC {', '.join(scores)})" if scores
                                         else f" ({ch.get('reason')})"))


def _selection_line(training: Any) -> str | None:
    """'  selection: encoder BN train, checkpoint 400 of 500, score max, levels 2,3 (...)' from a ReContrast
    manifest's training section, or None; informational like the backbone line, so malformed parts are skipped."""
    sel = training.get("selection") if isinstance(training, dict) else None
    if not isinstance(sel, dict):
        return None
    parts = []
    bn, ck, sc, lv = (sel.get(k) if isinstance(sel.get(k), dict) else {} for k in ("encoder_bn", "checkpoint", "score",
                                                                                    "levels"))
    if bn.get("mode"):
        parts.append(f"encoder BN {bn['mode']}")
    if ck.get("iteration") is not None:
        parts.append(f"checkpoint {ck['iteration']} of {ck.get('last_iteration', '?')}")
    if sc.get("rule"):
        parts.append(f"score {sc['rule']}")
    if lv.get("levels"):
        vals = lv.get("val_i_auroc")
        scores = (", ".join(f"{k} {v:.4f}" for k, v in vals.items() if isinstance(v, (int, float)))
                  if isinstance(vals, dict) else "")
        parts.append(f"levels {lv['levels']}" + (f" (validation I-AUROC {scores})" if scores else ""))
    return f"  selection: {', '.join(parts)}" if parts else None


COMMANDS = {"train": cmd_train, "export": cmd_export, "ensemble": cmd_ensemble, "eval": cmd_eval, "predict": cmd_predict,
            "bench": cmd_bench, "serve": cmd_serve, "demo": cmd_demo, "info": cmd_info}


def main(argv: Sequence[str] | None = None) -> int:
    # before any command imports torch or _rt: their OpenMP pools read the wait policy once, at load
    prefer_passive_openmp()
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.cmd](args)
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    except MissingExtraError as e:
        log.error("%s", e)
        return 2
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        if args.verbose:
            raise
        log.error("%s: %s", type(e).__name__, e)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
