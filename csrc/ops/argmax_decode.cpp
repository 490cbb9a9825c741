// pyflm::argmax_decode: fused argmax heatmap decoding with sub-pixel refinement.
//
// Schema: argmax_decode(Tensor heatmaps, str refine="quarter") -> (Tensor coords, Tensor scores)
//   heatmaps [B, K, H, W] (H, W >= 1), float16 / bfloat16 / float32 / float64
//   coords   [B, K, 2] as (x = column, y = row), 0-based, pixel centres at integers
//   scores   [B, K], the heatmap value at the integer argmax
//   outputs are float64 for float64 input, float32 otherwise.
//
// Conventions shared by the CPU and CUDA kernels (and the Python reference):
//  * argmax: first maximum in row-major order (as torch.argmax on the flattened
//    map); a map containing NaN gives NaN coords and a NaN score.
//  * "none": the integer argmax (px, py).
//  * "quarter" (HRNet / FAN rule): per axis, independently, when the peak has
//    both neighbours on that axis, shift by 0.25 * sign(h[+1] - h[-1]) (no shift
//    when equal). No +0.5 / +1 offset afterwards: those belong to toolkits whose
//    pixel centres sit at half-integers or that are 1-based; pyflm's are at
//    integers.
//  * "dark" (Zhang et al., CVPR 2020): one Newton step on L = log(max(h, 1e-10))
//    with 3x3 central differences at the peak, offset = -Hess^-1 grad, applied
//    only when the peak is interior on both axes and the Hessian is negative
//    definite (dxx < 0, det > 0); each component is clamped to [-0.5, 0.5]
//    (a sampled Gaussian's centre lies within half a pixel of its integer
//    peak). DARK's Gaussian "modulation" blur is not part of this op: callers
//    blur first if they want it.
//
// No gradient: the Autograd kernel runs the op below autograd, so the outputs
// carry no grad_fn.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "ops/checks.h"

#include "ops/argmax_decode.h"

namespace pyflm {

int argmax_decode_parse_refine(c10::string_view refine) {
  if (refine == "none") return kRefineNone;
  if (refine == "quarter") return kRefineQuarter;
  if (refine == "dark") return kRefineDark;
  TORCH_CHECK(false, "pyflm.argmax_decode: refine must be one of 'none', 'quarter', 'dark', got '",
              std::string(refine), "'");
  return -1;
}

void argmax_decode_check_input(const at::Tensor& heatmaps) {
  checks::check_dim(heatmaps, 4, "argmax_decode", "heatmaps", "[B, K, H, W]");
  checks::check_floating(heatmaps, "argmax_decode", "heatmaps",
                         {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  TORCH_CHECK(heatmaps.size(2) >= 1 && heatmaps.size(3) >= 1,
              "pyflm.argmax_decode: heatmaps must have H >= 1 and W >= 1, got ",
              checks::shape_str(heatmaps));
}

namespace {

std::tuple<at::Tensor, at::Tensor> argmax_decode_autograd(const at::Tensor& heatmaps,
                                                          c10::string_view refine) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pyflm::argmax_decode", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&,
                                                                 c10::string_view)>();
  // Decoding is piecewise constant in the argmax and has no useful gradient:
  // run below autograd so the outputs carry no grad_fn.
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(heatmaps, refine);
}

}  // namespace
}  // namespace pyflm

TORCH_LIBRARY_FRAGMENT(pyflm, m) {
  m.def("argmax_decode(Tensor heatmaps, str refine=\"quarter\") -> (Tensor coords, Tensor scores)");
}

TORCH_LIBRARY_IMPL(pyflm, Autograd, m) {
  m.impl("argmax_decode", &pyflm::argmax_decode_autograd);
}
