// Blocked brute-force k-NN: |q|^2 - 2 q.x + |x|^2 with precomputed norms.
//
// Tiles: QB queries x NB bank rows.  Each bank tile is packed transposed
// (d x NB) so the innermost loop runs over contiguous bank rows with a
// QT-query x JT-row register tile: plain multiply-adds that GCC vectorises at
// -O3 without -ffast-math (no float reduction has to be reassociated).
// On x86-64 an AVX2+FMA 6x16 intrinsics tile is selected at run time (no -march needed).
// The expansion loses precision when |q| >> |q - x| (hence the centring), and the final k (+4 spare)
// candidates are re-ranked with the direct sum of squares.
#include "edgeuad/bank_exact.hpp"

#include <omp.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <limits>
#include <utility>
#include <vector>

namespace edgeuad {
namespace detail {
namespace {

constexpr int64_t kQB = 64;   // queries per block (one OpenMP task; amortises the tile packing)
constexpr int64_t kNB = 256;  // bank rows per packed tile: d*NB*4 bytes (160 KiB at d=160)
constexpr int kSpare = 4;     // extra candidates kept for the exact re-ranking

struct Cand {
  float d;
  int64_t i;
};

// Sorted candidate list (ascending) of fixed capacity.
inline void insert_cand(Cand* c, int64_t cap, float d, int64_t i) {
  if (!(d < c[cap - 1].d)) return;
  int64_t p = cap - 1;
  while (p > 0 && c[p - 1].d > d) {
    c[p] = c[p - 1];
    --p;
  }
  c[p] = {d, i};
}

// Portable micro-kernel: dots[a][j] = q_a . P[:, j0 + j] for a < QT, j < JT (GCC vectorises the j loop).
template <int QT, int JT>
struct PlainKernel {
  static constexpr int kRows = QT;
  static constexpr int kCols = JT;
  static inline __attribute__((always_inline)) void run(const float* const* q, const float* panel, int64_t d,
                                                        int64_t j0, float (*dots)[JT]) {
    float acc[QT][JT] = {};
    for (int64_t dd = 0; dd < d; ++dd) {
      const float* p = panel + dd * kNB + j0;
      for (int a = 0; a < QT; ++a) {
        const float qv = q[a][dd];
        for (int j = 0; j < JT; ++j) acc[a][j] += qv * p[j];
      }
    }
    for (int a = 0; a < QT; ++a)
      for (int j = 0; j < JT; ++j) dots[a][j] = acc[a][j];
  }
};

// Scores one packed bank tile against a block of queries, updating candidates.  The JT-column
// slice of the panel (d x JT floats: 16-32 KiB) stays in L1 while every query group passes over it.
template <class K>
inline __attribute__((always_inline)) void tile_body(const float* const* qrows, const float* qn, int64_t nqb,
                                                     const float* panel, const float* xn, int64_t jb,
                                                     int64_t nbk, int64_t d, Cand* cands, int64_t cap) {
  constexpr int QT = K::kRows, JT = K::kCols;
  float dots[QT][JT];
  for (int64_t j0 = 0; j0 < nbk; j0 += JT) {
    const int64_t jn = std::min<int64_t>(JT, nbk - j0);
    const float* xnj = xn + jb + j0;
    for (int64_t qa = 0; qa < nqb; qa += QT) {
      const float* q[QT];
      for (int a = 0; a < QT; ++a) q[a] = qrows[std::min<int64_t>(qa + a, nqb - 1)];
      K::run(q, panel, d, j0, dots);
      for (int a = 0; a < QT && qa + a < nqb; ++a) {
        Cand* c = cands + (qa + a) * cap;
        const float qa_n = qn[qa + a], worst = c[cap - 1].d;
        float sc[JT];
        int any = 0;  // vectorised filter: most slices hold no candidate better than the current worst
        for (int j = 0; j < JT; ++j) {
          sc[j] = qa_n - 2.0f * dots[a][j] + (j < jn ? xnj[j < jn ? j : 0] : 0.0f);
          any |= (j < jn) & (sc[j] < worst);
        }
        if (!any) continue;
        for (int64_t j = 0; j < jn; ++j) insert_cand(c, cap, sc[j], jb + j0 + j);
      }
    }
  }
}

using TileFn = void (*)(const float* const*, const float*, int64_t, const float*, const float*, int64_t,
                        int64_t, int64_t, Cand*, int64_t);

void tile_generic(const float* const* qrows, const float* qn, int64_t nqb, const float* panel,
                  const float* xn, int64_t jb, int64_t nbk, int64_t d, Cand* cands, int64_t cap) {
  tile_body<PlainKernel<4, 8>>(qrows, qn, nqb, panel, xn, jb, nbk, d, cands, cap);
}

#if defined(__x86_64__) && defined(__GNUC__)
// AVX2+FMA 6x16 register tile (the classic SGEMM shape): 12 accumulators, 2 panel loads and
// 6 broadcasts per 12 FMAs, enough independent chains to hide FMA latency.  Selected at run
// time, so the module itself stays baseline x86-64.
struct Avx2Kernel {
  static constexpr int kRows = 6;
  static constexpr int kCols = 16;
  __attribute__((target("avx2,fma"))) static inline void run(const float* const* q, const float* panel,
                                                             int64_t d, int64_t j0, float (*dots)[16]) {
    __m256 c[6][2];
#pragma GCC unroll 6
    for (int a = 0; a < 6; ++a) c[a][0] = c[a][1] = _mm256_setzero_ps();
    const float* p = panel + j0;
    for (int64_t dd = 0; dd < d; ++dd, p += kNB) {
      const __m256 p0 = _mm256_loadu_ps(p), p1 = _mm256_loadu_ps(p + 8);
#pragma GCC unroll 6
      for (int a = 0; a < 6; ++a) {
        const __m256 qv = _mm256_broadcast_ss(q[a] + dd);
        c[a][0] = _mm256_fmadd_ps(qv, p0, c[a][0]);
        c[a][1] = _mm256_fmadd_ps(qv, p1, c[a][1]);
      }
    }
#pragma GCC unroll 6
    for (int a = 0; a < 6; ++a) {
      _mm256_storeu_ps(dots[a], c[a][0]);
      _mm256_storeu_ps(dots[a] + 8, c[a][1]);
    }
  }
};

__attribute__((target("avx2,fma"))) void tile_avx2(const float* const* qrows, const float* qn, int64_t nqb,
                                                   const float* panel, const float* xn, int64_t jb,
                                                   int64_t nbk, int64_t d, Cand* cands, int64_t cap) {
  tile_body<Avx2Kernel>(qrows, qn, nqb, panel, xn, jb, nbk, d, cands, cap);
}
#endif

// EDGEUAD_RT_PORTABLE=1 forces the portable tile: the path aarch64 (Jetson) always takes, so that
// x86 CI tests it too.
TileFn pick_tile_fn() {
  const char* portable = std::getenv("EDGEUAD_RT_PORTABLE");
  if (portable && portable[0] == '1') return tile_generic;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return tile_avx2;
#endif
  return tile_generic;
}

}  // namespace

void row_sq_norms(const float* x, int64_t n, int64_t d, const float* center, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* r = x + i * d;
    double s = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const double v = static_cast<double>(r[j]) - (center ? center[j] : 0.0f);
      s += v * v;
    }
    out[i] = static_cast<float>(s);
  }
}

float l2_exact(const float* a, const float* b, int64_t d) {
  double s = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double t = static_cast<double>(a[j]) - static_cast<double>(b[j]);
    s += t * t;
  }
  return static_cast<float>(std::sqrt(s));
}

void exact_knn(const float* queries, int64_t nq, const float* x, const float* center, const float* xnorm,
               int64_t n, int64_t d, int64_t k, int threads, float* dist, int64_t* idx) {
  static const TileFn tile = pick_tile_fn();
  const int nt = threads > 0 ? threads : omp_get_max_threads();
  const int64_t cap = std::min<int64_t>(k + kSpare, n);
  const int64_t nblocks = (nq + kQB - 1) / kQB;
  std::exception_ptr error;
  std::atomic<bool> failed{false};
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> panel;
    std::vector<Cand> cands;
    std::vector<float> qn(kQB), qc;
    try {
      panel.assign(d * kNB, 0.0f);
      qc.resize(kQB * d);
      cands.resize(kQB * cap);
    } catch (...) {
#pragma omp critical(edgeuad_exact_err)
      if (!error) error = std::current_exception();
      failed = true;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      if (failed) continue;  // e.g. out of memory in another thread
      const int64_t q0 = blk * kQB, nqb = std::min(kQB, nq - q0);
      const float* qrows[kQB];  // centred queries
      for (int64_t a = 0; a < nqb; ++a) {
        const float* src = queries + (q0 + a) * d;
        float* dst = qc.data() + a * d;
        for (int64_t dd = 0; dd < d; ++dd) dst[dd] = src[dd] - (center ? center[dd] : 0.0f);
        qrows[a] = dst;
      }
      row_sq_norms(qc.data(), nqb, d, nullptr, qn.data());
      std::fill(cands.begin(), cands.end(), Cand{std::numeric_limits<float>::infinity(), -1});
      for (int64_t jb = 0; jb < n; jb += kNB) {
        const int64_t nbk = std::min(kNB, n - jb);
        // Pack the tile transposed; columns past nbk stay as they are (ignored).
        for (int64_t j = 0; j < nbk; ++j) {
          const float* r = x + (jb + j) * d;
          for (int64_t dd = 0; dd < d; ++dd) panel[dd * kNB + j] = r[dd] - (center ? center[dd] : 0.0f);
        }
        tile(qrows, qn.data(), nqb, panel.data(), xnorm, jb, nbk, d, cands.data(), cap);
      }
      // Exact re-ranking of the kept candidates.
      for (int64_t a = 0; a < nqb; ++a) {
        Cand* c = cands.data() + a * cap;
        const float* q = queries + (q0 + a) * d;
        for (int64_t t = 0; t < cap; ++t) c[t].d = l2_exact(q, x + c[t].i * d, d);
        std::sort(c, c + cap, [](const Cand& u, const Cand& v) { return u.d < v.d || (u.d == v.d && u.i < v.i); });
        for (int64_t t = 0; t < k; ++t) {
          dist[(q0 + a) * k + t] = c[t].d;
          idx[(q0 + a) * k + t] = c[t].i;
        }
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace detail
}  // namespace edgeuad
