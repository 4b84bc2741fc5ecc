"""`edgeuad predict`: folders recurse, every record says which input it scored, overlays are named
after their input, a CSV a spreadsheet opens, processing time apart from queueing."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeuad import api, cli
from edgeuad.bundle import pack
from edgeuad.data import read_image
from edgeuad.detector import Detector
from edgeuad.predict import FIELDS
from edgeuad.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", kind="texture", n_train=8,
                                  n_test_good=2, n_test_defect=1, size=64, seed=3)


@pytest.fixture(scope="module")
def bundle(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pc")
    run = api.train("patchcore", dataset, out / "run", {"image_size": 64, "coreset_ratio": 0.2, "pretrained": False},
                    holdout_fraction=0.25, progress=False)
    return api.export(run, out / "bundle").root


def _rows(out: Path) -> tuple[list[dict], list[dict]]:
    jl = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    with open(out / "predictions.csv", newline="") as f:
        rd = csv.DictReader(f)
        assert rd.fieldnames == FIELDS
        return jl, list(rd)


def test_predict_folder_recurses_and_traces_every_frame(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    test = dataset / "test"
    files = sorted(test.rglob("*.png"))
    assert len({p.parent for p in files}) > 1  # good + defect subfolders
    out = tmp_path / "pred"
    assert cli.main(["-q", "predict", str(test), "--bundle", str(bundle), "--out", str(out), "--batch", "2"]) == 0
    jl, rows = _rows(out)
    assert [r["path"] for r in jl] == [str(p) for p in files]
    det = Detector(bundle)
    for r, c, p in zip(jl, rows, files):
        direct = det.score(read_image(p))
        assert r["score"] == pytest.approx(direct.score, rel=1e-5)
        assert r["severity"] == pytest.approx(det.severity(direct.score), abs=1e-4)
        assert r["normalized"] == pytest.approx(min(1.0, max(0.0, r["severity"])), abs=1e-4)
        assert r["verdict"] == ("NG" if direct.is_anomaly else "OK") and r["source"] == str(test)
        assert r["process_ms"] > 0 and r["queue_ms"] >= 0
        # the CSV holds the same values as text a spreadsheet reads
        assert c["path"] == r["path"] and float(c["score"]) == pytest.approx(r["score"])
        assert c["verdict"] == r["verdict"] and c["time"] == r["time"]
        if r["is_anomaly"]:  # overlays mirror the input's place under the folder
            rel = p.relative_to(test).with_suffix(".png").as_posix()
            assert r["overlay"] == f"overlays/{rel}" and (out / r["overlay"]).is_file()
        else:
            assert r["overlay"] is None and c["overlay"] == ""
    # --all-overlays: one per input, named after it
    out2 = tmp_path / "all"
    assert cli.main(["-q", "predict", str(test), "--bundle", str(bundle), "--out", str(out2), "--all-overlays"]) == 0
    got = sorted(p.relative_to(out2 / "overlays").as_posix() for p in (out2 / "overlays").rglob("*.png"))
    assert got == sorted(p.relative_to(test).as_posix() for p in files)


def test_no_recursive_names_the_flag(bundle: Path, dataset: Path, tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "p"
    rc = cli.main(["predict", str(dataset / "test"), "--bundle", str(bundle), "--out", str(out), "--no-recursive"])
    assert rc == 2 and "recursive" in caplog.text
    assert not out.exists()  # the source is checked before anything is written


def test_predict_video_names_frames_and_times(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    path = tmp_path / "line cam.avi"
    frames = [read_image(p) for p in sorted((dataset / "test").rglob("*.png"))[:3]]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 64))
    assert w.isOpened()
    for f in frames:
        w.write(np.ascontiguousarray(f[:, :, ::-1]))
    w.release()
    out = tmp_path / "v"
    assert cli.main(["-q", "predict", str(path), "--bundle", str(bundle), "--out", str(out), "--all-overlays"]) == 0
    jl, _ = _rows(out)
    assert [r["index"] for r in jl] == [0, 1, 2] and all(r["source"] == str(path) for r in jl)
    assert [r["position_ms"] for r in jl] == pytest.approx([0.0, 200.0, 400.0], abs=1.0)
    assert [r["overlay"] for r in jl] == [f"overlays/line_cam_{i:06d}.png" for i in range(3)]
    assert all((out / r["overlay"]).is_file() for r in jl)


def test_info_names_the_tar_it_was_given(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tar = pack(bundle, tmp_path / "b.tar")
    assert cli.main(["info", "--bundle", str(tar)]) == 0
    out = capsys.readouterr().out
    assert f"bundle {tar}: verified" in out and "CPUs:" in out
