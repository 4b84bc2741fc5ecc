"""Loading the compiled runtime `edgeuad._rt`: one place for every runtime module.

Before the first load it asks for OpenMP threads that sleep when idle (`cpus.prefer_passive_openmp`,
unless the user set OMP_WAIT_POLICY): `_rt`'s OpenMP pool reads the policy once, when libgomp loads.
Why the library does this and not only the CLI: at GNU OpenMP's default (spin ~300k rounds before
sleeping) the `_rt` worker that just finished a bank search keeps spinning into the next frame's
onnxruntime run and takes the second core from onnxruntime's worker.  Measured on the bottle
PatchCore bundle, 2 threads, batch 1, 2-core AVX-512 VM: network 5.2 ms (no faster than 1 thread)
with the default, 3.7 ms with PASSIVE, bank search 1.9 -> 2.1 ms (its workers now wake from sleep);
benchmarks/RESULTS.md section 2.  Where torch (or anything else linking libgomp) loaded first,
OpenMP already read the policy and this changes nothing: then call
`edgeuad.cpus.prefer_passive_openmp()` before importing torch.
numpy only (no torch).
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

from ..cpus import prefer_passive_openmp

__all__ = ["RT_MISSING", "load_rt"]

RT_MISSING = "edgeuad._rt is not built: run pip install -e . (needs CMake, a C++17 compiler and libhnswlib-dev)"


def load_rt() -> ModuleType:
    """`edgeuad._rt`, imported once; ImportError naming how to build it when it is missing."""
    mod = sys.modules.get("edgeuad._rt")
    if mod is not None:
        return mod
    prefer_passive_openmp()
    try:
        return importlib.import_module("edgeuad._rt")
    except ImportError as exc:  # keep the original cause visible
        raise ImportError(RT_MISSING) from exc
