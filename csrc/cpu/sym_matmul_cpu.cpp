// CPU kernel of diffeig::sym_matmul: out[b] = W[index[b]] @ Y[b] for symmetric W, read
// from W's lower triangle only (j <= i, as torch.linalg.eigh reads it). Every entry
// below the diagonal is used twice, W_ij y_j into row i and W_ij y_i into row j, so a
// product reads half of W from memory: the iterative solvers' products with W are
// bandwidth-bound, and a skinny (N x N) @ (N x m) GEMM reads all of W, about three times
// slower than a copy on these cores.
//
// Per matrix, Y is transposed into m contiguous columns and four rows of W are swept at
// once (each y_j and out_j loaded once for four W_ij). The column sweep is vectorized
// with `omp simd` reductions; an AVX2 + FMA build of the same code is chosen at run time
// where the CPU has it. Matrices are shared out between threads.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"

namespace diffeig {
namespace {

constexpr int64_t kRows = 4;

// Rows i0 .. i0 + rows - 1 of W (rows <= kRows) against every column c of yt (m x n,
// column-major Y), accumulating into ot (m x n).
template <typename T>
__attribute__((always_inline)) inline void row_block(const T* w, const T* yt, T* ot, int64_t n,
                                                     int64_t m, int64_t i0, int64_t rows) {
  const T* r0 = w + i0 * n;
  const T* r1 = rows > 1 ? r0 + n : r0;
  const T* r2 = rows > 2 ? r0 + 2 * n : r0;
  const T* r3 = rows > 3 ? r0 + 3 * n : r0;
  for (int64_t c = 0; c < m; ++c) {
    const T* y = yt + c * n;
    T* o = ot + c * n;
    // rows beyond `rows` alias row 0 with a zero weight: one branch-free sweep
    const T y0 = y[i0], y1 = rows > 1 ? y[i0 + 1] : T(0);
    const T y2 = rows > 2 ? y[i0 + 2] : T(0), y3 = rows > 3 ? y[i0 + 3] : T(0);
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t j = 0; j < i0; ++j) {
      const T w0 = r0[j], w1 = r1[j], w2 = r2[j], w3 = r3[j], yj = y[j];
      s0 += w0 * yj;
      s1 += w1 * yj;
      s2 += w2 * yj;
      s3 += w3 * yj;
      o[j] += w0 * y0 + w1 * y1 + w2 * y2 + w3 * y3;
    }
    // The lower triangle of the diagonal block (rows x rows), entry by entry.
    const T s[kRows] = {s0, s1, s2, s3};
    for (int64_t a = 0; a < rows; ++a) {
      const T* ra = r0 + a * n;
      T acc = s[a];
      for (int64_t b = 0; b < a; ++b) {
        acc += ra[i0 + b] * y[i0 + b];
        o[i0 + b] += ra[i0 + b] * y[i0 + a];
      }
      o[i0 + a] += acc + ra[i0 + a] * y[i0 + a];
    }
  }
}

template <typename T>
__attribute__((always_inline)) inline void one_matrix(const T* w, const T* y, T* out, int64_t n,
                                                      int64_t m, T* yt, T* ot) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < m; ++c) yt[c * n + i] = y[i * m + c];
  }
  std::fill(ot, ot + m * n, T(0));
  for (int64_t i0 = 0; i0 < n; i0 += kRows) {
    row_block<T>(w, yt, ot, n, m, i0, std::min(kRows, n - i0));
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < m; ++c) out[i * m + c] = ot[c * n + i];
  }
}

template <typename T>
void one_matrix_default(const T* w, const T* y, T* out, int64_t n, int64_t m, T* yt, T* ot) {
  one_matrix<T>(w, y, out, n, m, yt, ot);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define DIFFEIG_AVX2 1
template <typename T>
__attribute__((target("avx2,fma"))) void one_matrix_avx2(const T* w, const T* y, T* out,
                                                         int64_t n, int64_t m, T* yt, T* ot) {
  one_matrix<T>(w, y, out, n, m, yt, ot);
}

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

at::Tensor sym_matmul_cpu(const at::Tensor& W, const at::Tensor& Y,
                          const c10::optional<at::Tensor>& index) {
  check_floating(W, "W");
  TORCH_CHECK(W.dim() == 3 && W.size(1) == W.size(2),
              "W must be a batch of square matrices (B, n, n), got ", W.sizes());
  TORCH_CHECK(Y.dim() == 3, "Y must have shape (b, n, m), got ", Y.sizes());
  TORCH_CHECK(Y.scalar_type() == W.scalar_type(), "Y must be ", W.scalar_type(), " as W, got ",
              Y.scalar_type());
  check_same_device(W, Y, "W", "Y");
  TORCH_CHECK(W.device().is_cpu(), "W must be a CPU tensor here, got ", W.device());
  const int64_t n = W.size(-1), m = Y.size(-1), b = Y.size(0);
  TORCH_CHECK(Y.size(1) == n, "Y must have n = ", n, " rows (W's size), got ", Y.size(1));
  at::Tensor idx;
  if (index.has_value()) {
    idx = index->contiguous();
    TORCH_CHECK(idx.scalar_type() == at::kLong, "index must be int64, got ", idx.scalar_type());
    check_same_device(W, idx, "W", "index");
    TORCH_CHECK(idx.dim() == 1 && idx.size(0) == b, "index must have shape (b,) with b = ", b,
                " (Y's batch), got ", idx.sizes());
    if (b > 0) {
      const auto lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi < W.size(0), "index must lie in [0, ", W.size(0),
                  ") (W's batch), got values in [", lo, ", ", hi, "]");
    }
  } else {
    TORCH_CHECK(W.size(0) == b, "Y must have W's batch size ", W.size(0),
                " when index is None, got ", b);
  }
  auto out = at::empty({b, n, m}, Y.options());
  if (out.numel() == 0) return out;
  const auto w = W.contiguous();
  const auto y = Y.contiguous();
  const int64_t* ix = index.has_value() ? idx.const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "sym_matmul_cpu", [&] {
    auto fn = &one_matrix_default<scalar_t>;
#ifdef DIFFEIG_AVX2
    if (has_avx2()) fn = &one_matrix_avx2<scalar_t>;
#endif
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> work(2 * n * m);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t src = ix ? ix[t] : t;
        fn(wp + src * n * n, yp + t * n * m, op + t * n * m, n, m, work.data(),
           work.data() + n * m);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CPU, m) { m.impl("sym_matmul", &sym_matmul_cpu); }

}  // namespace diffeig
