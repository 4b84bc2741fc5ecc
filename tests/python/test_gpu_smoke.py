"""tools/gpu_smoke.sh and its Python part, checked as far as a machine without a GPU allows: the shell script
parses, the Python part imports, parses its arguments, makes its tiny ONNX, and its steps that need
missing pieces say SKIPPED (exit 0) while the environment step reports why _rt has no GPU (exit 1).
The script ran once on a lent H200 (2026-12-04, commit ff36a8f, results in benchmarks/RESULTS.md); CI has no GPU."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeuad import _rt

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_smoke.sh"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_smoke", REPO / "tools" / "gpu_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shell_script_parses_and_names_every_step():
    bash = shutil.which("bash")
    assert bash is not None
    r = subprocess.run([bash, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = SCRIPT.read_text()
    for part in ("\"$SMOKE\" env", "kernels", "compute-sanitizer", "memcheck", "racecheck", "-m gpu",
                 "engine", "timing", "profile", "detector", "deadline", "bench_train_step.py\" --device cuda"):
        assert part in text, part


def test_python_part_parses_every_command(monkeypatch):
    mod = _module()
    calls = []
    for name in ("env", "kernels", "engine", "timing", "profile", "detector"):
        monkeypatch.setattr(mod, f"cmd_{name}", lambda a, n=name: calls.append((n, a)) or 0)
    for argv in (["env"], ["kernels", "--small"], ["engine", "--out", "x"], ["timing"], ["profile"],
                 ["detector", "--out", "y", "--bundle", "b", "--batch", "4", "--repeat", "3"]):
        assert mod.main(argv) == 0
    assert [c[0] for c in calls] == ["env", "kernels", "engine", "timing", "profile", "detector"]
    assert calls[1][1].small and calls[5][1].batch == 4 and calls[5][1].bundle == "b"
    with pytest.raises(SystemExit):
        mod.main(["nope"])


def test_tiny_onnx_runs_in_onnxruntime(tmp_path):
    import onnxruntime as ort

    path = _module().tiny_onnx(tmp_path / "t.onnx")
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = s.run(None, {"image": np.zeros((2, 3, 64, 64), np.float32)})
    assert [o.shape for o in outs] == [(2, 16, 32, 32), (2, 8, 16, 16)]


@pytest.mark.skipif(_rt.cuda_device_count() > 0, reason="a GPU is usable here")
def test_env_step_reports_why_there_is_no_gpu(capsys):
    assert _module().main(["env"]) == 1
    text = capsys.readouterr().out
    assert "_rt CUDA status" in text and "FAIL" in text and _rt.cuda_status()["error"] in text


def test_steps_without_their_requirements_skip_cleanly(capsys, tmp_path):
    mod = _module()
    if mod.optional("tensorrt") is None:
        assert mod.main(["engine", "--out", str(tmp_path)]) == 0
        assert "SKIPPED: tensorrt" in capsys.readouterr().out
    if mod.torch_cuda() is None:
        assert mod.main(["timing"]) == 0
        assert "SKIPPED: torch with CUDA" in capsys.readouterr().out
        assert mod.main(["profile"]) == 0
        assert "SKIPPED: torch with CUDA" in capsys.readouterr().out


def test_gpu_train_driver_trains_every_seed_as_compare_methods_would(tmp_path):
    """tools/gpu_train_recontrast.py on CPU (device=auto), tiny: each seed's run is the one
    compare_methods reuses (same overrides), with absolute held-out paths."""
    from edgeuad import api
    from edgeuad.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", kind="texture", n_train=10, n_test_good=1, n_test_defect=1,
                                  size=64, seed=0)
    r = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_train_recontrast.py"), "--data", str(data),
                        "--work", str(tmp_path / "w"), "--seeds", "0,1", "--iterations", "2", "--image-size", "64",
                        "--time-limit", "300"], capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr + (tmp_path / "w" / "seed0.log").read_text()
    for s in (0, 1):
        run = api.Run.load(tmp_path / "w" / f"recontrast_gpu_seed{s}" / "run")
        assert {k: run.config[k] for k in ("image_size", "seed", "iterations", "batch_size", "device")} == {
            "image_size": 64, "seed": s, "iterations": 2, "batch_size": 16, "device": "auto"}
        assert all(Path(p).is_absolute() for p in run.holdout)
    assert "seed 1: exit 0" in r.stderr


def test_train_step_benchmark_runs_both_precisions(monkeypatch):
    """benchmarks/bench_train_step.py (which gpu_smoke.sh runs with --device cuda): both precisions train
    through the shipped step and the table names them; here on the CPU with a tiny input."""
    pytest.importorskip("torch")
    from script_helpers import load_benchmark

    mod = load_benchmark("bench_train_step")
    out = {}
    monkeypatch.setattr(mod, "publish", lambda stem, body: out.update({stem: body}))
    mod.main(["--image-size", "64", "--batch-size", "2", "--rounds", "1", "--steps", "1", "--threads", "1",
              "--stem", "t"])
    body = out["t"]
    assert "| fp32 |" in body and "| bf16 |" in body and "1 torch threads" in body
    assert "bf16 step = x" in body and "blocks of 1 alternating, 1 rounds" in body
