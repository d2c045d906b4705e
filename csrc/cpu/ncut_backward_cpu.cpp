// CPU kernel of diffeig::ncut_backward: the O(N^2 k) NCut backward of one graph per
// task. V (n x n) is read from memory once: the second pass over it (V M) hits the
// cache, and dL/dW is written once. The math is _reference.ncut_backward's.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"
#include "assemble_row.h"

namespace diffeig {
namespace {

// Eight independent partial sums: the compiler vectorizes this without -ffast-math.
template <typename T>
inline T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int u = 0; u < 8; ++u) acc[u] += a[j + u] * b[j + u];
  }
  T s = 0;
  for (; j < n; ++j) s += a[j] * b[j];
  for (int u = 0; u < 8; ++u) s += acc[u];
  return s;
}

// Vt = V^T, row-major: row s is eigenvector s. torch.linalg.eigh returns V in LAPACK's
// column-major layout, so Vt is V's own memory and nothing is copied.
template <typename T>
void ncut_backward_one(const T* __restrict__ Vt, const T* __restrict__ lam,
                       const T* __restrict__ deg, const T* __restrict__ gZ,
                       const T* __restrict__ gl, bool normalized, double rtol, double atol,
                       int64_t n, int64_t k, T* __restrict__ out) {
  const int64_t R = normalized ? 2 * k : k;
  std::vector<T> buf(static_cast<size_t>((2 * k + 2 * R) * n + 3 * n));
  T* Xt = buf.data();     // (k, n): V^T gU, transposed
  T* gUt = Xt + k * n;    // (k, n)
  T* Mt = gUt + k * n;    // (R, n): M, then diag(l) M when normalized
  T* Pt = Mt + R * n;     // (R, n): V M and V diag(l) M, transposed
  T* c = Pt + R * n;      // (n): scale of the assembled gradient
  T* g = c + n;           // (n): its row / column term
  T* dis = g + n;         // (n): D^-1/2
  const T* Vk = Vt;       // (k, n): the first k eigenvectors are Vt's first rows

  for (int64_t i = 0; i < n; ++i) {
    dis[i] = normalized ? T(1) / std::sqrt(deg[i]) : T(1);
    for (int64_t s = 0; s < k; ++s) gUt[s * n + i] = gZ[i * k + s] * dis[i];
  }
  // X[i, s] = V[:, i] . gU[:, s]: one pass over the rows of Vt.
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t s = 0; s < k; ++s) Xt[s * n + i] = dot(Vt + i * n, gUt + s * n, n);
  }
  // M = K^T[:, :k] o X with masked reciprocal gaps, diag(gl) on the diagonal.
  T lmax = 0;
  for (int64_t i = 0; i < n; ++i) lmax = std::max(lmax, std::abs(lam[i]));
  const T thr = static_cast<T>(atol + rtol * static_cast<double>(lmax));
  for (int64_t s = 0; s < k; ++s) {
    for (int64_t i = 0; i < n; ++i) {
      T m;
      if (i == s) {
        m = gl[s];
      } else {
        const T d = lam[s] - lam[i];
        m = (d == T(0) || std::abs(d) < thr) ? T(0) : Xt[s * n + i] / d;
      }
      Mt[s * n + i] = m;
      if (normalized) Mt[(k + s) * n + i] = lam[i] * m;
    }
  }
  // [P, Q] = V [M, diag(l) M] as axpys over the rows of Vt, now in cache.
  std::fill(Pt, Pt + R * n, T(0));
  for (int64_t j = 0; j < n; ++j) {
    const T* __restrict__ row = Vt + j * n;
    for (int64_t r = 0; r < R; ++r) {
      const T coef = Mt[r * n + j];
      if (coef == T(0)) continue;
      T* __restrict__ p = Pt + r * n;
      for (int64_t i = 0; i < n; ++i) p[i] += coef * row[i];
    }
  }
  // Chain rule through the degrees (see diffeig/_reference.py: ncut_backward).
  for (int64_t i = 0; i < n; ++i) {
    T gL_ii = 0;
    for (int64_t s = 0; s < k; ++s) gL_ii += Pt[s * n + i] * Vk[s * n + i];
    if (normalized) {
      T gLL = 0, zg = 0;
      for (int64_t s = 0; s < k; ++s) {
        gLL += Pt[s * n + i] * Vk[s * n + i] * lam[s] + Vk[s * n + i] * Pt[(k + s) * n + i];
        zg += gZ[i * k + s] * Vk[s * n + i];
      }
      gLL *= T(0.5);
      const T d3 = dis[i] * dis[i] * dis[i];
      const T s_i = T(2) * (gL_ii - gLL) / dis[i];
      g[i] = T(0.5) * d3 * (s_i - zg);
      c[i] = dis[i];
    } else {
      g[i] = gL_ii;
      c[i] = T(1);
    }
  }
  for (int64_t i = 0; i < n; ++i) assemble_row(Pt, Vk, c, g, out + i * n, i, n, k);
}

at::Tensor ncut_backward_cpu(const at::Tensor& V, const at::Tensor& eigenvalues,
                             const at::Tensor& degree, const at::Tensor& grad_Z,
                             const at::Tensor& grad_eigenvalues, bool normalized,
                             double gap_rtol, double gap_atol) {
  const auto shapes = check_ncut_backward_args(V, eigenvalues, degree, grad_Z, grad_eigenvalues,
                                               gap_rtol, gap_atol);
  TORCH_CHECK(V.device().is_cpu(), "V must be a CPU tensor here, got ", V.device());
  auto out = at::empty(V.sizes(), V.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const auto vt = V.mT().contiguous();  // free for eigh's column-major output
  const auto l = eigenvalues.contiguous();
  const auto d = degree.contiguous();
  const auto gz = grad_Z.contiguous();
  const auto gl = grad_eigenvalues.contiguous();
  const int64_t n = shapes.n, k = shapes.k;
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "ncut_backward_cpu", [&] {
    const auto* pv = vt.const_data_ptr<scalar_t>();
    const auto* pl = l.const_data_ptr<scalar_t>();
    const auto* pd = d.const_data_ptr<scalar_t>();
    const auto* pz = gz.const_data_ptr<scalar_t>();
    const auto* pg = gl.const_data_ptr<scalar_t>();
    auto* po = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, shapes.batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        ncut_backward_one<scalar_t>(pv + b * n * n, pl + b * n, pd + b * n, pz + b * n * k,
                                    pg + b * k, normalized, gap_rtol, gap_atol, n, k,
                                    po + b * n * n);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CPU, m) { m.impl("ncut_backward", &ncut_backward_cpu); }

}  // namespace diffeig
