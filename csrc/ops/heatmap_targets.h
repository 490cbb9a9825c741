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

}  // namespace pyflm::heatmap_targets_detail
