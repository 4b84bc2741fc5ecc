"""Loading a benchmark script (benchmarks/<stem>.py) as a module, for the tests that call its functions."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(stem: str, module_name: str | None = None) -> ModuleType:
    """benchmarks/<stem>.py as module `module_name` (default: stem), registered in sys.modules as an import
    would (dataclasses look their module up there) and executed with benchmarks/ on sys.path (scripts import
    their neighbours, e.g. ablate_geometry imports ablate_patchcore)."""
    name = module_name or stem
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{stem}.py")
    assert spec is not None and spec.loader is not None, stem
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod
