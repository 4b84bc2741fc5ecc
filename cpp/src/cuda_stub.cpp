// CPU-only builds: the CUDA entry points exist (same header, same bindings) but
// raise CudaError (-> RuntimeError) instead of silently doing nothing.  The CPU
// emulation of the CUDA kernels (maps_emulate.cpp) is part of every build.
#include "edgeuad/errors.hpp"
#include "edgeuad/maps_cuda.hpp"

namespace edgeuad {
namespace cuda {
namespace {

[[noreturn]] void not_built() {
  throw CudaError(
      "edgeuad._rt was built without CUDA (rebuild with nvcc on PATH, or EDGEUAD_CUDA=ON "
      "pip install -e . to require it)");
}

}  // namespace

bool has_cuda() noexcept { return false; }
Status status() {
  Status st;
  st.error = "edgeuad._rt was built without CUDA";
  return st;
}
int device_count() noexcept { return 0; }

void run_cos_map(const std::vector<MapLevel>&, int64_t, const MapParams&, float*, float*, float*, uintptr_t,
                 const std::vector<uintptr_t>&) {
  not_built();
}
void run_l2_map(const void*, DType, int64_t, int64_t, int64_t, const MapParams&, float*, float*, float*, uintptr_t,
                const std::vector<uintptr_t>&) {
  not_built();
}
void* device_alloc(size_t) { not_built(); }
void device_free(void*) noexcept {}
void copy_to_device(void*, const void*, size_t) { not_built(); }
void copy_to_host(void*, const void*, size_t) { not_built(); }
void device_synchronize() { not_built(); }
void run_patch_scores(const float*, int64_t, const float*, const int32_t*, int64_t, int64_t, int64_t, float*,
                      uintptr_t, const std::vector<uintptr_t>&) {
  not_built();
}
void launch_nn(const nnk::NNParams&, stream_t) { not_built(); }
void launch_map(const kern::Plan&, const kern::Taps&, stream_t) { not_built(); }

}  // namespace cuda
}  // namespace edgeuad
