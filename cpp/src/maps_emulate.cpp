// CPU emulation of the CUDA map kernels: the block bodies of maps_kernels.hpp run by
// a host "block" (a loop over thread ids, barriers as phase boundaries) through the
// same launch sequence (run_pipeline) and the same plan (maps_plan.cpp) as on the GPU.
// Used by the tests to check the GPU code path against the numpy reference on machines
// without a GPU; slow on purpose (one host thread), never used for real work.
#include <algorithm>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "edgeuad/maps_cuda.hpp"
#include "edgeuad/errors.hpp"
#include "edgeuad/maps_kernels.hpp"
#include "edgeuad/nn_kernels.hpp"

namespace edgeuad {
namespace cuda {
namespace {

using namespace kern;

struct HostBlock {
  int bid;
  int nthreads;
  template <class F>
  void threads(F&& f) const {
    for (int t = 0; t < nthreads; ++t) f(t);
  }
  void sync() const {}
};

struct HostExec {
  void tables(int grid, const Plan& P) {
    for (int b = 0; b < grid; ++b) tables_body(HostBlock{b, kFlatThreads}, P);
  }
  void cos(int grid, const Plan& P) {
    auto sh = std::make_unique<CosShared>();
    for (int b = 0; b < grid; ++b) cos_body(HostBlock{b, kCosThreads}, P, *sh);
  }
  void convert(int grid, const Plan& P) {
    for (int b = 0; b < grid; ++b) convert_body(HostBlock{b, kFlatThreads}, P);
  }
  void hpass(int grid, const Plan& P, const Taps& T, float* dst) {
    std::vector<float> buf(kRowTile + 2 * T.r, std::numeric_limits<float>::quiet_NaN());
    for (int b = 0; b < grid; ++b) hpass_body(HostBlock{b, kRowThreads}, P, T, dst, buf.data());
  }
  void vpass(int grid, const Plan& P, const Taps& T, const float* src, float* dst) {
    for (int b = 0; b < grid; ++b) vpass_body(HostBlock{b, kColThreads}, P, T, src, dst);
  }
  void scores(int grid, const Plan& P) {
    auto sh = std::make_unique<ScoreShared>();
    for (int b = 0; b < grid; ++b) scores_body(HostBlock{b, kScoreThreads}, P, *sh);
  }
};

// Scratch and outputs start as NaN: a kernel that reads memory no earlier kernel wrote
// shows up as NaN in the result instead of passing by luck.
void run(Plan& P, const Taps& T, size_t scratch_floats, int64_t out_floats, float* map, float* max_out,
         float* topk_out) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> scratch(scratch_floats, nan);
  std::fill(map, map + out_floats, nan);
  bind_plan(P, T, scratch.data(), map, max_out, topk_out);
  HostExec ex;
  run_pipeline(ex, P, T);
}

struct HostNNExec {
  void nn(int grid, const nnk::NNParams& P) {
    auto sh = std::make_unique<nnk::NNShared>();
    for (int b = 0; b < grid; ++b) nnk::nn_body(HostBlock{b, nnk::kThreads}, P, *sh);
  }
  void score(int grid, const nnk::NNParams& P) {
    for (int b = 0; b < grid; ++b) nnk::score_body(HostBlock{b, nnk::kScoreThreads}, P);
  }
};

}  // namespace

void check_patch_scores(int64_t nq, int64_t n, int64_t dim, int64_t b, bool has_table) {
  if (nq <= 0 || n <= 0 || dim <= 0) throw ShapeError("patch scores: queries, bank and dim must be non-empty");
  if (nq > pixel::kMaxIndex || n > pixel::kMaxIndex || dim > pixel::kMaxIndex)
    throw ShapeError("patch scores: sizes must be < 2^31");
  if (b == 1 || b < 0) throw ShapeError("b must be 0 (off) or >= 2, got " + std::to_string(b));
  if (b > n) throw ShapeError("b must be <= the bank size " + std::to_string(n) + ", got " + std::to_string(b));
  if (b >= 2 && !has_table) throw ShapeError("b >= 2 needs the bank's neighbour table (N x b int32)");
}

void emulate_patch_scores(const float* queries, int64_t nq, const float* bank, const int32_t* table, int64_t n,
                          int64_t dim, int64_t b, float* scores) {
  check_patch_scores(nq, n, dim, b, table != nullptr);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> best(static_cast<size_t>(nq), nan);
  std::vector<int32_t> arg(static_cast<size_t>(nq), -1);
  nnk::NNParams P{queries, bank, b >= 2 ? table : nullptr, static_cast<int>(nq), static_cast<int>(n),
                  static_cast<int>(dim), static_cast<int>(b), best.data(), arg.data(), scores};
  std::fill(scores, scores + nq, nan);
  HostNNExec ex;
  nnk::run_nn(ex, P);
}

void emulate_cos_map(const MapLevel* levels, int num_levels, int64_t batch, const MapParams& p, float* map,
                     float* max_out, float* topk_out) {
  Plan P;
  Taps T;
  const size_t n = make_cos_plan(levels, num_levels, batch, p, P, T);
  run(P, T, n, batch * p.out_h * p.out_w, map, max_out, topk_out);
}

void emulate_l2_map(const void* dist, DType dtype, int64_t batch, int64_t h, int64_t w, const MapParams& p,
                    float* map, float* max_out, float* topk_out) {
  Plan P;
  Taps T;
  const size_t n = make_l2_plan(dist, dtype, batch, h, w, p, P, T);
  run(P, T, n, batch * p.out_h * p.out_w, map, max_out, topk_out);
}

}  // namespace cuda
}  // namespace edgeuad
