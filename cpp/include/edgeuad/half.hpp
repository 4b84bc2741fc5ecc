// IEEE-754 binary16 -> binary32 conversion without compiler intrinsics.
//
// No -march flags are allowed (one source tree serves x86 PCs and Jetsons), so
// F16C/NEON conversion instructions cannot be assumed.  The conversion below is
// branch-free (selects only), which lets GCC vectorise loops over it at -O3.
#pragma once

#include <cstdint>
#include <cstring>

namespace edgeuad {

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  // Normal numbers: rebias the exponent (15 -> 127).
  uint32_t normal = ((exp + 112u) << 23) | (man << 13);
  // Inf / NaN: exponent all ones.
  uint32_t infnan = 0x7f800000u | (man << 13);
  // Zero / subnormal: value = man * 2^-24, exact in float.
  float sub_f = static_cast<float>(man) * 5.9604644775390625e-08f;
  uint32_t sub;
  std::memcpy(&sub, &sub_f, sizeof(sub));
  uint32_t bits = exp == 0u ? sub : (exp == 31u ? infnan : normal);
  bits |= sign;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// Converts n half values to float (dst and src must not overlap).
inline void half_to_float(const uint16_t* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half_bits_to_float(src[i]);
}

}  // namespace edgeuad
