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
Peak per thread = clock (cpu MHz in /proc/cpuinfo: the base clock a VM reports; boost is not visible)
x FLOP/cycle (32 with AVX2+FMA on two 256-bit FMA pipes, as on Zen 2/3 and Haswell-Skylake client; 64 with
AVX-512 on two 512-bit FMA units).  The bf16 tile's vdpbf16ps does two multiply-adds per lane at the FMA's
issue rate, so its peak is twice that; its row counts the same float-equivalent FLOPs (it replaces that
work: same neighbours, same distances) and its % is of the bf16 peak.  Timings are medians of interleaved
windows (kernels alternate).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable

import numpy as np

from edgeuad import _rt
from edgeuad.bench import cpu_flags

CASES = [(2000, 256), (8000, 256), (2000, 512)]
QUERIES = 1024


def clock_ghz() -> float:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.lower().startswith("cpu mhz"):
                return float(line.split(":")[1]) / 1000.0
    return float("nan")


def peak_gflops_per_thread() -> tuple[float, str]:
    flags = set(cpu_flags())
    fpc = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    ghz = clock_ghz()
    return ghz * fpc, f"{ghz:.2f} GHz x {fpc} FLOP/cycle"


def timed(fns: dict[str, Callable[[], object]], windows: int = 7, window_s: float = 0.3) -> dict[str, float]:
    """Median seconds per call of each fn, windows interleaved across fns (drift hits all alike)."""
    for f in fns.values():
        f()
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(windows):
        for k, f in fns.items():
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < window_s:
                f()
                n += 1
            per[k].append((time.perf_counter() - t0) / n)
    return {k: float(np.median(v)) for k, v in per.items()}


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
        for t, s in timed(fns).items():
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

            res = timed({"gemm": lambda: q @ xt, "search": search})
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
    peak, how = peak_gflops_per_thread()
    out = [f"\nExact search, {QUERIES} queries (one 32x32 frame) per call; peak per thread {peak:.1f} GFLOP/s "
           f"({how}; base clock, boost not visible in this VM); SIMD: {', '.join(cpu_flags()) or 'none read'}\n",
           "| kernel | items | dim | threads | ms per frame | GFLOP/s per thread | % of peak |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gf = 2.0 * QUERIES * r["items"] * r["dim"] / r["s"] / 1e9 / r["threads"]
        top = 2 * peak if "bf16" in r["kernel"] else peak  # two bf16 products per lane per instruction
        out.append(f"| {r['kernel']} | {r['items']:,} | {r['dim']} | {r['threads']} | {r['s'] * 1e3:.2f} | "
                   f"{gf:.1f} | {100 * gf / top:.0f}% |")
    out.append("\nGFLOP/s counts 2 x queries x items x dim per call for every row (the GEMM alone does exactly that "
               "work; the searches also compute norms, the minimum and, for _rt, an exact re-rank). The bf16 row's "
               "% is of the bf16 peak (2x).\n")
    return "\n".join(out)


if __name__ == "__main__":
    if "--child" in sys.argv:
        ts = [int(v) for v in sys.argv[sys.argv.index("--child") + 1].split(",")]
        sys.stdout.write(json.dumps(rt_rows(ts)))
    else:
        sys.stdout.write(run([1, 2]))
