"""Fuzz: manifests.  Valid manifests mutated at a random place (replaced by any JSON value, deleted,
or joined by an unknown key), and arbitrary bytes as manifest.json.

Properties: validation raises BundleError naming a field, or accepts; and whatever it accepts is
usable: every runtime consumer of the manifest (preprocessing, thresholds, map parameters) takes
it without error.  A schema that lets a bad value through fails here, not at the first frame.
"""
from __future__ import annotations

import copy
import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from _fuzz import accepted, budget, count
from edgeuad.bundle import BundleError, parse_manifest
from edgeuad.manifest_schema import validate_manifest
from edgeuad.preprocess import PreprocessConfig
from edgeuad.runtime.maps import check_map_params
from edgeuad.thresholds import Thresholds

H = "ab" * 32


def valid_manifests() -> list[dict[str, Any]]:
    common = {"schema_version": 1, "format": "edgeuad-bundle", "edgeuad_version": "0.1.0",
              "backbone": "efficientnet_lite0",
              "preprocess": {"size": [64, 64], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                             "interpolation": "area_or_linear"},
              "thresholds": {"threshold": 0.7, "min": 0.1, "max": 1.3, "source": "normal_quantile",
                             "quantile": 0.99, "n_normal": 5, "n_anomalous": 0, "pixel_threshold": None},
              "training": {"n_train": 8}}
    rc = {**common, "method": "recontrast",
          "model": {"onnx": "model.onnx", "input": "image", "outputs": ["enc_a", "dec_a", "enc_b", "dec_b"],
                    "opset": 17, "weights": "weights.safetensors", "config": {}, "parity": {}},
          "postprocess": {"kind": "cos_pairs", "pairs": [["enc_a", "dec_a"], ["enc_b", "dec_b"]],
                          "weights": [1.0, 0.5], "align_corners": True, "sigma": 4.0, "score": "topk_mean",
                          "topk_frac": 0.01},
          "files": {"model.onnx": H, "weights.safetensors": H}}
    pc = {**common, "method": "patchcore",
          "model": {"onnx": "model.onnx", "input": "image", "outputs": ["embeddings"], "opset": 17},
          "postprocess": {"kind": "nn_l2", "embedding": "embeddings", "grid": [8, 8], "bank": "bank.euab",
                          "reweight_b": 9, "align_corners": False, "sigma": 0.0, "score": "max", "topk_frac": 0.0},
          "files": {"model.onnx": H, "bank.euab": H, "model.int8.onnx": H},
          "engines": {"fp16": "model.onnx", "int8": "model.int8.onnx"}}
    legacy = {**pc, "files": {**pc["files"], "model.fp16.engine": H}, "engines": ["model.fp16.engine"],
              "thresholds": {"threshold": 0.7, "min": 0.1, "max": 1.3, "source": "normal_robust", "fpr": 0.01,
                             "n_normal": 5}}
    member = {"dir": "m0_patchcore", "digest": H, "method": "patchcore", "backbone": "efficientnet_lite0",
              "median": 0.4, "mad": 0.05, "n_normal": 20}
    ens = {**common, "method": "ensemble",
           "postprocess": {"kind": "modified_z",
                           "members": [member, dict(member, dir="m1_recontrast", method="recontrast", median=6.2)]},
           "files": {}}
    return [rc, pc, legacy, ens]


VALID = valid_manifests()

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(10 ** 400), 10 ** 400),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
              st.sampled_from(["max", "topk_mean", "median", "cos_pairs", "nn_l2", "provisional", "model.onnx",
                               "ensemble", "modified_z", "m0_patchcore",
                               "enc_a", "embeddings", "bank.euab", "../x", "manifest.json", H, ""])),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=8)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, prefix + (i,))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    m = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(m)))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add_key", "numeric_nudge"]))
        if not where:
            if op == "replace":
                return draw(JSON)
            continue
        parent = m
        for k in where[:-1]:
            parent = parent[k]
        key = where[-1]
        if op == "replace":
            parent[key] = draw(JSON)
        elif op == "delete":
            del parent[key]
        elif op == "add_key" and isinstance(parent[key], dict):
            parent[key][draw(st.text(min_size=1, max_size=6))] = draw(JSON)
        elif op == "numeric_nudge" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            try:
                parent[key] = parent[key] * draw(st.sampled_from([-1, 0, 2, 1e3, 1e9])) + draw(st.sampled_from([0, 1, -1]))
            except OverflowError:  # an earlier mutation put a huge integer here: times a float factor overflows
                pass
    return m


def usable(m: dict[str, Any]) -> None:
    """Everything the runtime reads from an accepted manifest must work."""
    pre = PreprocessConfig.from_dict(m["preprocess"])
    th = Thresholds.from_dict(m["thresholds"])
    assert math.isfinite(float(th.normalize(th.threshold)))
    post = m["postprocess"]
    if m["method"] == "ensemble":  # the members' own manifests hold the map parameters
        assert 1 <= len(post["members"]) and len({e["dir"] for e in post["members"]}) == len(post["members"])
        for e in post["members"]:
            assert e["method"] in ("recontrast", "patchcore", "reconpatch") and len(e["digest"]) == 64
            assert math.isfinite((0.0 - e["median"]) / (1.4826 * e["mad"]))  # a zero score's modified z
        return
    check_map_params(pre.size, post["sigma"], post["topk_frac"])
    assert post["score"] in ("max", "topk_mean")
    outs = set(m["model"]["outputs"])
    if post["kind"] == "cos_pairs":
        assert all(a in outs and b in outs for a, b in post["pairs"])
        assert post.get("weights") is None or len(post["weights"]) == len(post["pairs"])
    else:
        assert post["embedding"] in outs and post["bank"] in m["files"]
        assert post["reweight_b"] == 0 or post["reweight_b"] >= 2
    assert m["model"]["onnx"] in m["files"]


def test_seed_manifests_are_valid() -> None:
    for m in VALID:
        usable(validate_manifest(copy.deepcopy(m)))


@budget(2500)
@given(mutated())
def test_mutated_manifest_is_refused_by_field_or_usable(m: Any) -> None:
    count("manifest.mutated")
    try:
        validate_manifest(m)
    except BundleError as e:
        if isinstance(m, dict):
            assert e.field, f"error names no field: {e}"
            assert repr(e.field) in str(e)
        return
    accepted("manifest.mutated")
    usable(m)
    # and what was accepted survives the JSON round trip the bundle file is
    usable(parse_manifest(json.dumps(m).encode()))


@budget(1000)
@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda m: json.dumps(m).encode(), mutated()),
                 st.builds(lambda m, cut: json.dumps(m).encode()[:cut], mutated(), st.integers(0, 400)),
                 st.builds(lambda m, a, b: json.dumps(m).replace(a, b, 1).encode("utf-8", "surrogatepass"),
                           st.sampled_from(VALID),
                           st.sampled_from(['"method"', '"sigma"', ": 0.7", "[64, 64]", "true", '"files"']),
                           st.sampled_from(['"method": "x", "method"', "NaN", ": Infinity", "[64, 64, 64]", "1",
                                            '"files": {}, "files"', "\udcff"]))))
def test_manifest_bytes_parse_or_bundle_error(data: bytes) -> None:
    count("manifest.bytes")
    try:
        m = parse_manifest(data)
    except BundleError:
        return
    accepted("manifest.bytes")
    usable(m)
