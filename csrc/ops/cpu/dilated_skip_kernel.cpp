// CPU registration of pyflm::dilated_skip_block. The implementation
// (ops/dilated_skip_impl.cpp) is built from ATen GEMMs (MKL/oneDNN on CPU,
// threaded inside each GEMM) on strided views of one concatenation buffer, so
// it needs no hand-written CPU loop: the work is >99% GEMM.
#include <torch/library.h>

#include "ops/dilated_skip_impl.h"

TORCH_LIBRARY_IMPL(pyflm, CPU, m) {
  m.impl("dilated_skip_block", &pyflm::dilated_skip::block);
  m.impl("_dilated_skip_block_forward", &pyflm::dilated_skip::forward);
  m.impl("_dilated_skip_block_backward", &pyflm::dilated_skip::backward);
}
