"""The CPUs this process may really use, and thread pools sized to them.

`os.cpu_count()` counts the machine's cores, not this process's share: a `taskset` / cpuset
affinity mask or a container's CFS quota (`docker --cpus 2` on a 32-core host) leaves fewer.
Pools sized by the machine oversubscribe the share, and then the second cost appears: OpenMP
(torch, MKL, oneDNN, `_rt`) and onnxruntime spin their idle threads between parallel regions,
and a spinning thread whose partner was descheduled by another job burns CPU until its spin
budget runs out, at every barrier.  On a shared 2-core machine that multiplied the demo's CPU
time ~6x (issue 15; benchmarks/results/demo_load.md).  Hence:

- `available_cpus()`: min(affinity mask, ceil(cgroup v2 `cpu.max` / v1 `cfs_quota_us` quota)).
- `resolve_threads(0)` = that number, or OMP_NUM_THREADS when the user set it (torch and OpenMP
  read it too); a positive request is kept (the user's word wins).
- `ort_session_options()`: an explicit intra-op count (left at 0, onnxruntime sizes its pool by
  the machine's physical cores and pins each thread to one, which ignores taskset and cgroups)
  and no spinning.
- `prefer_passive_openmp()`: OMP_WAIT_POLICY=PASSIVE unless the user set it (or GOMP_SPINCOUNT);
  OpenMP reads it once, when its library loads, so the CLI calls this before anything imports torch
  or `_rt`, and so does the runtime before it first loads `_rt` (`runtime.native.load_rt`).

Runtime side: no torch here (`set_torch_threads` takes the module it configures).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(d: Path) -> float | None:
    text = _read(d / "cpu.max")  # "max 100000" (no limit) or "200000 100000" (2 CPUs)
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(d: Path) -> float | None:
    q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
    try:
        quota, period = float(q or "-1"), float(p or "0")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None  # quota -1: no limit


def _ancestors(mount: Path, rel: str) -> list[Path]:
    """mount/rel and each parent up to mount itself: a limit anywhere up the tree applies.  In a
    container the listed path is the host's and does not exist under the namespaced mount, whose
    root then is the container's own cgroup."""
    parts = [p for p in rel.strip().split("/") if p and p != ".."]
    return [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """CPUs granted by the tightest cgroup CPU quota on this process's path (v2 or v1), None if none."""
    text = _read(proc_cgroup)
    if text is None:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, rel = fields
        if controllers == "":  # v2 unified hierarchy: mounted at root (or root/unified in hybrid mode)
            for mount in (root, root / "unified"):
                limits += [q for d in _ancestors(mount, rel) if (q := _v2_quota(d)) is not None]
        elif "cpu" in controllers.split(","):
            for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct"):
                limits += [q for d in _ancestors(mount, rel) if (q := _v1_quota(d)) is not None]
    return min(limits) if limits else None


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (taskset, cpuset); os.cpu_count() where unsupported."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup quota rounded up
    (a 1.5-CPU quota runs two threads at 75% rather than leave half a CPU idle)."""
    n = affinity_cpus()
    quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return n


def resolve_threads(threads: int) -> int:
    """A thread count for a pool: `threads` when > 0, else OMP_NUM_THREADS when set to a positive
    number, else every CPU available to this process."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = the CPUs available to this process), got {threads}")
    if threads > 0:
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cpus()


# The OpenMP settings a user may have chosen: any of them keeps edgeuad's preference out
OPENMP_WAIT_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_set_here: set[str] = set()  # variables prefer_passive_openmp set in this process (not the user's)


def passive_openmp_environ(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` with edgeuad's OpenMP preference: OMP_WAIT_POLICY=PASSIVE unless the user chose
    a policy (set OMP_WAIT_POLICY or GOMP_SPINCOUNT)."""
    out = dict(env)
    if not any(k in out for k in OPENMP_WAIT_ENV):
        out["OMP_WAIT_POLICY"] = "PASSIVE"
    return out


def prefer_passive_openmp() -> None:
    """OpenMP threads sleep instead of spinning when idle (`passive_openmp_environ` applied to this
    process).  Takes effect only for OpenMP libraries loaded after this call (torch, `_rt`)."""
    for k, v in passive_openmp_environ(os.environ).items():
        if k not in os.environ:
            os.environ[k] = v
            _set_here.add(k)


def describe_openmp_policy(env: Mapping[str, str] | None = None) -> str:
    """How `env` (default os.environ) sets OpenMP's wait policy, in words; for this process's own
    environment it also says whether edgeuad or the user chose it."""
    own = env is None
    env = os.environ if env is None else env
    set_ = [f"{k}={env[k]}" for k in OPENMP_WAIT_ENV if k in env]
    if not set_:
        return "unset (GNU OpenMP's default: spin, then sleep)"
    if own:
        who = "edgeuad's preference" if any(k in _set_here for k in OPENMP_WAIT_ENV if k in env) else "set by you"
        return f"{', '.join(set_)} ({who})"
    return ", ".join(set_)


def user_openmp_environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default os.environ) without what `prefer_passive_openmp` set: the environment
    as the user launched this process, for children that must run with OpenMP as they would without
    edgeuad (the benchmark's torch references: PASSIVE doubles eager torch's network time at 2 threads,
    benchmarks/RESULTS.md section 2)."""
    out = dict(os.environ if env is None else env)
    for k in _set_here:
        if out.get(k) == "PASSIVE":
            out.pop(k)
    return out


CPUINFO = Path("/proc/cpuinfo")
# x86 instructions whose u8 x s8 dot product accumulates 4 products straight into int32 (no int16 step)
EXACT_INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")


def _cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The first CPU's feature flags from /proc/cpuinfo; None where it cannot be read (not Linux)."""
    text = _read(cpuinfo)
    if text is None:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def int8_product_saturates(machine: str | None = None, flags: set[str] | None = None) -> bool:
    """True where onnxruntime's default x86 int8 GEMM saturates (see `ort_session_options`): an x86
    CPU without VNNI/AMX, or one whose flags cannot be read (assume the worst).  Other machines
    (ARM: sdot/udot accumulate in int32) are never affected."""
    import platform  # noqa: PLC0415

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = _cpu_flags() if flags is None else flags
    return flags is None or not any(f in flags for f in EXACT_INT8_DOT)


def ort_session_options(ort: Any, threads: int = 0) -> Any:
    """onnxruntime SessionOptions sized to the available CPUs, with spinning off and, where the CPU
    needs it, the precise int8 product.

    Spinning off: after each run the pool's threads would spin while `_rt` kernels (or torch,
    during export checks) run on the same cores; measured 25x slower maps on 2 cores.
    Precise int8 (`session.x64quantprecision`): a Q/DQ (INT8) graph is fused into onnxruntime's int8
    kernels, whose default u8s8 product on x86 CPUs without VNNI (AVX2 vpmaddubsw) saturates pairs of
    products at int16.  On the PatchCore magnetic_tile graph that moved the patch distances by 34 % RMS
    from the graph's own Q/DQ arithmetic, against 4 % in the precise mode (benchmarks/RESULTS.md,
    section 5).  On a VNNI CPU the default product is exact (the two modes gave identical outputs on
    the AVX-512 VNNI VM) and the precise mode only costs time (2.4x on the CPU int8 PatchCore graph),
    so it is set only where `int8_product_saturates()`.  No effect on float graphs.
    Log severity: error.  onnxruntime warns on stderr (outside Python logging) for every constant its
    int8 fusion leaves unused (~50 lines per session of an int8 graph); real errors still raise."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = resolve_threads(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if int8_product_saturates():
        so.add_session_config_entry("session.x64quantprecision", "1")
    return so


def ort_session(ort: Any, path: str, threads: int = 0, providers: list[str] | None = None) -> Any:
    """An onnxruntime InferenceSession over `path` with `ort_session_options` and every graph optimisation.

    onnxruntime 1.32 cannot fuse some Q/DQ graphs in its precise int8 mode (session creation fails
    with "AddInitializedOrtValue Attempt to replace the existing tensor"; seen on the untrained
    ReContrast graph of tests/python/test_bench.py, cause inside onnxruntime not found).  Such a graph is then
    opened with its Q/DQ fusion off (`session.disable_quant_qdq`): Q and DQ run as operators and the
    convs in fp32, which is the graph's own Q/DQ arithmetic (no saturation), only slower; a warning
    says so.  A graph that fails that way too raises the first error."""
    def options(fuse_qdq: bool) -> Any:
        so = ort_session_options(ort, threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not fuse_qdq:
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        return so

    providers = providers or ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), sess_options=options(True), providers=providers)
    except Exception as first:  # onnxruntime's own exception types (Fail, InvalidGraph, ...)
        try:
            sess = ort.InferenceSession(str(path), sess_options=options(False), providers=providers)
        except Exception:
            raise first from None
        log.warning("onnxruntime could not build %s with fused int8 kernels in its precise mode (%s); running its "
                    "Q/DQ operators unfused: the same arithmetic, slower", path, str(first).splitlines()[-1][-160:])
        return sess


def set_torch_threads(torch: Any, threads: int = 0) -> int:
    """Size torch's intra-op pool to `resolve_threads(threads)`; returns the count set."""
    n = resolve_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.debug("torch intra-op threads: %d", n)
    return n


__all__ = ["affinity_cpus", "available_cpus", "cgroup_cpu_quota", "describe_openmp_policy", "int8_product_saturates",
           "ort_session", "ort_session_options", "passive_openmp_environ", "prefer_passive_openmp", "resolve_threads",
           "set_torch_threads", "user_openmp_environ"]
