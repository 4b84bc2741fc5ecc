"""Shared settings of the fuzz suites (tests/python/test_fuzz_*.py).

Every suite is derandomized (the same cases on every run, so a CI failure reproduces locally with
the same command), keeps no example database, and has a fixed per-test budget: together they run
>= 10,000 cases per CI run.  `CASES` counts the cases each test actually executed; conftest prints
the totals at the end of the run.
"""
from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, settings

CASES: Counter = Counter()
ACCEPTED: Counter = Counter()  # cases whose input was accepted (so the success-side checks ran)


def budget(n: int) -> settings:
    """Hypothesis settings for a fuzz test running `n` derandomized cases."""
    return settings(max_examples=n, derandomize=True, database=None, deadline=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))


def count(test: str) -> None:
    CASES[test] += 1


def accepted(test: str) -> None:
    ACCEPTED[test] += 1
