// Measured arithmetic peak of one thread (internal header): what the exact-search tiles are compared with.
#pragma once

#include <string>

namespace edgeuad {

// GFLOP/s of one thread running the exact-search tiles' instruction with nothing else to do: 12 independent
// accumulator chains (the 6x32 / 6x16 tiles' shape), register operands only, for about `seconds`.
// kind: "avx512" (vfmadd 512-bit: 32 FLOP), "bf16" (vdpbf16ps 512-bit: 64 FLOP), "avx2" (vfmadd 256-bit:
// 16 FLOP).  A VM's /proc/cpuinfo reports the base clock, and boost makes a base-clock peak too low: the
// AVX-512 tile measured 118% of it.  Throws std::invalid_argument for an unknown kind, a kind this CPU
// cannot run, or seconds outside (0, 10].
double flops_probe(const std::string& kind, double seconds);

}  // namespace edgeuad
