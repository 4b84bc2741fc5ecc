"""Thread pools sized from the CPUs this process may use: affinity, cgroup v2/v1 quotas, no spinning."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeuad import cpus


def _tree(tmp: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp


def test_cgroup_v2_quota_tightest_on_the_path(tmp_path: Path) -> None:
    root = _tree(tmp_path / "cg", {"cpu.max": "max 100000\n", "a/cpu.max": "300000 100000\n",
                                   "a/b/cpu.max": "150000 100000\n"})
    proc = _tree(tmp_path, {"self_cgroup": "0::/a/b\n"}) / "self_cgroup"
    assert cpus.cgroup_cpu_quota(root, proc) == pytest.approx(1.5)
    proc.write_text("0::/a\n")
    assert cpus.cgroup_cpu_quota(root, proc) == pytest.approx(3.0)
    proc.write_text("0::/\n")
    assert cpus.cgroup_cpu_quota(root, proc) is None  # "max": no limit


def test_cgroup_v2_in_a_container_uses_the_namespaced_root(tmp_path: Path) -> None:
    # the listed path is the host's; under the container's mount only the root exists
    root = _tree(tmp_path / "cg", {"cpu.max": "200000 100000\n"})
    proc = _tree(tmp_path, {"c": "0::/system.slice/docker-abc.scope\n"}) / "c"
    assert cpus.cgroup_cpu_quota(root, proc) == pytest.approx(2.0)


def test_cgroup_v1_quota_and_unlimited(tmp_path: Path) -> None:
    root = _tree(tmp_path / "cg", {"cpu,cpuacct/job/cpu.cfs_quota_us": "50000\n",
                                   "cpu,cpuacct/job/cpu.cfs_period_us": "100000\n",
                                   "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                                   "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    proc = _tree(tmp_path, {"c": "12:memory:/job\n4:cpu,cpuacct:/job\n0::/\n"}) / "c"
    assert cpus.cgroup_cpu_quota(root, proc) == pytest.approx(0.5)
    proc.write_text("4:cpu,cpuacct:/\n")
    assert cpus.cgroup_cpu_quota(root, proc) is None
    assert cpus.cgroup_cpu_quota(root, tmp_path / "missing") is None
    (tmp_path / "cg" / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("garbage\n")
    assert cpus.cgroup_cpu_quota(root, proc) is None


def test_available_cpus_is_affinity_capped_by_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 8)
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: None)
    assert cpus.available_cpus() == 8
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: 1.5)
    assert cpus.available_cpus() == 2          # rounded up
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: 0.2)
    assert cpus.available_cpus() == 1
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: 32.0)
    assert cpus.available_cpus() == 8          # the affinity mask is tighter
    assert cpus.resolve_threads(0) == 8 and cpus.resolve_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")   # the user's OpenMP setting is the default
    assert cpus.resolve_threads(0) == 2 and cpus.resolve_threads(5) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "x")
    assert cpus.resolve_threads(0) == 8
    with pytest.raises(ValueError, match="threads must be >= 0"):
        cpus.resolve_threads(-1)


def test_affinity_mask_is_respected() -> None:
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity on this platform")
    one = sorted(os.sched_getaffinity(0))[:1]
    code = ("import os, sys; os.sched_setaffinity(0, %r); from edgeuad import cpus; "
            "print(cpus.affinity_cpus(), cpus.available_cpus())" % (one,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


def test_ort_session_options_sized_and_not_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpus, "available_cpus", lambda: 3)
    so = cpus.ort_session_options(ort)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert cpus.ort_session_options(ort, threads=1).intra_op_num_threads == 1


def test_torch_threads_follow_the_request() -> None:
    class FakeTorch:
        n = 16

        def get_num_threads(self) -> int:
            return self.n

        def set_num_threads(self, n: int) -> None:
            self.n = n

    t = FakeTorch()
    assert cpus.set_torch_threads(t, 2) == 2 and t.n == 2
    assert cpus.set_torch_threads(t, 0) == cpus.resolve_threads(0) == t.n


def test_cli_makes_openmp_passive_unless_the_user_chose(tmp_path: Path) -> None:
    code = "import os; from edgeuad import cli; cli.main(['-q', 'info']); print('POLICY', os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "POLICY PASSIVE" in out.stdout
    assert "OpenMP wait policy: OMP_WAIT_POLICY=PASSIVE (edgeuad's preference)" in out.stdout  # `edgeuad info` says so
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert "POLICY ACTIVE" in out.stdout
    assert "OpenMP wait policy: OMP_WAIT_POLICY=ACTIVE (set by you)" in out.stdout


def test_loading_rt_makes_its_openmp_passive_unless_the_user_chose() -> None:
    """A library user's Detector (no CLI) gets the same policy: `load_rt` sets it before libgomp loads.
    OMP_DISPLAY_ENV makes libgomp print the wait policy it read at load, so this checks the pool's
    own setting, not only the environment variable."""
    pytest.importorskip("edgeuad._rt")
    code = ("import os; from edgeuad.runtime.native import load_rt; rt = load_rt(); "
            "print('POLICY', os.environ['OMP_WAIT_POLICY'], load_rt() is rt)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_DISPLAY_ENV"] = "TRUE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "POLICY PASSIVE True" in out.stdout
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in out.stdout + out.stderr  # what libgomp itself read
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "POLICY ACTIVE True" in out.stdout
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in out.stdout + out.stderr
