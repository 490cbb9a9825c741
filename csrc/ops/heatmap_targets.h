#pragma once
// What heatmap_targets.cpp shares with its CPU and CUDA kernels.
#include <ATen/ATen.h>

#include <optional>

namespace pyflm::heatmap_targets_detail {

inline constexpr int kGaussian = 0, kDistribution = 1, kPwc = 2;

// Validates every argument and returns the kind (kGaussian, kDistribution, kPwc).
int check_inputs(const at::Tensor& coords, const std::optional<at::Tensor>& visibility,
                 int64_t height, int64_t width, double sigma, c10::string_view kind,
                 bool background);

// Channels of the targets: K, plus one for a background channel (pwc always,
// gaussian with background=True).
int64_t target_channels(int kind, bool background, int64_t K);

// Checks the out= tensors of heatmap_targets.out: contiguous, on coords'
// device, of coords' dtype, shaped as the functional op would allocate them.
void check_out(const at::Tensor& coords, int64_t channels, int64_t height, int64_t width,
               const at::Tensor& targets, const at::Tensor& mask);

}  // namespace pyflm::heatmap_targets_detail
