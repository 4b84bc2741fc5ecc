// CUDA_CHECK(x): throw edgeuad::CudaError naming the call, file and line.
// Only for translation units compiled with the CUDA toolkit headers.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "edgeuad/errors.hpp"

namespace edgeuad {

inline void cuda_check_impl(cudaError_t err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();  // clear the sticky-free error state for the next call
  throw CudaError(std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                  ") in " + call + " at " + file + ":" + std::to_string(line));
}

}  // namespace edgeuad

#define CUDA_CHECK(x) ::edgeuad::cuda_check_impl((x), #x, __FILE__, __LINE__)
