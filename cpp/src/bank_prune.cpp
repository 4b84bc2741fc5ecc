// Exact k-NN with a certified lower-bound prune (see bank_exact.hpp for the bound).
//
// Why: patch features are far from isotropic.  On a PatchCore bottle bank (2,141 x 152, Lite0) the top
// 32 principal directions hold 95% of the variance, and for 99.6% of (query, row) pairs the 33-dim lower
// bound already exceeds the query's nearest distance.  So a search in 33 dims (22% of the work of 152)
// plus exact distances for a few candidates per query gives the exact answer; a query whose bound is not
// tight enough gets a threshold search and, past 64 rows under its threshold, the full search, so the
// result never depends on the data being kind (only the time does).
#include "edgeuad/bank_exact.hpp"

#include <omp.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

namespace edgeuad {
namespace detail {
namespace {

constexpr int64_t kMinDim = 64;        // narrower banks: the full search is already cheap per row
constexpr int64_t kMaxSubspace = 32;   // m = min(32, d / 4)
constexpr int64_t kMinRows = 512;      // smaller banks: nothing to gain over the full search
constexpr int64_t kFirst = 4;          // stage-1 candidates per query: k + kFirst
constexpr int64_t kRange = 64;         // stage-3 slots per query (rows under its threshold)
constexpr int64_t kSampleRows = 2048;  // rows used for the covariance (evenly strided)
constexpr int kIterations = 40;        // subspace iterations (only the bound's tightness depends on it)
// Below this share of the variance in the subspace the bound certifies too few queries to pay for its
// extra pass: a Lite0 PatchCore bottle bank (0.95) searches 1.4-1.5x faster pruned, a magnetic_tile bank
// (0.81, half its queries uncertified) 0.7x, so such banks keep the full search.
constexpr double kMinEnergy = 0.9;

// Modified Gram-Schmidt on the m < d columns of a d x m row-major matrix (double).  A column that
// vanishes (rank-deficient bank) is replaced by the next unit vector e_0, e_1, ... and orthogonalised
// again; at most m of the d unit vectors lie in the span of the others, so this ends.
void orthonormalise(std::vector<double>& v, int64_t d, int64_t m) {
  int64_t unit = 0;
  for (int64_t j = 0; j < m; ++j) {
    for (int pass = 0; pass < 2; ++pass) {  // twice is enough (Kahan-Parlett)
      for (int64_t i = 0; i < j; ++i) {
        double dot = 0.0;
        for (int64_t r = 0; r < d; ++r) dot += v[r * m + i] * v[r * m + j];
        for (int64_t r = 0; r < d; ++r) v[r * m + j] -= dot * v[r * m + i];
      }
    }
    double nrm = 0.0;
    for (int64_t r = 0; r < d; ++r) nrm += v[r * m + j] * v[r * m + j];
    nrm = std::sqrt(nrm);
    if (nrm < 1e-12 && unit < d) {
      for (int64_t r = 0; r < d; ++r) v[r * m + j] = 0.0;
      v[unit++ * m + j] = 1.0;
      --j;  // orthogonalise the replacement against the earlier columns
      continue;
    }
    for (int64_t r = 0; r < d; ++r) v[r * m + j] /= nrm;
  }
}

// h = B^T v for one centred row v (double), m columns.
void project(const double* v, const double* basis, int64_t d, int64_t m, double* h) {
  for (int64_t j = 0; j < m; ++j) h[j] = 0.0;
  for (int64_t r = 0; r < d; ++r) {
    const double vr = v[r];
    const double* b = basis + r * m;
    for (int64_t j = 0; j < m; ++j) h[j] += vr * b[j];
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same for m = 32 (every bank of d >= 128) with AVX2 FMA: 8 accumulators of 4 doubles.  The portable
// loop above is SSE2 (2 doubles per op) and took 1.6 ms of a 1,024-query frame's 6.5 ms.
__attribute__((target("avx2,fma"))) void project32_avx2(const double* v, const double* basis, int64_t d,
                                                        double* h) {
  __m256d acc[8];
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_pd();
  for (int64_t r = 0; r < d; ++r) {
    const __m256d vr = _mm256_broadcast_sd(v + r);
    const double* b = basis + r * 32;
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_pd(vr, _mm256_loadu_pd(b + 4 * j), acc[j]);
  }
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) _mm256_storeu_pd(h + 4 * j, acc[j]);
}

#endif

// v = row - center in double; returns |v|^2.
double centre(const float* row, const float* center, int64_t d, double* v) {
  double vn = 0.0;
  for (int64_t r = 0; r < d; ++r) {
    v[r] = static_cast<double>(row[r]) - center[r];
    vn += v[r] * v[r];
  }
  return vn;
}

// [h, t] of one centred row v (double): h = B^T v, t = sqrt(max(|v|^2 - |h|^2, 0)).
void augment(const double* v, const double* basis, int64_t d, int64_t m, double vn, float* out) {
  double h[kMaxSubspace];
#if defined(__x86_64__) && defined(__GNUC__)
  if (m == 32 && avx2_kernels())
    project32_avx2(v, basis, d, h);
  else
#endif
    project(v, basis, d, m, h);
  double hn = 0.0;
  for (int64_t j = 0; j < m; ++j) {
    hn += h[j] * h[j];
    out[j] = static_cast<float>(h[j]);
  }
  out[m] = static_cast<float>(std::sqrt(std::max(vn - hn, 0.0)));
}

int resolve(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

}  // namespace

PruneIndex build_prune_index(const float* x, const float* center, const float* xnorm, int64_t n, int64_t d) {
  PruneIndex p;
  if (d < kMinDim || n < kMinRows) return p;
  const int64_t m = std::min(kMaxSubspace, d / 4);
  // Covariance of an even sample of the centred rows (upper triangle, then mirrored).
  const int64_t stride = (n + kSampleRows - 1) / kSampleRows;
  std::vector<double> cov(static_cast<size_t>(d * d), 0.0), v(static_cast<size_t>(d));
  for (int64_t i = 0; i < n; i += stride) {
    centre(x + i * d, center, d, v.data());
    for (int64_t a = 0; a < d; ++a) {
      const double va = v[a];
      double* row = cov.data() + a * d;
      for (int64_t b = a; b < d; ++b) row[b] += va * v[b];
    }
  }
  double trace = 0.0;
  for (int64_t a = 0; a < d; ++a) {
    trace += cov[a * d + a];
    for (int64_t b = a + 1; b < d; ++b) cov[b * d + a] = cov[a * d + b];
  }
  if (!(trace > 0.0)) return p;  // all rows equal: nothing to prune with
  // Subspace iteration from a fixed pseudo-random start (deterministic for a given bank).
  std::vector<double> basis(static_cast<size_t>(d * m)), next(static_cast<size_t>(d * m));
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (auto& b : basis) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    b = static_cast<double>(static_cast<int64_t>(s >> 11)) / static_cast<double>(1ull << 52) - 1.0;
  }
  orthonormalise(basis, d, m);
  for (int it = 0; it < kIterations; ++it) {
    std::fill(next.begin(), next.end(), 0.0);
    for (int64_t a = 0; a < d; ++a)
      for (int64_t b = 0; b < d; ++b) {
        const double c = cov[a * d + b];
        const double* src = basis.data() + b * m;
        double* dst = next.data() + a * m;
        for (int64_t j = 0; j < m; ++j) dst[j] += c * src[j];
      }
    basis.swap(next);
    orthonormalise(basis, d, m);
  }
  // Energy: trace(B^T C B) / trace(C).
  double inside = 0.0;
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = 0; b < d; ++b) {
      const double c = cov[a * d + b];
      if (c == 0.0) continue;
      double dot = 0.0;
      for (int64_t j = 0; j < m; ++j) dot += basis[a * m + j] * basis[b * m + j];
      inside += c * dot;
    }
  p.energy = inside / trace;
  if (p.energy < kMinEnergy) return p;
  p.m = m;
  p.basis = std::move(basis);
  p.aug.resize(static_cast<size_t>(n * (m + 1)));
  p.augnorm.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    augment(v.data(), p.basis.data(), d, m, centre(x + i * d, center, d, v.data()), p.aug.data() + i * (m + 1));
    p.max_norm = std::max(p.max_norm, static_cast<double>(xnorm[i]));
  }
  row_sq_norms(p.aug.data(), n, m + 1, nullptr, p.augnorm.data());
  return p;
}

int64_t pruned_knn(const PruneIndex& p, const float* queries, int64_t nq, const float* x, const float* center,
                   const float* xnorm, int64_t n, int64_t d, int64_t k, int threads, float* dist, int64_t* idx,
                   int64_t* direct, bool bf16) {
  *direct = 0;
  const int64_t m = p.m, ma = p.m + 1, c1 = std::min(n, k + kFirst), c3 = std::min(n, kRange);
  if (m == 0 || c3 <= k + kFirst) {  // nothing to certify with: the full search
    *direct = exact_knn(queries, nq, x, center, xnorm, n, d, k, threads, dist, idx, nullptr, nullptr, bf16);
    return nq;
  }
  const int nt = resolve(threads);
  std::vector<float> qa(static_cast<size_t>(nq * ma));
  std::vector<double> margin(static_cast<size_t>(nq));
#pragma omp parallel num_threads(nt)
  {
    std::vector<double> v(static_cast<size_t>(d));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nq; ++i) {
      const double vn = centre(queries + i * d, center, d, v.data());
      // The stage-1 scores' rounding (their [h, t] vectors are float copies of double values: ~1e-7 of
      // the norms more, inside the factor 2 of expansion_margin).
      margin[i] = expansion_margin(ma, vn, p.max_norm);
      augment(v.data(), p.basis.data(), d, m, vn, qa.data() + i * ma);
    }
  }
  // Stage 1: each query's c1 smallest lower bounds (squared, as scored by the float search).
  std::vector<float> s1(static_cast<size_t>(nq * c1));
  std::vector<int64_t> i1(static_cast<size_t>(nq * c1));
  knn_candidates(qa.data(), nq, p.aug.data(), nullptr, p.augnorm.data(), n, ma, c1, nullptr, threads, s1.data(),
                 i1.data());
  // Stage 2: exact distances of those rows give kth, the k-th smallest.  Every other row's bound is >= the
  // last kept score (up to rounding, which the margin covers): if that exceeds kth^2, none can be closer.
  std::vector<float> need(static_cast<size_t>(nq), -1.0f);  // > 0: threshold score for stage 3
  auto better = [](const std::pair<float, int64_t>& u, const std::pair<float, int64_t>& v) { return u < v; };
#pragma omp parallel num_threads(nt)
  {
    std::vector<std::pair<float, int64_t>> cand(static_cast<size_t>(c1));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nq; ++i) {
      for (int64_t t = 0; t < c1; ++t) {
        const int64_t j = i1[i * c1 + t];
        cand[t] = {l2_exact(queries + i * d, x + j * d, d), j};
      }
      std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), better);
      const double kth2 = static_cast<double>(cand[k - 1].first) * cand[k - 1].first;
      if (static_cast<double>(s1[i * c1 + c1 - 1]) - margin[i] > kth2) {
        for (int64_t t = 0; t < k; ++t) {
          dist[i * k + t] = cand[t].first;
          idx[i * k + t] = cand[t].second;
        }
      } else {
        need[i] = static_cast<float>(kth2 + 2.0 * margin[i]) + std::numeric_limits<float>::min();
      }
    }
  }
  std::vector<int64_t> redo;
  for (int64_t i = 0; i < nq; ++i)
    if (need[i] > 0.0f) redo.push_back(i);
  if (redo.empty()) return 0;
  // Stage 3, for the rest: every row whose bound is below kth^2 (+ margin), by a threshold search in the
  // subspace (at most c3 rows per query), then their exact distances.
  const int64_t nr = static_cast<int64_t>(redo.size());
  std::vector<float> rqa(static_cast<size_t>(nr * ma)), init(static_cast<size_t>(nr));
  for (int64_t r = 0; r < nr; ++r) {
    std::copy(qa.data() + redo[r] * ma, qa.data() + (redo[r] + 1) * ma, rqa.data() + r * ma);
    init[r] = need[redo[r]];
  }
  std::vector<float> s3(static_cast<size_t>(nr * c3));
  std::vector<int64_t> i3(static_cast<size_t>(nr * c3));
  knn_candidates(rqa.data(), nr, p.aug.data(), nullptr, p.augnorm.data(), n, ma, c3, init.data(), threads,
                 s3.data(), i3.data());
  std::vector<char> settled(static_cast<size_t>(nr));
  rerank_threshold(queries, redo.data(), nr, i3.data(), c3, x, d, k, threads, dist, idx, settled.data());
  // Stage 4: the full search for queries whose threshold held too many rows.
  std::vector<int64_t> full;
  for (int64_t r = 0; r < nr; ++r)
    if (!settled[r]) full.push_back(redo[r]);
  if (!full.empty()) *direct = exact_knn_rows(queries, full, x, center, xnorm, n, d, k, threads, dist, idx, bf16);
  return static_cast<int64_t>(full.size());
}

}  // namespace detail
}  // namespace edgeuad
