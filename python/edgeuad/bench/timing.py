"""The timing loops: `time_block` for every pipeline (runtimes and references alike), `median_ms` for a single
call (a kernel, a GPU engine) timed on its own, `windowed_s_per_call` for short calls timed in windows (bank
searches, GEMMs)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .frames import batch_of, decode


def time_block(pipe: Any, frames: Sequence[np.ndarray], start: int, n: int, batch_size: int,
               warm: int = 0) -> list[dict[str, float]]:
    """`warm` untimed then `n` timed batches of `batch_size` frames (batch i holds frames
    (start + i) * batch_size ..., cycling): decode + `pipe.step` per batch.

    Per timed batch: {"decode", the step's own stages, "pipeline" (everything after decode),
    "total" (decode included)} in ms.  A step returning the wrong number of results for its batch
    is an error: a pipeline that drops frames must not look fast."""
    rec: list[dict[str, float]] = []
    for i in range(warm + n):
        bufs = batch_of(frames, start + max(0, i - warm), batch_size)
        t0 = time.perf_counter()
        imgs = decode(bufs)
        t1 = time.perf_counter()
        got, stages = pipe.step(imgs)
        t2 = time.perf_counter()
        if got != batch_size:
            raise RuntimeError(f"{pipe.name}: {got} results for a batch of {batch_size}")
        if i >= warm:
            rec.append({"decode": (t1 - t0) * 1e3, **stages, "pipeline": (t2 - t1) * 1e3, "total": (t2 - t0) * 1e3})
    return rec


def median_ms(fn: Callable[[], object], repeat: int, warm: int = 1,
              sync: Optional[Callable[[], object]] = None) -> float:
    """Median ms of `repeat` timed calls of `fn` after `warm` untimed ones; `sync` (e.g.
    torch.cuda.synchronize) runs after the warm-up and inside every timed call, so asynchronous work is counted."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warm):
        fn()
    if sync is not None:
        sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def windowed_s_per_call(fns: dict[str, Callable[[], object]], windows: int, window_s: float) -> dict[str, float]:
    """Median seconds per call of each fn over `windows` windows of at least `window_s` s each, the windows
    interleaved across fns (drift on a shared machine hits all alike), after one untimed call of each. Single long
    windows moved by up to 50 % between runs on the project's shared 2-core machine; the median of several is
    stable to a few percent."""
    if windows < 1 or not window_s > 0:
        raise ValueError(f"windows must be >= 1 and window_s > 0, got {windows}, {window_s}")
    for f in fns.values():
        f()
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(windows):
        for k, f in fns.items():
            n, t0 = 0, time.perf_counter()
            while True:
                f()
                n += 1
                dt = time.perf_counter() - t0
                if dt >= window_s:
                    break
            per[k].append(dt / n)
    return {k: statistics.median(v) for k, v in per.items()}
