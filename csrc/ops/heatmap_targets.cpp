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

// The out= overload mutates its outputs: run below autograd, then bump their
// version counters as in-place ops do (so autograd sees the change).
void heatmap_targets_out_autograd(
    const at::Tensor& coords, const std::optional<at::Tensor>& visibility, int64_t height,
    int64_t width, double sigma, c10::string_view kind, bool background, at::Tensor& targets,
    at::Tensor& mask) {
  TORCH_CHECK(!targets.requires_grad() && !mask.requires_grad(),
              "pyflm.heatmap_targets: out tensors (targets, mask) must not require grad");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pyflm::heatmap_targets", "out")
                       .typed<void(const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                                   int64_t, double, c10::string_view, bool, at::Tensor&,
                                   at::Tensor&)>();
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(coords, visibility, height, width, sigma, kind, background, targets, mask);
  }
  torch::autograd::impl::bump_version(targets);
  torch::autograd::impl::bump_version(mask);
}

}  // namespace

namespace heatmap_targets_detail {

int64_t target_channels(int kind, bool background, int64_t K) {
  return K + ((kind == kPwc || (kind == kGaussian && background)) ? 1 : 0);
}

void check_out(const at::Tensor& coords, int64_t channels, int64_t height, int64_t width,
               const at::Tensor& targets, const at::Tensor& mask) {
  const int64_t B = coords.size(0), K = coords.size(1);
  const std::pair<const at::Tensor*, std::vector<int64_t>> outs[] = {
      {&targets, {B, channels, height, width}}, {&mask, {B, K}}};
  const char* names[] = {"targets", "mask"};
  for (int i = 0; i < 2; ++i) {
    const at::Tensor& t = *outs[i].first;
    TORCH_CHECK(t.sizes() == at::IntArrayRef(outs[i].second), "pyflm.heatmap_targets: out ",
                names[i], " must have shape ", at::IntArrayRef(outs[i].second), ", got ",
                checks::shape_str(t));
    TORCH_CHECK(t.scalar_type() == coords.scalar_type(), "pyflm.heatmap_targets: out ",
                names[i], " must have the dtype of coords (", coords.scalar_type(), "), got ",
                t.scalar_type());
    checks::check_same_device(coords, t, "heatmap_targets", "coords", names[i]);
    TORCH_CHECK(t.is_contiguous(), "pyflm.heatmap_targets: out ", names[i],
                " must be contiguous");
  }
}


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
  // Writes into caller-owned buffers: a training loop reuses them step after
  // step instead of paying for fresh pages every call. Returns nothing:
  // aliased outputs of custom ops cannot be functionalized (torch.compile).
  m.def(
      "heatmap_targets.out(Tensor coords, Tensor? visibility, int height, int width, "
      "float sigma, str kind=\"gaussian\", bool background=False, *, Tensor(a!) targets, "
      "Tensor(b!) mask) -> ()");
}

TORCH_LIBRARY_IMPL(pyflm, Autograd, m) {
  m.impl("heatmap_targets", &heatmap_targets_autograd);
  m.impl("heatmap_targets.out", &heatmap_targets_out_autograd);
}

}  // namespace pyflm
