// CUDA kernel of diffeig::cg_step (see csrc/cpu/cg_step_cpu.cpp): one thread block
// per column of the batch, two block reductions (p . Ap, then r . r), every vector
// update fused into the passes that read the operands.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"

namespace diffeig {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__device__ scalar_t block_sum(scalar_t v, scalar_t* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const scalar_t out = shared[0];
  __syncthreads();
  return out;
}

template <typename scalar_t>
__global__ void cg_step_kernel(scalar_t* __restrict__ Y, scalar_t* __restrict__ R,
                               scalar_t* __restrict__ P, const scalar_t* __restrict__ AP,
                               scalar_t* __restrict__ rr, const scalar_t* __restrict__ stop,
                               bool* __restrict__ active, int64_t n, int64_t k) {
  __shared__ scalar_t shared[kThreads];
  const int64_t col = blockIdx.x;  // b * k + j
  const int64_t b = col / k;
  const int64_t j = col - b * k;
  if (!active[col]) return;  // uniform across the block
  const int64_t off = b * n * k + j;
  scalar_t acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += P[off + i * k] * AP[off + i * k];
  const scalar_t pAp = block_sum(acc, shared);
  if (!(pAp > 0)) {
    if (threadIdx.x == 0) active[col] = false;
    return;
  }
  const scalar_t alpha = rr[col] / pAp;
  acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t e = off + i * k;
    Y[e] += alpha * P[e];
    const scalar_t r = R[e] - alpha * AP[e];
    R[e] = r;
    acc += r * r;
  }
  const scalar_t rr_new = block_sum(acc, shared);
  const scalar_t beta = rr_new / rr[col];
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t e = off + i * k;
    P[e] = R[e] + beta * P[e];
  }
  if (threadIdx.x == 0) {
    rr[col] = rr_new;
    active[col] = rr_new > stop[col];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cg_step_cuda(
    const at::Tensor& Y, const at::Tensor& R, const at::Tensor& P, const at::Tensor& AP,
    const at::Tensor& rr, const at::Tensor& stop, const at::Tensor& active) {
  const auto shapes = check_cg_step_args(Y, R, P, AP, rr, stop, active);
  TORCH_CHECK(Y.is_cuda(), "Y must be a CUDA tensor here, got ", Y.device());
  const c10::cuda::CUDAGuard guard(Y.device());
  auto y = Y.clone(at::MemoryFormat::Contiguous);
  auto r = R.clone(at::MemoryFormat::Contiguous);
  auto p = P.clone(at::MemoryFormat::Contiguous);
  auto rr_out = rr.clone(at::MemoryFormat::Contiguous);
  auto act = active.clone(at::MemoryFormat::Contiguous);
  const auto ap = AP.contiguous();
  const auto st = stop.contiguous();
  const int64_t columns = shapes.batch * shapes.k;
  if (columns > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(Y.scalar_type(), "cg_step_cuda", [&] {
      cg_step_kernel<scalar_t><<<columns, kThreads, 0, stream>>>(
          y.mutable_data_ptr<scalar_t>(), r.mutable_data_ptr<scalar_t>(),
          p.mutable_data_ptr<scalar_t>(), ap.const_data_ptr<scalar_t>(),
          rr_out.mutable_data_ptr<scalar_t>(), st.const_data_ptr<scalar_t>(),
          act.mutable_data_ptr<bool>(), shapes.n, shapes.k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {y, r, p, rr_out, act};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CUDA, m) { m.impl("cg_step", &cg_step_cuda); }

}  // namespace diffeig
