// Shared glue between torch tensors and the torch-free lev::Tokens.
#pragma once

#include <ATen/ATen.h>

#include "../levenshtein/levenshtein_core.h"

namespace pyprune {
namespace lev {

inline Tokens tokens_of(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == 2 && t.stride(1) == 1,
              "pyprune_C: ", name, " must be a 2-D int64 tensor with contiguous rows");
  Tokens view;
  view.data = t.data_ptr<int64_t>();
  view.rows = t.size(0);
  view.width = t.size(1);
  view.stride = t.stride(0);
  return view;
}

inline void check_pair(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.size(0) == b.size(0), "pyprune_C: batch sizes differ (", a.size(0), " vs ", b.size(0), ")");
  TORCH_CHECK(a.device() == b.device(), "pyprune_C: tensors on different devices");
}

}  // namespace lev
}  // namespace pyprune
