#pragma once
// Device-generic implementation of pyflm::dilated_skip_block, built only from
// ATen ops (GEMMs on strided views, copies, fills), so the same code serves
// the CPU and the CUDA registrations.
//
// Layout: one concatenation buffer [B, C + sum_{l<L} G_l, H, W] holds the
// input (first C channels) and every intermediate post-ReLU activation, each
// layer in its own channel slice. The last layer (G_L = C, no ReLU) writes
// straight into the output, which starts as input + bias (the skip).
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace pyflm::dilated_skip {

// Validates every argument; messages name pyflm.dilated_skip_block and the layer.
void check_args(const at::Tensor& input, at::TensorList weights, at::TensorList biases,
                at::IntArrayRef dilations);

// Returns (output [B, C, H, W], buffer [B, C + sum_{l<L} G_l, H, W]).
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& input, at::TensorList weights,
                                           at::TensorList biases, at::IntArrayRef dilations);

// Output only (the buffer is dropped): the public op's backend kernel.
at::Tensor block(const at::Tensor& input, at::TensorList weights, at::TensorList biases,
                 at::IntArrayRef dilations);

// Returns (grad_input, grad_weights, grad_biases) from the saved buffer.
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> backward(
    const at::Tensor& grad_output, const at::Tensor& buffer, at::TensorList weights,
    at::IntArrayRef dilations);

}  // namespace pyflm::dilated_skip
