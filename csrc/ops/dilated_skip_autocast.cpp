// pyflm::dilated_skip_block under torch.autocast (CPU and CUDA).
//
// Inside autocast the block's input is a convolution's low-precision output
// (bf16 / fp16) while its parameters stay fp32, and the op takes one dtype.
// As ATen does for a convolution, every eligible floating argument is cast to
// the autocast dtype (fp64 stays as it is); the kernel accumulates in fp32 and
// rounds the output once. The autocast key is excluded for the redispatch.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

namespace pyflm::dilated_skip {
namespace {

template <c10::DispatchKey Key, c10::DeviceType Device>
at::Tensor block_autocast(const at::Tensor& input, at::TensorList weights, at::TensorList biases,
                          at::IntArrayRef dilations) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(Key);
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(Device);
  const std::vector<at::Tensor> w = at::autocast::cached_cast(dtype, weights, Device);
  const std::vector<at::Tensor> b = at::autocast::cached_cast(dtype, biases, Device);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyflm::dilated_skip_block", "")
                             .typed<at::Tensor(const at::Tensor&, at::TensorList, at::TensorList, at::IntArrayRef)>();
  return op.call(at::autocast::cached_cast(dtype, input, Device), w, b, dilations);
}

}  // namespace
}  // namespace pyflm::dilated_skip

TORCH_LIBRARY_IMPL(pyflm, AutocastCPU, m) {
  m.impl("dilated_skip_block",
         &pyflm::dilated_skip::block_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(pyflm, AutocastCUDA, m) {
  m.impl("dilated_skip_block",
         &pyflm::dilated_skip::block_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}
