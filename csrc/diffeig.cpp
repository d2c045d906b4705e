// The diffeig operator library: every schema is declared here, once.
//
// Kernels live in csrc/cpu/<op>_cpu.cpp and csrc/cuda/<op>_cuda.cu and register
// themselves with TORCH_LIBRARY_IMPL. Autograd formulas, fake (meta) kernels and
// vmap rules are registered from Python (diffeig/_ops.py), so that the ops work
// under torch.compile, torch.func and torch.library.opcheck.

#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing diffeig._C loads this shared object, which runs the static
// registrations below. The module itself carries no Python functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "diffeig native kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(diffeig, m) {
  // M[..., i, s] = X[..., i, s] / (l[s] - l[i]) for i != s, masked to 0 where
  // |l[s] - l[i]| < gap_atol + gap_rtol * max|l| (or the gap is exactly 0);
  // M[..., s, s] = grad_eigenvalues[..., s]. X holds the first k columns of
  // V^H gV, so M is the middle factor of the eigenvector backward:
  // gA = herm(V M V[..., :k]^H).
  m.def(
      "eigh_backward_core(Tensor eigenvalues, Tensor X, Tensor? grad_eigenvalues, "
      "float gap_rtol, float gap_atol) -> Tensor");
  // Degrees d = W 1 and the Laplacian: D - W, or I - D^-1/2 W D^-1/2 when
  // normalized. Returns (L, d).
  m.def("laplacian(Tensor W, bool normalized) -> (Tensor, Tensor)");
  // [min, max, max |W - W^T|] over a non-empty batch of square matrices (*, n, n), as
  // float64; min and max are NaN when W holds a NaN. The input checks' one pass over W
  // (CPU kernel; elsewhere the same numbers from ATen reductions).
  m.def("symmetry_stats(Tensor W) -> Tensor");
  // [missing, max |v_ij - v_ji|] (float64) of a sparse pattern in CSR form (crow (n + 1),
  // col and values (nnz), sorted unique columns per row): how many stored (i, j) lack a
  // stored (j, i), and the largest difference over the pairs that have both. The sparse
  // path's symmetry check (CPU kernel, one pass; elsewhere its twin sorts the columns).
  m.def("sparse_mirror_stats(Tensor crow, Tensor col, Tensor values) -> Tensor");
  // out[b] = W[index[b]] @ Y[b] (index None: W[b] @ Y[b]) for symmetric W (B, n, n) and
  // Y (b, n, m): the iterative solvers' products. From n = 512 on the CPU kernel reads
  // W's lower triangle only (as torch.linalg.eigh does), half of W's bytes, and whole rows
  // below; elsewhere a batched matmul of the selected matrices. The same numbers for
  // symmetric W.
  m.def("sym_matmul(Tensor W, Tensor Y, Tensor? index=None) -> Tensor");
  // out[i, j] = -scale[i] scale[j] (P[i] . V[j] + P[j] . V[i]) / 2 + (diag_term[i] + diag_term[j]) / 2:
  // the gradient of an NCut affinity assembled from rank-k factors, written once.
  m.def("ncut_grad_assemble(Tensor P, Tensor V, Tensor scale, Tensor diag_term) -> Tensor");
  // The whole NCut backward for one batch of graphs, given the forward's full
  // eigenvectors V (first k columns sign-fixed), eigenvalues and degrees: dL/dW from
  // the cotangents of the k returned eigenvectors (grad_Z) and eigenvalues. Per graph
  // it reads V from memory once and writes dL/dW once (CPU kernel; elsewhere the same
  // computation runs as ATen products plus the two ops above).
  m.def(
      "ncut_backward(Tensor V, Tensor eigenvalues, Tensor degree, Tensor grad_Z, "
      "Tensor grad_eigenvalues, bool normalized, float gap_rtol, float gap_atol) -> Tensor");
  // One step of batched conjugate gradients on every column of a batch of (n, k)
  // blocks at once, with its fused vector updates: for each active column,
  // alpha = rr / (p . Ap); Y += alpha P; R -= alpha AP; rr' = R . R;
  // P = R + (rr' / rr) P; the column stays active while p . Ap > 0 and rr' > stop.
  // Inactive columns are returned unchanged. rr, stop, active: (*, k).
  // Returns (Y, R, P, rr, active).
  m.def(
      "cg_step(Tensor Y, Tensor R, Tensor P, Tensor AP, Tensor rr, Tensor stop, Tensor active) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The Fiedler pair of one graph's normalized cut by Lanczos with full
  // reorthogonalization on M = diag(dis) W diag(dis) (dis = d^-1/2), largest eigenvalue,
  // the unit trivial vector u1 = D^1/2 1 / |D^1/2 1| deflated, from v0, until the Ritz
  // pair passes LOBPCG's eigenvalue_rtol test at (tol, floor) on L / 2 or after max_steps steps
  // (at most n - 1). Returns (x, info): the unit Ritz vector (n,) and, as float64,
  // [theta, next Ritz value (NaN after one step), residual |M x - theta x|, steps,
  // converged (1 or 0)]. CPU kernel; elsewhere its twin diffeig._reference.ncut_lanczos.
  m.def(
      "ncut_lanczos(Tensor W, Tensor dis, Tensor u1, Tensor v0, float tol, float floor, int max_steps) "
      "-> (Tensor, Tensor)");
}
