#!/usr/bin/env python3
"""Python parts of tools/gpu_smoke.sh: GPU checks of edgeuad on a machine with an NVIDIA GPU.

    python3 tools/gpu_smoke.py env                    # what is installed, what _rt and the driver say
    python3 tools/gpu_smoke.py kernels [--small]      # _rt CUDA kernels vs the CPU kernel (exit 1 on mismatch)
    python3 tools/gpu_smoke.py engine --out DIR       # tiny engine, fp32 and fp16: build, run, compare with onnxruntime
    python3 tools/gpu_smoke.py timing                 # fused CUDA map vs torch CUDA, % of peak DRAM bandwidth
    python3 tools/gpu_smoke.py profile                # the same map: device time per kernel vs wall time per call
    python3 tools/gpu_smoke.py detector --out DIR [--bundle B]   # Detector fps: TensorRT vs onnxruntime-CUDA vs torch CUDA

Each command prints a markdown section; a part whose requirement is missing (torch with CUDA, tensorrt,
pycuda, the onnxruntime CUDA provider) prints SKIPPED with the reason and exits 0, a wrong result exits 1.
Written for a lent GPU; CI has none and only imports and argument-parses it (tests/python/test_gpu_smoke.py).
It ran once on a lent H200 (2026-12-04, commit ff36a8f; `engine` and the TensorRT rows SKIPPED there:
no tensorrt/pycuda in that image); the results are in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
log = logging.getLogger("gpu_smoke")

# The default backbone's three levels (efficientnet_lite0 strides 4/8/16 at 256 px), two pairs per level:
# the workload of benchmarks/bench_maps.py.
LEVELS = [(24, 64, 64), (40, 32, 32), (112, 16, 16)]
OUT = (256, 256)
SIGMA = 4.0


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def optional(name: str) -> Optional[Any]:
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001  (a broken install is reported as missing, with the reason logged)
        log.debug("cannot import %s", name, exc_info=True)
        return None


def torch_cuda() -> Optional[Any]:
    torch = optional("torch")
    return torch if torch is not None and torch.cuda.is_available() else None


# ------------------------------------------------------------------------------------------ env
def peak_bandwidth_gbs(device: int = 0) -> Optional[float]:
    """Theoretical DRAM bandwidth from the driver: 2 (DDR) x memory clock x bus width."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    if lib.cuInit(0) != 0:
        return None
    dev, clk, bus = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if lib.cuDeviceGet(ctypes.byref(dev), device) != 0:
        return None
    lib.cuDeviceGetAttribute(ctypes.byref(clk), 36, dev)  # MEMORY_CLOCK_RATE, kHz
    lib.cuDeviceGetAttribute(ctypes.byref(bus), 37, dev)  # GLOBAL_MEMORY_BUS_WIDTH, bits
    if clk.value <= 0 or bus.value <= 0:
        return None
    return 2.0 * clk.value * 1e3 * bus.value / 8 / 1e9


def cmd_env(_: argparse.Namespace) -> int:
    from edgeuad import _rt

    out("## environment")
    out(f"- python {sys.version.split()[0]}, numpy {np.__version__}")
    out(f"- _rt build: {json.dumps(_rt.build_info())}")
    st = _rt.cuda_status()
    out(f"- _rt CUDA status: {json.dumps(st)}")
    for name in ("torch", "onnxruntime", "tensorrt", "pycuda", "onnx", "onnxconverter_common", "cupy"):
        m = optional(name)
        out(f"- {name}: {getattr(m, '__version__', 'present') if m else 'not installed'}")
    ort = optional("onnxruntime")
    if ort:
        out(f"- onnxruntime providers: {ort.get_available_providers()}")
    t = torch_cuda()
    if t:
        out(f"- torch CUDA: {t.version.cuda}, device {t.cuda.get_device_name(0)}")
    bw = peak_bandwidth_gbs()
    out(f"- peak DRAM bandwidth (driver attributes): {bw:.0f} GB/s" if bw else "- peak bandwidth: unknown")
    if st["device_count"] == 0:
        out(f"**FAIL**: _rt cannot use a GPU: {st['error']}")
        return 1
    return 0


# ------------------------------------------------------------------------------------------ kernels
def _pairs(batch: int, dtype: Any, levels: list, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    pairs = []
    for c, h, w in levels:
        for _ in range(2):
            a = rng.standard_normal((batch, c, h, w), dtype=np.float32)
            b = a + 0.3 * rng.standard_normal(a.shape, dtype=np.float32)
            pairs.append((a.astype(dtype), b.astype(dtype)))
    return pairs


def cmd_kernels(args: argparse.Namespace) -> int:
    from edgeuad import _rt

    out("## CUDA kernels vs the CPU kernel")
    cases = [(1, np.float32, (37, 129), True, 4.0), (3, np.float16, (37, 129), False, 4.0),
             (2, np.float32, (1, 1), True, 0.0), (2, np.float32, (256, 256), True, 64.0)]
    if not args.small:
        cases += [(8, np.float32, OUT, True, SIGMA), (8, np.float16, OUT, False, SIGMA), (64, np.float16, OUT, True, 2.0)]
    worst = 0.0
    D = _rt.DeviceArray
    for batch, dt, size, align, sigma in cases:
        pairs = _pairs(batch, dt, [(5, 9, 7), (3, 4, 5), (8, 1, 3)] if args.small else LEVELS)
        o, mx, tk = D.empty((batch, *size)), D.empty((batch,)), D.empty((batch,))
        _rt.cos_map_cuda([(D.from_host(a), D.from_host(b)) for a, b in pairs], o, size, align_corners=align,
                         sigma=sigma, max_out=mx, topk_out=tk)
        _rt.cuda_synchronize()
        ref = _rt.cos_map(pairs, size, align_corners=align, sigma=sigma)
        errs = [float(np.abs(g - r).max()) for g, r in zip((o.to_host(), mx.to_host(), tk.to_host()), ref)]
        dist = np.random.default_rng(1).uniform(0, 3, (batch, 28, 28)).astype(dt)
        _rt.l2_map_cuda(D.from_host(dist), o, size, align_corners=align, sigma=sigma, max_out=mx, topk_out=tk)
        _rt.cuda_synchronize()
        ref2 = _rt.l2_map(dist, size, align_corners=align, sigma=sigma)
        errs += [float(np.abs(g - r).max()) for g, r in zip((o.to_host(), mx.to_host(), tk.to_host()), ref2)]
        worst = max(worst, max(errs))
        out(f"- batch {batch} {np.dtype(dt).name} {size} align={align} sigma={sigma}: max |GPU-CPU| "
            f"map/max/topk cos {errs[0]:.2e}/{errs[1]:.2e}/{errs[2]:.2e}, l2 {errs[3]:.2e}/{errs[4]:.2e}/{errs[5]:.2e}")
    ok = worst <= 1e-4
    out(f"**{'PASS' if ok else 'FAIL'}**: worst {worst:.2e} (tolerance 1e-4)")
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------ engine
def tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.2, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 16, 3, 3)).astype(np.float32) * 0.1, "w2")
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["f1"]),
             helper.make_node("Conv", ["f1", "w2"], ["f2"], pads=[1, 1, 1, 1], strides=[2, 2])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 64])],
                          [helper.make_tensor_value_info("f1", TensorProto.FLOAT, ["N", 16, 32, 32]),
                           helper.make_tensor_value_info("f2", TensorProto.FLOAT, ["N", 8, 16, 16])], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return path


def cmd_engine(args: argparse.Namespace) -> int:
    out("## tiny TensorRT engine, fp32 and fp16")
    from edgeuad.export import tensorrt as T

    if not T.tensorrt_available():
        out("SKIPPED: tensorrt and/or pycuda not installed")
        return 0
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = tiny_onnx(work / "tiny.onnx")
    ort = optional("onnxruntime")
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    ref = None
    if ort:
        s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        ref = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"image": x})))
    rc = 0
    for precision, tol in (("fp32", 1e-3), ("fp16", 2e-2)):
        t0 = time.perf_counter()
        path = T.build_engine(onnx_path, precision=precision, max_batch=4, cache_dir=work / "cache", force=True)
        build_s = time.perf_counter() - t0
        with T.TrtEngine(path) as eng:
            got = eng.infer(x)
            dev = eng.infer_device(x)
            eng.synchronize()
        meta = T.read_sidecar(path)
        line = f"- {precision}: built in {build_s:.1f} s ({meta['build']})"
        if ref is not None:
            rel = max(float(np.abs(got[n] - ref[n]).max() / max(1e-6, np.abs(ref[n]).max())) for n in ref)
            ok = rel <= tol
            rc |= 0 if ok else 1
            line += f"; max rel. error vs onnxruntime {rel:.2e} ({'PASS' if ok else 'FAIL'}, tol {tol})"
        out(line + f"; device outputs {[tuple(a.shape) for a in dev.values()]}")
    return rc


# ------------------------------------------------------------------------------------------ timing
def _time(fn: Callable[[], object], sync: Callable[[], object], repeat: int = 50) -> float:
    """The shared single-call loop (edgeuad.bench.timing.median_ms) with this script's 5 warm-up calls."""
    from edgeuad.bench.timing import median_ms
    return median_ms(fn, repeat, warm=5, sync=sync)


def _map_case(torch: Any, batch: int, dtype: Any) -> tuple[Callable[[], object], list, int]:
    """The fused CUDA map on `batch` frames of the default levels in `dtype`, with its output buffers on the
    GPU: (one call, the device feature pairs, the bytes that must move at least once: the features read +
    the map written)."""
    from edgeuad import _rt

    pairs = _pairs(batch, dtype, LEVELS)
    tp = [(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()) for a, b in pairs]
    o = torch.empty((batch, *OUT), device="cuda")
    mx, tk = torch.empty(batch, device="cuda"), torch.empty(batch, device="cuda")
    s = torch.cuda.current_stream()

    def call() -> None:
        _rt.cos_map_cuda(tp, o, OUT, sigma=SIGMA, stream=s, max_out=mx, topk_out=tk)

    nbytes = sum(a.nbytes + b.nbytes for a, b in pairs) + batch * OUT[0] * OUT[1] * 4
    return call, tp, nbytes


def cmd_timing(args: argparse.Namespace) -> int:
    out("## fused CUDA map vs torch CUDA (ms per call, median; 6 pairs, 256x256, sigma 4)")
    torch = torch_cuda()
    if torch is None:
        out("SKIPPED: torch with CUDA is not installed (needed for the comparison and the device arrays)")
        return 0
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_maps import torch_eager  # the same torch ops as the CPU benchmark

    bw = peak_bandwidth_gbs()
    out("| batch | dtype | _rt CUDA ms | torch CUDA ms | speed-up | GB/s | % of peak |")
    out("|---|---|---|---|---|---|---|")
    for batch in (1, 8, 64):
        for dt in (np.float32, np.float16):
            call, tp, nbytes = _map_case(torch, batch, dt)
            ms = _time(call, torch.cuda.synchronize)
            tf = [(a.float(), b.float()) for a, b in tp]
            ms_t = _time(lambda: torch_eager(tf), torch.cuda.synchronize)
            gbs = nbytes / ms / 1e6
            out(f"| {batch} | {np.dtype(dt).name} | {ms:.3f} | {ms_t:.3f} | {ms_t / ms:.1f}x | {gbs:.0f} | "
                f"{100 * gbs / bw:.0f}% |" if bw else f"| {batch} | {np.dtype(dt).name} | {ms:.3f} | {ms_t:.3f} | "
                f"{ms_t / ms:.1f}x | {gbs:.0f} | ? |")
    out("(goal of issue 18: >= 3x torch CUDA at batch 1, >= 60% of peak bandwidth at batch >= 8)")
    return 0


# ------------------------------------------------------------------------------------------ profile
KERNELS = ("k_tables", "k_cos", "k_convert", "k_hpass", "k_vpass", "k_scores")


def _device_us(evt: Any) -> float:
    """An averaged profiler event's total device time in us (the attribute's name changed across torch)."""
    for name in ("device_time_total", "cuda_time_total", "self_device_time_total", "self_cuda_time_total"):
        v = getattr(evt, name, None)
        if v:
            return float(v)
    return 0.0


def cmd_profile(args: argparse.Namespace) -> int:
    """Where a fused-map call's time goes: each kernel's device time (torch.profiler, CUPTI) against the
    wall time of the call from Python, so fixed per-call costs and kernel time can be told apart."""
    out("## fused CUDA map: device time per kernel vs wall time per call (fp32, 256x256, sigma 4)")
    torch = torch_cuda()
    if torch is None:
        out("SKIPPED: torch with CUDA is not installed (the profiler and the device arrays come from it)")
        return 0
    from torch.profiler import ProfilerActivity, profile

    bw = peak_bandwidth_gbs()
    out("| batch | wall ms/call | kernels us/call | " + " | ".join(f"{k} us" for k in KERNELS)
        + " | kernel-time GB/s | % of peak |")
    out("|---|---|---|" + "---|" * len(KERNELS) + "---|---|")
    for batch in (1, 8, 64):
        call, _, nbytes = _map_case(torch, batch, np.float32)
        wall = _time(call, torch.cuda.synchronize)
        n = 20
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                call()
            torch.cuda.synchronize()
        per = {k: 0.0 for k in KERNELS}
        for evt in prof.key_averages():
            for k in KERNELS:
                if k in evt.key:
                    per[k] += _device_us(evt) / n
        total = sum(per.values())
        gbs = nbytes / (total * 1e-6) / 1e9 if total else float("nan")
        out(f"| {batch} | {wall:.3f} | {total:.1f} | " + " | ".join(f"{per[k]:.1f}" for k in KERNELS)
            + f" | {gbs:.0f} | " + (f"{100 * gbs / bw:.0f}% |" if bw else "? |"))
    out("(kernels us/call: the sum of the six kernels' device time; the rest of the wall time is launch,"
        " argument checking and Python)")
    return 0


# ------------------------------------------------------------------------------------------ detector
def make_bundle(work: Path) -> Optional[Path]:
    """A ReContrast-Lite0 bundle at 256 px, trained for a few iterations (fps does not depend on quality)."""
    if optional("torch") is None:
        return None
    from edgeuad import api
    from edgeuad.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(work / "data", kind="texture", n_train=12, n_test_good=2, n_test_defect=2,
                                  size=256, seed=0)
    cfg = {"image_size": 256, "iterations": 5, "batch_size": 4, "pretrained": False, "backbone": "efficientnet_lite0"}
    run = api.train("recontrast", data, work / "run", cfg, holdout_fraction=0.25, progress=False)
    return api.export(run, work / "bundle").root


def cmd_detector(args: argparse.Namespace) -> int:
    from edgeuad.detector import Detector

    out("## Detector fps, ReContrast-Lite0 at 256 px")
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle) if args.bundle else make_bundle(work)
    if bundle is None:
        out("SKIPPED: no --bundle given and torch is not installed to train one")
        return 0
    frames = [np.random.default_rng(i).integers(0, 255, (256, 256, 3), dtype=np.uint8) for i in range(args.batch)]
    out("| pipeline | batch | ms per batch | frames/s |")
    out("|---|---|---|---|")

    def row(name: str, fn: Callable[[], object]) -> None:
        ms = _time(fn, lambda: None, repeat=args.repeat)
        out(f"| {name} | {args.batch} | {ms:.2f} | {1e3 * args.batch / ms:.0f} |")

    from edgeuad.export import tensorrt as T

    if T.tensorrt_available():
        for precision in ("fp16", "fp32"):
            from edgeuad.export.trt_export import export_engines  # noqa: F401  (same path as `edgeuad export --fp16`)
            from edgeuad.runtime.trt_backend import TensorRTBackend

            with Detector(bundle, backend="tensorrt") as det:
                det.backend.close()
                det.backend = TensorRTBackend(det.bundle.onnx_path, precision=precision, max_batch=max(8, args.batch))
                from edgeuad.runtime.device_post import DevicePostprocess

                det.device_post = DevicePostprocess(det.backend, det.post, det.pre_cfg.size)
                row(f"TensorRT {precision} + CUDA map", lambda: det.score_batch(frames, return_map=False))
    else:
        out("| TensorRT | - | SKIPPED: tensorrt/pycuda not installed | |")
    with Detector(bundle) as det:  # the embedded default, for scale: onnxruntime CPU + _rt CPU map
        row(f"onnxruntime CPU + CPU map (Detector default, {det.threads} threads)",
            lambda: det.score_batch(frames, return_map=False))
    ort = optional("onnxruntime")
    if ort and "CUDAExecutionProvider" in ort.get_available_providers():
        from edgeuad.runtime.backends import OrtBackend

        with Detector(bundle) as det:
            det.backend = OrtBackend(det.bundle.onnx_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            row("onnxruntime-CUDA + CPU map", lambda: det.score_batch(frames, return_map=False))
    else:
        out("| onnxruntime-CUDA | - | SKIPPED: no CUDAExecutionProvider | |")
    torch = torch_cuda()
    if torch is not None:
        from edgeuad.methods.reference import build_reference

        ref = build_reference(bundle, device="cuda")
        with Detector(bundle) as det:
            x = det.preprocess(frames)

        def eager() -> None:
            ref.run(x)
            torch.cuda.synchronize()

        row("eager torch CUDA (model + torch post-processing)", eager)
    else:
        out("| eager torch CUDA | - | SKIPPED: torch without CUDA | |")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env", help="environment report")
    k = sub.add_parser("kernels", help="CUDA kernels vs the CPU kernel")
    k.add_argument("--small", action="store_true", help="small shapes only (for compute-sanitizer)")
    e = sub.add_parser("engine", help="tiny engine fp32/fp16: build, run, compare")
    e.add_argument("--out", default="gpu_smoke_out")
    sub.add_parser("timing", help="fused CUDA map vs torch CUDA")
    sub.add_parser("profile", help="fused CUDA map: device time per kernel vs wall time per call")
    d = sub.add_parser("detector", help="Detector fps per backend")
    d.add_argument("--out", default="gpu_smoke_out")
    d.add_argument("--bundle", help="bundle to time (default: train a tiny ReContrast-Lite0 at 256 px)")
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return {"env": cmd_env, "kernels": cmd_kernels, "engine": cmd_engine, "timing": cmd_timing,
            "profile": cmd_profile, "detector": cmd_detector}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
