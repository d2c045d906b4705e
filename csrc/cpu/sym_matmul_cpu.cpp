// CPU kernel of diffeig::sym_matmul: out[b] = W[index[b]] @ Y[b] for symmetric W, the
// iterative solvers' products (bandwidth-bound: a skinny (N x N) @ (N x m) GEMM runs at
// about a third of the memory bandwidth on these cores). From N = 512 on only W's lower
// triangle is read (j <= i, as torch.linalg.eigh reads it): every entry below the
// diagonal is used twice, W_ij y_j into row i and W_ij y_i into row j, so a product reads
// half of W. Below, whole rows are read (they stream faster than half rows at that
// size). For symmetric W both are the same numbers to rounding.
//
// Per matrix, Y is transposed into m contiguous columns; four rows of W are swept at
// once (each y_j and out_j loaded once for four W_ij), two columns per sweep. The
// loops are vectorized; an AVX2 + FMA build of the same code is chosen at run time where
// the CPU has it. Matrices are shared out between threads, and a selection (`index`) is
// multiplied in place, never copied.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "cpu_features.h"

namespace diffeig {
namespace {

constexpr int64_t kRows = 4;
// From this size on the lower triangle is read; below, whole rows (see one_matrix).
constexpr int64_t kTriangleFrom = 512;

// Rows i0 .. i0 + 3 of W's lower triangle left of their diagonal block, against columns
// y0 and y1 of Y (y1 == y0 for a single column): s += W[i0 + q, :i0] . y[:i0] into row
// i0 + q, and o[j] += sum_q W[i0 + q, j] y[i0 + q] into every row j < i0 (the mirrored
// upper triangle). Explicit accumulators, so that the reductions vectorize.
template <typename T>
__attribute__((always_inline)) inline void triangle_block(const T* w, const T* y0, const T* y1,
                                                          T* o0, T* o1, int64_t n, int64_t i0) {
  const T *r0 = w + i0 * n, *r1 = r0 + n, *r2 = r1 + n, *r3 = r2 + n;
  const T a0 = y0[i0], a1 = y0[i0 + 1], a2 = y0[i0 + 2], a3 = y0[i0 + 3];
  const T b0 = y1[i0], b1 = y1[i0 + 1], b2 = y1[i0 + 2], b3 = y1[i0 + 3];
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0, t0 = 0, t1 = 0, t2 = 0, t3 = 0;
  if (y1 != y0) {
#pragma omp simd reduction(+ : s0, s1, s2, s3, t0, t1, t2, t3)
    for (int64_t j = 0; j < i0; ++j) {
      const T w0 = r0[j], w1 = r1[j], w2 = r2[j], w3 = r3[j], u = y0[j], v = y1[j];
      s0 += w0 * u;
      s1 += w1 * u;
      s2 += w2 * u;
      s3 += w3 * u;
      t0 += w0 * v;
      t1 += w1 * v;
      t2 += w2 * v;
      t3 += w3 * v;
      o0[j] += w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3;
      o1[j] += w0 * b0 + w1 * b1 + w2 * b2 + w3 * b3;
    }
    o1[i0] += t0;
    o1[i0 + 1] += t1;
    o1[i0 + 2] += t2;
    o1[i0 + 3] += t3;
  } else {
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t j = 0; j < i0; ++j) {
      const T w0 = r0[j], w1 = r1[j], w2 = r2[j], w3 = r3[j], u = y0[j];
      s0 += w0 * u;
      s1 += w1 * u;
      s2 += w2 * u;
      s3 += w3 * u;
      o0[j] += w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3;
    }
  }
  o0[i0] += s0;
  o0[i0 + 1] += s1;
  o0[i0 + 2] += s2;
  o0[i0 + 3] += s3;
}

// The lower triangle of rows [i0, i1) (at most a block) within their diagonal block,
// and for rows not covered by triangle_block (the last n % kRows) also their part left
// of it: entry by entry.
template <typename T>
inline void triangle_rest(const T* w, const T* y, T* o, int64_t n, int64_t i0, int64_t i1,
                          int64_t from) {
  for (int64_t i = i0; i < i1; ++i) {
    const T* ri = w + i * n;
    T acc = 0;
    for (int64_t j = from; j < i; ++j) {
      acc += ri[j] * y[j];
      o[j] += ri[j] * y[i];
    }
    o[i] += acc + ri[i] * y[i];
  }
}

// out = W @ Y for one matrix; yt, ot: Y and the result as m contiguous columns.
template <typename T>
__attribute__((always_inline)) inline void one_matrix(const T* w, const T* y, T* out, int64_t n,
                                                      int64_t m, T* yt, T* ot) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < m; ++c) yt[c * n + i] = y[i * m + c];
  }
  if (n < kTriangleFrom) {
    // Whole rows, two columns per sweep. Below ~512 nodes, rows of a few KB stream from
    // memory faster than the triangle's half rows (2-core EPYC, N = 196, batch 256: 1.6
    // vs 2.3 ms per product with one column); above, the triangle's halved bytes win.
    for (int64_t c = 0; c < m; c += 2) {
      const T* y0 = yt + c * n;
      const T* y1 = y0 + n;
      for (int64_t i = 0; i < n; ++i) {
        const T* ri = w + i * n;
        T s0 = 0, s1 = 0;
        if (c + 1 < m) {
#pragma omp simd reduction(+ : s0, s1)
          for (int64_t j = 0; j < n; ++j) {
            s0 += ri[j] * y0[j];
            s1 += ri[j] * y1[j];
          }
          ot[(c + 1) * n + i] = s1;
        } else {
#pragma omp simd reduction(+ : s0)
          for (int64_t j = 0; j < n; ++j) s0 += ri[j] * y0[j];
        }
        ot[c * n + i] = s0;
      }
    }
  } else {
    std::fill(ot, ot + m * n, T(0));
    const int64_t full = n - n % kRows;
    for (int64_t c = 0; c < m; c += 2) {
      const bool two = c + 1 < m;
      const T* y0 = yt + c * n;
      const T* y1 = two ? y0 + n : y0;
      T* o0 = ot + c * n;
      T* o1 = two ? o0 + n : o0;
      for (int64_t i0 = 0; i0 < full; i0 += kRows) {
        triangle_block<T>(w, y0, y1, o0, o1, n, i0);
        triangle_rest<T>(w, y0, o0, n, i0, i0 + kRows, i0);
        if (two) triangle_rest<T>(w, y1, o1, n, i0, i0 + kRows, i0);
      }
      triangle_rest<T>(w, y0, o0, n, full, n, 0);
      if (two) triangle_rest<T>(w, y1, o1, n, full, n, 0);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < m; ++c) out[i * m + c] = ot[c * n + i];
  }
}

template <typename T>
void one_matrix_default(const T* w, const T* y, T* out, int64_t n, int64_t m, T* yt, T* ot) {
  one_matrix<T>(w, y, out, n, m, yt, ot);
}

#ifdef DIFFEIG_AVX2
template <typename T>
__attribute__((target("avx2,fma"))) void one_matrix_avx2(const T* w, const T* y, T* out,
                                                         int64_t n, int64_t m, T* yt, T* ot) {
  one_matrix<T>(w, y, out, n, m, yt, ot);
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
    if (has_avx2_fma()) fn = &one_matrix_avx2<scalar_t>;
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
