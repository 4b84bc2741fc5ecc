"""Every command the README and the demo print is run here, on small synthetic data.

The README's bash blocks are parsed, not copied: a command added there without a way to run it
here fails `test_every_readme_command_is_covered`.  What changes for the test is only the data
(a 64 px synthetic MVTec-layout folder for `path/to/mvtec/bottle`) and, for the commands whose
defaults train or measure for minutes, size flags appended (TINY); the command itself runs as
printed, in a scratch working directory, through the same `cli.main` as the `edgeuad` script.
"""
from __future__ import annotations

import io
import json
import re
import shlex
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from edgeuad import cli, demo
from edgeuad.synthetic import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[2]
README_DATA = "path/to/mvtec/bottle"
# appended to README commands whose defaults take minutes (the flags exist: the parser checks them)
TINY = {
    "train": ["--image-size", "64", "--iterations", "2", "--batch-size", "4", "--set", "pretrained=false",
              "--no-progress"],
    "bench": ["--repetitions", "1", "--block", "2", "--warmup", "0", "--no-progress"],
}
# make targets the README names and who runs them: CI (`.ci/run`) runs setup + test; demo is run below
MAKE_TARGETS = {"setup": ".ci/run", "test": ".ci/run", "demo": "this test"}


# README sections (heading as written) whose commands another test runs as written
ELSEWHERE = {"## Serving": "tests/python/test_serve_cli.py", "### Ensembles": "tests/python/test_ensemble.py"}


def readme_commands() -> list[str]:
    """Command lines of the README's ```bash blocks (sections in ELSEWHERE left out), comments stripped."""
    text = (ROOT / "README.md").read_text()
    for heading, test in ELSEWHERE.items():
        head, sep, rest = text.partition(f"\n{heading}\n")
        assert sep and heading in (ROOT / test).read_text(), f"{test} no longer runs README's {heading}"
        # the section ends at the next heading of its level or above
        nxt = re.search(rf"^#{{1,{heading.index(' ')}}} ", rest, flags=re.M)
        text = head + "\n" + (rest[nxt.start():] if nxt else "")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for ln in block.splitlines():
            ln = ln.split(" #", 1)[0].strip()
            if ln and not ln.startswith("#"):
                lines.append(ln)
    return lines


def test_every_readme_command_is_covered() -> None:
    cmds = readme_commands()
    assert any(c.startswith("edgeuad train") for c in cmds) and "make demo" in cmds
    for c in cmds:
        word = shlex.split(c)
        assert word[0] in ("edgeuad", "make"), f"README command {c!r} is run by no test: add it here"
        if word[0] == "make":
            assert word[1] in MAKE_TARGETS, f"README runs `{c}`: say here who runs that target"
            assert re.search(rf"^{word[1]}:", (ROOT / "Makefile").read_text(), flags=re.M), c
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make setup" in ci and "make test" in ci


def _run(line: str, data: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    argv = shlex.split(line.replace(README_DATA, str(data)))[1:]
    argv += TINY.get(argv[0], [])
    rc = cli.main(["-q", *argv])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_readme_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                             caplog: pytest.LogCaptureFixture) -> None:
    from edgeuad.export.tensorrt import tensorrt_available

    data = make_synthetic_dataset(tmp_path / "mvtec", kind="texture", n_train=20, n_test_good=2, n_test_defect=1,
                                  size=64, seed=5)
    monkeypatch.chdir(tmp_path)
    for line in readme_commands():
        if not line.startswith("edgeuad "):
            continue
        caplog.clear()
        rc, out = _run(line, data, capsys)
        if "--fp16" in line and not tensorrt_available():
            # the GPU-box step on a CPU machine: a clear error, exit 2, no traceback
            assert rc == 2 and "tensorrt" in caplog.text.lower(), (line, caplog.text)
            continue
        assert rc == 0, (line, out, caplog.text)
    assert (tmp_path / "bottle.tar").is_file() and (tmp_path / "reports/bottle/overlays.png").is_file()
    int8 = json.loads((tmp_path / "bundles/bottle-int8/manifest.json").read_text())
    assert int8["quantization"]["cpu_int8"]["target"] == "onnxruntime"
    rel = int8["quantization"]["cpu_int8"]["output_rel_error"]  # one figure per graph output
    assert set(rel) == set(int8["model"]["outputs"]) and max(rel.values()) > 0
    assert cli.main(["info", "--bundle", str(tmp_path / "bundles/bottle-int8")]) == 0
    worst = max(rel, key=lambda k: rel[k])
    assert f"largest relative output error {worst} {rel[worst]:.3f}" in capsys.readouterr().out
    n_test = len(list((data / "test").rglob("*.png")))
    rows = (tmp_path / "predictions/bottle/predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + n_test  # header + every test image, subfolders included


def test_make_demo_and_its_printed_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    make = (ROOT / "Makefile").read_text()
    target = re.search(r"^demo:\n\t\$\(BIN\)/(edgeuad .*)$", make, flags=re.M)
    assert target, "Makefile demo target changed: update this test"
    # the demo's own flow, on data small enough for a test
    monkeypatch.setattr(demo, "DEMO_DATA", {"kind": "texture", "n_train": 16, "n_test_good": 2, "n_test_defect": 1,
                                            "size": 64})
    monkeypatch.setitem(demo.DEMO_CONFIGS, "recontrast", {"image_size": 64, "iterations": 2, "batch_size": 4,
                                                          "pretrained": False})
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["-q", *shlex.split(target.group(1))[1:]])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    tries = [ln.split("try:", 1)[1].strip() for ln in printed.splitlines() if ln.startswith("try:")]
    assert len(tries) >= 3 and any(t.startswith("edgeuad predict") for t in tries)
    for t in tries:
        argv = shlex.split(t)
        assert argv[0] == "edgeuad"
        buf = io.StringIO()
        with redirect_stdout(buf):
            assert cli.main(["-q", *argv[1:]]) == 0, t
    assert (tmp_path / "demo_out/predict/predictions.csv").is_file()
    assert (tmp_path / "demo_out/eval/metrics.json").is_file()
