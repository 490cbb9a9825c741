#pragma once
// What soft_argmax.cpp shares with its CPU and CUDA kernels.
#include <ATen/ATen.h>

namespace pyflm::ops {

// Validates the forward inputs and returns the output dtype
// (float64 in -> float64 out, every other dtype -> float32).
at::ScalarType soft_argmax_check(const at::Tensor& heatmaps, double temperature);
void soft_argmax_backward_check(const at::Tensor& grad_coords, const at::Tensor& heatmaps,
                                const at::Tensor& coords, double temperature);

}  // namespace pyflm::ops
