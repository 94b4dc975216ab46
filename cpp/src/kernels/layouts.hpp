// Layouts: the storage type of each stream a kernel reads and writes, and the compute type
// its element math runs in. A kernel is compiled per (rule, registered layout); a layout not
// listed in Registered has no kernel. Plain data only: included by every ISA object.
#pragma once

#include <stddef.h>

#include "fastoptim/rules/rule.hpp"
#include "fastoptim/types.hpp"

namespace fastoptim::kernels {

// Master: the storage type of a master copy of the param (void: none). With a master the
// kernel reads and writes the master, and writes the param as the master rounded to nearest;
// it reads the param too, whose bits differ from that rounding where the user wrote it.
template <class Param, class Grad, class State, class Compute, class Master = void>
struct Layout {
  using param = Param;
  using grad = Grad;
  using state = State;
  using compute = Compute;
  using master = Master;
};

template <class... L>
struct LayoutList {
  static constexpr size_t size = sizeof...(L);
};

// The layouts this build has kernels for; their index is the table's second dimension. A
// layout computes in float64 when its params are float64, else in float32.
using Registered = LayoutList<
    Layout<float, float, float, float>, Layout<double, double, double, double>,
    // 16-bit params: state in the param's type (torch's fused default), or float32 state, or a
    // float32 master with float32 or bfloat16 state (optimizer offload)
    Layout<bfloat16, bfloat16, bfloat16, float>, Layout<float16, float16, float16, float>,
    Layout<bfloat16, bfloat16, float, float>, Layout<float16, float16, float, float>,
    Layout<bfloat16, bfloat16, float, float, float>, Layout<float16, float16, float, float, float>,
    Layout<bfloat16, bfloat16, bfloat16, float, float>,
    Layout<float16, float16, bfloat16, float, float>,
    // float32 params: bfloat16 state, 16-bit grads
    Layout<float, float, bfloat16, float>, Layout<float, bfloat16, float, float>,
    Layout<float, float16, float, float>, Layout<float, bfloat16, bfloat16, float>,
    Layout<float, float16, bfloat16, float>,
    // float64 params: float32 and 16-bit grads
    Layout<double, float, double, double>, Layout<double, bfloat16, double, double>,
    Layout<double, float16, double, double>>;
inline constexpr size_t kLayoutCount = Registered::size;

// Storage type ids as the driver names them (fastoptim::DType's values; -1: none).
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

// The index in Registered of the layout with these storage types (kStorageId values; master
// -1 for none), or -1.
template <class... L>
constexpr int find_layout(LayoutList<L...>, int param, int grad, int state, int master) {
  int i = 0, found = -1;
  ((found = found < 0 && kStorageId<typename L::param> == param &&
                    kStorageId<typename L::grad> == grad &&
                    kStorageId<typename L::state> == state &&
                    kStorageId<typename L::master> == master
                ? i
                : found,
    ++i),
   ...);
  return found;
}
constexpr int find_layout(int param, int grad, int state, int master) {
  return find_layout(Registered{}, param, grad, state, master);
}

}  // namespace fastoptim::kernels
