"""Ensemble bundles (ReConPatch Eq. 11): the z-score combination against hand-computed numbers, an
ensemble of one against its member, the exported ensemble against the formula applied to its members'
Detector scores, tampering, bad inputs, the CLI and the README command.

Members are the tiny configs of test_pipeline.py (64/96 px, random-init backbone, seconds to train):
what is checked is the combination and the plumbing, not detection quality."""
from __future__ import annotations

import copy
import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edgeuad import api, cli
from edgeuad import ensemble_build
from edgeuad.bundle import Bundle, BundleError, pack, sha256_file, write_manifest
from edgeuad.data import read_image
from edgeuad.detector import Detector
from edgeuad.manifest_schema import validate_manifest
from edgeuad.runtime.ensemble import EnsembleError, combine_scores, modified_z
from edgeuad.synthetic import make_synthetic_dataset
from edgeuad.thresholds import from_normal_robust, median_mad

ROOT = Path(__file__).resolve().parents[2]
# member name -> (method, overrides); "pc96" has another input size than the others
MEMBERS = {
    "pc": ("patchcore", {"image_size": 64, "coreset_ratio": 0.2, "pretrained": False}),
    "rc": ("recontrast", {"image_size": 64, "iterations": 3, "batch_size": 4, "pretrained": False}),
    "pc96": ("patchcore", {"image_size": 96, "coreset_ratio": 0.2, "pretrained": False, "seed": 0}),
}


# ----------------------------------------------------------------------------- the formula
def test_modified_z_combination_matches_hand_computed_values() -> None:
    # member 0: median 2, MAD 1 -> z = (s - 2) / 1.4826;  member 1: median 0.3, MAD 0.1 -> z = (s - 0.3) / 0.14826
    scores = np.array([[1.0, 3.0, 2.0],
                       [0.5, 0.2, 0.3]])
    z0 = [-1 / 1.4826, 1 / 1.4826, 0.0]
    z1 = [0.2 / 0.14826, -0.1 / 0.14826, 0.0]
    want = [(-0.6744907594765952 + 1.3489815189531904) / 2, (0.6744907594765952 - 0.6744907594765952) / 2, 0.0]
    np.testing.assert_allclose(modified_z(scores[0], 2.0, 1.0), z0, rtol=1e-12)
    np.testing.assert_allclose(modified_z(scores[1], 0.3, 0.1), z1, rtol=1e-12)
    np.testing.assert_allclose(combine_scores(scores, [2.0, 0.3], [1.0, 0.1]), want, rtol=1e-12, atol=1e-15)
    # maps keep their float32 dtype
    m = modified_z(np.array([[2.0, 3.4826]], np.float32), 2.0, 1.0)
    assert m.dtype == np.float32 and np.allclose(m, [[0.0, 1.0]], atol=1e-6)
    with pytest.raises(ValueError, match="members x images"):
        combine_scores(scores, [2.0], [1.0])


def test_median_mad_matches_numpy_and_falls_back_on_a_constant_majority() -> None:
    assert median_mad([1, 2, 3, 4, 100]) == (3.0, 1.0)      # |x - 3| = 2 1 0 1 97 -> median 1
    med, mad = median_mad([5, 5, 5, 5, 6])                   # MAD 0: the spread in MAD units instead
    assert med == 5.0 and mad == pytest.approx(np.std([5, 5, 5, 5, 6]) / 1.4826)
    assert median_mad([7, 7, 7]) == (7.0, 0.0)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ens_syn")
    return make_synthetic_dataset(root / "data", kind="texture", n_train=12, n_test_good=3, n_test_defect=3,
                                  size=64, seed=3)


@pytest.fixture(scope="module")
def members(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[api.Run, Path]]:
    out: dict[str, tuple[api.Run, Path]] = {}
    for name, (method, ov) in MEMBERS.items():
        d = tmp_path_factory.mktemp(f"ens_{name}")
        run = api.train(method, dataset, d / "run", ov, holdout_fraction=0.25, progress=False)
        out[name] = (run, api.export(run, d / "bundle").root)
    return out


@pytest.fixture(scope="module")
def ensemble3(members: dict[str, tuple[api.Run, Path]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ens3")
    names = list(MEMBERS)
    return api.ensemble([members[n][1] for n in names], d / "ens", runs=[members[n][0] for n in names]).root


def frames(dataset: Path) -> list[np.ndarray]:
    """The test images, some at other sizes than any member's input (maps are combined at frame size)."""
    imgs = [read_image(p) for p in sorted((dataset / "test").rglob("*.png"))]
    imgs[1] = cv2.resize(imgs[1], (100, 80))
    imgs[2] = cv2.resize(imgs[2], (48, 72))
    return imgs


def det_scores(det: Detector, imgs: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    res = [det.score(im) for im in imgs]  # one at a time: frames differ in size
    return np.array([r.score for r in res]), [r.raw_map for r in res]


# ----------------------------------------------------------------------------- round trips
def test_ensemble_of_one_ranks_images_exactly_like_its_member(members: dict, dataset: Path, tmp_path: Path) -> None:
    run, bundle = members["pc"]
    ens = api.ensemble([bundle], tmp_path / "one", runs=[run])
    imgs = frames(dataset)
    with Detector(bundle) as d:
        s, maps = det_scores(d, imgs)
    with Detector(ens.root) as d:
        z, zmaps = det_scores(d, imgs)
    e = ens.manifest["postprocess"]["members"][0]
    assert np.array_equal(np.argsort(z, kind="stable"), np.argsort(s, kind="stable"))
    np.testing.assert_allclose(z, (s - e["median"]) / (1.4826 * e["mad"]), rtol=1e-9, atol=1e-9)
    for m, zm in zip(maps, zmaps):
        np.testing.assert_allclose(zm, (m - e["median"]) / (1.4826 * e["mad"]), rtol=1e-5, atol=1e-4)


def test_round_trip_scores_equal_the_formula_on_the_members(members: dict, ensemble3: Path, dataset: Path,
                                                            tmp_path: Path) -> None:
    ens = Bundle.load(ensemble3)
    m = ens.manifest
    entries = m["postprocess"]["members"]
    assert [e["method"] for e in entries] == ["patchcore", "recontrast", "patchcore"]
    assert len(ens.members) == 3 and [b.preprocess.size for b in ens.members] == [(64, 64), (64, 64), (96, 96)]
    assert m["preprocess"]["size"] == [96, 96]  # evaluation maps at the largest member input

    # median/MAD recomputed here on the shared held-out images: from the members' own Detectors, except
    # for the patch members, whose shipped bank holds those images (bank_includes_holdout): for them the
    # scores their threshold came from (recorded at export, on the bank without them; that those equal a
    # live Detector on that bank is test_patchcore's) are the normal scores
    runs = [members[n][0] for n in MEMBERS]
    shared = sorted(set.intersection(*({str(Path(p).resolve()) for p in r.holdout} for r in runs)))
    assert sorted(m["training"]["normal"]["images"]) == shared and m["training"]["normal"]["source"] == "runs_holdout"
    normal = [read_image(p) for p in shared]
    normal_scores = []
    for n, e in zip(MEMBERS, entries):
        with Detector(members[n][1]) as d:
            s, _ = det_scores(d, normal)
            cal = d.bundle.manifest["training"]["calibration"]
        assert cal["bank"] == ("without_holdout" if n.startswith("pc") else "shipped"), n
        assert cal["sha256"] == [sha256_file(Path(p)) for p in cal["images"]]
        recorded = dict(zip(cal["images"], cal["scores"]))
        if cal["bank"] == "without_holdout":
            assert np.mean(s) < np.mean([recorded[p] for p in shared]), n  # in the shipped bank: closer
            s = np.array([recorded[p] for p in shared])
        else:
            np.testing.assert_allclose(s, [recorded[p] for p in shared], rtol=1e-6, atol=1e-9)
        v = np.asarray(s, np.float64)
        med = np.median(v)
        mad = np.median(np.abs(v - med))
        assert (e["median"], e["mad"]) == pytest.approx((med, mad), rel=1e-9), n
        normal_scores.append(s)
    z_normal = np.mean([(s - e["median"]) / (1.4826 * e["mad"]) for s, e in zip(normal_scores, entries)], axis=0)
    th = from_normal_robust(z_normal)
    assert m["thresholds"]["threshold"] == pytest.approx(th.threshold, rel=1e-9)
    assert m["thresholds"]["source"] == "normal_robust"

    # the ensemble Detector on frames of several sizes = the formula on the members' Detector outputs
    imgs = frames(dataset)
    per = []
    for n in MEMBERS:
        with Detector(members[n][1]) as d:
            per.append(det_scores(d, imgs))
    want = np.mean([(s - e["median"]) / (1.4826 * e["mad"]) for (s, _), e in zip(per, entries)], axis=0)
    want_maps = [np.mean([(mp[i] - e["median"]) / (1.4826 * e["mad"]) for (_, mp), e in zip(per, entries)], axis=0)
                 for i in range(len(imgs))]
    for source in (ensemble3, pack(ensemble3, tmp_path / "ens.tar")):
        with Detector(source) as d:
            res = [d.score(im) for im in imgs]
        np.testing.assert_allclose([r.score for r in res], want, rtol=1e-9, atol=1e-9)
        for r, wm, im in zip(res, want_maps, imgs):
            assert r.anomaly_map.shape == im.shape[:2]
            np.testing.assert_allclose(r.raw_map, wm, rtol=1e-5, atol=1e-4)
            assert r.is_anomaly == (r.score >= th.threshold)
            assert r.normalized == pytest.approx(float(d.thresholds.normalize(r.score)))
    # a batch scores like single frames
    with Detector(ensemble3) as d:
        batch = d.score_batch([imgs[0], imgs[3], imgs[4]])
    np.testing.assert_allclose([r.score for r in batch], want[[0, 3, 4]], rtol=1e-9, atol=1e-9)


def test_ensemble_runtime_never_imports_torch(ensemble3: Path) -> None:
    code = ("import sys, numpy as np\n"
            "from edgeuad import Detector\n"
            f"d = Detector({str(ensemble3)!r})\n"
            "r = d.score(np.full((70, 90, 3), 90, np.uint8))\n"
            "assert r.anomaly_map.shape == (70, 90)\n"
            "assert 'torch' not in sys.modules, 'the ensemble runtime imported torch'\n"
            "print('ok', r.score)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_info_lists_the_members(ensemble3: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-q", "info", "--bundle", str(ensemble3)]) == 0
    out = capsys.readouterr().out
    assert "method ensemble" in out and "post-processing modified_z" in out
    lines = [ln for ln in out.splitlines() if ln.strip().startswith("member ")]
    assert [ln.split()[1] for ln in lines] == ["m0_patchcore:", "m1_recontrast:", "m2_patchcore:"]
    assert "input 96x96" in lines[2] and "normal images: " in out and "(runs_holdout)" in out


def test_evaluate_an_ensemble(ensemble3: Path, dataset: Path, tmp_path: Path) -> None:
    res = api.evaluate(ensemble3, dataset, tmp_path / "rep", progress=False)
    recs = [json.loads(s) for s in (tmp_path / "rep" / "scores.jsonl").read_text().splitlines()]
    with Detector(ensemble3) as d:
        want = [d.score(read_image(r["path"]), return_map=False).score for r in recs]
    np.testing.assert_allclose([r["score"] for r in recs], want, rtol=1e-9, atol=1e-9)
    assert "p_auroc" in res.metrics and res.metrics["n_images"] == len(recs)


# ----------------------------------------------------------------------------- tampering
def _flip_byte(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def test_tampered_member_is_refused(ensemble3: Path, tmp_path: Path) -> None:
    # a member file changed: its own sha256 list catches it, reported under the member's entry
    a = Path(shutil.copytree(ensemble3, tmp_path / "a"))
    _flip_byte(a / "m1_recontrast" / "model.onnx")
    with pytest.raises(BundleError, match=r"member 1 \(m1_recontrast\).*sha256 mismatch") as e:
        Detector(a)
    assert e.value.field == "postprocess.members[1]"
    # a member manifest rewritten consistently (other threshold, hashes redone): the ensemble's digest catches it
    b = Path(shutil.copytree(ensemble3, tmp_path / "b"))
    mm = json.loads((b / "m0_patchcore" / "manifest.json").read_text())
    mm["thresholds"]["threshold"] = (mm["thresholds"]["threshold"] + mm["thresholds"]["max"]) / 2
    write_manifest(b / "m0_patchcore", mm)
    Bundle.load(b / "m0_patchcore")  # a valid bundle on its own ...
    with pytest.raises(BundleError, match="digest") as e:
        Bundle.load(b)                # ... but not the member the ensemble was calibrated with
    assert e.value.field == "postprocess.members[0].digest"
    # a member missing
    c = Path(shutil.copytree(ensemble3, tmp_path / "c"))
    shutil.rmtree(c / "m2_patchcore")
    with pytest.raises(BundleError, match="not found") as e:
        Bundle.load(c)
    assert e.value.field == "postprocess.members[2]"
    # the ensemble manifest edited (a member's median): any digest pinned by the user refuses it
    d = Path(shutil.copytree(ensemble3, tmp_path / "d"))
    m = json.loads((d / "manifest.json").read_text())
    m["postprocess"]["members"][0]["median"] *= 0.5
    write_manifest(d, m)
    with pytest.raises(BundleError, match="not the expected") as e:
        Detector(d, expected_digest=Bundle.load(ensemble3).digest)
    assert e.value.field == "digest"


def test_archive_with_an_unlisted_member_file_is_refused(ensemble3: Path, tmp_path: Path) -> None:
    import tarfile

    good = pack(ensemble3, tmp_path / "good.tar")
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for ti in src.getmembers():
            dst.addfile(ti, src.extractfile(ti))
        extra = tmp_path / "x.bin"
        extra.write_bytes(b"x")
        dst.add(extra, arcname="m0_patchcore/x.bin")
    with pytest.raises(BundleError, match=r"x\.bin.*not listed"):
        Bundle.load(bad)
    for name in ("a/b/c.bin", "m0_patchcore/../x"):
        evil = tmp_path / "evil.tar"
        with tarfile.open(evil, "w") as dst:
            dst.add(extra, arcname=name)
        with pytest.raises(BundleError, match="refusing"):
            Bundle.load(evil)


def test_members_may_normalise_their_inputs_differently(members: dict, dataset: Path, tmp_path: Path) -> None:
    """A patch member trained with the inception-style normalisation beside a ReContrast member with
    ImageNet's (the defaults on a dataset where input_norm=auto picks inception): each member normalises
    the frame its own way, so the ensemble scores as the formula on the members' own Detectors."""
    from edgeuad.preprocess import INPUT_NORMS

    run = api.train("patchcore", dataset, tmp_path / "pc_in", {**MEMBERS["pc"][1], "input_norm": "inception"},
                    holdout_fraction=0.25, progress=False)
    pc_in = api.export(run, tmp_path / "pc_in_bundle").root
    rc_run, rc = members["rc"]
    assert Bundle.load(pc_in).preprocess.mean == INPUT_NORMS["inception"][0] != Bundle.load(rc).preprocess.mean
    ens = api.ensemble([pc_in, rc], tmp_path / "ens", runs=[run, rc_run])
    entries = ens.manifest["postprocess"]["members"]
    imgs = frames(dataset)
    per = []
    for b in (pc_in, rc):
        with Detector(b) as d:
            per.append(det_scores(d, imgs)[0])
    want = np.mean([(s - e["median"]) / (1.4826 * e["mad"]) for s, e in zip(per, entries)], axis=0)
    with Detector(ens.root) as d:
        got = np.array([d.score(im).score for im in imgs])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # the ensemble's own preprocess names the size maps meet masks at, and the first member's mean/std
    assert ens.manifest["preprocess"]["mean"] == list(INPUT_NORMS["inception"][0])
    names = [m["member"] for m in ens.manifest["training"]["validation"]["members"]]
    assert names[0].endswith("/inception") and names[1] == f"recontrast:{rc_run.config['backbone']}"


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_get_typed_errors(members: dict, ensemble3: Path, dataset: Path, tmp_path: Path) -> None:
    run, bundle = members["pc"]
    rc_run, rc_bundle = members["rc"]
    out = tmp_path / "out"
    with pytest.raises(EnsembleError, match="at least one member"):
        api.ensemble([], out, runs=[run])
    with pytest.raises(EnsembleError, match="do not nest"):
        api.ensemble([bundle, ensemble3], out, runs=[run])
    with pytest.raises(EnsembleError, match="exactly one of"):
        api.ensemble([bundle], out)
    with pytest.raises(EnsembleError, match="exactly one of"):
        api.ensemble([bundle], out, normal_images=dataset / "train" / "good", runs=[run])
    # empty normal sets: an empty folder, no list, runs that share no held-out image
    (tmp_path / "empty").mkdir()
    with pytest.raises(EnsembleError, match="no image"):
        api.ensemble([bundle], out, normal_images=tmp_path / "empty")
    with pytest.raises(EnsembleError, match="empty"):
        api.ensemble([bundle], out, normal_images=[])
    disjoint = dataclasses.replace(rc_run, holdout=[p for p in rc_run.holdout if p not in set(run.holdout)][:1]
                                   or [str(tmp_path / "elsewhere.png")])
    with pytest.raises(EnsembleError, match="share no"):
        api.ensemble([bundle, rc_bundle], out, runs=[run, disjoint])
    with pytest.raises(EnsembleError, match="at least 2"):
        api.ensemble([bundle], out, normal_images=[run.holdout[0]])
    # a member with provisional thresholds or a missing one: the bundle's own typed error
    with pytest.raises(BundleError, match="not found"):
        api.ensemble([bundle, tmp_path / "nope"], out, runs=[run])
    assert not out.exists()  # nothing was written by any of these


def test_failed_build_keeps_the_previous_ensemble(members: dict, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run, bundle = members["pc"]
    out = tmp_path / "lines" / "ens"
    api.ensemble([bundle], out, runs=[run])
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def fail(*_a: object, **_k: object) -> None:
        raise RuntimeError("power cut while fitting the threshold")

    monkeypatch.setattr(ensemble_build, "from_normal_robust", fail)
    with pytest.raises(RuntimeError, match="power cut"):
        api.ensemble([bundle, members["rc"][1]], out, runs=[run, members["rc"][0]])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.parent.iterdir()] == ["ens"]
    monkeypatch.undo()
    api.ensemble([bundle, members["rc"][1]], out, runs=[run, members["rc"][0]])  # replaces it whole
    assert sorted(p.name for p in out.iterdir()) == ["m0_patchcore", "m1_recontrast", "manifest.json"]


def test_explicit_normal_folder_is_recorded(members: dict, tmp_path: Path) -> None:
    run, bundle = members["pc"]
    folder = tmp_path / "held"
    folder.mkdir()
    for p in run.holdout:
        shutil.copyfile(p, folder / Path(p).name)
    ens = api.ensemble([bundle], tmp_path / "e", normal_images=folder)
    normal = ens.manifest["training"]["normal"]
    assert normal["source"] == "user_heldout" and normal["dir"] == str(folder.resolve())
    assert normal["n_images"] == len(run.holdout)
    # the same images as the run's holdout: the same statistics
    via_runs = api.ensemble([bundle], tmp_path / "r", runs=[run])
    assert ens.manifest["postprocess"]["members"][0]["median"] == \
        pytest.approx(via_runs.manifest["postprocess"]["members"][0]["median"], rel=1e-12)
    # a member given as an archive is copied in as the same bundle
    via_tar = api.ensemble([pack(bundle, tmp_path / "pc.tar")], tmp_path / "t", runs=[run])
    assert via_tar.manifest["postprocess"]["members"] == via_runs.manifest["postprocess"]["members"]


# ----------------------------------------------------------------------------- schema
def ensemble_manifest() -> dict[str, Any]:
    e = {"dir": "m0_patchcore", "digest": "ab" * 32, "method": "patchcore", "backbone": "efficientnet_lite0",
         "median": 0.5, "mad": 0.1, "n_normal": 20}
    return {"schema_version": 1, "format": "edgeuad-bundle", "method": "ensemble", "backbone": "efficientnet_lite0",
            "preprocess": {"size": [64, 64], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "postprocess": {"kind": "modified_z", "members": [e, dict(e, dir="m1_recontrast", method="recontrast")]},
            "thresholds": {"threshold": 2.3, "min": -3.0, "max": 6.0, "source": "normal_robust", "fpr": 0.01},
            "training": {"normal": {"source": "runs_holdout"}}, "files": {}}


@pytest.mark.parametrize("edit,field", [
    (lambda m: m["postprocess"].update(members=[]), "postprocess.members"),
    (lambda m: m["postprocess"].update(kind="nn_l2"), "postprocess.kind"),
    (lambda m: m["postprocess"]["members"][0].update(mad=0.0), "postprocess.members[0].mad"),
    (lambda m: m["postprocess"]["members"][0].update(mad=float("nan")), "postprocess.members[0].mad"),
    (lambda m: m["postprocess"]["members"][1].update(median="1"), "postprocess.members[1].median"),
    (lambda m: m["postprocess"]["members"][0].update(dir="../x"), "postprocess.members[0].dir"),
    (lambda m: m["postprocess"]["members"][1].update(dir="m0_patchcore"), "postprocess.members[1].dir"),
    (lambda m: m["postprocess"]["members"][0].update(method="ensemble"), "postprocess.members[0].method"),
    (lambda m: m["postprocess"]["members"][0].update(digest="AB" * 32), "postprocess.members[0].digest"),
    (lambda m: m["postprocess"]["members"][0].update(n_normal=1), "postprocess.members[0].n_normal"),
    (lambda m: m["postprocess"]["members"][0].update(weight=2.0), "postprocess.members[0].weight"),
    (lambda m: m["postprocess"]["members"][0].pop("digest"), "postprocess.members[0].digest"),
    (lambda m: m.update(model={"onnx": "model.onnx", "input": "image", "outputs": ["e"]}), "model"),
    (lambda m: m.update(engines=[]), "engines"),
    (lambda m: m["preprocess"].update(size=[64]), "preprocess.size"),
    (lambda m: m["thresholds"].update(max=-3.0), "thresholds.max"),
])
def test_ensemble_manifest_fields_are_validated(edit: Any, field: str) -> None:
    m = ensemble_manifest()
    validate_manifest(copy.deepcopy(m))
    edit(m)
    with pytest.raises(BundleError) as e:
        validate_manifest(m)
    assert e.value.field == field, str(e.value)


# ----------------------------------------------------------------------------- CLI and README
def test_cli_flags_reach_api_ensemble(monkeypatch: pytest.MonkeyPatch, ensemble3: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}

    def fake(bundles: list[str], out: str, normal_images: Any = None, **kw: Any) -> Bundle:
        seen.update(bundles=bundles, out=out, normal_images=normal_images, **kw)
        return Bundle.load(ensemble3)

    monkeypatch.setattr(api, "ensemble", fake)
    assert cli.main(["-q", "ensemble", "--bundles", "a", "b", "--normal", "held", "--out", "o", "--fpr", "0.05",
                     "--backend", "torch", "--threads", "3"]) == 0
    assert seen == {"bundles": ["a", "b"], "out": "o", "normal_images": "held", "runs": None, "fpr": 0.05,
                    "backend": "torch", "threads": 3, "check": True}
    assert cli.main(["-q", "ensemble", "--bundles", "a", "--runs", "r1", "r2", "--out", "o", "--no-check"]) == 0
    assert seen["runs"] == ["r1", "r2"] and seen["normal_images"] is None and seen["fpr"] == 0.01
    assert seen["check"] is False
    out = capsys.readouterr().out
    assert "members: 3" in out and "digest: " in out
    val = Bundle.load(ensemble3).manifest["training"]["validation"]  # built with --runs: the check's line
    assert (f"ensemble {val['ensemble']['i_auroc']:.4f}, best member {val['best_member']}" in out
            and f"({val['gain_i_auroc']:+.4f})" in out)
    with pytest.raises(SystemExit):  # --runs and --normal exclude each other; one is required
        cli.main(["ensemble", "--bundles", "a", "--out", "o"])
    with pytest.raises(SystemExit):
        cli.main(["ensemble", "--bundles", "a", "--runs", "r", "--normal", "n", "--out", "o"])


def test_ensemble_records_its_check_against_the_members(members: dict, ensemble3: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """api.ensemble with the members' runs scores each member alone and the combination on the runs'
    synthetic-defect split (ensemble_check) and records it; a member without a bank is scored as shipped,
    so its number is the AUROC of its own Detector scores on that split."""
    from edgeuad.metrics import auroc
    from edgeuad.selection import load_validation_set

    names = list(MEMBERS)
    runs = [members[n][0] for n in names]
    val = Bundle.load(ensemble3).manifest["training"]["validation"]
    holdout = api.holdout_intersection(runs)
    assert val["held_out_normals"] == len(holdout) and val["images"] == 3 * len(holdout)
    assert [m["member"] for m in val["members"]] == [f"{r.method}:{r.config['backbone']}" for r in runs]
    best = max(val["members"], key=lambda m: m["i_auroc"])
    assert val["best_member"] == best["member"]
    assert val["gain_i_auroc"] == pytest.approx(val["ensemble"]["i_auroc"] - best["i_auroc"], abs=2e-4)
    size = max(r.preprocess.size[0] for r in runs)  # the split is made at the largest member input
    vs = load_validation_set(holdout, size, seed=0)
    with Detector(members["rc"][1], backend="onnxruntime", threads=1) as det:
        rc = np.array([det.score(im).score for im in vs.images])
    assert val["members"][names.index("rc")]["i_auroc"] == pytest.approx(auroc(vs.labels, rc), abs=1e-4)
    # opting out, and runs that are not the bundles' own (here: in another order), record nothing
    off = api.ensemble([members[n][1] for n in names], tmp_path / "off", runs=runs, check=False)
    assert "validation" not in off.manifest["training"]
    with caplog.at_level("WARNING"):
        other = api.ensemble([members[n][1] for n in names], tmp_path / "other", runs=runs[::-1])
    assert "validation" not in other.manifest["training"] and "not checked" in caplog.text
    assert other.thresholds == off.thresholds  # the check never changes the bundle


def test_cli_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["ensemble", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.01)" in text and "(default: onnxruntime)" in text and "(default: 0)" in text


def test_cli_reports_bad_input_without_a_traceback(members: dict, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    rc = cli.main(["ensemble", "--bundles", str(members["pc"][1]), "--normal", str(tmp_path / "empty"),
                   "--out", str(tmp_path / "o")])
    assert rc == 2 and "EnsembleError" in caplog.text


def readme_ensemble_command() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### Ensembles\n", 1)[1].split("\n#", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    (cmd,) = [ln.strip() for ln in block.splitlines() if ln.strip()]
    return cmd


def test_readme_ensemble_command_runs_as_written(members: dict, dataset: Path, tmp_path: Path) -> None:
    cmd = shlex.split(readme_ensemble_command())
    assert cmd[:2] == ["edgeuad", "ensemble"]
    # put the tiny runs and bundles where the command names them (relative to the working directory)
    args = {"--bundles": [], "--runs": []}
    key = None
    for tok in cmd[2:]:
        key = tok if tok.startswith("--") else key
        if not tok.startswith("--") and key in args:
            args[key].append(tok)
    assert len(args["--bundles"]) == len(args["--runs"]) == 2
    for (run, bundle), b, r in zip([members["pc"], members["rc"]], args["--bundles"], args["--runs"]):
        for src, dst in ((bundle, b), (run.root, r)):
            (tmp_path / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, tmp_path / dst)
    env = {"PYTHONPATH": str(ROOT / "python"), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "edgeuad.cli", *cmd[1:]], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    out_dir = tmp_path / cmd[cmd.index("--out") + 1]
    archive = tmp_path / cmd[cmd.index("--archive") + 1]
    assert f"archive: {archive.relative_to(tmp_path)}" in p.stdout
    a, b = Bundle.load(out_dir), Bundle.load(archive)
    assert a.digest == b.digest and [m.method for m in a.members] == ["patchcore", "recontrast"]
    assert a.manifest["training"]["normal"]["source"] == "runs_holdout"


def test_benchmark_script_builds_and_evaluates_an_ensemble_of_finished_runs(members: dict, dataset: Path,
                                                                            tmp_path: Path) -> None:
    work = tmp_path / "work"
    for name, method in (("pc", "patchcore"), ("rc", "recontrast")):  # compare_methods.py's work-dir layout
        run, bundle = members[name]
        shutil.copytree(run.root, work / dataset.name / method / "run")
        shutil.copytree(bundle, work / dataset.name / method / "bundle")
    env = {"PYTHONPATH": str(ROOT / "python"), "PATH": "/usr/bin:/bin"}
    script = [sys.executable, str(ROOT / "benchmarks" / "ensemble_methods.py"), "--data", str(dataset),
              "--work", str(work), "--out", str(tmp_path / "results"), "--threads", "1"]
    p = subprocess.run(script + ["--methods", "patchcore", "recontrast"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads((tmp_path / "results" / f"{dataset.name}_ensemble.json").read_text())
    # compare_methods.py's row format (its table() renders it) plus the members
    assert {"dataset", "method", "overrides", "metrics", "train_seconds", "total_seconds", "latency_ms_per_frame",
            "eval_threads", "n_train", "bundle", "threshold", "machine", "commit", "date"} <= set(r)
    assert r["method"] == "ensemble" and r["overrides"]["members"] == "patchcore+recontrast"
    assert f"| {dataset.name} | ensemble | {r['metrics']['i_auroc']:.4f} |" in p.stdout
    ens = Bundle.load(r["bundle"])
    assert [e["digest"] for e in ens.manifest["postprocess"]["members"]] == [m["digest"] for m in r["members"]]
    assert ens.manifest["training"]["normal"]["source"] == "runs_holdout"
    again = api.evaluate(r["bundle"], dataset, None, threads=1, progress=False)
    assert again.metrics == pytest.approx(r["metrics"])
    # members that compare_methods.py has not finished: a clear message, nothing written
    p = subprocess.run(script + ["--methods", "reconpatch", "--suffix", "_x"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode != 0 and "run compare_methods.py" in p.stderr
    assert not (tmp_path / "results" / f"{dataset.name}_ensemble_x.json").exists()


def test_validation_script_scores_members_unseen_and_combines_them_as_the_runtime(members: dict, dataset: Path,
                                                                                  tmp_path: Path) -> None:
    """benchmarks/ensemble_validation.py: each member alone and every combination on the runs'
    synthetic-defect split; the patch member is scored with its bank *without* the held-out images
    (scores above those of the shipped bank, which holds them), and the pair's I-AUROC is the one of
    the runtime's combination of the recorded member scores."""
    from edgeuad.metrics import auroc
    from edgeuad.selection import load_validation_set

    work = tmp_path / "work"
    for name, method in (("pc", "patchcore"), ("rc", "recontrast")):
        run, bundle = members[name]
        shutil.copytree(run.root, work / dataset.name / method / "run")
        shutil.copytree(bundle, work / dataset.name / method / "bundle")
    env = {"PYTHONPATH": str(ROOT / "python"), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ensemble_validation.py"), "--data", str(dataset),
                        "--work", str(work), "--out", str(tmp_path / "results"), "--threads", "1"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads((tmp_path / "results" / f"{dataset.name}_ensemble_validation.json").read_text())
    pc_run, pc_bundle = members["pc"]
    holdout = api.holdout_intersection([pc_run, members["rc"][0]])
    assert r["held_out_normals"] == len(holdout) > 0 and r["n_images"] == 3 * len(holdout)
    names = [f"patchcore:{pc_run.config['backbone']}", f"recontrast:{members['rc'][0].config['backbone']}"]
    assert [row["members"] for row in r["rows"]] == [[names[0]], [names[1]], names]
    labels = np.array(r["labels"])
    good = labels == 0
    assert r["images"][0].endswith("_good") and good.sum() == len(holdout)
    # the shipped bank holds the held-out normals: there they score lower than in the bank without them
    vs = load_validation_set(holdout, pc_run.preprocess.size[0], seed=int(pc_run.config["seed"]))
    with Detector(pc_bundle, backend="onnxruntime", threads=1) as det:
        shipped = np.array([det.score(im).score for im, g in zip(vs.images, good) if g])
    unseen = np.array(r["scores"][names[0]])[good]
    assert np.all(unseen > shipped)
    # the combination: mean of modified z with each member's median/MAD over the normal images
    z = []
    for n in names:
        s = np.array(r["scores"][n])
        z.append(modified_z(s, *median_mad(s[good])))
    pair = auroc(labels, np.mean(z, axis=0))
    assert r["rows"][2]["i_auroc"] == pytest.approx(pair, abs=1e-4)
    assert r["ensemble_gain_i_auroc"] == pytest.approx(r["rows"][2]["i_auroc"]
                                                       - max(r["rows"][0]["i_auroc"], r["rows"][1]["i_auroc"]), abs=2e-4)


def test_check_refuses_a_bank_for_a_bundle_without_one(members: dict, tmp_path: Path) -> None:
    from edgeuad.ensemble_check import unseen_bundle

    rc_bundle = members["rc"][1]
    assert unseen_bundle(rc_bundle, None, tmp_path) == rc_bundle  # no bank given: scored as shipped
    with pytest.raises(ValueError, match="has no bank"):
        unseen_bundle(rc_bundle, np.zeros((4, 8), np.float32), tmp_path)
