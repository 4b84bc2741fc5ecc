// Host-side CUDA helpers of the bindings: device queries, pointer checks,
// cross-stream ordering and stream-ordered scratch.  Compiled by the C++
// compiler (not nvcc) to keep the .cu small; only part of CUDA builds.
#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "edgeuad/cuda_check.hpp"
#include "edgeuad/errors.hpp"
#include "edgeuad/maps_cuda.hpp"

namespace edgeuad {
namespace cuda {
namespace {

cudaStream_t to_stream(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

// Host memory passed where device memory is needed would fault inside a kernel
// (or silently read garbage); reject it with a clear message instead.
void require_device_pointer(const void* p, const std::string& what) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw ShapeError(what + ": cannot query the pointer (" + cudaGetErrorString(err) + ")");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw ShapeError(what + " is not CUDA device memory");
  int current = 0;
  CUDA_CHECK(cudaGetDevice(&current));
  if (attr.type == cudaMemoryTypeDevice && attr.device != current)
    throw ShapeError(what + " lives on CUDA device " + std::to_string(attr.device) + " but the current device is " +
                     std::to_string(current) + " (call torch.cuda.set_device / cupy.cuda.Device(...).use())");
}

// __cuda_array_interface__ v3: the consumer must order its work after the producer's stream.
void wait_for_producers(const std::vector<uintptr_t>& producers, uintptr_t stream) {
  for (uintptr_t p : producers) {
    if (p == 0 || p == stream) continue;
    cudaStream_t src = p == 1 ? cudaStreamLegacy : p == 2 ? cudaStreamPerThread : to_stream(p);
    cudaEvent_t ev;
    CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    cudaError_t e1 = cudaEventRecord(ev, src);
    cudaError_t e2 = e1 == cudaSuccess ? cudaStreamWaitEvent(to_stream(stream), ev, 0) : e1;
    CUDA_CHECK(cudaEventDestroy(ev));  // released once the wait completes
    CUDA_CHECK(e2);
  }
}

// Stream-ordered scratch (cudaMallocAsync), freed on the same stream after the
// kernels that use it.  Devices without memory-pool support fall back to
// cudaMalloc and a stream synchronisation before cudaFree.
class Scratch {
 public:
  Scratch(size_t floats, cudaStream_t s) : stream_(s) {
    if (!floats) return;
    int dev = 0, pools = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev));
    async_ = pools != 0;
    void* p = nullptr;
    if (async_)
      CUDA_CHECK(cudaMallocAsync(&p, floats * sizeof(float), s));
    else
      CUDA_CHECK(cudaMalloc(&p, floats * sizeof(float)));
    ptr_ = static_cast<float*>(p);
  }
  ~Scratch() {
    if (!ptr_) return;
    if (async_) {
      (void)cudaFreeAsync(ptr_, stream_);
    } else {
      (void)cudaStreamSynchronize(stream_);
      (void)cudaFree(ptr_);
    }
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* get() const { return ptr_; }

 private:
  float* ptr_ = nullptr;
  cudaStream_t stream_;
  bool async_ = true;
};

}  // namespace

bool has_cuda() noexcept { return true; }

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {  // no driver, no device, driver too old
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

void run_cos_map(const std::vector<DeviceLevel>& levels, int batch, int out_h, int out_w,
                 bool align_corners, double sigma, float* out, uintptr_t stream,
                 const std::vector<uintptr_t>& producer_streams) {
  if (device_count() == 0) throw CudaError("cos_map_cuda: no CUDA device is available");
  for (size_t l = 0; l < levels.size(); ++l) {
    require_device_pointer(levels[l].a, "pairs[" + std::to_string(l) + "][0]");
    require_device_pointer(levels[l].b, "pairs[" + std::to_string(l) + "][1]");
  }
  require_device_pointer(out, "out");
  const size_t n = cos_map_scratch_floats(levels.data(), static_cast<int>(levels.size()), batch, out_h,
                                          out_w, sigma);
  wait_for_producers(producer_streams, stream);
  Scratch scratch(n, to_stream(stream));
  cos_map_cuda(levels.data(), static_cast<int>(levels.size()), batch, out_h, out_w, align_corners, sigma,
               out, scratch.get(), to_stream(stream));
}

void run_l2_map(const void* dist, DType dtype, int batch, int h, int w, int out_h, int out_w,
                bool align_corners, double sigma, float* out, uintptr_t stream,
                const std::vector<uintptr_t>& producer_streams) {
  if (device_count() == 0) throw CudaError("l2_map_cuda: no CUDA device is available");
  require_device_pointer(dist, "dist");
  require_device_pointer(out, "out");
  wait_for_producers(producer_streams, stream);
  Scratch scratch(l2_map_scratch_floats(batch, h, w, out_h, out_w, sigma), to_stream(stream));
  l2_map_cuda(dist, dtype, batch, h, w, out_h, out_w, align_corners, sigma, out, scratch.get(),
              to_stream(stream));
}

}  // namespace cuda
}  // namespace edgeuad
