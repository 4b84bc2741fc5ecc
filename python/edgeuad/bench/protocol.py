"""The measurement protocol: long-lived workers (one per pipeline), interleaved repetitions.

For each thread count, every pipeline's worker builds its pipeline; then for each batch size the
parent runs `repetitions` rounds; in round r each pipeline in turn (order reversed every other
round: A B C, C B A, ...) times `block` batches of the same frames, after one untimed re-warm batch
(plus `warmup` more in round 0).  Only one pipeline runs at a time; the others wait on their pipe.
Slow drifts of a shared machine therefore hit every pipeline in every round, and the speed-up of a
runtime over a reference is taken per round (ratio of the two block medians), reported as the median
with min and max over rounds (stats.ratio_summary).

Workers are processes (`python -m edgeuad.bench --worker SPEC`, JSON lines on stdin/stdout) so each
pipeline has its own thread pools and its own peak RSS; `LocalWorker` runs the same commands in this
process (tests, injected fakes, isolate=False).
"""
from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..cpus import passive_openmp_environ, user_openmp_environ
from .config import REFERENCES, TORCH_COMPILE, TORCH_EAGER, BenchConfig
from .frames import batch_of, decode
from .machine import current_rss_mb, peak_rss_mb
from .pipelines import DetectorFactory, Pipeline, ReferenceFactory, build_pipeline
from .timing import time_block

log = logging.getLogger(__name__)
_PKG_PARENT = Path(__file__).resolve().parents[2]


class WorkerError(RuntimeError):
    """A pipeline failed (to build or to run); the message is the reason the report gives."""


class LocalWorker:
    """One pipeline's commands, executed in this process."""

    def __init__(self, name: str, cfg: BenchConfig, frames: Sequence[np.ndarray], work: Path,
                 detector_factory: Optional[DetectorFactory] = None,
                 reference_factory: Optional[ReferenceFactory] = None) -> None:
        self.name, self.cfg, self.frames, self.work = name, cfg, list(frames), work
        self.factories = (detector_factory, reference_factory)
        self.pipe: Optional[Pipeline] = None
        self.threads: Optional[int] = None
        self.baseline_rss = current_rss_mb()

    def prepare(self, threads: int) -> Optional[int]:
        """Build the pipeline at `threads` (closing the previous one); its effective thread count."""
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None
        self.pipe = build_pipeline(self.name, threads, self.cfg, self.frames, self.work, *self.factories)
        self.threads = threads
        return self.pipe.effective_threads

    def block(self, batch_size: int, start: int, n: int, warm: int) -> list[dict[str, float]]:
        assert self.pipe is not None, "prepare() first"
        return time_block(self.pipe, self.frames, start, n, batch_size, warm)

    def parity(self, n: int) -> dict[str, np.ndarray]:
        assert self.pipe is not None, "prepare() first"
        return self.pipe.parity(decode(batch_of(self.frames, 0, max(1, n))))

    def rss(self) -> dict[str, Optional[float]]:
        return {"peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": self.baseline_rss}

    def stats(self) -> dict[str, Any]:
        """The current pipeline's own statistics (a Detector's bank search; {} for the others)."""
        assert self.pipe is not None, "prepare() first"
        return dict(getattr(self.pipe, "stats", dict)())

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None


class ProcessWorker:
    """The same commands, sent to a worker process that keeps its pipeline between calls."""

    def __init__(self, name: str, cfg: BenchConfig, frame_dir: Path, work: Path) -> None:
        self.name, self.timeout = name, cfg.worker_timeout_s
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        spec = work / f"{safe}.spec.json"
        spec.write_text(json.dumps({"name": name, "config": cfg.to_dict(), "frames": str(frame_dir),
                                    "work": str(work)}))
        self.log_path = work / f"{safe}.log"
        self.parity_path = work / f"{safe}.parity.npz"
        env = openmp_environ(name)
        # the child must import this very package, whatever the caller's sys.path was
        env["PYTHONPATH"] = os.pathsep.join([str(_PKG_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        with open(self.log_path, "wb") as errf:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgeuad.bench", "--worker", str(spec)], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf)

    def _call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(self._died()) from None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            self.proc.kill()
            raise WorkerError(f"timed out after {self.timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(self._died())
        reply = json.loads(line)
        if not reply.get("ok"):
            raise WorkerError(f"failed: {reply.get('error')}")
        return reply

    def _died(self) -> str:
        code = self.proc.wait(timeout=30)
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-20:]
        log.warning("bench: worker %s exited (%s):\n%s", self.name, code, "\n".join(tail))
        return "failed: " + (tail[-1].strip() if tail else f"worker exited with {code}")

    def prepare(self, threads: int) -> Optional[int]:
        return self._call(op="prepare", threads=threads)["effective_threads"]

    def block(self, batch_size: int, start: int, n: int, warm: int) -> list[dict[str, float]]:
        return self._call(op="block", batch_size=batch_size, start=start, n=n, warm=warm)["records"]

    def parity(self, n: int) -> dict[str, np.ndarray]:
        self._call(op="parity", n=n, path=str(self.parity_path))
        with np.load(self.parity_path) as z:
            return {k: z[k] for k in z.files}

    def rss(self) -> dict[str, Optional[float]]:
        r = self._call(op="rss")
        return {"peak_rss_mb": r["peak_rss_mb"], "baseline_rss_mb": r["baseline_rss_mb"]}

    def stats(self) -> dict[str, Any]:
        return self._call(op="stats")["stats"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._call(op="quit")
            except (WorkerError, ValueError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


TORCH_ONLY = (TORCH_EAGER, TORCH_COMPILE)  # references that run no onnxruntime and no `_rt`


def openmp_environ(name: str) -> dict[str, str]:
    """The environment a pipeline's worker starts with, each side at its faster OpenMP wait policy.
    The pure torch references (eager, compiled) get OpenMP as their user has it: the bench's own
    environment without edgeuad's PASSIVE preference (PASSIVE doubled eager torch's 2-thread network on
    the bottle PatchCore bundle, 12 -> 22 ms).  The runtime pipelines get edgeuad's policy
    (`runtime.native.load_rt`), and so does the onnxruntime + torch peer, whose torch threads otherwise
    spin into its next onnxruntime run just as `_rt`'s would (measured at 2 threads, batch 1: peer
    ReContrast 13.6 ms with PASSIVE vs 14.2 without, PatchCore 10.6 vs 10.8)."""
    return user_openmp_environ() if name in TORCH_ONLY else passive_openmp_environ(os.environ)


def worker_main(spec_path: str) -> int:
    """`python -m edgeuad.bench --worker SPEC`: answer the parent's commands until "quit"."""
    spec = json.loads(Path(spec_path).read_text())
    if spec["name"] in REFERENCES:
        # torch's OpenMP reads the wait policy when it loads: first, before anything could load `_rt`
        # (whose loader would set edgeuad's preference)
        import torch  # noqa: F401
    reply_fd = os.dup(1)
    os.dup2(2, 1)   # whatever a library prints goes to the log, not into the reply stream
    replies = os.fdopen(reply_fd, "w", buffering=1)
    cfg = BenchConfig.from_dict(spec["config"])
    frames = [np.fromfile(str(p), dtype=np.uint8) for p in sorted(Path(spec["frames"]).glob("*.bin"))]
    worker = LocalWorker(spec["name"], cfg, frames, Path(spec["work"]))
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            if op == "quit":
                worker.close()
                replies.write(json.dumps({"ok": True}) + "\n")
                return 0
            if op == "prepare":
                out: dict[str, Any] = {"effective_threads": worker.prepare(int(cmd["threads"]))}
            elif op == "block":
                out = {"records": worker.block(int(cmd["batch_size"]), int(cmd["start"]), int(cmd["n"]),
                                               int(cmd["warm"]))}
            elif op == "parity":
                np.savez(cmd["path"], **worker.parity(int(cmd["n"])))
                out = {}
            elif op == "rss":
                out = worker.rss()
            elif op == "stats":
                out = {"stats": worker.stats()}
            else:
                raise ValueError(f"unknown worker command {op!r}")
        except Exception as e:  # noqa: BLE001 - the reason travels to the parent's report
            log.exception("bench worker %s: %s failed", spec["name"], op)
            replies.write(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
            continue
        replies.write(json.dumps({"ok": True, **out}) + "\n")
    return 0
