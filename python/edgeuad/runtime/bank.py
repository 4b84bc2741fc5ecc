"""Patch memory bank for PatchCore / ReConPatch inference: a typed wrapper of `_rt.MemoryBank`.

The compiled bank holds an HNSW graph and a contiguous copy of the features.
`Bank` picks the search mode: exact (blocked brute force) below
`exact_threshold` items and HNSW above it, unless the caller forces one with
`exact=True/False`.  Measured here on real coreset banks (magnetic_tile PatchCore dim 256 and
ReConPatch dim 512, 1024 patch queries per frame, 2 threads, AVX2 exact kernel ~65-70 GFLOP/s per
thread, HNSW M=32 ef=96 ef_construction=200, identical scores): exact search is 2-6x faster than HNSW up to 2k items and
1.5-2x at 5k; at 6.5k items it is still 30% faster at dim 256 and 5% slower at dim 512.  The
default threshold 8192 keeps every bank of that size exact, i.e. identical to the training-side
torch scores, at a cost of at most ~25% in the 6.5k-8k band at dim 512.
numpy only (no torch).
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np

from .. import limits
from ..atomic import remove_stale_temps
from .native import load_rt

log = logging.getLogger(__name__)

__all__ = ["BankConfig", "Bank"]

PathLike = Union[str, os.PathLike]

@dataclass(frozen=True)
class BankConfig:
    """How a bank is built and searched.

    M, ef_construction: HNSW graph degree and build beam (stored in the bank file).
    ef: HNSW search beam; larger is slower with higher recall.
    exact_threshold: banks with fewer items use exact search when `exact` is not given
        (also for building the Eq. 10 neighbour table).
    seed: HNSW level generator seed; threads=1 builds are then reproducible.
    """

    M: int = 32  # 16 needs ef 128 for recall 0.99 at 100k; 32 reaches it at lower ef, faster (bank.md)
    # The build beam sets the graph's quality: at 100k items (M=32) ef_construction 200 needed
    # ef 96 for recall@1 0.99; 400 gives 0.998-1.000 at ef 48 for a ~2.8x longer build
    # (benchmarks/results/bank.md).  Recall falls with bank size at a fixed ef: at 1M items even
    # ef 128 stays below 0.99, so raise ef for banks far above 100k.
    ef_construction: int = 400
    ef: int = 48
    exact_threshold: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        if self.M < 2:
            raise ValueError(f"M must be >= 2, got {self.M}")
        if self.ef_construction < 1 or self.ef < 1:
            raise ValueError("ef_construction and ef must be >= 1")
        if self.exact_threshold < 0:
            raise ValueError("exact_threshold must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BankConfig":
        known = {k: int(d[k]) for k in cls.__dataclass_fields__ if k in d}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown BankConfig keys: {sorted(unknown)}")
        return cls(**known)


def _as_rows(x: np.ndarray, dim: Optional[int], what: str) -> np.ndarray:
    """(N, dim) float32 C-contiguous view; only non-float32 or strided input is copied."""
    x = np.asarray(x)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{what} must have shape (N, {dim if dim is not None else 'D'}), got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{what} must be a floating-point array, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


class Bank:
    """A built memory bank.  Use `Bank.build(features)` or `Bank.load(path)`."""

    def __init__(self, rt_bank: Any, config: Optional[BankConfig] = None) -> None:
        self._bank = rt_bank
        self.config = config if config is not None else BankConfig()

    # --- construction ------------------------------------------------------------
    @classmethod
    def build(cls, features: np.ndarray, M: int = BankConfig.M, ef_construction: int = BankConfig.ef_construction,
              *, ef: int = BankConfig.ef,
              exact_threshold: int = BankConfig.exact_threshold, seed: int = 0, threads: int = 0,
              neighbor_b: int = 0) -> "Bank":
        """Build from (N, D) features.  threads=1 gives a reproducible graph for a seed.

        neighbor_b >= 2 precomputes the Eq. 10 neighbour table (saved with the bank) so that
        the first reweighted search does not pay for it.
        """
        cfg = BankConfig(M=M, ef_construction=ef_construction, ef=ef, exact_threshold=exact_threshold, seed=seed)
        feats = _as_rows(features, None, "features")
        if feats.shape[0] == 0:
            raise ValueError("features is empty: a memory bank needs at least one item")
        rt_bank = load_rt().MemoryBank(feats.shape[1], M=M, ef_construction=ef_construction, seed=seed)
        rt_bank.add(feats, threads=threads)
        if neighbor_b:
            exact = feats.shape[0] < exact_threshold
            rt_bank.build_neighbor_table(neighbor_b, exact=exact, ef=max(ef, neighbor_b), threads=threads)
        log.info("memory bank: %d x %d, HNSW M=%d ef_construction=%d", feats.shape[0], feats.shape[1], M,
                 ef_construction)
        return cls(rt_bank, cfg)

    @classmethod
    def load(cls, path: PathLike, *, ef: int = BankConfig.ef,
             exact_threshold: int = BankConfig.exact_threshold) -> "Bank":
        """Read a bank file written by `save` (OSError if missing, truncated or corrupted)."""
        # the loader stages the HNSW graph in a temp file; remove those of loads that were killed
        remove_stale_temps(tempfile.gettempdir(), name="edgeuad_bank")
        rt_bank = load_rt().MemoryBank.load(os.fspath(path))
        cfg = BankConfig(M=rt_bank.M, ef_construction=rt_bank.ef_construction, ef=ef,
                         exact_threshold=exact_threshold, seed=rt_bank.seed)
        return cls(rt_bank, cfg)

    def save(self, path: PathLike) -> None:
        """Atomic write (temp file + rename); the neighbour table, if built, is saved too."""
        self._bank.save(os.fspath(path))

    # --- properties --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._bank)

    @property
    def dim(self) -> int:
        return int(self._bank.dim)

    @property
    def rt(self) -> Any:
        """The underlying `edgeuad._rt.MemoryBank`."""
        return self._bank

    def features(self) -> np.ndarray:
        return self._bank.features()

    def use_exact(self, exact: Optional[bool] = None) -> bool:
        """The search mode for `exact` (None: exact below config.exact_threshold items)."""
        return bool(exact) if exact is not None else len(self) < self.config.exact_threshold

    # --- search ------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 1, exact: Optional[bool] = None, ef: Optional[int] = None,
               threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(distances (Q, k) float32 Euclidean ascending, indices (Q, k) int64)."""
        q = _as_rows(queries, self.dim, "queries")
        return self._bank.search(q, k=k, exact=self.use_exact(exact), ef=ef or self.config.ef, threads=threads)

    def search_reweighted(self, queries: np.ndarray, b: int = 9, exact: Optional[bool] = None,
                          ef: Optional[int] = None, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 10 reweighted patch scores (Q,) float32 and nearest-item indices (Q,) int64."""
        q = _as_rows(queries, self.dim, "queries")
        return self._bank.search_reweighted(q, b=b, exact=self.use_exact(exact), ef=ef or self.config.ef,
                                            threads=threads)

    def search_patch_scores(self, queries: np.ndarray, b: int = 0, exact: Optional[bool] = None,
                            threads: int = 0) -> np.ndarray:
        """Patch scores (Q,) float32: plain NN distance (b=0) or Eq. 10 reweighted (b >= 2)."""
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
            raise TypeError(f"b must be an int, got {type(b).__name__}")
        if b == 1 or b < 0 or b > limits.MAX_REWEIGHT_B:
            raise ValueError(f"b must be 0 (off) or in [2, {limits.MAX_REWEIGHT_B}], got {b} "
                             "(b=1 makes the Eq. 10 weight 0)")
        if b == 0:
            return self.search(queries, k=1, exact=exact, threads=threads)[0][:, 0]
        return self.search_reweighted(queries, b=b, exact=exact, threads=threads)[0]

    def search_mode(self, exact: Optional[bool] = None) -> str:
        """How a search with this `exact` runs, in words (logged by the Detector at load).  For exact search
        this builds the bank's lower-bound prune index (or its packed bf16 tiles) when missing, so the first
        frame does not pay for it."""
        if not self.use_exact(exact):
            return f"HNSW (M={self.config.M}, ef={self.config.ef})"
        st = self._bank.exact_stats()
        bf16 = "bf16 candidates (AVX512_BF16) ranked by a certified lower bound, re-ranked by exact distances"
        if st["prune_dims"]:
            return (f"exact, pruned by a certified lower bound in {st['prune_dims']} principal dimensions "
                    f"({100 * st['energy']:.0f}% of the variance)" + (f"; full searches with {bf16}" if st["bf16"] else ""))
        if st["bf16"]:
            return f"exact, full search with {bf16}"
        if st.get("bf16_gave_up"):
            why = "bf16 candidates turned off for this bank: its bound certified too few queries"
        elif not st["prune_enabled"]:
            why = "pruning turned off"
        elif st["energy"] > 0:
            why = f"its top principal directions hold {100 * st['energy']:.0f}% of the variance, too little to prune"
        else:
            why = "too small or too narrow to prune"
        return f"exact, full search ({why})"

    def __repr__(self) -> str:
        return f"Bank(size={len(self)}, dim={self.dim}, config={self.config})"
