// 16-bit storage types, and their conversions to and from float32.
//   bfloat16: the top half of an IEEE float32 (torch.bfloat16, ml_dtypes.bfloat16, Eigen::bfloat16)
//   float16:  IEEE binary16 (torch.float16, numpy.float16, Eigen::half)
// A param, grad or state buffer of one of these types holds its elements as these structs
// (2 bytes each, the value's bits). Widening to float32 is exact; narrowing rounds to nearest,
// ties to even, as torch's conversions and the x86/Arm conversion instructions do:
//   bfloat16: a NaN becomes 0x7FC0 (torch's NaN), an overflow rounds to inf;
//   float16:  a NaN becomes 0x7E00, a float32 subnormal rounds to zero, float16 subnormals are
//             exact.
// One NaN per type: which NaN an operation on two NaNs returns depends on the order the
// compiler gives the operands, so keeping payloads would make SIMD levels differ.
// Every SIMD level converts with the same bits (cpp/src/kernels/vec_*.inl; these functions are
// the one-lane definition the others are tested against).
//
// Plain data and always-inline functions only, no standard library: the per-ISA kernel objects
// include this header.
#pragma once

#include <stdint.h>

#include "fastoptim/rules/rule.hpp"  // FASTOPTIM_INLINE

namespace fastoptim {

struct bfloat16 {
  uint16_t bits;
};
struct float16 {
  uint16_t bits;
};

namespace detail {

// A union is how every compiler we build with (GCC, Clang, MSVC) reads a float's bits without
// the standard library.
FASTOPTIM_INLINE uint32_t float_bits(float x) {
  union {
    float f;
    uint32_t u;
  } v{x};
  return v.u;
}
FASTOPTIM_INLINE float bits_float(uint32_t u) {
  union {
    uint32_t u;
    float f;
  } v{u};
  return v.f;
}

}  // namespace detail

FASTOPTIM_INLINE float to_float(bfloat16 x) { return detail::bits_float(uint32_t{x.bits} << 16); }

FASTOPTIM_INLINE bfloat16 to_bfloat16(float x) {
  const uint32_t u = detail::float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fc0};
  return {static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

FASTOPTIM_INLINE float to_float(float16 x) {
  const uint32_t sign = uint32_t{x.bits & 0x8000u} << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1fu;
  uint32_t mantissa = x.bits & 0x3ffu;
  if (exponent == 0x1f) {  // inf, or NaN made quiet
    if (mantissa != 0) mantissa |= 0x200u;
    return detail::bits_float(sign | 0x7f800000u | (mantissa << 13));
  }
  if (exponent != 0) return detail::bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  if (mantissa == 0) return detail::bits_float(sign);
  // subnormal: mantissa * 2^-24, normalized
  uint32_t e = 113;
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --e;
  }
  return detail::bits_float(sign | (e << 23) | ((mantissa & 0x3ffu) << 13));
}

FASTOPTIM_INLINE float16 to_float16(float x) {
  const uint32_t u = detail::float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {0x7e00};
  if (a >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520: inf
  const int e = static_cast<int>(a >> 23) - 112;  // float16 exponent field
  uint32_t h, rest, half;
  if (e >= 1) {  // normal: 13 mantissa bits drop
    h = (static_cast<uint32_t>(e) << 10) | ((a >> 13) & 0x3ffu);
    rest = a & 0x1fffu;
    half = 0x1000u;
  } else {  // subnormal (or zero): the value in units of 2^-24
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const int shift = 14 - e;
    if (shift > 24) return {static_cast<uint16_t>(sign)};
    h = m >> shift;
    rest = m & ((1u << shift) - 1u);
    half = 1u << (shift - 1);
  }
  h += (rest > half || (rest == half && (h & 1u))) ? 1u : 0u;  // a carry moves up an exponent
  return {static_cast<uint16_t>(sign | h)};
}

}  // namespace fastoptim
