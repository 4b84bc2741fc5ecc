"""Pure statistics of the benchmark: percentiles, throughput, per-stage summaries, ratios."""
from __future__ import annotations

from typing import Sequence

import numpy as np

STAGES = ("decode", "preprocess", "network", "memory_bank", "distance_map", "postprocess", "torch_post",
          "pipeline", "total")
QUANTILES = (50, 95, 99)


def percentiles(samples_ms: Sequence[float], qs: Sequence[int] = QUANTILES) -> dict[str, float]:
    """{'p50': .., 'p95': .., 'p99': .., 'mean': .., 'min': .., 'max': .., 'n': ..} of the samples (ms).

    Linear interpolation between order statistics (numpy's default), so p99 of 20 samples is
    between the two largest, not the largest: with few iterations, read p99 as a rough tail."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("percentiles of no samples")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("timings must be finite and >= 0")
    out = {f"p{q}": float(np.percentile(a, q)) for q in qs}
    out.update(mean=float(a.mean()), min=float(a.min()), max=float(a.max()), n=int(a.size))
    return out


def throughput(frames_per_iter: int, total_ms: Sequence[float]) -> float:
    """Frames per second over the timed iterations: (frames_per_iter * iterations) / sum(times)."""
    t = np.asarray(total_ms, dtype=np.float64)
    if t.size == 0 or frames_per_iter <= 0:
        raise ValueError("need at least one iteration and frames_per_iter > 0")
    s = float(t.sum())
    if s <= 0:
        raise ValueError("total time must be > 0")
    return frames_per_iter * t.size / (s / 1000.0)


def summarize_stages(per_iter: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-iteration {stage: ms} dicts -> {stage: percentiles}; a stage missing from some
    iterations is an error (it would bias the percentiles)."""
    if not per_iter:
        raise ValueError("no iterations")
    names = set(per_iter[0])
    for d in per_iter:
        if set(d) != names:
            raise ValueError(f"inconsistent stages across iterations: {sorted(names)} vs {sorted(d)}")
    order = [s for s in STAGES if s in names] + sorted(names - set(STAGES))
    return {s: percentiles([d[s] for d in per_iter]) for s in order}


def speedup(reference_ms: float, candidate_ms: float) -> float:
    """How many times faster the candidate is (ratio of latencies)."""
    if candidate_ms <= 0 or reference_ms <= 0:
        raise ValueError("latencies must be > 0")
    return reference_ms / candidate_ms


def ratio_summary(reference_block_ms: Sequence[float], candidate_block_ms: Sequence[float]) -> dict[str, float]:
    """Speed-up per repetition = reference block median / candidate block median (the inputs are those
    block medians, one per repetition, in the same order): median, min and max over repetitions."""
    if len(reference_block_ms) != len(candidate_block_ms) or not reference_block_ms:
        raise ValueError("need one reference and one candidate block median per repetition")
    r = np.array([speedup(a, b) for a, b in zip(reference_block_ms, candidate_block_ms)], np.float64)
    return {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max()), "reps": int(r.size),
            "per_rep": [float(v) for v in r]}
