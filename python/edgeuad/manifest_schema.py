"""The bundle manifest schema, checked field by field when a bundle is loaded.

A manifest that parses is not yet a manifest that works: an edited threshold, a `score` the
runtime does not know ("median" used to mean top-k), a `grid` that fails only at the first frame,
a `null` threshold that raised a raw TypeError.  `validate_manifest` checks every field's type,
range and enum and the fields against each other, and raises `BundleError` naming the field
(`err.field`, e.g. "postprocess.sigma").  `check_against_graph` and `check_against_bank` then
cross-check the manifest against what the Detector actually loaded (the ONNX graph's inputs and
outputs, the bank's dimension and size).

Unknown keys are errors too: a field this version does not understand may change what the bundle
means, so it is refused rather than ignored.  A new field is added here (and to docs/architecture.md)
together with the code that reads it.  Dependency-free (no numpy, no torch).
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import PurePosixPath
from typing import Any, Mapping, Optional, Sequence

from . import limits

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FORMAT = "edgeuad-bundle"
MANIFEST = "manifest.json"
ENSEMBLE = "ensemble"
MEMBER_METHODS = ("recontrast", "patchcore", "reconpatch")   # what an ensemble may hold: no nesting
METHODS = (*MEMBER_METHODS, ENSEMBLE)
KINDS = {"recontrast": "cos_pairs", "patchcore": "nn_l2", "reconpatch": "nn_l2", ENSEMBLE: "modified_z"}
SCORES = ("max", "topk_mean")
INTERPOLATIONS = ("area_or_linear",)
THRESHOLD_SOURCES = ("normal_robust", "normal_quantile", "f1_optimal", "provisional")
ENGINE_PRECISIONS = ("fp16", "int8")
PROVISIONAL = "provisional"

_REQUIRED = ("schema_version", "format", "method", "backbone", "preprocess", "model", "postprocess",
             "thresholds", "files")
_OPTIONAL = ("edgeuad_version", "training", "engines", "quantization")
# An ensemble has no network of its own: its members (sub-directories, each a whole bundle) do.
_ENSEMBLE_REQUIRED = ("schema_version", "format", "method", "backbone", "preprocess", "postprocess",
                      "thresholds", "files")
_ENSEMBLE_OPTIONAL = ("edgeuad_version", "training")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BundleError(ValueError):
    """A bundle is missing, malformed, from an unsupported schema, or fails its hash check.

    `field` names the manifest field at fault ("" when the problem is not one field)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class _Checker:
    """Type/range helpers that raise BundleError with the field path and the manifest's location."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, problem: str) -> BundleError:
        return BundleError(f"{self.where}: field {field!r} {problem}", field=field)

    def obj(self, v: Any, field: str, required: Sequence[str], optional: Sequence[str] = ()) -> Mapping[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(field, f"must be a JSON object, got {_kind(v)}")
        missing = [k for k in required if k not in v]
        if missing:
            raise self.fail(_join(field, missing[0]), f"is missing (required in {field or 'the manifest'})")
        unknown = sorted(str(k) for k in v if k not in required and k not in optional)
        if unknown:
            raise self.fail(_join(field, unknown[0]), "is not a known field (this edgeuad version would ignore "
                                                      "it; upgrade edgeuad or remove it)")
        return v

    def integer(self, v: Any, field: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(field, f"must be an integer in [{lo}, {hi}], got {_kind(v)} {_show(v)}")
        if not lo <= v <= hi:
            raise self.fail(field, f"must be in [{lo}, {hi}], got {_show(v)}")
        return v

    def number(self, v: Any, field: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(field, f"must be a number, got {_kind(v)} {_show(v)}")
        if isinstance(v, int) and abs(v) >= 2 ** 1023:  # float(v) would raise OverflowError
            raise self.fail(field, f"must be finite, got an integer of {v.bit_length()} bits")
        x = float(v)
        if not math.isfinite(x):
            raise self.fail(field, f"must be finite, got {_show(v)}")
        if not lo <= x <= hi:
            raise self.fail(field, f"must be in [{lo:g}, {hi:g}], got {_show(v)}")
        return x

    def string(self, v: Any, field: str, choices: Optional[Sequence[str]] = None) -> str:
        if not isinstance(v, str) or not v:
            raise self.fail(field, f"must be a non-empty string, got {_kind(v)} {_show(v)}")
        if choices is not None and v not in choices:
            raise self.fail(field, f"must be one of {', '.join(map(repr, choices))}, got {_show(v)}")
        return v

    def boolean(self, v: Any, field: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(field, f"must be true or false, got {_kind(v)} {_show(v)}")
        return v

    def array(self, v: Any, field: str, lo: int, hi: int) -> list:
        if not isinstance(v, list):
            raise self.fail(field, f"must be a JSON array, got {_kind(v)} {_show(v)}")
        if not lo <= len(v) <= hi:
            raise self.fail(field, f"must have {lo if lo == hi else f'{lo} to {hi}'} entries, got {len(v)}")
        return v


def _join(base: str, key: Any) -> str:
    return f"{base}.{key}" if base else str(key)


def _kind(v: Any) -> str:
    return {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _show(v: Any, limit: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit] + "..."


def file_name_ok(name: str) -> bool:
    """Bundle files are plain top-level names (what archives may hold, see bundle._safe_extract)."""
    p = PurePosixPath(name)
    # str(p) == name: no normalisation may happen ("./x", "x/" would alias "x")
    return (bool(name) and str(p) == name and "\\" not in name and "\x00" not in name and len(p.parts) == 1
            and name not in (".", "..", MANIFEST) and not p.is_absolute())


# ----------------------------------------------------------------------------- the schema
def validate_manifest(m: Any, where: str = MANIFEST) -> dict[str, Any]:
    """Check a parsed manifest; returns it unchanged.  Raises BundleError naming the field."""
    c = _Checker(where)
    if not isinstance(m, dict):
        raise BundleError(f"{where}: the manifest must be a JSON object, got {_kind(m)}")
    # format and version first: a newer bundle's unknown fields must read as "upgrade edgeuad"
    if "format" in m and m["format"] != FORMAT:
        raise c.fail("format", f"{_show(m['format'])} is not {FORMAT!r}")
    sv = m.get("schema_version", 1)
    if isinstance(sv, bool) or not isinstance(sv, int) or not 1 <= sv <= SCHEMA_VERSION:
        raise c.fail("schema_version", f"{_show(sv)} is not supported by this edgeuad (supports 1..{SCHEMA_VERSION}); "
                                       "upgrade edgeuad or re-export the bundle")
    ensemble = m.get("method") == ENSEMBLE
    c.obj(m, "", *((_ENSEMBLE_REQUIRED, _ENSEMBLE_OPTIONAL) if ensemble else (_REQUIRED, _OPTIONAL)))
    if not isinstance(m["method"], str) or m["method"] not in METHODS:
        raise c.fail("method", f"names an unknown method {_show(m['method'])} (known: {', '.join(METHODS)})")
    c.string(m["backbone"], "backbone")
    if "edgeuad_version" in m:
        c.string(m["edgeuad_version"], "edgeuad_version")
    for free in ("training", "quantization"):  # informational sections, never read by the runtime
        if free in m and not isinstance(m[free], dict):
            raise c.fail(free, f"must be a JSON object, got {_kind(m[free])}")

    files = _files(c, m["files"], allow_empty=ensemble)
    _preprocess(c, m["preprocess"])
    if ensemble:
        _ensemble(c, m["postprocess"], files)
    else:
        outputs = _model(c, m["model"], files)
        _postprocess(c, m["postprocess"], m["method"], outputs, files)
    _thresholds(c, m["thresholds"])
    if "engines" in m:
        _engines(c, m["engines"], files)
    return m


def _engines(c: _Checker, v: Any, files: Mapping[str, Any]) -> None:
    """TensorRT precisions -> the ONNX each engine is built from ({"fp16": "model.onnx"}); bundles
    from before the engine cache listed engine files instead (a list of names in 'files')."""
    if isinstance(v, list):
        for i, e in enumerate(c.array(v, "engines", 0, 16)):
            if c.string(e, f"engines[{i}]") not in files:
                raise c.fail(f"engines[{i}]", f"names {e!r}, which is not listed in 'files'")
        return
    if not isinstance(v, dict):
        raise c.fail("engines", f"must map a precision to an ONNX file, got {_kind(v)}")
    for prec, onnx in v.items():
        if prec not in ENGINE_PRECISIONS:
            raise c.fail(f"engines.{prec}", f"is not a TensorRT precision ({', '.join(ENGINE_PRECISIONS)})")
        if c.string(onnx, f"engines.{prec}") not in files:
            raise c.fail(f"engines.{prec}", f"names {onnx!r}, which is not listed in 'files'")


def _files(c: _Checker, v: Any, allow_empty: bool = False) -> Mapping[str, Any]:
    if not isinstance(v, dict) or not (v or allow_empty):
        raise c.fail("files", "must map file names to sha256 digests (a non-empty object)")
    for name, digest in v.items():
        if not file_name_ok(name):
            raise c.fail(f"files.{name}", "is an illegal file name (plain top-level names only)")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise c.fail(f"files.{name}", f"must be a lowercase hex sha256 digest, got {_show(digest)}")
    return v


def _preprocess(c: _Checker, v: Any) -> None:
    p = c.obj(v, "preprocess", ("size", "mean", "std"), ("interpolation",))
    for i, s in enumerate(c.array(p["size"], "preprocess.size", 2, 2)):
        c.integer(s, f"preprocess.size[{i}]", limits.MIN_INPUT_SIDE, limits.MAX_INPUT_SIDE)
    for key, (lo, hi) in (("mean", limits.MEAN_RANGE), ("std", limits.STD_RANGE)):
        for i, x in enumerate(c.array(p[key], f"preprocess.{key}", 3, 3)):
            c.number(x, f"preprocess.{key}[{i}]", lo, hi)
    if "interpolation" in p:
        c.string(p["interpolation"], "preprocess.interpolation", INTERPOLATIONS)


def _model(c: _Checker, v: Any, files: Mapping[str, Any]) -> list[str]:
    m = c.obj(v, "model", ("onnx", "input", "outputs"), ("opset", "weights", "config", "parity"))
    for key in ("onnx", "weights"):
        if key in m and c.string(m[key], f"model.{key}") not in files:
            raise c.fail(f"model.{key}", f"names {m[key]!r}, which is not listed in 'files'")
    c.string(m["input"], "model.input")
    outputs = c.array(m["outputs"], "model.outputs", 1, 2 * limits.MAX_LEVELS)
    for i, o in enumerate(outputs):
        c.string(o, f"model.outputs[{i}]")
    if len(set(outputs)) != len(outputs):
        raise c.fail("model.outputs", "has duplicate names")
    if m["input"] in outputs:
        raise c.fail("model.input", "is also listed as an output")
    if "opset" in m:
        c.integer(m["opset"], "model.opset", 7, 100)
    for free in ("config", "parity"):
        if free in m and not isinstance(m[free], dict):
            raise c.fail(f"model.{free}", f"must be a JSON object, got {_kind(m[free])}")
    return list(outputs)


def _postprocess(c: _Checker, v: Any, method: str, outputs: list[str], files: Mapping[str, Any]) -> None:
    if not isinstance(v, dict):
        raise c.fail("postprocess", f"must be a JSON object, got {_kind(v)}")
    if "kind" not in v:
        raise c.fail("postprocess.kind", "is missing (required in postprocess)")
    kind = c.string(v["kind"], "postprocess.kind", tuple(sorted(set(KINDS.values()))))
    if kind != KINDS[method]:
        raise c.fail("postprocess.kind", f"is {kind!r}, but method {method!r} needs {KINDS[method]!r}")
    common = ("kind", "align_corners", "sigma", "score", "topk_frac")
    if kind == "cos_pairs":
        p = c.obj(v, "postprocess", (*common, "pairs"), ("weights",))
        pairs = c.array(p["pairs"], "postprocess.pairs", 1, limits.MAX_LEVELS)
        for i, pair in enumerate(pairs):
            for j, name in enumerate(c.array(pair, f"postprocess.pairs[{i}]", 2, 2)):
                if c.string(name, f"postprocess.pairs[{i}][{j}]") not in outputs:
                    raise c.fail(f"postprocess.pairs[{i}][{j}]", f"names {name!r}, which is not in model.outputs")
        w = p.get("weights")
        if w is not None:
            for i, x in enumerate(c.array(w, "postprocess.weights", len(pairs), len(pairs))):
                c.number(x, f"postprocess.weights[{i}]", -1e6, 1e6)
    else:
        p = c.obj(v, "postprocess", (*common, "embedding", "grid", "bank", "reweight_b"))
        if c.string(p["embedding"], "postprocess.embedding") not in outputs:
            raise c.fail("postprocess.embedding", f"names {p['embedding']!r}, which is not in model.outputs")
        for i, s in enumerate(c.array(p["grid"], "postprocess.grid", 2, 2)):
            c.integer(s, f"postprocess.grid[{i}]", 1, limits.MAX_GRID_SIDE)
        if c.string(p["bank"], "postprocess.bank") not in files:
            raise c.fail("postprocess.bank", f"names {p['bank']!r}, which is not listed in 'files'")
        b = c.integer(p["reweight_b"], "postprocess.reweight_b", 0, limits.MAX_REWEIGHT_B)
        if b == 1:
            raise c.fail("postprocess.reweight_b", "must be 0 (off) or >= 2 (1 makes the Eq. 10 weight 0)")
    c.boolean(p["align_corners"], "postprocess.align_corners")
    c.number(p["sigma"], "postprocess.sigma", 0.0, limits.MAX_SIGMA)
    c.string(p["score"], "postprocess.score", SCORES)
    c.number(p["topk_frac"], "postprocess.topk_frac", 0.0, 1.0)


def _ensemble(c: _Checker, v: Any, files: Mapping[str, Any]) -> None:
    """postprocess of an ensemble: each member's directory, manifest digest and the median/MAD of its
    scores on held-out normal images (the modified z-score of ReConPatch Eq. 11)."""
    p = c.obj(v, "postprocess", ("kind", "members"))
    c.string(p["kind"], "postprocess.kind", (KINDS[ENSEMBLE],))
    dirs: set[str] = set()
    for i, e in enumerate(c.array(p["members"], "postprocess.members", 1, limits.MAX_ENSEMBLE_MEMBERS)):
        f = f"postprocess.members[{i}]"
        e = c.obj(e, f, ("dir", "digest", "method", "backbone", "median", "mad", "n_normal"))
        d = c.string(e["dir"], f"{f}.dir")
        if not file_name_ok(d):
            raise c.fail(f"{f}.dir", f"{_show(d)} is not a plain directory name")
        if d in files or d in dirs:
            raise c.fail(f"{f}.dir", f"{_show(d)} is used twice (by another member or a file)")
        dirs.add(d)
        if not isinstance(e["digest"], str) or not _SHA256.match(e["digest"]):
            raise c.fail(f"{f}.digest", f"must be the lowercase hex sha256 of the member's manifest.json, "
                                        f"got {_show(e['digest'])}")
        c.string(e["method"], f"{f}.method", MEMBER_METHODS)
        c.string(e["backbone"], f"{f}.backbone")
        c.number(e["median"], f"{f}.median", -limits.MAX_ABS_MEDIAN, limits.MAX_ABS_MEDIAN)
        c.number(e["mad"], f"{f}.mad", *limits.MAD_RANGE)
        c.integer(e["n_normal"], f"{f}.n_normal", 2, 2 ** 53)


def _thresholds(c: _Checker, v: Any) -> None:
    t = c.obj(v, "thresholds", ("threshold", "min", "max", "source"),
              ("quantile", "n_normal", "n_anomalous", "pixel_threshold", "fpr"))
    c.string(t["source"], "thresholds.source", THRESHOLD_SOURCES)
    th = c.number(t["threshold"], "thresholds.threshold")
    lo = c.number(t["min"], "thresholds.min")
    hi = c.number(t["max"], "thresholds.max")
    if not hi > lo:
        raise c.fail("thresholds.max", f"must be greater than thresholds.min ({lo:g}), got {hi:g}")
    # Every threshold rule puts the threshold inside the normalisation range (thresholds.py).  One
    # outside it was set by hand: legitimate (operators tune thresholds; normalisation still puts 0.5
    # at the threshold) but worth a line in the log (1000 would mean "never anomalous").  What pins
    # a bundle against edits is its digest (Detector(expected_digest=...), --expect-digest).
    if not lo <= th <= hi:
        log.warning("%s: thresholds.threshold %g lies outside [thresholds.min, thresholds.max] = [%g, %g]: "
                    "set by hand? (pin the bundle with its digest to refuse edits)", c.where, th, lo, hi)
    if t.get("quantile") is not None:
        c.number(t["quantile"], "thresholds.quantile", 0.5, 1.0)
    if t.get("fpr") is not None:
        c.number(t["fpr"], "thresholds.fpr", 1e-6, 0.5)
    for key in ("n_normal", "n_anomalous"):
        if key in t:
            c.integer(t[key], f"thresholds.{key}", 0, 2 ** 53)
    if t.get("pixel_threshold") is not None:
        c.number(t["pixel_threshold"], "thresholds.pixel_threshold")


# ----------------------------------------------------------------------------- cross-checks
def _dim(x: Any) -> Optional[int]:
    """A static dimension of a graph shape, or None for a symbolic/unknown one."""
    return x if isinstance(x, int) and not isinstance(x, bool) and x > 0 else None


def check_against_graph(m: Mapping[str, Any], input_name: str, output_names: Sequence[str],
                        input_shape: Optional[Sequence[Any]] = None,
                        output_shapes: Optional[Mapping[str, Sequence[Any]]] = None,
                        where: str = MANIFEST) -> None:
    """The manifest's I/O against the network the backend loaded (names, static shapes)."""
    c = _Checker(where)
    model = m["model"]
    if model["input"] != input_name:
        raise c.fail("model.input", f"is {model['input']!r} but the network's input is {input_name!r}")
    missing = [o for o in model["outputs"] if o not in output_names]
    extra = [o for o in output_names if o not in model["outputs"]]
    if missing or extra:
        raise c.fail("model.outputs", f"does not match the network's outputs {list(output_names)} "
                                      f"(missing from the network: {missing}, not in the manifest: {extra})")
    h, w = m["preprocess"]["size"]
    if input_shape is not None:
        if len(input_shape) != 4:
            raise c.fail("model.input", f"the network's input has rank {len(input_shape)}, expected N x 3 x H x W")
        ch, gh, gw = (_dim(s) for s in input_shape[1:])
        if ch is not None and ch != 3:
            raise c.fail("model.input", f"the network expects {ch} channels, the runtime feeds 3")
        if (gh is not None and gh != h) or (gw is not None and gw != w):
            raise c.fail("preprocess.size", f"is [{h}, {w}] but the network's input is "
                                            f"{list(input_shape[2:])}")
    post = m["postprocess"]
    if post["kind"] == "nn_l2" and output_shapes and post["embedding"] in output_shapes:
        shp = output_shapes[post["embedding"]]
        if len(shp) != 3:
            raise c.fail("postprocess.embedding", f"output has rank {len(shp)}, expected (B, grid_h*grid_w, D)")
        rows = _dim(shp[1])
        gh, gw = post["grid"]
        if rows is not None and rows != gh * gw:
            raise c.fail("postprocess.grid", f"is [{gh}, {gw}] ({gh * gw} patches) but the network emits {rows}")


def check_against_bank(m: Mapping[str, Any], bank_dim: int, bank_size: int,
                       embedding_dim: Optional[int] = None, where: str = MANIFEST) -> None:
    """The manifest's post-processing against the memory bank that was loaded."""
    c = _Checker(where)
    post = m["postprocess"]
    if bank_size < 1:
        raise c.fail("postprocess.bank", "names an empty memory bank")
    b = post["reweight_b"]
    if b > bank_size:
        raise c.fail("postprocess.reweight_b", f"is {b} but the memory bank holds only {bank_size} items")
    if embedding_dim is not None and embedding_dim != bank_dim:
        raise c.fail("postprocess.bank", f"holds {bank_dim}-d features but the network's embedding is "
                                         f"{embedding_dim}-d")


def check_ensemble_member(m: Mapping[str, Any], i: int, member: Mapping[str, Any], where: str = MANIFEST) -> None:
    """An ensemble's entry `i` against the (validated) manifest found in that member's directory.

    Members may differ in input size, normalisation, backbone and method: each preprocesses the frame
    with its own manifest's `preprocess` (runtime/ensemble.py), so the ensemble's own `preprocess` only
    names the size its maps are compared with masks at; its mean/std are the first member's, for the
    record."""
    c = _Checker(where)
    f = f"postprocess.members[{i}]"
    e = m["postprocess"]["members"][i]
    for key in ("method", "backbone"):
        if member[key] != e[key]:
            raise c.fail(f"{f}.{key}", f"is {_show(e[key])} but the member's manifest says {_show(member[key])}")
