// One row of ncut_grad_assemble, shared by its kernel and the fused NCut backward:
// o[j] = -c[i] c[j] (P[i] . V[j] + P[j] . V[i]) / 2 + (g[i] + g[j]) / 2.
// Pt and Vt are (k, n), so the loops over j are contiguous and vectorize.
#pragma once

#include <cstdint>

namespace diffeig {

template <typename scalar_t>
inline void assemble_row(const scalar_t* __restrict__ Pt, const scalar_t* __restrict__ Vt,
                         const scalar_t* __restrict__ c, const scalar_t* __restrict__ g,
                         scalar_t* __restrict__ o, int64_t i, int64_t n, int64_t k) {
  for (int64_t j = 0; j < n; ++j) o[j] = scalar_t(0);
  for (int64_t s = 0; s < k; ++s) {
    const scalar_t p_is = Pt[s * n + i];
    const scalar_t v_is = Vt[s * n + i];
    const scalar_t* __restrict__ vs = Vt + s * n;
    const scalar_t* __restrict__ ps = Pt + s * n;
    for (int64_t j = 0; j < n; ++j) o[j] += p_is * vs[j] + v_is * ps[j];
  }
  const scalar_t ci = scalar_t(-0.5) * c[i];
  const scalar_t gi = g[i];
  for (int64_t j = 0; j < n; ++j) o[j] = ci * c[j] * o[j] + scalar_t(0.5) * (gi + g[j]);
}

}  // namespace diffeig
