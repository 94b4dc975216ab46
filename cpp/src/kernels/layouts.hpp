// Storage types and layouts. A layout is the storage type of each stream of a call (param,
// grad, state, a float32 master copy); its math runs in float64 when its params are float64,
// else in float32. No kernel is compiled per layout: a rule's kernel for the compute type reads
// each stream's storage type at run time (kernel_table.hpp). `kLayouts` lists the
// combinations a call accepts.
// Plain data only: included by every ISA object.
#pragma once

#include <stddef.h>

#include "fastoptim/rules/rule.hpp"
#include "fastoptim/types.hpp"

namespace fastoptim::kernels {

// Storage type ids as the driver names them (fastoptim::DType's values; -1: none). int8 is
// blockwise-quantized state: never a kernel's stream (the driver runs the kernel on a float32
// tile of it, blockwise.inl), so no load or store has an arm for it.
inline constexpr int kStorageCount = 5;
inline constexpr int kI8 = 4;
template <class T>
inline constexpr int kStorageId = -1;
template <>
inline constexpr int kStorageId<float> = 0;
template <>
inline constexpr int kStorageId<double> = 1;
template <>
inline constexpr int kStorageId<bfloat16> = 2;
template <>
inline constexpr int kStorageId<float16> = 3;

template <class T>
inline constexpr bool kHalf = kStorageId<T> == 2 || kStorageId<T> == 3;

// A layout as storage type ids; master -1: none, else float32's id.
struct Layout {
  int param, grad, state, master;
};

inline constexpr int kF32 = kStorageId<float>, kF64 = kStorageId<double>,
                     kBF16 = kStorageId<bfloat16>, kF16 = kStorageId<float16>;

inline constexpr Layout kLayouts[] = {
    {kF32, kF32, kF32, -1}, {kF64, kF64, kF64, -1},
    // 16-bit params: state in the param's type (torch's fused default), or float32 state, or a
    // float32 master with float32 or bfloat16 state (optimizer offload)
    {kBF16, kBF16, kBF16, -1}, {kF16, kF16, kF16, -1},
    {kBF16, kBF16, kF32, -1}, {kF16, kF16, kF32, -1},
    {kBF16, kBF16, kF32, kF32}, {kF16, kF16, kF32, kF32},
    {kBF16, kBF16, kBF16, kF32}, {kF16, kF16, kBF16, kF32},
    // float32 params: bfloat16 state, 16-bit grads
    {kF32, kF32, kBF16, -1}, {kF32, kBF16, kF32, -1}, {kF32, kF16, kF32, -1},
    {kF32, kBF16, kBF16, -1}, {kF32, kF16, kBF16, -1},
    // float64 params: float32 and 16-bit grads
    {kF64, kF32, kF64, -1}, {kF64, kBF16, kF64, -1}, {kF64, kF16, kF64, -1},
    // 8-bit blockwise state (float32 math): float32 params with any grad, 16-bit params with or
    // without a float32 master
    {kF32, kF32, kI8, -1}, {kF32, kBF16, kI8, -1}, {kF32, kF16, kI8, -1},
    {kBF16, kBF16, kI8, -1}, {kF16, kF16, kI8, -1},
    {kBF16, kBF16, kI8, kF32}, {kF16, kF16, kI8, kF32}};
inline constexpr size_t kLayoutCount = sizeof(kLayouts) / sizeof(kLayouts[0]);

// The index in kLayouts of the layout with these storage types (master -1 for none), or -1.
constexpr int find_layout(int param, int grad, int state, int master) {
  for (size_t i = 0; i < kLayoutCount; ++i) {
    const Layout& l = kLayouts[i];
    if (l.param == param && l.grad == grad && l.state == state && l.master == master)
      return static_cast<int>(i);
  }
  return -1;
}

}  // namespace fastoptim::kernels
