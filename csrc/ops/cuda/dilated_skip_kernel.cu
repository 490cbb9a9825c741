// CUDA registration of pyflm::dilated_skip_block: the same device-generic
// shifted-GEMM implementation as on CPU (ops/dilated_skip_impl.cpp), whose
// GEMMs run on cuBLAS on the current stream; only a device guard is added.
// (No fused epilogue kernel yet: bias, ReLU and the column masks are ATen ops.)
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/dilated_skip_impl.h"

namespace pyflm::dilated_skip {
namespace {

at::Tensor block_cuda(const at::Tensor& input, at::TensorList weights, at::TensorList biases,
                      at::IntArrayRef dilations) {
  c10::cuda::CUDAGuard guard(input.device());
  return block(input, weights, biases, dilations);
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& input, at::TensorList weights,
                                                at::TensorList biases,
                                                at::IntArrayRef dilations) {
  c10::cuda::CUDAGuard guard(input.device());
  return forward(input, weights, biases, dilations);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& buffer, at::TensorList weights,
    at::IntArrayRef dilations) {
  c10::cuda::CUDAGuard guard(grad_output.device());
  return backward(grad_output, buffer, weights, dilations);
}

}  // namespace
}  // namespace pyflm::dilated_skip

TORCH_LIBRARY_IMPL(pyflm, CUDA, m) {
  m.impl("dilated_skip_block", &pyflm::dilated_skip::block_cuda);
  m.impl("_dilated_skip_block_forward", &pyflm::dilated_skip::forward_cuda);
  m.impl("_dilated_skip_block_backward", &pyflm::dilated_skip::backward_cuda);
}
