// Exact k-NN kernels shared by the memory bank (internal header, not installed).
#pragma once

#include <cstdint>

namespace edgeuad {
namespace detail {

// The exact-search micro-kernel this process uses ("avx2-6x16" or "portable-4x8"): chosen once from
// the CPU's features, or forced portable with EDGEUAD_RT_PORTABLE=1.
const char* exact_kernel_name();

// Squared L2 norms of n rows of (x - center) (n x d); center may be null (zero).
void row_sq_norms(const float* x, int64_t n, int64_t d, const float* center, float* out);

// Exact Euclidean distance between two d-vectors (direct sum of squares,
// no cancellation: used to refine the final candidates).
float l2_exact(const float* a, const float* b, int64_t d);

// Brute-force k-NN of nq queries against n bank rows x, blocked into
// cache-sized tiles, OpenMP over query blocks.  Distances are computed
// relative to `center` (the bank mean; translation does not change them but
// shrinks the norms, and with them the cancellation in |q|^2 - 2q.x + |x|^2);
// xnorm holds |x - center|^2.  Writes Euclidean distances (ascending) and
// indices, nq x k each.
void exact_knn(const float* queries, int64_t nq, const float* x, const float* center, const float* xnorm,
               int64_t n, int64_t d, int64_t k, int threads, float* dist, int64_t* idx);

}  // namespace detail
}  // namespace edgeuad
