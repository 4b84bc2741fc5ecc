// Blocked brute-force k-NN: |q|^2 - 2 q.x + |x|^2 with precomputed norms.
//
// Tiles: QB queries x NB bank rows.  Each bank tile is packed transposed
// (d x NB) so the innermost loop runs over contiguous bank rows with a
// 4-query x JT-row register tile: plain multiply-adds that GCC vectorises at
// -O3 without -ffast-math (no float reduction has to be reassociated).
// On x86-64 an AVX2+FMA variant is selected at run time (no -march needed).
// The expansion loses precision when |q| >> |q - x| (hence the centring), and the final k (+4 spare)
// candidates are re-ranked with the direct sum of squares.
#include "edgeuad/bank_exact.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <utility>
#include <vector>

namespace edgeuad {
namespace detail {
namespace {

constexpr int64_t kQB = 64;   // queries per block (one OpenMP task; amortises the tile packing)
constexpr int64_t kNB = 256;  // bank rows per packed tile: d*NB*4 bytes (160 KiB at d=160)
constexpr int kQT = 4;        // queries per register tile
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

// dots[a][j] = q_a . P[:, j0 + j] for a < kQT, j < JT.
template <int JT>
inline __attribute__((always_inline)) void micro_tile(const float* const* q, const float* panel, int64_t d,
                                                      int64_t j0, float (*dots)[JT]) {
  float acc[kQT][JT] = {};
  for (int64_t dd = 0; dd < d; ++dd) {
    const float* p = panel + dd * kNB + j0;
    for (int a = 0; a < kQT; ++a) {
      const float qv = q[a][dd];
      for (int j = 0; j < JT; ++j) acc[a][j] += qv * p[j];
    }
  }
  for (int a = 0; a < kQT; ++a)
    for (int j = 0; j < JT; ++j) dots[a][j] = acc[a][j];
}

// Scores one packed bank tile against a block of queries, updating candidates.
template <int JT>
inline __attribute__((always_inline)) void tile_body(const float* const* qrows, const float* qn, int64_t nqb,
                                                     const float* panel, const float* xn, int64_t jb,
                                                     int64_t nbk, int64_t d, Cand* cands, int64_t cap) {
  float dots[kQT][JT];
  for (int64_t qa = 0; qa < nqb; qa += kQT) {
    const float* q[kQT];
    for (int a = 0; a < kQT; ++a) q[a] = qrows[std::min<int64_t>(qa + a, nqb - 1)];
    for (int64_t j0 = 0; j0 < nbk; j0 += JT) {
      micro_tile<JT>(q, panel, d, j0, dots);
      const int64_t jn = std::min<int64_t>(JT, nbk - j0);
      for (int a = 0; a < kQT && qa + a < nqb; ++a) {
        Cand* c = cands + (qa + a) * cap;
        const float qa_n = qn[qa + a], worst = c[cap - 1].d;
        const float* xnj = xn + jb + j0;
        float s[JT];
        int any = 0;  // vectorised filter: most tiles hold no candidate better than the current worst
        for (int j = 0; j < JT; ++j) {
          s[j] = qa_n - 2.0f * dots[a][j] + (j < jn ? xnj[j < jn ? j : 0] : 0.0f);
          any |= (j < jn) & (s[j] < worst);
        }
        if (!any) continue;
        for (int64_t j = 0; j < jn; ++j) insert_cand(c, cap, s[j], jb + j0 + j);
      }
    }
  }
}

using TileFn = void (*)(const float* const*, const float*, int64_t, const float*, const float*, int64_t,
                        int64_t, int64_t, Cand*, int64_t);

void tile_generic(const float* const* qrows, const float* qn, int64_t nqb, const float* panel,
                  const float* xn, int64_t jb, int64_t nbk, int64_t d, Cand* cands, int64_t cap) {
  tile_body<8>(qrows, qn, nqb, panel, xn, jb, nbk, d, cands, cap);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) void tile_avx2(const float* const* qrows, const float* qn, int64_t nqb,
                                                   const float* panel, const float* xn, int64_t jb,
                                                   int64_t nbk, int64_t d, Cand* cands, int64_t cap) {
  tile_body<16>(qrows, qn, nqb, panel, xn, jb, nbk, d, cands, cap);
}
#endif

TileFn pick_tile_fn() {
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
