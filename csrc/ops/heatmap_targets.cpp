// pyflm::heatmap_targets: schema and the Autograd kernel. Targets are training
// labels, not a function anyone differentiates, so the Autograd kernel only
// steps below autograd and re-dispatches: outputs come back without grad_fn.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/checks.h"

#include <optional>
#include <string>
#include <tuple>

#include "ops/heatmap_targets.h"

namespace pyflm {
namespace {

std::tuple<at::Tensor, at::Tensor> heatmap_targets_autograd(
    const at::Tensor& coords, const std::optional<at::Tensor>& visibility, int64_t height,
    int64_t width, double sigma, c10::string_view kind, bool background) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pyflm::heatmap_targets", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                           int64_t, double, c10::string_view, bool)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(coords, visibility, height, width, sigma, kind, background);
}

}  // namespace

namespace heatmap_targets_detail {

int check_inputs(const at::Tensor& coords, const std::optional<at::Tensor>& visibility,
                 int64_t height, int64_t width, double sigma, c10::string_view kind,
                 bool background) {
  constexpr const char* op = "heatmap_targets";
  checks::check_dim(coords, 3, op, "coords", "[B, K, 2]");
  TORCH_CHECK(coords.size(2) == 2, "pyflm.heatmap_targets: coords must have shape [B, K, 2] "
              "(x, y), got ", checks::shape_str(coords));
  checks::check_floating(coords, op, "coords",
                         {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  if (visibility.has_value()) {
    const at::Tensor& v = *visibility;
    checks::check_same_device(coords, v, op, "coords", "visibility");
    checks::check_dim(v, 2, op, "visibility", "[B, K]");
    TORCH_CHECK(v.size(0) == coords.size(0) && v.size(1) == coords.size(1),
                "pyflm.heatmap_targets: visibility must have shape [B, K] = [", coords.size(0),
                ", ", coords.size(1), "] to match coords, got ", checks::shape_str(v));
    TORCH_CHECK(v.scalar_type() == at::kBool || at::isFloatingType(v.scalar_type()),
                "pyflm.heatmap_targets: visibility must be bool or floating (> 0 means "
                "visible), got ", v.scalar_type());
  }
  TORCH_CHECK(height >= 1, "pyflm.heatmap_targets: height must be >= 1, got ", height);
  TORCH_CHECK(width >= 1, "pyflm.heatmap_targets: width must be >= 1, got ", width);
  checks::check_positive_finite(sigma, op, "sigma");
  int code = -1;
  if (kind == "gaussian") code = kGaussian;
  else if (kind == "distribution") code = kDistribution;
  else if (kind == "pwc") code = kPwc;
  TORCH_CHECK(code >= 0, "pyflm.heatmap_targets: kind must be one of 'gaussian', "
              "'distribution', 'pwc', got '", std::string(kind), "'");
  TORCH_CHECK(!(code == 1 && background), "pyflm.heatmap_targets: background=True is not "
              "supported for kind='distribution' (each map is a probability distribution "
              "over pixels; use kind='pwc' for per-pixel class probabilities)");
  return code;
}

}  // namespace heatmap_targets_detail

TORCH_LIBRARY_FRAGMENT(pyflm, m) {
  m.def(
      "heatmap_targets(Tensor coords, Tensor? visibility, int height, int width, float sigma, "
      "str kind=\"gaussian\", bool background=False) -> (Tensor targets, Tensor mask)");
}

TORCH_LIBRARY_IMPL(pyflm, Autograd, m) {
  m.impl("heatmap_targets", &heatmap_targets_autograd);
}

}  // namespace pyflm
