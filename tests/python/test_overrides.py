"""`--set key=value` is parsed by the config field's type; a bad value names the field; a failed
`train` writes nothing."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from edgeuad import api, cli
from edgeuad.overrides import OverrideError, parse_overrides


@dataclass
class Cfg:
    ratio: float = 0.1
    steps: int = 3
    name: str = "a"
    flag: bool = True
    pretrained: bool | str = True
    dim: int | None = None
    size: int | tuple[int, int] = 64
    betas: tuple[float, float] = (0.9, 0.99)
    layers: tuple[int, ...] = (1, 2)
    maybe: Optional[float] = None


def test_values_parse_by_field_type() -> None:
    got = parse_overrides(Cfg, {"ratio": "1e-3", "steps": "7", "name": "7", "flag": "false",
                                "pretrained": "w/x.pth", "dim": "none", "size": "96,128",
                                "betas": "[0.5, 0.75]", "layers": "0,1,2", "maybe": "2"})
    assert got == {"ratio": 1e-3, "steps": 7, "name": "7", "flag": False, "pretrained": "w/x.pth", "dim": None,
                   "size": (96, 128), "betas": (0.5, 0.75), "layers": (0, 1, 2), "maybe": 2.0}
    assert parse_overrides(Cfg, {"pretrained": "false", "dim": "12", "size": "32"}) == \
        {"pretrained": False, "dim": 12, "size": 32}
    # non-strings (the Python API) and unknown keys pass through for the config's own checks
    assert parse_overrides(Cfg, {"ratio": 0.5, "nope": "x"}) == {"ratio": 0.5, "nope": "x"}


@pytest.mark.parametrize("key,value,expect", [
    ("ratio", "abc", "ratio expects float"), ("steps", "1.5", "steps expects int"),
    ("flag", "maybe", "flag expects bool"), ("betas", "1,2,3", "betas expects tuple"),
    ("dim", "x", "dim expects int or none")])
def test_bad_values_name_the_field(key: str, value: str, expect: str) -> None:
    with pytest.raises(OverrideError, match=expect):
        parse_overrides(Cfg, {key: value})


def test_method_config_parses_set_values() -> None:
    cfg = api.method_config("patchcore", {"coreset_ratio": "0.05", "layers": "1,2", "pretrained": "false"})
    assert cfg.coreset_ratio == pytest.approx(0.05) and cfg.layers == (1, 2) and cfg.pretrained is False
    with pytest.raises(ValueError, match="coreset_ratio expects float, got 'abc'"):
        api.method_config("patchcore", {"coreset_ratio": "abc"})


def test_cli_bad_set_value_is_a_message_and_writes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from edgeuad.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", kind="texture", n_train=4, n_test_good=1, n_test_defect=1,
                                  size=32, seed=0)
    out = tmp_path / "runs" / "x"
    rc = cli.main(["train", "--method", "patchcore", "--data", str(data), "--out", str(out),
                   "--set", "coreset_ratio=abc"])
    assert rc == 2
    assert "config field coreset_ratio expects float, got 'abc'" in caplog.text
    assert not (tmp_path / "runs").exists()


def test_failed_train_leaves_no_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "runs" / "x"
    rc = cli.main(["train", "--method", "patchcore", "--data", str(empty), "--out", str(out)])
    assert rc == 2 and "no image files" in caplog.text
    assert not (tmp_path / "runs").exists()
    rc = cli.main(["train", "--data", str(tmp_path / "missing"), "--out", str(out)])
    assert rc == 2 and not (tmp_path / "runs").exists()
