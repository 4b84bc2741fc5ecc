"""`python -m edgeuad ...` = the `edgeuad` console script (same parser, same exit codes)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
