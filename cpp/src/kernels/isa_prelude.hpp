// Shared by the isa_*.cpp translation units. They include only intrinsics headers and our own
// plain-data headers (no STL, no Eigen, no OpenMP, no static initializers), so that nothing
// compiled with wide-ISA flags can be picked by the linker for code that runs on older CPUs.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "fastoptim/rules.hpp"
#include "kernels/kernel_table.hpp"
#include "kernels/layouts.hpp"

#if defined(_MSC_VER)
#define FASTOPTIM_NOINLINE __declspec(noinline)
#else
#define FASTOPTIM_NOINLINE __attribute__((noinline))
#endif

#if defined(_MSC_VER)
#include <math.h>
#define FASTOPTIM_SQRTF(x) sqrtf(x)
#define FASTOPTIM_SQRT(x) sqrt(x)
#define FASTOPTIM_FABSF(x) fabsf(x)
#define FASTOPTIM_FABS(x) fabs(x)
#define FASTOPTIM_FMAF(a, b, c) fmaf(a, b, c)
#define FASTOPTIM_FMA(a, b, c) fma(a, b, c)
#else
#define FASTOPTIM_SQRTF(x) __builtin_sqrtf(x)
#define FASTOPTIM_SQRT(x) __builtin_sqrt(x)
#define FASTOPTIM_FABSF(x) __builtin_fabsf(x)
#define FASTOPTIM_FABS(x) __builtin_fabs(x)
// correctly rounded: the instruction where the level has one, else the C library's
#define FASTOPTIM_FMAF(a, b, c) __builtin_fmaf(a, b, c)
#define FASTOPTIM_FMA(a, b, c) __builtin_fma(a, b, c)
#endif

namespace fastoptim::kernels {
// Whether a level's vector header converts bfloat16 as even and odd elements
// (load_even_odd/store_even_odd, and store_high_halves for values already rounded: no shuffles
// across lanes), found by argument-dependent lookup in the level's namespace.
template <class V>
concept EvenOddBFloat16 = requires(const bfloat16* from, bfloat16* to, V& x, typename V::Bits b) {
  load_even_odd(from, x, x);
  store_even_odd(to, x, x);
  store_high_halves(to, b, b);
};
}  // namespace fastoptim::kernels
