"""Reliability of export and load (issue #14): atomic bundle replacement, temp clean-up, the
manifest cross-checked against the loaded network and bank, bundle digests, and the small ones
(score_batch of a generator, predict/eval on unreadable input)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeuad import api, cli
from edgeuad.bundle import Bundle, BundleError, write_manifest
from edgeuad.data import read_image
from edgeuad.detector import Detector
from edgeuad.synthetic import make_synthetic_dataset

TINY = {"image_size": 64, "coreset_ratio": 0.2, "pretrained": False}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", kind="texture", n_train=10,
                                  n_test_good=2, n_test_defect=2, size=64, seed=3)


@pytest.fixture(scope="module")
def runs(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[api.Run, api.Run]:
    """Two runs whose bundles score differently (coreset and blur differ)."""
    root = tmp_path_factory.mktemp("runs")
    a = api.train("patchcore", dataset, root / "a", TINY, holdout_fraction=0.2, progress=False)
    b = api.train("patchcore", dataset, root / "b", {**TINY, "coreset_ratio": 0.5, "sigma": 1.0}, holdout_fraction=0.2,
                  progress=False)
    return a, b


@pytest.fixture(scope="module")
def bundle(runs: tuple[api.Run, api.Run], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return api.export(runs[0], tmp_path_factory.mktemp("bundle") / "b").root


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _scores(path: Path, images: list[np.ndarray]) -> list[float]:
    with Detector(path) as det:
        return [r.score for r in det.score_batch(images, return_map=False)]


def test_export_swaps_whole_bundle_and_a_failed_export_changes_nothing(
        runs: tuple[api.Run, api.Run], dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imgs = [read_image(p) for p in sorted((dataset / "test").rglob("*.png"))]
    out = tmp_path / "bundles" / "line1"
    first = api.export(runs[0], out)
    scores_a = _scores(out, imgs)
    files_a = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*_a: object, **_k: object) -> None:
        raise RuntimeError("power cut while fitting the threshold")

    monkeypatch.setattr(api, "from_normal_scores", fail)  # whichever rule is the default
    monkeypatch.setattr(api, "from_normal_robust", fail)
    with pytest.raises(RuntimeError, match="power cut"):
        api.export(runs[1], out)
    # the previous bundle is untouched, byte for byte, and nothing is left beside it
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files_a
    assert [p.name for p in out.parent.iterdir()] == ["line1"]
    monkeypatch.undo()

    second = api.export(runs[1], out)
    assert second.digest != first.digest
    scores_b = _scores(out, imgs)
    assert not np.allclose(scores_a, scores_b)  # a different bundle, really swapped in
    assert [p.name for p in out.parent.iterdir()] == ["line1"]


def test_export_removes_what_killed_exports_left(runs: tuple[api.Run, api.Run], tmp_path: Path) -> None:
    dead = _dead_pid()
    parent = tmp_path / "bundles"
    parent.mkdir()
    killed = parent / f".line1.edgeuad-{dead}.k1ll3d.tmpdir"
    killed.mkdir()
    (killed / "manifest.json").write_text("{}")
    killed_tar = parent / f".line1.tar.edgeuad-{dead}.k1ll3d.tmp"
    killed_tar.write_bytes(b"half a tar")
    other_user_file = parent / "notes.txt"
    other_user_file.write_text("mine")
    b = api.export(runs[0], parent / "line1")
    assert not killed.exists()
    from edgeuad.bundle import pack

    pack(b.root, parent / "line1.tar")
    assert not killed_tar.exists()
    assert sorted(p.name for p in parent.iterdir()) == ["line1", "line1.tar", "notes.txt"]


def test_export_never_replaces_a_directory_that_is_not_a_bundle(runs: tuple[api.Run, api.Run],
                                                                 tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not an edgeuad bundle"):
        api.export(runs[0], mine)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        api.export(runs[0], tmp_path / "afile")


def test_train_removes_stale_checkpoint_temps(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    dead = _dead_pid()
    stale = out / f".checkpoint.safetensors.edgeuad-{dead}.abc.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = out / f".checkpoint.safetensors.edgeuad-{os.getpid()}.abc.tmp"  # a writer still running
    live.write_bytes(b"in progress")
    api.train("patchcore", dataset, out, TINY, holdout_fraction=0.2, progress=False)
    assert not stale.exists() and live.exists()


def _rewritten(bundle: Path, tmp_path: Path, edit) -> Path:
    """A copy of `bundle` whose manifest was changed by `edit` and re-hashed (a consistent but wrong bundle)."""
    dst = tmp_path / "edited"
    shutil.copytree(bundle, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    write_manifest(dst, m)
    return dst


@pytest.mark.parametrize("edit,field", [
    (lambda m: m["model"].update(input="pixels"), "model.input"),
    (lambda m: (m["model"].update(outputs=["emb"]), m["postprocess"].update(embedding="emb")), "model.outputs"),
    (lambda m: m["preprocess"].update(size=[32, 32]), "preprocess.size"),
    (lambda m: m["postprocess"].update(grid=[4, 4]), "postprocess.grid"),
    (lambda m: m["postprocess"].update(reweight_b=1000), "postprocess.reweight_b"),
])
def test_detector_cross_checks_manifest_with_graph_and_bank(bundle: Path, tmp_path: Path, edit, field: str) -> None:
    bad = _rewritten(bundle, tmp_path, edit)
    with pytest.raises(BundleError) as e:
        Detector(bad)
    assert e.value.field == field, str(e.value)


def test_provisional_bundle_loads_only_when_asked(bundle: Path, tmp_path: Path) -> None:
    prov = _rewritten(bundle, tmp_path, lambda m: m.update(
        thresholds={"threshold": 0.0, "min": 0.0, "max": 1.0, "source": "provisional"}))
    with pytest.raises(BundleError, match="provisional"):
        Detector(prov)
    with Detector(prov, allow_provisional=True) as det:
        assert det.thresholds.source == "provisional"


def test_expected_digest(bundle: Path, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest = Bundle.load(bundle).digest
    assert Detector(bundle, expected_digest=digest).digest == digest
    with pytest.raises(BundleError, match="not the expected"):
        Detector(bundle, expected_digest="0" * 64)
    assert cli.main(["info", "--bundle", str(bundle)]) == 0
    assert f"digest {digest}" in capsys.readouterr().out
    good = dataset / "test" / "good"
    assert cli.main(["-q", "predict", str(good), "--bundle", str(bundle), "--expect-digest", "f" * 64]) == 2
    assert cli.main(["-q", "predict", str(good), "--bundle", str(bundle), "--expect-digest", digest,
                     "--out", str(tmp_path / "p")]) == 0
    assert cli.main(["-q", "eval", "--bundle", str(bundle), "--data", str(dataset), "--no-progress",
                     "--expect-digest", "f" * 64]) == 2
    assert cli.main(["-q", "eval", "--bundle", str(bundle), "--data", str(dataset), "--no-progress",
                     "--expect-digest", digest]) == 0


def test_cli_export_prints_the_digest(runs: tuple[api.Run, api.Run], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["-q", "export", "--run", str(runs[0].root), "--out", str(tmp_path / "b"),
                   "--archive", str(tmp_path / "b.tar")])
    assert rc == 0
    out = capsys.readouterr().out
    digest = Bundle.load(tmp_path / "b").digest
    assert f"digest: {digest}" in out
    assert Bundle.load(tmp_path / "b.tar", expected_digest=digest).digest == digest


def test_score_batch_takes_a_generator(bundle: Path, dataset: Path) -> None:
    paths = sorted((dataset / "test" / "good").glob("*.png"))
    with Detector(bundle) as det:
        from_list = [r.score for r in det.score_batch([read_image(p) for p in paths], return_map=False)]
        from_gen = [r.score for r in det.score_batch((read_image(p) for p in paths), return_map=False)]
        assert from_gen == from_list
        with pytest.raises(TypeError):
            det.score_batch(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="no frames"):
            det.score_batch(iter(()))


def test_predict_on_an_unreadable_image_fails_and_says_so(bundle: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    assert cli.main(["-q", "predict", str(bad), "--bundle", str(bundle)]) == 1
    assert "0 frames scored, 0 anomalous, 1 unreadable skipped" in capsys.readouterr().err


def test_eval_with_nothing_readable_is_a_clear_error(bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for d in ("train/good", "test/good", "test/crack"):
        (data / d).mkdir(parents=True)
    (data / "test" / "good" / "a.png").write_bytes(b"not a png")
    (data / "test" / "crack" / "b.png").write_bytes(b"nor this")
    with pytest.raises(ValueError, match="no readable test images.*all 2 image files could not be read"):
        api.evaluate(bundle, data, progress=False)
