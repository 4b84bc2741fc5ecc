// Register-only multiply-add loops that measure one thread's peak (see flops_probe.hpp).
#include "edgeuad/flops_probe.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <chrono>
#include <stdexcept>

namespace edgeuad {
namespace {

constexpr long kChunk = 1 << 20;  // iterations between clock reads (12 instructions each)

#if defined(__x86_64__) && defined(__GNUC__)
// The 12 accumulators' lanes summed (stored, not _mm512_reduce_add_ps: GCC 12 warns inside it, and CI
// builds with -Werror).
__attribute__((target("avx512f"))) inline float sum16(const __m512 (&c)[12]) {
  __m512 s = c[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_ps(s, c[j]);
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  float t = 0.0f;
  for (float v : out) t += v;
  return t;
}

// Each loop keeps 12 accumulators live; the empty asm on one operand stops the compiler from hoisting or
// folding the chain (the values are never read, only summed at the end so the work is not dead).
__attribute__((target("avx512f"), noinline)) float loop_avx512(long n) {
  __m512 c[12];
  for (auto& v : c) v = _mm512_setzero_ps();
  __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(1e-9f);
  for (long i = 0; i < n; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) c[j] = _mm512_fmadd_ps(a, b, c[j]);
    __asm__ volatile("" : "+v"(a));
  }
  return sum16(c);
}

__attribute__((target("avx512f,avx512bf16"), noinline)) float loop_bf16(long n) {
  __m512 c[12];
  for (auto& v : c) v = _mm512_setzero_ps();
  __m512bh a = (__m512bh)_mm512_set1_epi32(0x3F803F80), b = (__m512bh)_mm512_set1_epi32(0x30003000);
  for (long i = 0; i < n; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) c[j] = _mm512_dpbf16_ps(c[j], a, b);
    __asm__ volatile("" : "+v"(a));
  }
  return sum16(c);
}

__attribute__((target("avx2,fma"), noinline)) float loop_avx2(long n) {
  __m256 c[12];
  for (auto& v : c) v = _mm256_setzero_ps();
  __m256 a = _mm256_set1_ps(1.0f), b = _mm256_set1_ps(1e-9f);
  for (long i = 0; i < n; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) c[j] = _mm256_fmadd_ps(a, b, c[j]);
    __asm__ volatile("" : "+x"(a));
  }
  __m256 s = c[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, c[j]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  return out[0];
}
#endif

}  // namespace

double flops_probe(const std::string& kind, double seconds) {
  if (!(seconds > 0.0 && seconds <= 10.0)) throw std::invalid_argument("seconds must be in (0, 10]");
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  float (*loop)(long) = nullptr;
  double flop = 0.0;  // per loop iteration: 12 instructions x lanes x 2 (x 2 for bf16 pairs)
  if (kind == "avx512" && __builtin_cpu_supports("avx512f")) {
    loop = loop_avx512;
    flop = 12.0 * 16 * 2;
  } else if (kind == "bf16" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16")) {
    loop = loop_bf16;
    flop = 12.0 * 16 * 4;
  } else if (kind == "avx2" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    loop = loop_avx2;
    flop = 12.0 * 8 * 2;
  }
  if (!loop)
    throw std::invalid_argument("flops_probe: kind must be 'avx512', 'bf16' or 'avx2' and supported by this CPU, got '" +
                                kind + "'");
  volatile float sink = loop(kChunk / 8);  // warm-up: clocks up, code in cache
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  long iters = 0;
  double elapsed = 0.0;
  do {
    sink = sink + loop(kChunk);
    iters += kChunk;
    elapsed = std::chrono::duration<double>(clock::now() - t0).count();
  } while (elapsed < seconds);
  (void)sink;
  return flop * static_cast<double>(iters) / elapsed / 1e9;
#else
  throw std::invalid_argument("flops_probe: kind must be 'avx512', 'bf16' or 'avx2' and supported by this CPU "
                              "(x86-64 only), got '" + kind + "'");
#endif
}

}  // namespace edgeuad
