// CPU-only builds: the CUDA entry points exist (same header, same bindings) but
// raise CudaError (-> RuntimeError) instead of silently doing nothing.
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
int device_count() noexcept { return 0; }

size_t cos_map_scratch_floats(const DeviceLevel*, int, int, int, int, double) { not_built(); }
size_t l2_map_scratch_floats(int, int, int, int, int, double) { not_built(); }
void cos_map_cuda(const DeviceLevel*, int, int, int, int, bool, double, float*, float*, stream_t) {
  not_built();
}
void l2_map_cuda(const void*, DType, int, int, int, int, int, bool, double, float*, float*, stream_t) {
  not_built();
}
void run_cos_map(const std::vector<DeviceLevel>&, int, int, int, bool, double, float*, uintptr_t,
                 const std::vector<uintptr_t>&) {
  not_built();
}
void run_l2_map(const void*, DType, int, int, int, int, int, bool, double, float*, uintptr_t,
                const std::vector<uintptr_t>&) {
  not_built();
}

}  // namespace cuda
}  // namespace edgeuad
