// What each per-ISA translation unit exports: one table of kernels, indexed [rule][layout].
// Plain data only: this header is included by every ISA object, so it must emit no symbols.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "fastoptim/rules.hpp"
#include "kernels/layouts.hpp"

namespace fastoptim::kernels {

// Pointers of one buffer set, already offset to the first element of a chunk; each stream in
// its layout's storage type.
struct Streams {
  void* param;
  const void* grad;
  void* state[rules::kMaxSlots];
  void* master;
  // Stochastic rounding of 16-bit stores: the keys of the stream pairs (param and state slot
  // 0; slots 1 and 2), and the index of the chunk's first element in its param (mod 2^32: the
  // driver folds the rest into the keys).
  bool stochastic;
  uint32_t first;
  uint32_t keys[2];
};

// Factors every grad is multiplied by as it is read, in this order, as torch's in-place
// multiplies apply them before the update: GradScaler's unscale (grad * inv_scale), then
// clip_grad_norm_'s clip (grad * clip_coef). In the compute type; value-initialised: neither.
template <class C>
struct GradFactors {
  C inv_scale, clip_coef;
  bool unscale, clip;
};

// Applies a rule to elements [0, count) of `streams`: `scalars` points to the rule's
// Scalars<C> and `factors` to GradFactors<C>, C the layout's compute type.
using Kernel = void (*)(const void* scalars, const void* factors, const Streams& streams,
                        size_t count);

// Adds |g| (or g * g) of grad elements [0, n), n a multiple of 8, into lanes[k % 8].
using NormKernel = void (*)(const void* grad, size_t n, double* lanes);

inline constexpr size_t kRuleCount = rules::All::size;

struct KernelTable {
  const char* level;
  Kernel kernels[kRuleCount][kLayoutCount];
  NormKernel norms[2][2];  // [0 = sum |g|, 1 = sum g * g][0 = float32, 1 = float64]
};

}  // namespace fastoptim::kernels
