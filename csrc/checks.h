// Argument checks shared by the CPU and CUDA kernels. Each names the argument
// and what was received, so that a user error reads as one.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/accumulate.h>

namespace diffeig {

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* name_a,
                              const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), name_a, " and ", name_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_batch(const at::Tensor& t, at::IntArrayRef batch, int64_t trailing,
                        const char* name, const char* expected) {
  TORCH_CHECK(t.dim() == static_cast<int64_t>(batch.size()) + trailing &&
                  t.sizes().slice(0, batch.size()) == batch,
              name, " must have shape ", expected, " with batch shape ", batch, ", got ",
              t.sizes());
}

struct CoreShapes {
  int64_t batch;
  int64_t n;
  int64_t k;
};

// Shared by eigh_backward_core on every device.
inline CoreShapes check_core_args(const at::Tensor& eigenvalues, const at::Tensor& X,
                                  const c10::optional<at::Tensor>& grad_eigenvalues,
                                  double gap_rtol, double gap_atol) {
  check_floating(eigenvalues, "eigenvalues");
  TORCH_CHECK(eigenvalues.dim() >= 1, "eigenvalues must have shape (*, n), got ",
              eigenvalues.sizes());
  TORCH_CHECK(X.dim() == eigenvalues.dim() + 1, "X must have shape (*, n, k), got ", X.sizes(),
              " for eigenvalues of shape ", eigenvalues.sizes());
  const auto batch = eigenvalues.sizes().slice(0, eigenvalues.dim() - 1);
  const int64_t n = eigenvalues.size(-1);
  check_batch(X, batch, 2, "X", "(*, n, k)");
  TORCH_CHECK(X.size(-2) == n, "X must have n = ", n, " rows, got ", X.size(-2));
  TORCH_CHECK(X.size(-1) <= n, "X must have at most n = ", n, " columns, got ", X.size(-1));
  TORCH_CHECK(at::toRealValueType(X.scalar_type()) == eigenvalues.scalar_type(),
              "X must be ", eigenvalues.scalar_type(), " or its complex type, got ",
              X.scalar_type());
  check_same_device(eigenvalues, X, "eigenvalues", "X");
  if (grad_eigenvalues.has_value()) {
    const auto& gl = *grad_eigenvalues;
    check_batch(gl, batch, 1, "grad_eigenvalues", "(*, k)");
    TORCH_CHECK(gl.size(-1) == X.size(-1), "grad_eigenvalues must have k = ", X.size(-1),
                " entries, got ", gl.size(-1));
    TORCH_CHECK(gl.scalar_type() == eigenvalues.scalar_type(), "grad_eigenvalues must be ",
                eigenvalues.scalar_type(), ", got ", gl.scalar_type());
    check_same_device(eigenvalues, gl, "eigenvalues", "grad_eigenvalues");
  }
  TORCH_CHECK(gap_rtol >= 0 && gap_atol >= 0,
              "gap_rtol and gap_atol must be non-negative, got ", gap_rtol, " and ", gap_atol);
  return {c10::multiply_integers(batch), n, X.size(-1)};
}

inline void check_laplacian_args(const at::Tensor& W) {
  check_floating(W, "W");
  TORCH_CHECK(W.dim() >= 2 && W.size(-1) == W.size(-2),
              "W must be a batch of square matrices (*, n, n), got ", W.sizes());
}

struct AssembleShapes {
  int64_t batch;
  int64_t n;
  int64_t k;
};

inline AssembleShapes check_assemble_args(const at::Tensor& P, const at::Tensor& V,
                                          const at::Tensor& scale, const at::Tensor& diag_term) {
  check_floating(P, "P");
  TORCH_CHECK(P.dim() >= 2, "P must have shape (*, n, k), got ", P.sizes());
  TORCH_CHECK(V.sizes() == P.sizes(), "V must have the shape of P ", P.sizes(), ", got ",
              V.sizes());
  const auto batch = P.sizes().slice(0, P.dim() - 2);
  check_batch(scale, batch, 1, "scale", "(*, n)");
  check_batch(diag_term, batch, 1, "diag_term", "(*, n)");
  TORCH_CHECK(scale.size(-1) == P.size(-2) && diag_term.size(-1) == P.size(-2),
              "scale and diag_term must have n = ", P.size(-2), " entries, got ",
              scale.size(-1), " and ", diag_term.size(-1));
  for (const auto* t : {&V, &scale, &diag_term}) {
    TORCH_CHECK(t->scalar_type() == P.scalar_type(),
                "P, V, scale and diag_term must share one dtype, got ", P.scalar_type(),
                " and ", t->scalar_type());
    check_same_device(P, *t, "P", "V, scale and diag_term");
  }
  return {c10::multiply_integers(batch), P.size(-2), P.size(-1)};
}

struct NcutBackwardShapes {
  int64_t batch;
  int64_t n;
  int64_t k;
};

inline NcutBackwardShapes check_ncut_backward_args(const at::Tensor& V, const at::Tensor& eigenvalues,
                                                   const at::Tensor& degree,
                                                   const at::Tensor& grad_Z,
                                                   const at::Tensor& grad_eigenvalues,
                                                   double gap_rtol, double gap_atol) {
  check_floating(V, "V");
  TORCH_CHECK(V.dim() >= 2 && V.size(-1) == V.size(-2),
              "V must be a batch of square matrices (*, n, n), got ", V.sizes());
  const auto batch = V.sizes().slice(0, V.dim() - 2);
  const int64_t n = V.size(-1);
  check_batch(eigenvalues, batch, 1, "eigenvalues", "(*, n)");
  check_batch(degree, batch, 1, "degree", "(*, n)");
  check_batch(grad_Z, batch, 2, "grad_Z", "(*, n, k)");
  check_batch(grad_eigenvalues, batch, 1, "grad_eigenvalues", "(*, k)");
  TORCH_CHECK(eigenvalues.size(-1) == n && degree.size(-1) == n && grad_Z.size(-2) == n,
              "eigenvalues, degree and grad_Z must have n = ", n, " rows");
  TORCH_CHECK(grad_Z.size(-1) <= n && grad_eigenvalues.size(-1) == grad_Z.size(-1),
              "grad_Z (*, n, k) and grad_eigenvalues (*, k) must agree on k <= n, got ",
              grad_Z.sizes(), " and ", grad_eigenvalues.sizes());
  for (const auto* t : {&eigenvalues, &degree, &grad_Z, &grad_eigenvalues}) {
    TORCH_CHECK(t->scalar_type() == V.scalar_type(),
                "eigenvalues, degree, grad_Z and grad_eigenvalues must have V's dtype ",
                V.scalar_type(), ", got ", t->scalar_type());
    check_same_device(V, *t, "V", "eigenvalues, degree, grad_Z and grad_eigenvalues");
  }
  TORCH_CHECK(gap_rtol >= 0 && gap_atol >= 0,
              "gap_rtol and gap_atol must be non-negative, got ", gap_rtol, " and ", gap_atol);
  return {c10::multiply_integers(batch), n, grad_Z.size(-1)};
}

struct CgShapes {
  int64_t batch;
  int64_t n;
  int64_t k;
};

inline CgShapes check_cg_step_args(const at::Tensor& Y, const at::Tensor& R, const at::Tensor& P,
                                   const at::Tensor& AP, const at::Tensor& rr,
                                   const at::Tensor& stop, const at::Tensor& active) {
  check_floating(Y, "Y");
  TORCH_CHECK(Y.dim() >= 2, "Y must have shape (*, n, k), got ", Y.sizes());
  for (const auto* t : {&R, &P, &AP}) {
    TORCH_CHECK(t->sizes() == Y.sizes(), "R, P and AP must have the shape of Y ", Y.sizes(),
                ", got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == Y.scalar_type(), "R, P and AP must have Y's dtype ",
                Y.scalar_type(), ", got ", t->scalar_type());
    check_same_device(Y, *t, "Y", "R, P and AP");
  }
  const auto batch = Y.sizes().slice(0, Y.dim() - 2);
  const int64_t k = Y.size(-1);
  for (const auto* t : {&rr, &stop, &active}) {
    check_batch(*t, batch, 1, "rr, stop and active", "(*, k)");
    TORCH_CHECK(t->size(-1) == k, "rr, stop and active must have k = ", k, " entries, got ",
                t->size(-1));
    check_same_device(Y, *t, "Y", "rr, stop and active");
  }
  TORCH_CHECK(rr.scalar_type() == Y.scalar_type() && stop.scalar_type() == Y.scalar_type(),
              "rr and stop must have Y's dtype ", Y.scalar_type(), ", got ", rr.scalar_type(),
              " and ", stop.scalar_type());
  TORCH_CHECK(active.scalar_type() == at::kBool, "active must be bool, got ",
              active.scalar_type());
  return {c10::multiply_integers(batch), Y.size(-2), k};
}

}  // namespace diffeig
