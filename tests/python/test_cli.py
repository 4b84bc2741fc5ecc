"""The CLI reads well and every flag reaches the config it names (PatchCore's CLI flags that never
reached the model are the failure mode this guards against)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgeuad import api, cli


@pytest.mark.parametrize("cmd", ["train", "export", "eval", "predict", "bench", "demo", "info"])
def test_help_for_every_command(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: edgeuad " + cmd in out


def test_train_flags_reach_the_method_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_train(method: str, data: str, out: str, overrides: dict[str, Any], holdout_fraction: float,
                   progress: bool) -> Any:
        seen.update(method=method, overrides=overrides, holdout=holdout_fraction, progress=progress)
        return api.Run(root=tmp_path, method=method, config={}, preprocess=api.PreprocessConfig())

    monkeypatch.setattr(api, "train", fake_train)
    rc = cli.main(["-q", "train", "--method", "recontrast", "--data", "d", "--out", str(tmp_path),
                   "--backbone", "resnet18", "--weights", "w.pth", "--image-size", "96", "--iterations", "7",
                   "--batch-size", "3", "--seed", "5", "--holdout", "0.2", "--set", "encoder_bn=eval",
                   "--set", "lr_decoder=0.001", "--no-progress"])
    assert rc == 0
    ov = seen["overrides"]
    assert seen["holdout"] == 0.2 and seen["progress"] is False
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
