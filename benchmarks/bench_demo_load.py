"""The demo beside a competing CPU load: wall and CPU seconds, OpenMP's default wait policy vs edgeuad's.

    python benchmarks/bench_demo_load.py                 # the demo as shipped (120 iterations)
    python benchmarks/bench_demo_load.py --iterations 40 --repeats 2

Issue 15: on a 2-core machine shared with other jobs `make demo` took 13 min 50 s and 456 s of CPU
instead of 43 s and 74 s.  Each run here is the whole demo (data, train, export, eval) in a fresh
process, in one of two set-ups that differ only in OpenMP's wait policy (torch, MKL, oneDNN and
`_rt` all use OpenMP):

  openmp-default  `edgeuad.demo.run_demo` called as a library, OMP_WAIT_POLICY unset: idle OpenMP
                  threads spin before they sleep (the behaviour before issue 15)
  edgeuad-cli     `python -m edgeuad demo`: the CLI sets OMP_WAIT_POLICY=PASSIVE (edgeuad.cpus)

both with thread pools sized by `edgeuad.cpus.available_cpus()`, each without and with `--load`
busy-looping processes beside it (default: one per available CPU).  The conditions alternate, so
slow drifts of a shared machine's own load spread over all of them; the 1-minute load average
before each run is recorded because this machine's other users are part of the measurement.
CPU s = user + system time of the demo process (getrusage of the waited-for child).
The table is rewritten after every run, so a run stopped early (`timeout`) leaves the rows it
finished, marked as partial.
"""
from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgeuad.cpus import available_cpus  # noqa: E402

from _results import publish  # noqa: E402

POLICIES = ("openmp-default", "edgeuad-cli")


# a pure-Python busy loop that ends by itself if this script dies (its parent changes)
BUSY = "import os\np = os.getppid()\nwhile os.getppid() == p:\n    for _ in range(100000): pass\n"


def _busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def demo_command(policy: str, out: Path, iterations: int | None) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)
    if policy == "edgeuad-cli":
        cmd = [sys.executable, "-m", "edgeuad", "-q", "demo", "--out", str(out)]
        if iterations is not None:
            cmd += ["--iterations", str(iterations)]
        return cmd, env
    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING); "
            "from edgeuad.demo import run_demo; "
            f"sys.exit(run_demo({str(out)!r}, iterations={iterations!r}))")
    return [sys.executable, "-c", code], env


def run_once(policy: str, load: int, iterations: int | None, work: Path, tag: str) -> dict[str, float]:
    out = work / tag
    cmd, env = demo_command(policy, out, iterations)
    loops = _busy_loops(load)
    try:
        time.sleep(0.5 if load else 0.0)  # let the load start
        load1 = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        _stop(loops)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    # the busy loops are children too, but they are reaped in _stop, after `after` was read
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row = {"wall": wall, "cpu": cpu, "load1": load1}
    print(f"{tag}: wall {wall:.1f} s, CPU {cpu:.1f} s, load average before {load1:.1f}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--iterations", type=int, default=None,
                    help="ReContrast iterations of each demo run (default: the demo's own)")
    ap.add_argument("--load", type=int, default=available_cpus(),
                    help="busy-looping processes beside the loaded runs")
    ap.add_argument("--repeats", type=int, default=1, help="runs per condition")
    ap.add_argument("--name", default="demo_load", help="results/<name>.md")
    a = ap.parse_args()
    # `timeout` sends SIGTERM: unwind, so the finally blocks stop the busy loops and the demo
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from edgeuad.demo import DEMO_CONFIGS

    its = a.iterations if a.iterations is not None else DEMO_CONFIGS["recontrast"]["iterations"]
    # unloaded pair first; under load the slow set-up last, so a stopped run keeps the most rows
    order = [(p, 0) for p in POLICIES] + [(p, a.load) for p in reversed(POLICIES)]
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    total = a.repeats * len(order)
    with tempfile.TemporaryDirectory(prefix="edgeuad-demo-load-") as tmp:
        for rep in range(a.repeats):
            for policy, load in order:
                tag = f"{policy}-load{load}-r{rep}"
                rows.setdefault((policy, load), []).append(run_once(policy, load, a.iterations, Path(tmp), tag))
                publish(a.name, table(rows, a, its, done=sum(map(len, rows.values())), total=total))


def table(rows: dict[tuple[str, int], list[dict[str, float]]], a: argparse.Namespace, its: int,
          done: int, total: int) -> str:
    def med(vals: list[float]) -> str:
        return f"{statistics.median(vals):.1f}" + (f" ({min(vals):.1f}-{max(vals):.1f})" if len(vals) > 1 else "")

    partial = "" if done == total else f", **partial: {done} of {total} runs finished**"
    lines = [f"## The demo beside a competing CPU load ({available_cpus()} CPUs available, ReContrast "
             f"{its} iterations, {a.repeats} run(s) per row{partial})\n",
             "| set-up | busy loops beside | wall s | CPU s | CPU s / wall s | load average before |",
             "|---|---|---|---|---|---|"]
    for load in (0, a.load):
        for policy in POLICIES:
            if (policy, load) not in rows:
                continue
            r = rows[(policy, load)]
            w, c = [x["wall"] for x in r], [x["cpu"] for x in r]
            lines.append(f"| {policy} | {load} | {med(w)} | {med(c)} | {statistics.median(c) / statistics.median(w):.2f} "
                         f"| {med([x['load1'] for x in r])} |")
    lines.append("\nopenmp-default: `run_demo` as a library, OMP_WAIT_POLICY unset (OpenMP threads spin when idle); "
                 "edgeuad-cli: `python -m edgeuad demo` (OMP_WAIT_POLICY=PASSIVE). Both size their thread pools "
                 "by `edgeuad.cpus.available_cpus()`. Regenerate: `python benchmarks/bench_demo_load.py"
                 + (f" --iterations {a.iterations}" if a.iterations is not None else "")
                 + (f" --repeats {a.repeats}" if a.repeats != 1 else "") + "`.\n")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
