// Typed exceptions of the edgeuad C++ core.
//
// The core never depends on pybind11; the bindings map these types to Python
// exceptions (ShapeError -> ValueError, DTypeError -> TypeError,
// IOError -> OSError, CudaError -> RuntimeError).
#pragma once

#include <stdexcept>
#include <string>

namespace edgeuad {

// Bad shapes, sizes or parameter values supplied by the caller.
class ShapeError : public std::invalid_argument {
 public:
  explicit ShapeError(const std::string& msg) : std::invalid_argument(msg) {}
};

// Unsupported element type (only float32 / float16 are accepted).
class DTypeError : public std::invalid_argument {
 public:
  explicit DTypeError(const std::string& msg) : std::invalid_argument(msg) {}
};

// File missing, truncated, corrupted or not writable.
class IOError : public std::runtime_error {
 public:
  explicit IOError(const std::string& msg) : std::runtime_error(msg) {}
};

// A CUDA runtime call failed, or CUDA is not available in this build.
class CudaError : public std::runtime_error {
 public:
  explicit CudaError(const std::string& msg) : std::runtime_error(msg) {}
};

}  // namespace edgeuad
