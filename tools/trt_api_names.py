#!/usr/bin/env python3
"""Extract the Python API names of the TensorRT bindings from a TensorRT source checkout.

    python3 tools/trt_api_names.py /path/to/TensorRT v10.3.0 > names.json

Reads python/src/infer/*.cpp and python/src/parsers/pyOnnx.cpp at a git tag (`git show TAG:path`) and
prints, for the enums and classes edgeuad's export/tensorrt.py uses, the members each one binds
(`.value("X"` of py::enum_, `.def*("x"` of py::class_).  tests/python/trt_api_lists.py holds the
output for TensorRT 8.6.1, 10.3.0 and 11.1 (the conformance test's fake modules are built from it).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

FILES = ["python/src/infer/pyCore.cpp", "python/src/infer/pyGraph.cpp", "python/src/infer/pyFoundationalTypes.cpp",
         "python/src/parsers/pyOnnx.cpp"]
WANTED = {
    "enums": ["BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType", "TensorIOMode", "LayerType",
              "Severity", "DataType"],
    "classes": ["Builder", "IBuilderConfig", "INetworkDefinition", "OnnxParser", "Runtime", "ICudaEngine",
                "IExecutionContext", "IOptimizationProfile", "ILayer", "ITensor", "ILogger"],
}
START = re.compile(r"py::(enum_|class_)<[^;{]*?>\s*\(?\s*(?:\w+\s*,\s*)?\"(\w+)\"", re.S)


def extract(repo: str, tag: str) -> dict:
    out: dict = {"enums": {}, "classes": {}}
    for path in FILES:
        try:
            src = subprocess.run(["git", "-C", repo, "show", f"{tag}:{path}"], capture_output=True, text=True,
                                 check=True).stdout
        except subprocess.CalledProcessError:
            continue
        starts = list(START.finditer(src))
        for i, m in enumerate(starts):
            kind, name = m.group(1), m.group(2)
            body = src[m.end(): starts[i + 1].start() if i + 1 < len(starts) else len(src)]
            if kind == "enum_" and name in WANTED["enums"]:
                out["enums"].setdefault(name, [])
                out["enums"][name] += [v for v in re.findall(r"\.value\(\s*\"(\w+)\"", body)
                                       if v not in out["enums"][name]]
            elif kind == "class_" and name in WANTED["classes"]:
                out["classes"].setdefault(name, [])
                names = re.findall(r"\.def(?:_property|_property_readonly|_readwrite|_readonly|_static)?\(\s*"
                                   r"\"(\w+)\"", body)
                out["classes"][name] += [v for v in names if v not in out["classes"][name]]
    return out


if __name__ == "__main__":
    json.dump(extract(sys.argv[1], sys.argv[2]), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
