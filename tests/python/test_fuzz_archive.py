"""Fuzz: bundle archives.  Tars built from random members (bundle files, random bytes, traversal and
absolute names, aliases like "./manifest.json", duplicates, directories, links, devices, FIFOs),
then optionally damaged (truncated, bytes flipped), plus arbitrary bytes as a ".tar".

Property: `Bundle.load` raises BundleError, or returns a bundle whose every file is inside its own
extraction directory and matches the manifest's sha256 (so it is the bundle that was packed).
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _fuzz import accepted, budget, count
from edgeuad.bundle import Bundle, BundleError, pack, sha256_file, write_manifest
from edgeuad.preprocess import PreprocessConfig


class Seed:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        (root / "model.onnx").write_bytes(b"onnx" * 50)
        (root / "weights.safetensors").write_bytes(b"w" * 300)
        write_manifest(root, {
            "method": "recontrast", "backbone": "efficientnet_lite0", "preprocess": PreprocessConfig().to_dict(),
            "model": {"onnx": "model.onnx", "input": "image", "outputs": ["e", "d"], "weights": "weights.safetensors"},
            "postprocess": {"kind": "cos_pairs", "pairs": [["e", "d"]], "align_corners": True, "sigma": 4.0,
                            "score": "max", "topk_frac": 0.01},
            "thresholds": {"threshold": 1.0, "min": 0.0, "max": 2.0, "source": "normal_quantile"},
            "files": {"model.onnx": "", "weights.safetensors": ""}})
        self.root = root
        self.files = {p.name: p.read_bytes() for p in root.iterdir()}
        self.good_tar = pack(root, root.parent / "good.tar").read_bytes()
        self.case = root.parent / "case.tar"

    def __repr__(self) -> str:
        return "Seed(bundle + good.tar)"


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed(tmp_path_factory.mktemp("fuzz_tar") / "bundle")


NAMES = st.sampled_from(["manifest.json", "model.onnx", "weights.safetensors", "./manifest.json", "manifest.json/",
                         "../manifest.json", "/tmp/x", "a/b", "extra.bin", "..", ".", "x" * 120, "é.bin",
                         "model.onnx\\..\\x"])
TYPES = st.sampled_from([tarfile.REGTYPE] * 6 + [tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                                                 tarfile.FIFOTYPE, tarfile.CONTTYPE])
MEMBER = st.tuples(NAMES, TYPES, st.one_of(st.none(), st.binary(max_size=64)),
                   st.sampled_from(["/etc/passwd", "manifest.json", "../x"]))


def build_tar(seed: Seed, members: list, fmt: int) -> bytes:
    try:
        return _build_tar(seed, members, fmt)
    except ValueError:  # a name too long for ustar: the pax format takes any name
        return _build_tar(seed, members, tarfile.PAX_FORMAT)


def _build_tar(seed: Seed, members: list, fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, typ, data, link in members:
            body = seed.files.get(name.strip("./"), b"") if data is None else data
            ti = tarfile.TarInfo(name)
            ti.type = typ
            if typ in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                ti.linkname = link
            if typ in (tarfile.REGTYPE, tarfile.CONTTYPE):
                ti.size = len(body)
                tf.addfile(ti, io.BytesIO(body))
            else:
                tf.addfile(ti)
    return buf.getvalue()


@st.composite
def archives(draw: st.DrawFn, seed: Seed) -> bytes:
    kind = draw(st.sampled_from(["built", "built", "good_damaged", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    if kind == "built":
        base = [("manifest.json", tarfile.REGTYPE, None, ""), ("model.onnx", tarfile.REGTYPE, None, ""),
                ("weights.safetensors", tarfile.REGTYPE, None, "")]
        members = draw(st.lists(st.sampled_from(base), max_size=3)) + draw(st.lists(MEMBER, max_size=3))
        members = draw(st.permutations(members))
        data = build_tar(seed, members, draw(st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT,
                                                              tarfile.PAX_FORMAT])))
    else:
        data = seed.good_tar
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "zero_block"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif damage == "flip":
        b = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= draw(st.integers(1, 255))
        data = bytes(b)
    elif damage == "zero_block":
        i = 512 * draw(st.integers(0, max(0, len(data) // 512 - 1)))
        data = data[:i] + b"\0" * 512 + data[i + 512:]
    return data


@budget(1800)
@given(st.data())
def test_archive_loads_verified_or_bundle_error(seed: Seed, data: st.DataObject) -> None:
    count("archive")
    seed.case.write_bytes(data.draw(archives(seed)))
    try:
        b = Bundle.load(seed.case)
    except BundleError:
        return
    accepted("archive")
    root = b.root.resolve()
    assert root != seed.root.resolve()
    for name, digest in b.manifest["files"].items():
        p = (b.root / name).resolve()
        assert p.parent == root and sha256_file(p) == digest
    # nothing outside the listed files (and the manifest) was written
    assert {p.name for p in root.iterdir()} <= {*b.manifest["files"], "manifest.json"}
    assert not any(Path(x).exists() for x in ("/tmp/x", str(seed.case.parent / "x")))


def test_the_good_archive_loads(seed: Seed) -> None:
    seed.case.write_bytes(seed.good_tar)
    assert Bundle.load(seed.case).digest == Bundle.load(seed.root).digest
