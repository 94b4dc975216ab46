// What each per-ISA translation unit exports: one table of kernels. A rule's element math is
// compiled once per compute type (float32, float64); the storage type of each stream is a
// run-time value that the kernel's loads and stores branch on (uniform over a call, so the
// branches are predicted perfectly), each storage type's conversions written once per ISA in
// the vector headers. The table grows as the rules do, not as rules × layouts.
// Plain data only: this header is included by every ISA object, so it must emit no symbols.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "fastoptim/rules.hpp"
#include "kernels/layouts.hpp"

namespace fastoptim::kernels {

// Pointers of one buffer set, already offset to the first element of a chunk, and each stream's
// storage type (kStorageId values).
struct Streams {
  void* param;
  const void* grad;
  void* state[rules::kMaxSlots];
  void* master;  // a float32 master copy of 16-bit params, or null
  int8_t param_type, grad_type, state_type;
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
// Scalars<C> and `factors` to GradFactors<C>, C the kernel's compute type.
using Kernel = void (*)(const void* scalars, const void* factors, const Streams& streams,
                        size_t count);

// Adds |g| (or g * g) of grad elements [0, n), n a multiple of 8, into lanes[k % 8].
using NormKernel = void (*)(const void* grad, size_t n, double* lanes);

inline constexpr size_t kRuleCount = rules::All::size;

// Blockwise 8-bit state (blockwise.inl): float32 values [0, count) to codes and one scale per
// block of `block` elements, and back, with a 256-entry map; one pair per ISA, for every rule.
// The codes come from the map's bucket table (kCodeBuckets entries, driver.cpp: code_buckets).
inline constexpr uint32_t kCodeBucketsPerSign = ((0x3f800000u - 0x33800000u) >> 16) + 1;
using QuantizeBlocks = void (*)(const float* values, size_t count, size_t block,
                                const uint32_t* buckets, uint8_t* codes, float* scales);
using DequantizeBlocks = void (*)(const uint8_t* codes, const float* scales, size_t count,
                                  size_t block, const float* map, float* values);

// A rule's element transform (rules/rule.hpp: Schedule-Free's train/eval) takes the kernel's
// arguments, `scalars` pointing to its TransformScalars<C> and the grad unused.
struct KernelTable {
  const char* level;
  Kernel kernels[kRuleCount][2];     // [rule][0 = float32, 1 = float64]
  Kernel transforms[kRuleCount][2];  // null for a rule without transforms
  NormKernel norms[2][2];         // [0 = sum |g|, 1 = sum g * g][0 = float32, 1 = float64]
  QuantizeBlocks quantize;
  DequantizeBlocks dequantize;
};

}  // namespace fastoptim::kernels
