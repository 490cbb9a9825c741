// pyflm::soft_argmax: schemas and the C++ autograd registration.
// The device kernels live in cpu/soft_argmax_kernel.cpp and cuda/soft_argmax_kernel.cu.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "ops/checks.h"
#include "ops/soft_argmax.h"

namespace pyflm::ops {

at::ScalarType soft_argmax_check(const at::Tensor& heatmaps, double temperature) {
  constexpr const char* op = "soft_argmax";
  checks::check_dim(heatmaps, 4, op, "heatmaps", "[B, K, H, W]");
  checks::check_floating(heatmaps, op, "heatmaps",
                         {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
  TORCH_CHECK(heatmaps.size(2) >= 1 && heatmaps.size(3) >= 1, "pyflm.soft_argmax: heatmaps must "
              "have H >= 1 and W >= 1, got ", checks::shape_str(heatmaps));
  checks::check_positive_finite(temperature, op, "temperature");
  return heatmaps.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void soft_argmax_backward_check(const at::Tensor& grad_coords, const at::Tensor& heatmaps,
                                const at::Tensor& coords, double temperature) {
  constexpr const char* op = "_soft_argmax_backward";
  soft_argmax_check(heatmaps, temperature);
  checks::check_dim(grad_coords, 3, op, "grad_coords", "[B, K, 2]");
  checks::check_dim(coords, 3, op, "coords", "[B, K, 2]");
  const auto want = std::vector<int64_t>{heatmaps.size(0), heatmaps.size(1), 2};
  TORCH_CHECK(grad_coords.sizes() == at::IntArrayRef(want), "pyflm._soft_argmax_backward: "
              "grad_coords must have shape ", at::IntArrayRef(want), ", got ",
              checks::shape_str(grad_coords));
  TORCH_CHECK(coords.sizes() == at::IntArrayRef(want), "pyflm._soft_argmax_backward: coords must "
              "have shape ", at::IntArrayRef(want), ", got ", checks::shape_str(coords));
  checks::check_floating(grad_coords, op, "grad_coords",
                         {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
  checks::check_floating(coords, op, "coords",
                         {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
  checks::check_same_device(grad_coords, heatmaps, op, "grad_coords", "heatmaps");
  checks::check_same_device(coords, heatmaps, op, "coords", "heatmaps");
}

namespace {

std::tuple<at::Tensor, at::Tensor> soft_argmax_call(const at::Tensor& heatmaps, double temperature) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pyflm::soft_argmax", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double)>();
  return op.call(heatmaps, temperature);
}

at::Tensor soft_argmax_backward_call(const at::Tensor& grad_coords, const at::Tensor& heatmaps,
                                     const at::Tensor& coords, double temperature) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyflm::_soft_argmax_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(grad_coords, heatmaps, coords, temperature);
}

class SoftArgmaxFunction : public torch::autograd::Function<SoftArgmaxFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch::autograd::Variable& heatmaps,
                                                double temperature) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [coords, confidence] = soft_argmax_call(heatmaps, temperature);
    ctx->saved_data["temperature"] = temperature;
    ctx->save_for_backward({heatmaps, coords});
    // The peak probability is a diagnostic score, not a training signal.
    ctx->mark_non_differentiable({confidence});
    return {coords, confidence};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    const auto saved = ctx->get_saved_variables();
    const double temperature = ctx->saved_data["temperature"].toDouble();
    const at::Tensor& grad_coords = grads[0];
    if (!grad_coords.defined()) {
      return {at::Tensor(), at::Tensor()};
    }
    return {soft_argmax_backward_call(grad_coords, saved[0], saved[1], temperature), at::Tensor()};
  }
};

// The backward op is not itself differentiable: say so instead of silently
// returning a gradient without history under create_graph=True.
class SoftArgmaxBackwardFunction : public torch::autograd::Function<SoftArgmaxBackwardFunction> {
 public:
  static torch::autograd::Variable forward(torch::autograd::AutogradContext* ctx,
                                           const torch::autograd::Variable& grad_coords,
                                           const torch::autograd::Variable& heatmaps,
                                           const torch::autograd::Variable& coords,
                                           double temperature) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return soft_argmax_backward_call(grad_coords, heatmaps, coords, temperature);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 const torch::autograd::variable_list&) {
    TORCH_CHECK(false,
                "pyflm.soft_argmax: double backward (differentiating the gradient) is not "
                "supported; use pyflm.soft_argmax_reference for higher-order gradients");
    return {};
  }
};

std::tuple<at::Tensor, at::Tensor> soft_argmax_autograd(const at::Tensor& heatmaps, double temperature) {
  auto out = SoftArgmaxFunction::apply(heatmaps, temperature);
  return {out[0], out[1]};
}

at::Tensor soft_argmax_backward_autograd(const at::Tensor& grad_coords, const at::Tensor& heatmaps,
                                         const at::Tensor& coords, double temperature) {
  return SoftArgmaxBackwardFunction::apply(grad_coords, heatmaps, coords, temperature);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pyflm, m) {
  m.def("soft_argmax(Tensor heatmaps, float temperature=1.0) -> (Tensor coords, Tensor confidence)");
  m.def(
      "_soft_argmax_backward(Tensor grad_coords, Tensor heatmaps, Tensor coords, float temperature) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(pyflm, Autograd, m) {
  m.impl("soft_argmax", &soft_argmax_autograd);
  m.impl("_soft_argmax_backward", &soft_argmax_backward_autograd);
}

}  // namespace pyflm::ops
