"""The CLI reads well and every flag reaches the config it names (PatchCore's CLI flags that never
reached the model are the failure mode this guards against)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgeuad import api, cli


@pytest.mark.parametrize("cmd", ["train", "export", "ensemble", "eval", "predict", "bench", "demo", "info"])
def test_help_for_every_command(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: edgeuad " + cmd in out


def test_train_flags_reach_the_method_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_train(method: str, data: str, out: str, overrides: dict[str, Any], holdout_fraction: float,
                   progress: bool, threads: int) -> Any:
        seen.update(method=method, overrides=overrides, holdout=holdout_fraction, progress=progress, threads=threads)
        return api.Run(root=tmp_path, method=method, config={}, preprocess=api.PreprocessConfig())

    monkeypatch.setattr(api, "train", fake_train)
    rc = cli.main(["-q", "train", "--method", "recontrast", "--data", "d", "--out", str(tmp_path),
                   "--backbone", "resnet18", "--weights", "w.pth", "--image-size", "96", "--iterations", "7",
                   "--batch-size", "3", "--seed", "5", "--holdout", "0.2", "--set", "encoder_bn=eval",
                   "--set", "lr_decoder=0.001", "--no-progress", "--threads", "1"])
    assert rc == 0
    ov = seen["overrides"]
    assert seen["holdout"] == 0.2 and seen["progress"] is False and seen["threads"] == 1
    cfg = api.method_config("recontrast", ov)
    assert (cfg.backbone, cfg.pretrained, cfg.image_size, cfg.iterations, cfg.batch_size, cfg.seed) == \
        ("resnet18", "w.pth", 96, 7, 3, 5)
    assert cfg.encoder_bn == "eval" and cfg.lr_decoder == pytest.approx(1e-3)


def test_bench_flags_reach_the_bench_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgeuad import bench

    seen: list[Any] = []

    class FakeReport:
        def table(self) -> str:
            return "table"

    def fake_run_bench(cfg: Any) -> Any:
        seen.append(cfg)
        return FakeReport()

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    rc = cli.main(["-q", "bench", "--bundle", "b", "--out", str(tmp_path), "--batch-sizes", "1,3", "--threads", "2",
                   "--backends", "onnxruntime,onnxruntime-int8", "--references", "torch-eager,ort+torch-post",
                   "--repetitions", "5", "--block", "7", "--warmup", "2", "--images", "imgs", "--int8-calib", "cal",
                   "--no-progress"])
    assert rc == 0
    c = seen[0]
    assert (c.bundle, c.out_dir, c.batch_sizes, c.threads, c.backends, c.references, c.repetitions, c.block,
            c.warmup, c.images, c.int8_calib, c.progress) == (
        "b", str(tmp_path), [1, 3], [2], ["onnxruntime", "onnxruntime-int8"], ["torch-eager", "ort+torch-post"],
        5, 7, 2, "imgs", "cal", False)
    # the quick default, --full, a flag overriding --full, and --no-reference
    assert cli.main(["-q", "bench", "--bundle", "b"]) == 0
    quick = seen[-1]
    assert (quick.batch_sizes, quick.threads, quick.references, quick.repetitions, quick.out_dir, quick.progress) == (
        [1], [1], ["torch-eager"], 3, "bench_out", True)
    assert cli.main(["-q", "bench", "--bundle", "b", "--full", "--threads", "1", "--no-reference"]) == 0
    full = seen[-1]
    assert full.batch_sizes == [1, 4, 8] and full.threads == [1] and full.references == [] and full.repetitions == 7
    assert "onnxruntime-int8" in full.backends


def test_patch_flags_reach_config() -> None:
    cfg = api.method_config("patchcore", {"coreset_ratio": 0.05, "image_size": 64})
    assert cfg.coreset_ratio == pytest.approx(0.05) and cfg.image_size == 64
    cfg = api.method_config("reconpatch", {"steps": 3})
    assert cfg.steps == 3


def test_unknown_config_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown recontrast config key"):
        api.method_config("recontrast", {"iteratons": 5})
    with pytest.raises(ValueError, match="unknown method"):
        api.method_config("magic", {})


def test_int8_without_calibration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--calib"):
        cli.main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "b"), "--int8"])


def test_errors_are_reported_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rc = cli.main(["info", "--bundle", str(tmp_path / "missing")])
    assert rc == 2
    assert "bundle not found" in caplog.text


def test_help_shows_defaults_and_explains_backend_threads_info(capsys: pytest.CaptureFixture[str]) -> None:
    def help_of(cmd: str) -> str:
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        return " ".join(capsys.readouterr().out.split())  # argparse wraps lines

    ev = help_of("eval")
    assert "(default: 8)" in ev and "(default: onnxruntime)" in ev
    assert "network engine: onnxruntime" in ev and "every CPU this process may use" in ev
    pr = help_of("predict")
    assert "--recursive, --no-recursive" in pr and "(default: True)" in pr and "(default: auto)" in pr
    assert "(default: None)" not in pr  # unset options say nothing rather than "None"
    assert "(default: 0.99)" in help_of("export")
    assert "verify every file of the bundle" in help_of("info")
    from edgeuad.demo import DEMO_TIME

    assert DEMO_TIME in help_of("demo") and DEMO_TIME in " ".join(cli.build_parser().format_help().split())


def test_python_m_edgeuad_is_the_cli() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "edgeuad", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("edgeuad ") and "_rt: built" in out.stdout
    from edgeuad import _rt

    assert f"exact bank search: {_rt.exact_kernel()}" in out.stdout  # the tile this CPU runs
    from edgeuad.cpus import int8_product_saturates

    assert ("int8 (onnxruntime): no VNNI" in out.stdout) is int8_product_saturates()
    bad = subprocess.run([sys.executable, "-m", "edgeuad", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


@pytest.mark.parametrize("cmd", ["train", "export", "demo"])
def test_training_commands_without_torch_say_which_extra(cmd: str, tmp_path: Path) -> None:
    """A runtime-only install (no torch): a one-line hint, exit 2, nothing written."""
    import subprocess
    import sys

    out = tmp_path / "out"
    args = {"train": ["train", "--data", str(tmp_path), "--out", str(out)],
            "export": ["export", "--run", str(tmp_path), "--out", str(out)],
            "demo": ["demo", "--out", str(out)]}[cmd]
    code = ("import sys; sys.modules['torch'] = None\n"  # import torch now raises ImportError
            "from edgeuad import cli\n"
            f"sys.exit(cli.main({args!r}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "install the train extra: pip install 'edgeuad[train]'" in r.stderr
    assert "Traceback" not in r.stderr and f"edgeuad {cmd}" in r.stderr
    assert not out.exists()


def test_export_passes_the_int8_fp32_first_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from edgeuad.export import trt_export

    seen: list[dict] = []
    fake = SimpleNamespace(root=tmp_path / "b", digest="d" * 64, thresholds={"threshold": 1.0, "source": "robust"})
    monkeypatch.setattr(api, "export", lambda *a, **k: fake)
    monkeypatch.setattr(trt_export, "export_engines", lambda bundle, **k: seen.append(k) or [])
    base = ["export", "--run", str(tmp_path), "--out", str(tmp_path / "b"), "--int8", "--calib", str(tmp_path)]
    assert cli.main(base) == 0 and cli.main(base + ["--int8-fp32-first", "0"]) == 0
    assert [k["int8_fp32_first"] for k in seen] == [2, 0] and all(k["int8"] and not k["fp16"] for k in seen)
