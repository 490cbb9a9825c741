#pragma once
// What argmax_decode.cpp shares with its CPU and CUDA kernels.
#include <ATen/ATen.h>

namespace pyflm {

// Refinement modes, as parsed from the schema's `str refine`.
inline constexpr int kRefineNone = 0;
inline constexpr int kRefineQuarter = 1;
inline constexpr int kRefineDark = 2;

// "none" | "quarter" | "dark" -> kRefine*; anything else is a clear error.
int argmax_decode_parse_refine(c10::string_view refine);
void argmax_decode_check_input(const at::Tensor& heatmaps);

}  // namespace pyflm
