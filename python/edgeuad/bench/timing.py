"""The one timing loop every pipeline shares (runtimes and references alike)."""
from __future__ import annotations

import time
from typing import Any, Sequence

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
