"""Exact memory-bank search throughput in GFLOP/s per thread against this CPU's peak and against BLAS.

    python benchmarks/bench_bank.py --gemm        # writes benchmarks/results/bank_gemm.md

One frame's worth of patch queries (1024 = a 32x32 grid) against coreset-sized banks (2k and 8k items,
dims 256 and 512); FLOPs = 2 * queries * items * dim (the q.x products; norms, the top-k filter and the
re-rank are extra work the kernel also does).  Rows:
- `_rt exact (<kernel>)`: the bank's own search (k=1) with the widest tile the CPU has (the bf16 candidate
  tile on AVX512_BF16 CPUs, else AVX-512 or AVX2) and, in child processes, the float32 AVX-512 tile
  (EDGEUAD_RT_NO_BF16=1, on a bf16 CPU), the AVX2 tile (EDGEUAD_RT_NO_AVX512=1, on an AVX-512 CPU) and
  the portable tile aarch64 runs (EDGEUAD_RT_PORTABLE=1);
- `torch GEMM (MKL/oneDNN)`: q @ x.T alone (the product a BLAS-based search starts with, nothing else);
- `torch GEMM + argmin`: the whole search a BLAS user writes (float32 expanded form, min over items).
Peak per thread is measured (`_rt.flops_probe`: the tiles' instruction in 12 register-only chains, best of
3 x 0.2 s in this process): 512-bit FMA for the float32 AVX-512 tile, the portable tile and torch, vdpbf16ps
for the bf16 tile, 256-bit FMA for the AVX2 tile.  A VM's /proc/cpuinfo shows the base clock only, and the
formula clock x FLOP/cycle (64 with AVX-512) is printed beside it: the AVX-512 tile ran at 118% of it.  The
bf16 tile's row counts the same float-equivalent FLOPs as the others (it replaces that work: same
neighbours, same distances); vdpbf16ps does two multiply-adds per lane, so its peak is up to twice the FMA's.
Timings are medians of interleaved windows (kernels alternate).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from edgeuad import _rt
from edgeuad.bench import cpu_flags
from edgeuad.bench.timing import windowed_s_per_call

WINDOWS, WINDOW_S = 7, 0.3   # interleaved timing windows per kernel (bench.timing.windowed_s_per_call)

CASES = [(2000, 256), (8000, 256), (2000, 512)]
QUERIES = 1024


def clock_ghz() -> float:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.lower().startswith("cpu mhz"):
                return float(line.split(":")[1]) / 1000.0
    return float("nan")


def base_clock_peak() -> tuple[float, str]:
    """The formula peak: /proc/cpuinfo's clock (a VM's base clock) x FLOP/cycle of the widest FMA."""
    flags = set(cpu_flags())
    fpc = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    ghz = clock_ghz()
    return ghz * fpc, f"{ghz:.2f} GHz x {fpc} FLOP/cycle"


def measured_peaks() -> dict[str, float]:
    """GFLOP/s per thread of each instruction this CPU runs, best of 3 probes."""
    peaks = {}
    for kind in ("avx512", "bf16", "avx2"):
        try:
            peaks[kind] = max(_rt.flops_probe(kind, 0.2) for _ in range(3))
        except ValueError:  # this CPU lacks it
            pass
    return peaks


def peak_kind(kernel: str, peaks: dict[str, float]) -> str:
    """The probe a row is compared with: its tile's instruction; float32 rows without one, the widest FMA."""
    for kind in ("bf16", "avx2"):
        if kind in kernel and kind in peaks:
            return kind
    return "avx512" if "avx512" in peaks else "avx2"


def data(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n + d)
    x = rng.standard_normal((n, d)).astype(np.float32)
    q = (x[rng.integers(0, n, QUERIES)] + 0.3 * rng.standard_normal((QUERIES, d))).astype(np.float32)
    return x, q


def rt_rows(threads: list[int]) -> list[dict]:
    """Seconds per search of the _rt exact kernel this process uses, per case and thread count."""
    rows = []
    for n, d in CASES:
        x, q = data(n, d)
        bank = _rt.MemoryBank(d)
        bank.add(x, threads=1)
        fns = {t: (lambda t=t: bank.search(q, k=1, exact=True, threads=t)) for t in threads}
        for t, s in windowed_s_per_call(fns, WINDOWS, WINDOW_S).items():
            rows.append({"kernel": f"_rt exact ({_rt.exact_kernel()})", "items": n, "dim": d, "threads": t, "s": s})
    return rows


def torch_rows(threads: list[int]) -> list[dict]:
    import torch

    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for n, d in CASES:
            x, q = (torch.from_numpy(a) for a in data(n, d))
            xt, xn = x.t().contiguous(), (x * x).sum(1)

            def search() -> object:
                d2 = torch.addmm(xn[None], q, xt, alpha=-2.0)
                return d2.min(dim=1)

            res = windowed_s_per_call({"gemm": lambda: q @ xt, "search": search}, WINDOWS, WINDOW_S)
            rows.append({"kernel": "torch GEMM (MKL/oneDNN)", "items": n, "dim": d, "threads": t, "s": res["gemm"]})
            rows.append({"kernel": "torch GEMM + argmin", "items": n, "dim": d, "threads": t, "s": res["search"]})
    return rows


def run(threads: list[int]) -> str:
    rows = rt_rows(threads)
    if "--child" not in sys.argv:
        kernel = _rt.exact_kernel()
        forced = ([{"EDGEUAD_RT_NO_BF16": "1"}] if kernel.startswith("avx512bf16") else []) + (
            [{"EDGEUAD_RT_NO_AVX512": "1"}] if kernel.startswith("avx512") else []) + [{"EDGEUAD_RT_PORTABLE": "1"}]
        for extra in forced:
            env = {k: v for k, v in os.environ.items()
                   if k not in ("EDGEUAD_RT_PORTABLE", "EDGEUAD_RT_NO_AVX512", "EDGEUAD_RT_NO_BF16")}
            env.update(extra)
            r = subprocess.run([sys.executable, __file__, "--child", ",".join(map(str, threads))], env=env,
                               capture_output=True, text=True, check=True)
            rows += json.loads(r.stdout)
        rows += torch_rows(threads)
    peaks = measured_peaks()
    base, how = base_clock_peak()
    probes = ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()) or "none (no x86 SIMD)"
    out = [f"\nExact search, {QUERIES} queries (one 32x32 frame) per call; measured peak per thread (GFLOP/s, "
           f"`_rt.flops_probe`): {probes}; base-clock formula {base:.1f} ({how}; boost not visible in this VM); "
           f"SIMD: {', '.join(cpu_flags()) or 'none read'}\n",
           "| kernel | items | dim | threads | ms per frame | GFLOP/s per thread | % of peak | peak |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        gf = 2.0 * QUERIES * r["items"] * r["dim"] / r["s"] / 1e9 / r["threads"]
        kind = peak_kind(r["kernel"], peaks)
        top = peaks.get(kind, float("nan"))
        out.append(f"| {r['kernel']} | {r['items']:,} | {r['dim']} | {r['threads']} | {r['s'] * 1e3:.2f} | "
                   f"{gf:.1f} | {100 * gf / top:.0f}% | {kind} {top:.0f} |")
    out.append("\nGFLOP/s counts 2 x queries x items x dim per call for every row (the GEMM alone does exactly that "
               "work; the searches also compute norms, the minimum and, for _rt, an exact re-rank). % of peak: of "
               "the measured peak named in the last column (the bf16 tile's: vdpbf16ps).\n")
    return "\n".join(out)


if __name__ == "__main__":
    if "--child" in sys.argv:
        ts = [int(v) for v in sys.argv[sys.argv.index("--child") + 1].split(",")]
        sys.stdout.write(json.dumps(rt_rows(ts)))
    else:
        sys.stdout.write(run([1, 2]))
