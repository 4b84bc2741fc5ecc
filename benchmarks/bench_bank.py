"""Memory-bank search: HNSW (edgeuad._rt.MemoryBank) vs exact blocked brute force.

Bank sizes 10k and 100k by default (add --large for 1M: about 1.3 GB RAM and a long
build on 2 cores), dim 256 (--dim), clustered synthetic patch-feature-like data (Gaussian
clusters on a 16-dim subspace + noise; real patch features are similarly low-rank).
Reports build time, RSS growth, queries/s for a batch of queries, recall@1 against the
exact search, and the speed-up over exact.  Prints markdown tables.

    python benchmarks/bench_bank.py [--sizes 10000 100000] [--large] [--threads 2]
    python benchmarks/bench_bank.py --gemm     # exact-search GFLOP/s vs peak and BLAS (bank_gemm.py)
"""
from __future__ import annotations

import argparse
import io
import gc
import time

import numpy as np

from edgeuad import _rt
from edgeuad.bench.timing import windowed_s_per_call
from edgeuad.runtime.bank import BankConfig
from _results import publish  # benchmarks/_results.py (scripts run from anywhere: python puts their dir on sys.path)

DIM = 256  # PatchCore default out_dim (ReConPatch uses 512: pass --dim 512)


def clustered(n: int, seed: int, d: int = DIM, clusters: int = 200, latent: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    proj = (rng.standard_normal((latent, d)) / np.sqrt(latent)).astype(np.float32)
    centers = (3.0 * rng.standard_normal((clusters, latent))).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):  # chunks keep the float64 temporaries small at 1M
        m = min(n, s + 100_000) - s
        z = centers[rng.integers(0, clusters, m)] + rng.standard_normal((m, latent), dtype=np.float32)
        out[s:s + m] = z @ proj + 0.05 * rng.standard_normal((m, d), dtype=np.float32)
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def qps(fn, n_queries: int, window: float = 0.4, windows: int = 5) -> float:
    """Queries/s from the median seconds per call over `windows` timing windows (bench.timing's windowed loop;
    with an odd count, the median rate is the rate of the median time)."""
    return n_queries / windowed_s_per_call({"search": fn}, windows, window)["search"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--large", action="store_true", help="also run 1,000,000 items")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--M", type=int, default=BankConfig.M, help="HNSW degree (the Bank default)")
    ap.add_argument("--ef-construction", type=int, default=BankConfig.ef_construction,
                    help="HNSW build beam (the Bank default)")
    ap.add_argument("--dim", type=int, default=DIM, help="feature dim (256 = PatchCore default out_dim)")
    ap.add_argument("--efs", type=int, nargs="+", default=[16, 32, 48, 64, 96, 128])
    ap.add_argument("--gemm", action="store_true",
                    help="only the exact-search GFLOP/s table (results/bank_gemm.md, see bank_gemm.py)")
    args = ap.parse_args()
    if args.gemm:
        from bank_gemm import run

        publish("bank_gemm", run([1, 2]))
        return
    sizes = args.sizes + ([1_000_000] if args.large else [])

    q = clustered(args.queries, seed=12345, d=args.dim)
    build_rows, search_rows = [], []
    for n in sizes:
        x = clustered(n, seed=n, d=args.dim)
        gc.collect()
        before = rss_mb()
        bank = _rt.MemoryBank(args.dim, M=args.M, ef_construction=args.ef_construction)
        t0 = time.perf_counter()
        bank.add(x, threads=args.threads)
        build_s = time.perf_counter() - t0
        grown = rss_mb() - before
        build_rows.append((n, build_s, n / build_s, grown, x.nbytes / 2**20))

        dtruth, truth = bank.search(q, k=1, exact=True, threads=args.threads)
        # Exact search cost grows with n: fewer timed queries for the big banks.
        nq_exact = min(args.queries, max(256, 20_000_000 // n))
        q_exact = q[:nq_exact]
        # The exact reference is the bank's own exact search as the product runs it: pruned by its certified
        # lower bound where that applies (low-rank banks, as these are); the full search is timed beside it.
        st = bank.exact_stats()
        exact_qps = qps(lambda b=bank: b.search(q_exact, k=1, exact=True, threads=args.threads), nq_exact)
        bank.exact_prune = False
        full_qps = qps(lambda b=bank: b.search(q_exact, k=1, exact=True, threads=args.threads), nq_exact)
        bank.exact_prune = True
        label = f"exact (pruned, {st['prune_dims']} dims)" if st["prune_dims"] else "exact"
        search_rows.append((n, label, "-", exact_qps, 1.0, 0.0, 0.0, 1.0))
        if st["prune_dims"]:
            search_rows.append((n, "exact (full)", "-", full_qps, 1.0, 0.0, 0.0, full_qps / exact_qps))
        for ef in args.efs:
            dist, idx = bank.search(q, k=1, ef=ef, threads=args.threads)
            recall = float((idx[:, 0] == truth[:, 0]).mean())
            # What a missed neighbour costs an anomaly score (the NN distance): relative excess.
            excess = dist[:, 0] / np.maximum(dtruth[:, 0], 1e-12) - 1.0
            h_qps = qps(lambda b=bank, e=ef: b.search(q, k=1, ef=e, threads=args.threads), args.queries)
            search_rows.append((n, "hnsw", ef, h_qps, recall, float(excess.mean()),
                                float(np.percentile(excess, 99)), h_qps / exact_qps))
        del bank, x
        gc.collect()

    out = io.StringIO()
    out.write(f"\nMemory bank, dim {args.dim}, HNSW M={args.M} ef_construction={args.ef_construction}, "
              f"{args.threads} threads, {args.queries} queries per batch\n\n")
    out.write("| items | build (s) | inserts/s | RSS growth (MiB) | raw features (MiB) |\n|---:|---:|---:|---:|---:|\n")
    for n, b, ips, grown, raw in build_rows:
        out.write(f"| {n:,} | {b:.1f} | {ips:,.0f} | {grown:.0f} | {raw:.0f} |\n")
    out.write("\n| items | search | ef | queries/s | recall@1 | score error mean | score error p99 | "
              "speed-up vs exact |\n|---:|---|---:|---:|---:|---:|---:|---:|\n")
    for n, mode, ef, v, rec, err, err99, sp in search_rows:
        out.write(f"| {n:,} | {mode} | {ef} | {v:,.0f} | {rec:.3f} | {100 * err:.2f}% | {100 * err99:.2f}% | "
                  f"{sp:.1f}x |\n")
    out.write("\nexact (pruned, m dims): the default exact search, which finds candidates by a lower bound in the "
              "bank's top-m principal subspace and certifies them (same neighbours as the full search); "
              "exact (full): the same bank with `exact_prune = False`. HNSW's speed-up is over the default.\n")
    out.write("\nscore error: the NN distance HNSW returns over the exact NN distance, minus 1 (what a missed "
              "neighbour changes in a patch's anomaly score; 0 when recall is perfect).\n")

    publish("bank", out.getvalue())


if __name__ == "__main__":
    main()
