// Exact k-NN kernels shared by the memory bank (internal header, not installed).
#pragma once

#include <cstdint>
#include <vector>

namespace edgeuad {
namespace detail {

// The exact-search micro-kernel this process uses ("avx2-6x16" or "portable-4x8"): chosen once from
// the CPU's features, or forced portable with EDGEUAD_RT_PORTABLE=1.
const char* exact_kernel_name();
// True when that kernel is the AVX2+FMA one; the pruned search's projection follows the same choice.
bool avx2_kernels();
// True when exact_knn takes its candidates from the bf16 tile (AVX512_BF16, "avx512bf16-6x32"; off with
// EDGEUAD_RT_NO_BF16=1): approximate dots ranked by a certified lower bound, then the same exact re-ranking.
bool bf16_candidates();

// Squared L2 norms of n rows of (x - center) (n x d); center may be null (zero).
void row_sq_norms(const float* x, int64_t n, int64_t d, const float* center, float* out);

// Exact Euclidean distance between two d-vectors (direct sum of squares,
// no cancellation: used to refine the final candidates).
float l2_exact(const float* a, const float* b, int64_t d);

// The candidate search under exact_knn, without its re-ranking: per query the (up to) cap rows with the
// smallest expanded scores |q - c|^2 - 2 (q - c).(x - c) + xnorm (c = center, null: zero) that are below
// init_score[i] (null: +inf), ascending, nq x cap; unused slots keep (init_score[i], -1).  Every row left
// out scored >= the last kept slot's score (up to float rounding of the expansion).
void knn_candidates(const float* queries, int64_t nq, const float* x, const float* center, const float* xnorm,
                    int64_t n, int64_t d, int64_t cap, const float* init_score, int threads, float* score,
                    int64_t* idx);

// Brute-force k-NN of nq queries against n bank rows x, blocked into
// cache-sized tiles, OpenMP over query blocks.  Distances are computed
// relative to `center` (the bank mean; translation does not change them but
// shrinks the norms, and with them the cancellation in |q|^2 - 2q.x + |x|^2);
// xnorm holds |x - center|^2.  Writes Euclidean distances (ascending) and
// indices, nq x k each.  The k + 4 best-scored rows are re-ranked by direct differences, and the
// result is certified against the expansion's rounding (expansion_margin); a query that is not gets a
// direct-difference scan of every row.  Returns how many queries needed that scan.  With bf16_candidates()
// the candidates come from the bf16 tile, certified with bf16_margin; a query that is not gets a threshold
// pass of the same tile (every row whose bound is under its k-th kept distance, at most 64, re-ranked
// exactly; *second: how many queries took it) and, past 64 rows, the float32 search (*refined: how many).  bf16 = false: the float32 tile (bf16 is ignored where
// bf16_candidates() is false).
struct Bf16Bank;
int64_t exact_knn(const float* queries, int64_t nq, const float* x, const float* center, const float* xnorm,
                  int64_t n, int64_t d, int64_t k, int threads, float* dist, int64_t* idx,
                  int64_t* refined = nullptr, const Bf16Bank* pack = nullptr, bool bf16 = bf16_candidates(),
                  int64_t* second = nullptr);

// The bf16 tile's view of a bank, made once and passed to exact_knn (MemoryBank keeps it until the bank
// changes): the centred rows as packed bf16 tiles (empty above the shared pack limit: then every search
// packs per query block) and |x - center| per row.  Empty when bf16_candidates() is false.
struct Bf16Bank {
  std::vector<uint32_t> tiles;
  std::vector<float> xroot;
};
Bf16Bank pack_bf16_bank(const float* x, const float* center, const float* xnorm, int64_t n, int64_t d);

// After a threshold search (knn_candidates or the bf16 tile, started at each query's threshold score): query
// r is queries[rows[r]] and its kept rows ids[r * c3 ..] (-1: unused slot).  Where a slot was left unused
// (every row under the threshold was kept) and at least k rows were, the k nearest of them by exact
// distance go to dist/idx at row rows[r] and settled[r] = 1; otherwise settled[r] = 0.
void rerank_threshold(const float* queries, const int64_t* rows, int64_t nr, const int64_t* ids, int64_t c3,
                      const float* x, int64_t d, int64_t k, int threads, float* dist, int64_t* idx, char* settled);

// exact_knn for the queries queries[rows[r]] only, their answers written at those rows of dist/idx (the
// fallback both the pruned search and the bf16 pass end with).  Returns exact_knn's count.
int64_t exact_knn_rows(const float* queries, const std::vector<int64_t>& rows, const float* x, const float* center,
                       const float* xnorm, int64_t n, int64_t d, int64_t k, int threads, float* dist, int64_t* idx,
                       bool bf16);

// Bound on the float rounding error of one expanded score in d dimensions (squared-distance units), for
// a query of centred squared norm qn against rows of centred squared norm <= xn_max.
double expansion_margin(int64_t d, double qn, double xn_max);
// The same for the bf16 tile's lower bounds (their bf16 term is inside the scores): expansion_margin with
// room for the bf16 norms, plus an absolute term for values under float's smallest normal.
double bf16_margin(int64_t d, double qn, double xn_max);

// ---- exact search with a certified lower-bound prune (bank_prune.cpp) ----
//
// For an orthonormal basis B (d x m) of a subspace and a centred vector v, let h = B^T v and
// t = sqrt(|v|^2 - |h|^2) (the norm of v's part outside the subspace).  Then
//     |q - x|^2 = |h_q - h_x|^2 + |(q - x) outside|^2 >= |h_q - h_x|^2 + (t_q - t_x)^2
// (reverse triangle inequality outside the subspace): the squared distance between the (m+1)-vectors
// [h, t] is a lower bound of the true one, tight when the subspace holds most of the bank's variance.
// Where bf16 candidates run, the prune is used only on banks with at least this share of their variance in
// the subspace: the bf16 full search beat it on a PatchCore bottle bank (energy 0.943: 3.1 vs 3.7 ms per
// real frame, 1 thread), the prune beat the bf16 full search on bench_bank's clustered rows (1.000: 6.4 vs
// 17.8 ms at 10k rows, 47 vs 233 ms at 100k).
constexpr double kMinEnergyOverBf16 = 0.98;

struct PruneIndex {
  int64_t m = 0;               // subspace dimension; 0: pruning does not apply to this bank
  double energy = 0.0;         // fraction of the (sampled) bank variance inside the subspace
  std::vector<double> basis;   // d x m row-major, orthonormal columns (top principal directions)
  std::vector<float> aug;      // n x (m + 1): [h, t] per bank row
  std::vector<float> augnorm;  // |aug row|^2 (the stage-1 search's norms)
  double max_norm = 0.0;       // max |x - center|^2 (scale of the rounding margin)
};

// Principal subspace of (a sample of) the centred bank rows and the rows' [h, t] vectors; m = 0 when the
// bank is too small or too narrow for pruning to pay, or its variance is spread (random data).
PruneIndex build_prune_index(const float* x, const float* center, const float* xnorm, int64_t n, int64_t d);

// Same contract and result as exact_knn.  Stage 1 finds each query's k + 4 smallest lower bounds
// (knn_candidates in m + 1 dimensions); stage 2 computes their exact distances; a query is certified when the
// largest kept lower bound exceeds its k-th exact distance by a rounding margin (no other row can be
// closer); the others get a threshold search in the subspace for every row whose bound is under their k-th
// distance (at most 64), or when that overflows, the full search.  Returns how many queries were searched
// in full; *direct: how many of those the full search answered by direct differences (exact_knn).  bf16: what
// the full searches use (exact_knn's switch).
int64_t pruned_knn(const PruneIndex& p, const float* queries, int64_t nq, const float* x, const float* center,
                   const float* xnorm, int64_t n, int64_t d, int64_t k, int threads, float* dist, int64_t* idx,
                   int64_t* direct,
                   bool bf16 = bf16_candidates());

}  // namespace detail
}  // namespace edgeuad
