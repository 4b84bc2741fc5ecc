// Host-side CUDA helpers of the bindings: device status, pointer checks, cross-stream
// ordering, a stream-ordered scratch pool and the map entry points.  Compiled by the
// C++ compiler (not nvcc) to keep the .cu small; only part of CUDA builds.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "edgeuad/cuda_check.hpp"
#include "edgeuad/errors.hpp"
#include "edgeuad/maps_cuda.hpp"
#include "edgeuad/maps_kernels.hpp"
#include "edgeuad/nn_kernels.hpp"

namespace edgeuad {
namespace cuda {
namespace {

cudaStream_t to_stream(uintptr_t handle) {
  // __cuda_array_interface__ v3 and most libraries: 1 = legacy default, 2 = per-thread default.
  if (handle == 1) return cudaStreamLegacy;
  if (handle == 2) return cudaStreamPerThread;
  return reinterpret_cast<cudaStream_t>(handle);
}

std::string error_text(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

// Host memory passed where device memory is needed would fault inside a kernel
// (or silently read garbage); reject it with a clear message instead.
void require_device_pointer(const void* p, const std::string& what) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw ShapeError(what + ": cannot query the pointer (" + error_text(err) + ")");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw ShapeError(what + " is not CUDA device memory");
  int current = 0;
  CUDA_CHECK(cudaGetDevice(&current));
  if (attr.type == cudaMemoryTypeDevice && attr.device != current)
    throw ShapeError(what + " lives on CUDA device " + std::to_string(attr.device) + " but the current device is " +
                     std::to_string(current) + " (call torch.cuda.set_device / cupy.cuda.Device(...).use())");
}

// One reusable event per (thread, device): recording it again after cudaStreamWaitEvent
// is safe (the wait captured the earlier record), so no event is created per call.
cudaEvent_t thread_event(int dev) {
  thread_local std::vector<cudaEvent_t> events;
  if (static_cast<int>(events.size()) <= dev) events.resize(dev + 1, nullptr);
  if (!events[dev]) CUDA_CHECK(cudaEventCreateWithFlags(&events[dev], cudaEventDisableTiming));
  return events[dev];
}

// __cuda_array_interface__ v3: the consumer orders its work after the producer's stream.
void wait_for_producers(const std::vector<uintptr_t>& producers, uintptr_t stream) {
  const cudaStream_t s = to_stream(stream);
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  for (uintptr_t p : producers) {
    if (p == 0 || to_stream(p) == s) continue;
    const cudaEvent_t ev = thread_event(dev);
    CUDA_CHECK(cudaEventRecord(ev, to_stream(p)));
    CUDA_CHECK(cudaStreamWaitEvent(s, ev, 0));
  }
}

// A private stream-ordered pool per device with no release threshold: after the first
// calls, scratch comes from memory the pool keeps (the default pool would hand it back
// to the driver at every synchronisation and pay for a fresh allocation each call).
// Null when the device has no memory-pool support.
cudaMemPool_t device_pool(int dev) {
  static std::mutex mu;
  static std::map<int, cudaMemPool_t> pools;
  std::lock_guard<std::mutex> lock(mu);
  auto it = pools.find(dev);
  if (it != pools.end()) return it->second;
  int supported = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, dev));
  cudaMemPool_t pool = nullptr;
  if (supported) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = dev;
    CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
    uint64_t keep = UINT64_MAX;
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  }
  pools[dev] = pool;
  return pool;
}

// Scratch freed on the same stream after the kernels that use it.  Without pool
// support: cudaMalloc, and a stream synchronisation before cudaFree.
class Scratch {
 public:
  Scratch(size_t floats, cudaStream_t s) : stream_(s) {
    if (!floats) return;
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    pool_ = device_pool(dev);
    void* p = nullptr;
    if (pool_)
      CUDA_CHECK(cudaMallocFromPoolAsync(&p, floats * sizeof(float), pool_, s));
    else
      CUDA_CHECK(cudaMalloc(&p, floats * sizeof(float)));
    ptr_ = static_cast<float*>(p);
  }
  ~Scratch() {
    if (!ptr_) return;
    if (pool_) {
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
  cudaMemPool_t pool_ = nullptr;
};

void require_device(const char* what) {
  const Status st = status();
  if (st.device_count == 0)
    throw CudaError(std::string(what) + ": no CUDA device is available" +
                    (st.error.empty() ? std::string() : " (" + st.error + ")"));
}

void check_outputs(float* out, float* max_out, float* topk_out) {
  require_device_pointer(out, "out");
  if (max_out) require_device_pointer(max_out, "max_out");
  if (topk_out) require_device_pointer(topk_out, "topk_out");
}

void launch(kern::Plan& P, const kern::Taps& T, size_t scratch_floats, float* out, float* max_out, float* topk_out,
            uintptr_t stream, const std::vector<uintptr_t>& producers) {
  wait_for_producers(producers, stream);
  Scratch scratch(scratch_floats, to_stream(stream));
  kern::bind_plan(P, T, scratch.get(), out, max_out, topk_out);
  launch_map(P, T, reinterpret_cast<stream_t>(to_stream(stream)));
}

}  // namespace

bool has_cuda() noexcept { return true; }

Status status() {
  Status st;
  st.built_with_cuda = true;
  (void)cudaRuntimeGetVersion(&st.runtime_version);
  (void)cudaDriverGetVersion(&st.driver_version);  // 0 when no driver is installed
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {  // no driver, no device, driver older than this build's runtime
    (void)cudaGetLastError();
    st.error = error_text(err);
    n = 0;
  }
  st.device_count = n;
  return st;
}

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

void* device_alloc(size_t bytes) {
  require_device("DeviceArray");
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
  return p;
}
void device_free(void* p) noexcept {
  if (p) (void)cudaFree(p);
}
void copy_to_device(void* dst, const void* src, size_t bytes) {
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void device_synchronize() { CUDA_CHECK(cudaDeviceSynchronize()); }

void run_cos_map(const std::vector<MapLevel>& levels, int64_t batch, const MapParams& p, float* out, float* max_out,
                 float* topk_out, uintptr_t stream, const std::vector<uintptr_t>& producer_streams) {
  kern::Plan P;
  kern::Taps T;
  const size_t n = kern::make_cos_plan(levels.data(), static_cast<int>(levels.size()), batch, p, P, T);
  require_device("cos_map_cuda");
  for (size_t l = 0; l < levels.size(); ++l) {
    require_device_pointer(levels[l].a, "pairs[" + std::to_string(l) + "][0]");
    require_device_pointer(levels[l].b, "pairs[" + std::to_string(l) + "][1]");
  }
  check_outputs(out, max_out, topk_out);
  launch(P, T, n, out, max_out, topk_out, stream, producer_streams);
}

void run_l2_map(const void* dist, DType dtype, int64_t batch, int64_t h, int64_t w, const MapParams& p, float* out,
                float* max_out, float* topk_out, uintptr_t stream, const std::vector<uintptr_t>& producer_streams) {
  kern::Plan P;
  kern::Taps T;
  const size_t n = kern::make_l2_plan(dist, dtype, batch, h, w, p, P, T);
  require_device("l2_map_cuda");
  require_device_pointer(dist, "dist");
  check_outputs(out, max_out, topk_out);
  launch(P, T, n, out, max_out, topk_out, stream, producer_streams);
}

void run_patch_scores(const float* queries, int64_t nq, const float* bank, const int32_t* table, int64_t n,
                      int64_t dim, int64_t b, float* scores, uintptr_t stream,
                      const std::vector<uintptr_t>& producer_streams) {
  check_patch_scores(nq, n, dim, b, table != nullptr);
  require_device("patch_scores");
  require_device_pointer(queries, "queries");
  require_device_pointer(bank, "bank");
  if (b >= 2) require_device_pointer(table, "neighbour table");
  require_device_pointer(scores, "scores");
  wait_for_producers(producer_streams, stream);
  // best squared distance (float) and index (int32) per query, from the pool
  Scratch scratch(2 * static_cast<size_t>(nq), to_stream(stream));
  nnk::NNParams P{queries, bank, b >= 2 ? table : nullptr, static_cast<int>(nq), static_cast<int>(n),
                  static_cast<int>(dim), static_cast<int>(b), scratch.get(),
                  reinterpret_cast<int32_t*>(scratch.get() + nq), scores};
  launch_nn(P, reinterpret_cast<stream_t>(to_stream(stream)));
}

}  // namespace cuda
}  // namespace edgeuad
