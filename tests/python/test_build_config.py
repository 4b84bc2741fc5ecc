"""Build configuration that can be checked without a GPU: the CUDA architecture list derived from the
nvcc version (cmake/EdgeuadCudaArchs.cmake, run in CMake script mode) and the CUDA status report."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeuad import _rt

REPO = Path(__file__).resolve().parents[2]
CMAKE = shutil.which("cmake") or str(Path(sys.executable).with_name("cmake"))


def _cmake(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "t.cmake"
    script.write_text(f"include({REPO / 'cmake' / 'EdgeuadCudaArchs.cmake'})\n{body}\n")
    if not Path(CMAKE).exists() and shutil.which(CMAKE) is None:
        pytest.skip("cmake not found (it is a build requirement of edgeuad)")
    return subprocess.run([CMAKE, "-P", str(script)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("version,expected", [
    ("13.0.88", "80;86;87;89;90"), ("12.6.68", "80;86;87;89;90"), ("11.8.89", "80;86;87;89;90"),
    ("11.4.315", "72;80;86;87"),  # JetPack 5: no 89/90
    ("11.2.152", "72;75;80;86"),
])
def test_default_archs_follow_nvcc_version(tmp_path, version, expected):
    r = _cmake(tmp_path, f'edgeuad_default_cuda_archs({version} out)\nmessage("ARCHS=${{out}}")\n'
                         f'edgeuad_check_cuda_archs({version} "${{out}}")')
    assert r.returncode == 0, r.stderr
    assert f"ARCHS={expected}" in r.stderr


@pytest.mark.parametrize("version,archs,bad", [
    ("11.4.315", "87;89", "sm_89"), ("11.4.315", "90", "sm_90"), ("13.0.88", "70;80", "sm_70"),
    ("12.2.0", "100", "sm_100"), ("12.2.0", "abc", "'abc'"),
])
def test_archs_the_nvcc_cannot_build_are_refused(tmp_path, version, archs, bad):
    r = _cmake(tmp_path, f'edgeuad_check_cuda_archs({version} "{archs}")')
    assert r.returncode != 0
    assert bad in r.stderr


def test_archs_with_suffixes_accepted(tmp_path):
    r = _cmake(tmp_path, 'edgeuad_check_cuda_archs(12.8.0 "87-real;90a;100-virtual;120")')
    assert r.returncode == 0, r.stderr


def test_old_nvcc_refused(tmp_path):
    r = _cmake(tmp_path, "edgeuad_default_cuda_archs(10.2.89 out)")
    assert r.returncode != 0 and "nvcc >= 11.1" in r.stderr


def test_build_info_records_archs_in_cuda_builds():
    info = _rt.build_info()
    if _rt.has_cuda():
        assert info["cuda_archs"] and "87" in info["cuda_archs"]
    else:
        assert info["cuda"] is False


def test_cuda_status_reports_a_reason_when_no_device():
    st = _rt.cuda_status()
    assert set(st) == {"built_with_cuda", "device_count", "runtime_version", "driver_version", "error"}
    assert st["built_with_cuda"] == _rt.has_cuda()
    assert st["device_count"] == _rt.cuda_device_count()
    if st["device_count"] == 0:
        assert st["error"], "0 devices must come with the CUDA error text"
    if _rt.has_cuda():
        assert st["runtime_version"] >= 11010
