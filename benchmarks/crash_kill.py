#!/usr/bin/env python
"""SIGKILL `edgeuad export` and `edgeuad train --export` at random (and at named) points: the bundle
on disk must always be the previous one or the new one, loading and scoring exactly like a
reference copy of either, never a third state (issue #14).  The archive written by `--archive`
is held to the same rule, and what a kill leaves behind must be gone after the next run.

    python benchmarks/crash_kill.py                          # 20 + 20 random kills, 5 named points
    python benchmarks/crash_kill.py --export-kills 5 --train-kills 5 --no-write

Writes benchmarks/results/crash_kill.{md,json}.  tests/python/test_crash.py runs a CI-sized version.
Runs on CPU; every edgeuad process is a fresh `python -m edgeuad.cli` child killed with SIGKILL.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))  # run from a checkout without installing

import numpy as np  # noqa: E402

log = logging.getLogger("edgeuad.benchmarks.crash")

# Tiny, untrained-backbone configs: what is tested is the file-system behaviour, not detection.
EXPORT_RUNS = {"A": {"image_size": 32, "coreset_ratio": 0.25, "pretrained": False},
               "B": {"image_size": 32, "coreset_ratio": 0.5, "sigma": 1.0, "pretrained": False}}
TRAIN_ARGS = ["--method", "recontrast", "--image-size", "32", "--iterations", "4", "--batch-size", "2",
              "--set", "pretrained=false", "--set", "checkpoint_every=1", "--seed", "0", "--no-progress",
              "--holdout", "0.3"]  # >= 2 held-out normals: the robust threshold rule needs them

# Named points: a child process patches itself to SIGKILL exactly there (no hooks in edgeuad).
POINTS = ("after_onnx", "provisional_detector", "before_swap", "after_swap", "mid_archive")
_KILL_AT = r'''
import os, signal, sys
point, argv = sys.argv[1], sys.argv[2:]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "after_onnx":
    import edgeuad.export.onnx as m
    orig = m.export_onnx
    def f(*a, **k):
        orig(*a, **k)
        die()
    m.export_onnx = f
elif point == "provisional_detector":
    import edgeuad.detector as m
    orig = m.Detector.__init__
    def f(self, *a, **k):
        if k.get("allow_provisional"):
            die()
        orig(self, *a, **k)
    m.Detector.__init__ = f
elif point == "before_swap":
    import edgeuad.atomic as m
    m._swap_in = lambda new, path: die()
elif point == "after_swap":
    import edgeuad.atomic as m
    orig = m._exchange
    def f(a, b):
        orig(a, b)
        die()
    m._exchange = f
elif point == "mid_archive":
    import tarfile
    orig, n = tarfile.TarFile.add, [0]
    def f(self, *a, **k):
        orig(self, *a, **k)
        n[0] += 1
        if n[0] == 2:
            die()
    tarfile.TarFile.add = f
from edgeuad.cli import main
sys.exit(main(argv))
'''


class ThirdState(AssertionError):
    """A bundle on disk that is neither the previous nor the new one."""


@dataclass
class Attempt:
    kind: str                 # "export" | "train"
    delay_s: Optional[float]  # None for a named point
    point: Optional[str]
    killed: bool              # False: the child finished before the kill
    before: str
    after: str
    archive: Optional[str] = None
    seconds: float = 0.0


@dataclass
class Report:
    export_full_s: float = 0.0
    train_full_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    third_states: int = 0
    leftovers_after_kills: int = 0     # edgeuad temporaries present right after kills
    leftovers_after_next_run: int = 0  # ... and after one more complete run (must be 0)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.third_states == 0 and self.leftovers_after_next_run == 0 and bool(self.attempts)

    def to_markdown(self) -> str:
        ex = [a for a in self.attempts if a.kind == "export"]
        tr = [a for a in self.attempts if a.kind == "train"]

        def line(xs: Sequence[Attempt], what: str) -> str:
            killed = sum(a.killed for a in xs)
            changed = sum(a.after != a.before for a in xs)
            return (f"| {what} | {len(xs)} | {killed} | {len(xs) - changed} | {changed} | "
                    f"{sum(a.archive is not None for a in xs)} |")

        rows = [line([a for a in ex if a.point is None], "export, random time"),
                line([a for a in ex if a.point is not None], "export, named point"),
                line(tr, "train --export, random time")]
        pts = ", ".join(f"{a.point}: {a.before}->{a.after}" + (f" (archive {a.archive})" if a.archive else "")
                        for a in ex if a.point is not None)
        return "\n".join([
            "## Crash consistency: SIGKILL during export and train",
            "",
            f"Complete runs take {self.export_full_s:.1f} s (export) and {self.train_full_s:.1f} s (train + export); "
            "random kill times are uniform in [0, 1.05 x that].",
            "",
            "| what | attempts | killed | previous bundle after | new bundle after | archive checked |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Named points: {pts or 'none'}.",
            "",
            f"**Third states: {self.third_states}** (a bundle or archive that loads as neither, or does not load).  "
            f"edgeuad temporaries left right after the kills: {self.leftovers_after_kills}; after the next complete "
            f"run: {self.leftovers_after_next_run}.  Result: {'PASS' if self.passed else 'FAIL'}.",
            *([""] + [f"- {n}" for n in self.notes] if self.notes else []),
            "",
        ])


# ----------------------------------------------------------------------------- helpers
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(argv: Sequence[str], delay: Optional[float] = None, point: Optional[str] = None,
         timeout: float = 900.0) -> tuple[bool, float]:
    """Run `edgeuad ARGV` in a child; SIGKILL it after `delay` s (None: let it finish).
    Returns (killed, seconds)."""
    cmd = ([sys.executable, "-c", _KILL_AT, point, *argv] if point else
           [sys.executable, "-m", "edgeuad.cli", "-q", *argv])
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    killed = False
    try:
        if delay is not None:
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                killed = True
        _, err = p.communicate(timeout=timeout)
    except BaseException:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        raise
    if point is not None:
        killed = p.returncode == -signal.SIGKILL
    if not killed and p.returncode != 0:
        raise RuntimeError(f"edgeuad {' '.join(argv)} failed (rc {p.returncode}):\n{err.decode()[-2000:]}")
    return killed, time.perf_counter() - t0


def _scores(path: Path, images: list[np.ndarray]) -> np.ndarray:
    from edgeuad.detector import Detector

    with Detector(path, threads=1) as det:
        return np.asarray([r.score for r in det.score_batch(images, return_map=False)])


def classify(path: Path, refs: dict[str, np.ndarray], images: list[np.ndarray]) -> str:
    """Which reference `path` scores exactly like; ThirdState when none (or it does not load)."""
    from edgeuad.bundle import BundleError

    try:
        s = _scores(path, images)
    except (BundleError, OSError, ValueError) as e:
        raise ThirdState(f"{path} does not load: {e}") from e
    for name, ref in refs.items():
        if s.shape == ref.shape and np.allclose(s, ref, rtol=1e-6, atol=1e-9):
            return name
    raise ThirdState(f"{path} scores {s} like none of {sorted(refs)}")


def _temps(*dirs: Path) -> list[Path]:
    """edgeuad temporaries (atomic.py naming) in `dirs`."""
    return [p for d in dirs if d.is_dir() for p in d.iterdir() if ".edgeuad-" in p.name]


# ----------------------------------------------------------------------------- setup
@dataclass
class Setup:
    work: Path
    data: Path
    runs: dict[str, Path]
    images: list[np.ndarray]
    refs: dict[str, np.ndarray]          # reference scores: A, B (export), NEW (train --export)
    export_full_s: float
    train_full_s: float


def prepare(work: Path, check_reproducible: bool = True) -> Setup:
    from edgeuad import api
    from edgeuad.data import read_image
    from edgeuad.synthetic import make_synthetic_dataset

    work.mkdir(parents=True, exist_ok=True)
    data = make_synthetic_dataset(work / "data", kind="texture", n_train=10, n_test_good=2, n_test_defect=2,
                                  size=32, seed=11)
    images = [read_image(p) for p in sorted((data / "test").rglob("*.png"))]
    runs = {k: api.train("patchcore", data, work / f"run_{k}", cfg, holdout_fraction=0.2, progress=False).root
            for k, cfg in EXPORT_RUNS.items()}
    refs: dict[str, np.ndarray] = {}
    export_s = float("inf")
    for k, run in runs.items():  # references made by the same command that is killed later
        _, s = _run(["export", "--run", str(run), "--out", str(work / f"ref_{k}")])
        export_s = min(export_s, s)
        refs[k] = _scores(work / f"ref_{k}", images)
    assert not np.allclose(refs["A"], refs["B"]), "the two reference bundles must score differently"
    _, train_s = _run(["train", "--data", str(data), "--out", str(work / "ref_train_run"), *TRAIN_ARGS,
                       "--export", str(work / "ref_NEW")])
    refs["NEW"] = _scores(work / "ref_NEW", images)
    if check_reproducible:  # else a non-reproducible "new" shows up as a third state, loudly
        # the train reference must be reproducible, or "new" could not be recognised after a kill
        _run(["train", "--data", str(data), "--out", str(work / "ref_train_run2"), *TRAIN_ARGS,
              "--export", str(work / "ref_NEW2")])
        if not np.allclose(_scores(work / "ref_NEW2", images), refs["NEW"], rtol=1e-6, atol=1e-9):
            raise RuntimeError("train + export is not reproducible here: the crash check needs it to be")
    return Setup(work, data, runs, images, refs, export_s, train_s)


# ----------------------------------------------------------------------------- the two experiments
def export_kills(st: Setup, n: int, rng: random.Random, points: Sequence[str], report: Report) -> None:
    target = st.work / "deploy" / "line1"
    archive = st.work / "deploy" / "line1.tar"
    _run(["export", "--run", str(st.runs["A"]), "--out", str(target), "--archive", str(archive)])
    refs = {k: st.refs[k] for k in ("A", "B")}
    plan: list[tuple[Optional[float], Optional[str]]] = [(None, p) for p in points]
    plan += [(rng.uniform(0.0, 1.05 * st.export_full_s), None) for _ in range(n)]
    for delay, point in plan:
        before = classify(target, refs, st.images)
        new = "B" if before == "A" else "A"
        t0 = time.perf_counter()
        killed, _ = _run(["export", "--run", str(st.runs[new]), "--out", str(target), "--archive", str(archive)],
                         delay=delay, point=point)
        att = Attempt("export", delay, point, killed, before, "?", seconds=time.perf_counter() - t0)
        try:
            att.after = classify(target, refs, st.images)
            if archive.exists():
                att.archive = classify(archive, refs, st.images)
        except ThirdState as e:
            report.third_states += 1
            report.notes.append(f"export kill at {point or f'{delay:.2f} s'}: {e}")
            att.after = "THIRD"
        report.attempts.append(att)
        report.leftovers_after_kills += len(_temps(target.parent))
        log.info("export kill %s: %s -> %s (archive %s)", point or f"{delay:.2f}s", before, att.after, att.archive)
        if att.after == "THIRD":
            break
    _run(["export", "--run", str(st.runs["A"]), "--out", str(target), "--archive", str(archive)])
    report.leftovers_after_next_run += len(_temps(target.parent))


def train_kills(st: Setup, n: int, rng: random.Random, report: Report) -> None:
    from edgeuad import api

    target = st.work / "deploy_train" / "line2"
    run = st.work / "train_run"
    api.export(st.runs["A"], target)  # the previous bundle
    refs = {"A": st.refs["A"], "NEW": st.refs["NEW"]}
    argv = ["train", "--data", str(st.data), "--out", str(run), *TRAIN_ARGS, "--export", str(target)]
    for _ in range(n):
        shutil.rmtree(run, ignore_errors=True)  # every attempt trains from scratch: "new" is the reference
        delay = rng.uniform(0.0, 1.05 * st.train_full_s)
        t0 = time.perf_counter()
        killed, _ = _run(argv, delay=delay)
        att = Attempt("train", delay, None, killed, "A", "?", seconds=time.perf_counter() - t0)
        try:
            att.after = classify(target, refs, st.images)
        except ThirdState as e:
            report.third_states += 1
            report.notes.append(f"train kill at {delay:.2f} s: {e}")
            att.after = "THIRD"
        report.attempts.append(att)
        report.leftovers_after_kills += len(_temps(run, target.parent))
        log.info("train kill %.2fs: A -> %s", delay, att.after)
        if att.after == "THIRD":
            break
        if att.after != "A":
            api.export(st.runs["A"], target)
    # The last killed run is resumed to completion: its temporaries must be gone afterwards.
    _run(argv)
    report.leftovers_after_next_run += len(_temps(run, target.parent))


def run_crash(work: Path, export_kills_n: int = 20, train_kills_n: int = 20, points: Sequence[str] = POINTS,
              seed: int = 0, check_reproducible: bool = True) -> Report:
    st = prepare(work, check_reproducible)
    rep = Report(export_full_s=st.export_full_s, train_full_s=st.train_full_s)
    rng = random.Random(seed)
    export_kills(st, export_kills_n, rng, points, rep)
    if rep.third_states == 0:
        train_kills(st, train_kills_n, rng, rep)
    return rep


def _publish(stem: str, md: str, data: dict) -> None:
    """STEM.md headed by the machine/commit/date line (benchmarks/_results.py), STEM.json beside it."""
    from _results import machine_line  # benchmarks/ is on sys.path when this runs as a script

    from edgeuad.atomic import atomic_write_bytes

    text = machine_line() + md
    sys.stdout.write(text)
    atomic_write_bytes(Path(stem + ".md"), text.encode())
    atomic_write_bytes(Path(stem + ".json"), json.dumps(data, indent=2).encode())


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export-kills", type=int, default=20, help="random-time kills of edgeuad export (default 20)")
    ap.add_argument("--train-kills", type=int, default=20, help="random-time kills of edgeuad train --export (20)")
    ap.add_argument("--no-points", action="store_true", help="skip the kills at named points")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "crash_kill"),
                    help="result stem: writes STEM.md and STEM.json")
    ap.add_argument("--no-write", action="store_true", help="print the report only")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgeuad-crash-") as tmp:
        rep = run_crash(Path(a.work or tmp), a.export_kills, a.train_kills, () if a.no_points else POINTS, a.seed)
    md = rep.to_markdown()
    if a.no_write:
        sys.stdout.write(md)
    else:
        _publish(a.out, md, {**asdict(rep), "passed": rep.passed})
    return 0 if rep.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
