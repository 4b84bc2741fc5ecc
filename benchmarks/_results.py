"""Where benchmark scripts put their tables: benchmarks/results/<name>.md, each headed by the machine,
commit and date it was measured on (RESULTS.md quotes these files)."""
from __future__ import annotations

import sys
from pathlib import Path

from edgeuad.atomic import atomic_write_bytes
from edgeuad.bench import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def machine_line() -> str:
    m = machine_info()
    v = m["versions"]
    return (f"_Machine: {m['cpu_model']}, {m['usable_cores']} usable cores, {m['os']}; python {m['python']}, "
            f"numpy {v['numpy']}, onnxruntime {v['onnxruntime']}, torch {v['torch']}; commit {m['git_commit']}"
            f"{' (dirty)' if m['git_dirty'] else ''}; {m['date']}_\n")


def publish(name: str, body: str) -> Path:
    """Print the table and write it, with the machine line, to results/<name>.md (atomically: a killed run
    leaves the previous table, which RESULTS.md quotes, or the new one)."""
    text = machine_line() + body
    sys.stdout.write(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    atomic_write_bytes(path, text.encode())
    return path
