// CPU kernel of diffeig::ncut_lanczos: the Fiedler pair of one graph's normalized cut by
// Lanczos on M = D^-1/2 W D^-1/2 (largest eigenvalue, the trivial vector D^1/2 1
// deflated), the whole iteration in one call.
//
// One graph has no batch to spread work over: per step the product W v (a bandwidth-
// bound GEMV, ~0.1 ms at N = 784) competes with the iteration's bookkeeping, which from
// Python cost as much again (dispatch of a dozen small ops). Here a step is the GEMV,
// two passes of classical Gram-Schmidt against every previous vector (full
// reorthogonalization: without it copies of the converged pair appear), and, at steps
// spaced by the residual's decay, the convergence test on the tridiagonal T: its two
// largest eigenvalues and the last component of the top eigenvector (implicit QL
// tracking one row of the rotations, O(j^2) for j steps). The product is an ATen call (the
// BLAS torch ships, its threads); Gram-Schmidt and the scaling are plain loops (an ATen
// call each cost more than their arithmetic); the scalars stay on the host.
//
// The stopping rule is LOBPCG's with eigenvalue_rtol on L / 2 = (I - M) / 2
// (diffeig._tolerances.eigenvalue_converged; diffeig/_reference.py: ncut_lanczos is the
// twin this kernel matches step for step): r / 2 <= tol, and (r / 2)^2 <= tol (l2 / 2)
// (gap / 2) or r / 2 <= floor, with r = |beta_j s_j| the residual of the Ritz pair,
// l2 = 1 - theta, gap = theta - theta_2. tol and floor are arguments: the caller's
// tolerances (diffeig._tolerances.stall_floor), never re-derived here.

#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "cpu_features.h"

namespace diffeig {
namespace {

// Implicit QL with Wilkinson shifts on the symmetric tridiagonal (d, e), e[i] = T[i, i + 1]
// (e[n - 1] unused): d becomes the eigenvalues. Each plane rotation of columns (i, i + 1)
// is passed to rotate(i, s, c), which applies it to whatever eigenvector data the caller
// keeps. Returns false if an eigenvalue took more than 60 sweeps (not seen in practice).
template <typename Rotate>
bool tridiagonal_ql(std::vector<double>& d, std::vector<double> e, Rotate rotate) {
  const int64_t n = static_cast<int64_t>(d.size());
  const double eps = std::numeric_limits<double>::epsilon();
  if (n > 0) e[n - 1] = 0.0;
  for (int64_t l = 0; l < n; ++l) {
    int iter = 0;
    int64_t m;
    do {
      for (m = l; m < n - 1; ++m) {
        if (std::abs(e[m]) <= eps * (std::abs(d[m]) + std::abs(d[m + 1]))) break;
      }
      if (m != l) {
        if (iter++ == 60) return false;
        // no hypot: |T| <= 1 here, and hypot costs 5x sqrt
        double g = (d[l + 1] - d[l]) / (2.0 * e[l]);
        double r = std::sqrt(g * g + 1.0);
        g = d[m] - d[l] + e[l] / (g + std::copysign(r, g));
        double s = 1.0, c = 1.0, p = 0.0;
        int64_t i;
        for (i = m - 1; i >= l; --i) {
          const double f = s * e[i], b = c * e[i];
          r = std::sqrt(f * f + g * g);
          e[i + 1] = r;
          if (r == 0.0) {  // underflow: deflate and start over
            d[i + 1] -= p;
            e[m] = 0.0;
            break;
          }
          s = f / r;
          c = g / r;
          g = d[i + 1] - p;
          r = (d[i] - g) * s + 2.0 * c * b;
          p = s * r;
          d[i + 1] = g + p;
          g = c * r - b;
          rotate(i, s, c);
        }
        if (r == 0.0 && i >= l) continue;
        d[l] -= p;
        e[l] = g;
        e[m] = 0.0;
      }
    } while (m != l);
  }
  return true;
}

struct Ritz {
  double theta, next;  // the largest eigenvalue of T, the second (NaN for a 1 x 1 T)
  int64_t top;         // its index in d
  double last;         // the last component of its unit eigenvector
  bool ok;
};

Ritz top_ritz(const std::vector<double>& alpha, const std::vector<double>& beta) {
  const int64_t j = static_cast<int64_t>(alpha.size());
  std::vector<double> d(alpha), e(j, 0.0), last(j, 0.0);
  std::copy(beta.begin(), beta.begin() + (j - 1), e.begin());
  last[j - 1] = 1.0;
  // the last row of the eigenvector matrix: O(1) per rotation
  const bool ok = tridiagonal_ql(d, e, [&](int64_t i, double s, double c) {
    const double f = last[i + 1];
    last[i + 1] = s * last[i] + c * f;
    last[i] = c * last[i] - s * f;
  });
  Ritz out{0, std::numeric_limits<double>::quiet_NaN(), 0, 0, ok};
  for (int64_t i = 1; i < j; ++i) {
    if (d[i] > d[out.top]) out.top = i;
  }
  out.theta = d[out.top];
  out.last = last[out.top];
  for (int64_t i = 0; i < j; ++i) {
    if (i != out.top && !(d[i] <= out.next)) out.next = d[i];  // max, NaN-seeded
  }
  return out;
}

// The unit eigenvector of T for its eigenvalue of index `top`: QL again, carrying the
// whole eigenvector matrix, stored by columns so that each rotation updates two
// contiguous columns (O(j^3) once, at the end).
std::vector<double> top_vector(const std::vector<double>& alpha, const std::vector<double>& beta,
                               int64_t top) {
  const int64_t j = static_cast<int64_t>(alpha.size());
  std::vector<double> d(alpha), e(j, 0.0), z(j * j, 0.0);
  std::copy(beta.begin(), beta.begin() + (j - 1), e.begin());
  for (int64_t i = 0; i < j; ++i) z[i * j + i] = 1.0;  // column i at z[i * j]
  tridiagonal_ql(d, e, [&](int64_t i, double s, double c) {
    double* zi = z.data() + i * j;
    double* zn = zi + j;
    for (int64_t k = 0; k < j; ++k) {
      const double f = zn[k];
      zn[k] = s * zi[k] + c * f;
      zi[k] = c * zi[k] - s * f;
    }
  });
  return std::vector<double>(z.begin() + top * j, z.begin() + (top + 1) * j);
}

// Steps until the next convergence test: each solves the tridiagonal (O(j^2): at j = 45
// as long as a product with a graph of 800 nodes), so tests are at most an eighth of the
// steps taken apart (every step for the first 15), sooner where the residual's decay
// since the last test says it reaches `target` (three quarters of that estimate: the
// residual falls faster than geometrically).
int64_t steps_to_next_check(double res, double last_res, int64_t spacing, int64_t steps,
                            double target) {
  const int64_t cap = std::max<int64_t>(1, steps / 8);
  if (!(last_res > res && res > target && spacing > 0)) return cap;
  const double rate = std::pow(res / last_res, 1.0 / static_cast<double>(spacing));
  const double need = std::log(target / res) / std::log(rate);
  const auto soon = static_cast<int64_t>(std::ceil(0.75 * need));
  return std::max<int64_t>(1, std::min<int64_t>(cap, soon));
}

bool converged(double theta, double next, double res, double tol, double floor) {
  const double rel = res / 2, l2 = (1 - theta) / 2;
  const double gap = std::isnan(next) ? (1 + theta) / 2 : (theta - next) / 2;
  return rel <= tol && (rel * rel <= tol * l2 * gap || rel <= floor);
}

// The vector kernels of a step, on raw rows (one graph: single-threaded; the rows are
// short and threads would cost more than the arithmetic). Dots accumulate in double.
template <typename T>
__attribute__((always_inline)) inline double dot_impl(const T* a, const T* b, int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) acc += static_cast<double>(a[k]) * static_cast<double>(b[k]);
  return acc;
}

// One pass of classical Gram-Schmidt: h = B v, v -= B^T h for the rows B (rows x n).
template <typename T>
__attribute__((always_inline)) inline void project_out_impl(const T* B, int64_t rows, int64_t n,
                                                            T* v, double* h) {
  for (int64_t i = 0; i < rows; ++i) h[i] = dot_impl(B + i * n, v, n);
  for (int64_t i = 0; i < rows; ++i) {
    const T c = static_cast<T>(h[i]);
    const T* b = B + i * n;
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) v[k] -= c * b[k];
  }
}

template <typename T>
double dot_default(const T* a, const T* b, int64_t n) {
  return dot_impl(a, b, n);
}
template <typename T>
void project_out_default(const T* B, int64_t rows, int64_t n, T* v, double* h) {
  project_out_impl(B, rows, n, v, h);
}
#ifdef DIFFEIG_AVX2
template <typename T>
__attribute__((target("avx2,fma"))) double dot_avx2(const T* a, const T* b, int64_t n) {
  return dot_impl(a, b, n);
}
template <typename T>
__attribute__((target("avx2,fma"))) void project_out_avx2(const T* B, int64_t rows, int64_t n,
                                                           T* v, double* h) {
  project_out_impl(B, rows, n, v, h);
}
#endif

template <typename T>
struct Vectors {
  double (*dot)(const T*, const T*, int64_t);
  void (*project_out)(const T*, int64_t, int64_t, T*, double*);
};

template <typename T>
Vectors<T> vectors() {
#ifdef DIFFEIG_AVX2
  if (has_avx2_fma()) return {&dot_avx2<T>, &project_out_avx2<T>};
#endif
  return {&dot_default<T>, &project_out_default<T>};
}

// The iteration (see the top of this file); x and info as the schema says.
template <typename T>
void lanczos(const at::Tensor& W, const at::Tensor& dis, const at::Tensor& u1,
             const at::Tensor& v0, double tol, double floor, int64_t m, const Vectors<T>& vec,
             at::Tensor& x,
             double* info) {
  const int64_t n = W.size(0);
  const T* s = dis.const_data_ptr<T>();
  // rows of Q: u1, then the Lanczos vectors; uninitialized (a zero-filled vector wrote
  // all m + 1 rows, 1.6 MB at N = 784, where a clustered graph uses 7 of them)
  const auto Qt = at::empty({m + 1, n}, W.options());
  T* const Qp = Qt.mutable_data_ptr<T>();
  std::vector<T> y(n);
  std::vector<double> h(m + 1);
  std::copy(u1.const_data_ptr<T>(), u1.const_data_ptr<T>() + n, Qp);
  T* q = Qp + n;
  std::copy(v0.const_data_ptr<T>(), v0.const_data_ptr<T>() + n, q);
  for (int pass = 0; pass < 2; ++pass) vec.project_out(Qp, 1, n, q, h.data());
  const T inv0 = static_cast<T>(1.0 / std::sqrt(vec.dot(q, q, n)));
  for (int64_t k = 0; k < n; ++k) q[k] *= inv0;
  // W v through ATen (the BLAS torch ships, its threads): the step's one large operation
  auto yt = at::from_blob(y.data(), {n}, W.options());
  auto vt = at::empty({n}, W.options());
  T* v = vt.mutable_data_ptr<T>();

  std::vector<double> alpha, beta;
  // the breakdown test at the rounding level of T (float32 vectors: its eps, not double's)
  const double eps = std::numeric_limits<T>::epsilon();
  double res = 0.0, last_res = std::numeric_limits<double>::quiet_NaN();
  Ritz ritz{};
  bool done = false;
  int64_t steps = 0, check = 1, last_check = 0;
  for (int64_t j = 0; j < m; ++j) {
    steps = j + 1;
    const T* qj = Qp + (j + 1) * n;
    for (int64_t k = 0; k < n; ++k) y[k] = s[k] * qj[k];
    at::mv_out(vt, W, yt);
    for (int64_t k = 0; k < n; ++k) v[k] *= s[k];  // v = M q_j
    // against u1 and q_0 .. q_j, twice; alpha from the first pass (the second changes it
    // by rounding only)
    vec.project_out(Qp, j + 2, n, v, h.data());
    const double a = h[j + 1];
    vec.project_out(Qp, j + 2, n, v, h.data());
    const double b = std::sqrt(vec.dot(v, v, n));
    alpha.push_back(a);
    beta.push_back(b);
    // b ~ 0: the Krylov space is invariant and its Ritz pairs are eigenpairs
    const bool invariant = b <= 10 * eps * std::max(1.0, std::abs(a));
    if (steps >= check || invariant || steps == m) {
      ritz = top_ritz(alpha, beta);
      res = std::abs(b * ritz.last);
      done = ritz.ok && (invariant || converged(ritz.theta, ritz.next, res, tol, floor));
      if (done || steps == m) break;
      check = steps + steps_to_next_check(res, last_res, steps - last_check, steps, 2 * tol);
      last_res = res;
      last_check = steps;
    }
    T* next = Qp + (j + 2) * n;
    const T inv = static_cast<T>(1.0 / b);
    for (int64_t k = 0; k < n; ++k) next[k] = v[k] * inv;
  }
  // the Ritz vector x = sum_i c_i q_i, normalized
  const auto c = top_vector(alpha, beta, ritz.top);
  std::vector<double> acc(n, 0.0);
  for (int64_t i = 0; i < steps; ++i) {
    const T* qi = Qp + (i + 1) * n;
    for (int64_t k = 0; k < n; ++k) acc[k] += c[i] * static_cast<double>(qi[k]);
  }
  double norm = 0.0;
  for (int64_t k = 0; k < n; ++k) norm += acc[k] * acc[k];
  T* xo = x.mutable_data_ptr<T>();
  for (int64_t k = 0; k < n; ++k) xo[k] = static_cast<T>(acc[k] / std::sqrt(norm));
  info[0] = ritz.theta;
  info[1] = ritz.next;
  info[2] = res;
  info[3] = static_cast<double>(steps);
  info[4] = done ? 1.0 : 0.0;
}

std::tuple<at::Tensor, at::Tensor> ncut_lanczos_cpu(const at::Tensor& W, const at::Tensor& dis,
                                                    const at::Tensor& u1, const at::Tensor& v0,
                                                    double tol, double floor,
                                                    int64_t max_steps) {
  check_floating(W, "W");
  TORCH_CHECK(W.dim() == 2 && W.size(0) == W.size(1), "W must be one square matrix (n, n), got ",
              W.sizes());
  TORCH_CHECK(W.device().is_cpu(), "W must be a CPU tensor here, got ", W.device());
  const int64_t n = W.size(0);
  TORCH_CHECK(n >= 2, "W must have n >= 2 nodes, got ", n);
  for (const auto& [t, name] : {std::pair{dis, "dis"}, {u1, "u1"}, {v0, "v0"}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, " must have shape (", n, "), got ",
                t.sizes());
    TORCH_CHECK(t.scalar_type() == W.scalar_type(), name, " must be ", W.scalar_type(),
                ", got ", t.scalar_type());
    check_same_device(W, t, "W", name);
  }
  TORCH_CHECK(tol > 0, "tol must be positive, got ", tol);
  TORCH_CHECK(floor >= 0, "floor must be non-negative, got ", floor);
  TORCH_CHECK(max_steps >= 1, "max_steps must be >= 1, got ", max_steps);

  const auto w = W.contiguous();
  const int64_t m = std::min(max_steps, n - 1);  // Lanczos vectors (orthogonal to u1)
  auto x = at::empty({n}, W.options());
  auto info = at::empty({5}, W.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "ncut_lanczos_cpu", [&] {
    Vectors<scalar_t> vec = vectors<scalar_t>();
    lanczos<scalar_t>(w, dis.contiguous(), u1.contiguous(), v0.contiguous(), tol, floor, m, vec, x,
                      info.mutable_data_ptr<double>());
  });
  return {x, info};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CPU, m) { m.impl("ncut_lanczos", &ncut_lanczos_cpu); }

}  // namespace diffeig
