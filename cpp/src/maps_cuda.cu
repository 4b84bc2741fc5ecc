// CUDA launch wrappers of the fused anomaly map.  The kernels are the block bodies of
// maps_kernels.hpp (also run on the CPU by maps_emulate.cpp); this file only binds them
// to __global__ functions and launches the shared sequence (kern::run_pipeline).
#include <cuda_runtime_api.h>

#include "edgeuad/cuda_check.hpp"
#include "edgeuad/maps_cuda.hpp"
#include "edgeuad/maps_kernels.hpp"
#include "edgeuad/nn_kernels.hpp"

namespace edgeuad {
namespace cuda {
namespace {

using namespace kern;

// One CUDA thread's view of its block (methods are host+device only so that the
// kernel-body templates instantiate cleanly in nvcc's host pass).
struct DevBlock {
  int bid;
  int nthreads;
  template <class F>
  __host__ __device__ void threads(F&& f) const {
#if defined(__CUDA_ARCH__)
    f(static_cast<int>(threadIdx.x));
#else
    (void)f;
#endif
  }
  __host__ __device__ void sync() const {
#if defined(__CUDA_ARCH__)
    __syncthreads();
#endif
  }
};

__device__ __forceinline__ DevBlock this_block() {
  return DevBlock{static_cast<int>(blockIdx.x), static_cast<int>(blockDim.x)};
}

__global__ void __launch_bounds__(kFlatThreads) k_tables(Plan P) { tables_body(this_block(), P); }

__global__ void __launch_bounds__(kCosThreads) k_cos(Plan P) {
  __shared__ CosShared sh;
  cos_body(this_block(), P, sh);
}

__global__ void __launch_bounds__(kFlatThreads) k_convert(Plan P) { convert_body(this_block(), P); }

__global__ void __launch_bounds__(kRowThreads) k_hpass(Plan P, Taps T, float* dst) {
  extern __shared__ float buf[];  // kRowTile + 2r floats
  hpass_body(this_block(), P, T, dst, buf);
}

__global__ void __launch_bounds__(kColThreads) k_vpass(Plan P, Taps T, const float* src, float* dst) {
  vpass_body(this_block(), P, T, src, dst);
}

__global__ void __launch_bounds__(kScoreThreads) k_scores(Plan P) {
  __shared__ ScoreShared sh;
  scores_body(this_block(), P, sh);
}

struct DevExec {
  cudaStream_t s;
  void tables(int grid, const Plan& P) {
    k_tables<<<grid, kFlatThreads, 0, s>>>(P);
    CUDA_CHECK(cudaGetLastError());
  }
  void cos(int grid, const Plan& P) {
    k_cos<<<grid, kCosThreads, 0, s>>>(P);
    CUDA_CHECK(cudaGetLastError());
  }
  void convert(int grid, const Plan& P) {
    k_convert<<<grid, kFlatThreads, 0, s>>>(P);
    CUDA_CHECK(cudaGetLastError());
  }
  void hpass(int grid, const Plan& P, const Taps& T, float* dst) {
    const size_t shm = (kRowTile + 2 * static_cast<size_t>(T.r)) * sizeof(float);  // <= 3 KiB
    k_hpass<<<grid, kRowThreads, shm, s>>>(P, T, dst);
    CUDA_CHECK(cudaGetLastError());
  }
  void vpass(int grid, const Plan& P, const Taps& T, const float* src, float* dst) {
    k_vpass<<<grid, kColThreads, 0, s>>>(P, T, src, dst);
    CUDA_CHECK(cudaGetLastError());
  }
  void scores(int grid, const Plan& P) {
    k_scores<<<grid, kScoreThreads, 0, s>>>(P);
    CUDA_CHECK(cudaGetLastError());
  }
};

__global__ void __launch_bounds__(nnk::kThreads) k_nn(nnk::NNParams P) {
  __shared__ nnk::NNShared sh;
  nnk::nn_body(this_block(), P, sh);
}

__global__ void __launch_bounds__(nnk::kScoreThreads) k_nn_score(nnk::NNParams P) {
  nnk::score_body(this_block(), P);
}

struct NNExec {
  cudaStream_t s;
  void nn(int grid, const nnk::NNParams& P) {
    k_nn<<<grid, nnk::kThreads, 0, s>>>(P);
    CUDA_CHECK(cudaGetLastError());
  }
  void score(int grid, const nnk::NNParams& P) {
    k_nn_score<<<grid, nnk::kScoreThreads, 0, s>>>(P);
    CUDA_CHECK(cudaGetLastError());
  }
};

}  // namespace

void launch_nn(const nnk::NNParams& P, stream_t stream) {
  NNExec ex{reinterpret_cast<cudaStream_t>(stream)};
  nnk::run_nn(ex, P);
}

void launch_map(const Plan& P, const Taps& T, stream_t stream) {
  DevExec ex{reinterpret_cast<cudaStream_t>(stream)};
  run_pipeline(ex, P, T);
}

}  // namespace cuda
}  // namespace edgeuad
