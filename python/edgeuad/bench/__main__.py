"""`python -m edgeuad.bench --worker SPEC`: the worker process of `edgeuad bench` (one pipeline each)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from .protocol import worker_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeuad.bench",
                                 description="internal worker of `edgeuad bench` (one pipeline per process)")
    ap.add_argument("--worker", required=True, help="spec JSON written by run_bench")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return worker_main(a.worker)


if __name__ == "__main__":
    sys.exit(main())
