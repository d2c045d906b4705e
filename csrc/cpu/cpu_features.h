// Run-time CPU dispatch shared by the CPU kernels: where DIFFEIG_AVX2 is defined, a
// kernel may compile a second copy of its loops with __attribute__((target("avx2,fma")))
// and take it when has_avx2_fma() says the CPU runs it (the baseline build is SSE2).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define DIFFEIG_AVX2 1

namespace diffeig {

inline bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

}  // namespace diffeig
#endif
