#!/usr/bin/env bash
# Build edgeuad._rt with AddressSanitizer + UndefinedBehaviorSanitizer into build/sanitize (the
# normal build is untouched) and run the tests that exercise _rt against it, with libasan preloaded
# into the (uninstrumented) Python interpreter.  Any ASan report or UB aborts the test process.
#
#   tools/sanitize_tests.sh                 # _rt tests + the _rt fuzz suite
#   tools/sanitize_tests.sh -k reweighted   # extra pytest arguments are passed on
#
# Env: PY (default .venv/bin/python), EDGEUAD_SANITIZE (default address,undefined), CXX.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
SAN=${EDGEUAD_SANITIZE:-address,undefined}
BUILD=$ROOT/build/sanitize
PKG=$BUILD/pkg/edgeuad
start=$(date +%s)

# A staging package: every module of python/edgeuad linked in, plus the sanitized _rt.
rm -rf "$BUILD/pkg"
mkdir -p "$BUILD/cmake" "$PKG"
for f in "$ROOT"/python/edgeuad/*; do
  case "$(basename "$f")" in _rt.*.so|__pycache__) ;; *) ln -s "$f" "$PKG/" ;; esac
done

args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DEDGEUAD_CUDA=OFF -DEDGEUAD_SANITIZE="$SAN" -DEDGEUAD_WERROR=ON
      -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PKG" -DPython_EXECUTABLE="$PY"
      -Dpybind11_DIR="$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())')")
ninja_bin=$("$PY" -c 'import ninja, os; print(os.path.join(ninja.BIN_DIR, "ninja"))' 2>/dev/null || true)
if [ -n "$ninja_bin" ] && [ -x "$ninja_bin" ] && [ ! -f "$BUILD/cmake/Makefile" ]; then
  args+=(-GNinja -DCMAKE_MAKE_PROGRAM="$ninja_bin")
fi
cmake -S "$ROOT" -B "$BUILD/cmake" "${args[@]}" >"$BUILD/configure.log"
cmake --build "$BUILD/cmake" -j "$(nproc)"

libasan=$(${CXX:-c++} -print-file-name=libasan.so)
libstdcxx=$(${CXX:-c++} -print-file-name=libstdc++.so)
[ -f "$libasan" ] || { echo "libasan.so not found (install the compiler's libasan)" >&2; exit 2; }
# libstdc++ too: Python does not link it, and ASan must find the real __cxa_throw when it starts
# ("CHECK failed: ... real___cxa_throw" on the first C++ exception otherwise).
export LD_PRELOAD="$libasan $libstdcxx"
# Python and numpy allocate for the life of the process: leak checking would only report them.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export PYTHONPATH=$BUILD/pkg
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$PY" -c "import edgeuad._rt as r, sys; b = r.build_info(); print('sanitized _rt:', r.__file__, b['sanitize']); \
sys.exit(0 if b['sanitize'] == '$SAN' and r.__file__.startswith('$PKG') else 'not the sanitized build')"
# --capture=sys: pytest must not swallow fd 2, where a sanitizer writes its report before aborting.
"$PY" -m pytest -q -p no:cacheprovider --capture=sys \
  tests/python/test_rt_maps.py tests/python/test_rt_bank.py tests/python/test_limits.py tests/python/test_fuzz_bank.py "$@"
echo "sanitize_tests: passed under $SAN in $(( $(date +%s) - start )) s"
