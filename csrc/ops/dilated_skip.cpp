// pyflm::dilated_skip_block: schemas and the C++ autograd registration.
//
// The public op's Autograd kernel is a torch::autograd::Function whose forward
// calls _dilated_skip_block_forward below autograd and keeps only its
// concatenation buffer (input + every intermediate activation) and the
// weights; its backward calls _dilated_skip_block_backward. Function::apply
// takes at::TensorList arguments directly: it flattens each list into one
// input per tensor, so backward returns [grad_input, grad_w..., grad_b...,
// (none for dilations)].
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pyflm, m) {
  m.def(
      "dilated_skip_block(Tensor input, Tensor[] weights, Tensor[] biases, int[] dilations) "
      "-> Tensor");
  m.def(
      "_dilated_skip_block_forward(Tensor input, Tensor[] weights, Tensor[] biases, "
      "int[] dilations) -> (Tensor output, Tensor buffer)");
  m.def(
      "_dilated_skip_block_backward(Tensor grad_output, Tensor buffer, Tensor[] weights, "
      "int[] dilations) -> (Tensor grad_input, Tensor[] grad_weights, Tensor[] grad_biases)");
}

namespace pyflm::dilated_skip {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> call_forward(const at::Tensor& input, at::TensorList weights,
                                                at::TensorList biases,
                                                at::IntArrayRef dilations) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pyflm::_dilated_skip_block_forward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, at::TensorList, at::TensorList, at::IntArrayRef)>();
  return op.call(input, weights, biases, dilations);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> call_backward(
    const at::Tensor& grad_output, const at::Tensor& buffer, at::TensorList weights,
    at::IntArrayRef dilations) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyflm::_dilated_skip_block_backward", "")
          .typed<std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>(
              const at::Tensor&, const at::Tensor&, at::TensorList, at::IntArrayRef)>();
  return op.call(grad_output, buffer, weights, dilations);
}

class DilatedSkipFunction : public torch::autograd::Function<DilatedSkipFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            at::TensorList weights, at::TensorList biases,
                            at::IntArrayRef dilations) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, buffer] = call_forward(input, weights, biases, dilations);
    // The buffer holds the input and every activation the backward reads.
    std::vector<at::Tensor> saved{buffer};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["dilations"] = dilations.vec();
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const std::vector<at::Tensor> weights(saved.begin() + 1, saved.end());
    const size_t L = weights.size();
    variable_list grads;
    grads.reserve(2 * L + 2);
    const at::Tensor& g = grad_outputs[0];
    if (!g.defined()) {
      grads.resize(2 * L + 2);
      return grads;
    }
    const auto dilations = ctx->saved_data["dilations"].toIntVector();
    auto [grad_input, grad_w, grad_b] = call_backward(g, saved[0], weights, dilations);
    grads.push_back(grad_input);
    grads.insert(grads.end(), grad_w.begin(), grad_w.end());
    grads.insert(grads.end(), grad_b.begin(), grad_b.end());
    grads.emplace_back();  // dilations
    return grads;
  }
};

at::Tensor block_autograd(const at::Tensor& input, at::TensorList weights, at::TensorList biases,
                          at::IntArrayRef dilations) {
  return DilatedSkipFunction::apply(input, weights, biases, dilations);
}

// The internal ops are not differentiable themselves: run them below autograd.
std::tuple<at::Tensor, at::Tensor> forward_autograd(const at::Tensor& input,
                                                    at::TensorList weights,
                                                    at::TensorList biases,
                                                    at::IntArrayRef dilations) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_forward(input, weights, biases, dilations);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& buffer, at::TensorList weights,
    at::IntArrayRef dilations) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_backward(grad_output, buffer, weights, dilations);
}

}  // namespace
}  // namespace pyflm::dilated_skip

TORCH_LIBRARY_IMPL(pyflm, Autograd, m) {
  m.impl("dilated_skip_block", &pyflm::dilated_skip::block_autograd);
  m.impl("_dilated_skip_block_forward", &pyflm::dilated_skip::forward_autograd);
  m.impl("_dilated_skip_block_backward", &pyflm::dilated_skip::backward_autograd);
}
