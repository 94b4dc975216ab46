// What each per-ISA translation unit exports: one table of kernels, indexed [rule][dtype].
// Plain data only: this header is included by every ISA object, so it must emit no symbols.
#pragma once

#include <stddef.h>

namespace fastoptim::kernels {

enum RuleId { kSgd, kAdagrad, kAdadelta, kRmsprop, kAdam, kRoofline, kRuleCount };

// Pointers of one buffer set, already offset to the first element of a chunk.
struct Streams {
  void* param;
  const void* grad;
  void* state[3];
};

// Applies a rule to elements [0, count) of `streams`; `scalars` points to that rule's
// per-step scalars (scalars.hpp) in the buffers' element type.
using Kernel = void (*)(const void* scalars, const Streams& streams, size_t count);

// Adds |g| (or g * g) of grad elements [0, n), n a multiple of 8, into lanes[k % 8].
using NormKernel = void (*)(const void* grad, size_t n, double* lanes);

struct KernelTable {
  const char* level;
  Kernel kernels[kRuleCount][2];  // [rule][0 = float32, 1 = float64]
  NormKernel norms[2][2];         // [0 = sum |g|, 1 = sum g * g][0 = float32, 1 = float64]
};

}  // namespace fastoptim::kernels
