// Helpers of the mixed-precision tests: storage types as C++ types, widening and narrowing,
// bit comparison of 16-bit buffers, and the two neighbours of a value in a 16-bit type computed
// apart from the kernels (exact double arithmetic).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "support.hpp"

namespace fastoptim::test {

inline const char* name_of(DType t) {
  switch (t) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::bfloat16: return "bfloat16";
    case DType::float16: return "float16";
    case DType::int8: return "int8";
  }
  return "?";
}

template <class T>
inline constexpr bool kHalf = std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>;

// The value of a stored element, in the compute type C (exact).
template <class C, class T>
C widen(T x) {
  if constexpr (kHalf<T>) return static_cast<C>(to_float(x));
  else return static_cast<C>(x);
}

// A compute value stored as T, rounded to nearest even (C's own type: unchanged).
template <class T, class C>
T narrow(C x) {
  if constexpr (std::is_same_v<T, bfloat16>) return to_bfloat16(static_cast<float>(x));
  else if constexpr (std::is_same_v<T, float16>) return to_float16(static_cast<float>(x));
  else return static_cast<T>(x);
}

template <class T>
std::uint64_t bits_of(T x) {
  std::uint64_t b = 0;
  std::memcpy(&b, &x, sizeof(T));
  return b;
}

template <class T>
std::vector<T> narrowed(const std::vector<float>& values) {
  std::vector<T> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) out[i] = narrow<T>(values[i]);
  return out;
}

// The index of the first element whose bits differ, if any.
template <class T>
std::optional<std::size_t> first_difference(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return std::min(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i)
    if (bits_of(a[i]) != bits_of(b[i])) return i;
  return std::nullopt;
}

template <class T>
testing::AssertionResult same_bits(const std::vector<T>& actual, const std::vector<T>& expected) {
  const auto at = first_difference(actual, expected);
  if (!at) return testing::AssertionSuccess();
  if (*at >= actual.size() || *at >= expected.size())
    return testing::AssertionFailure() << "sizes " << actual.size() << " vs " << expected.size();
  return testing::AssertionFailure()
         << "element " << *at << " of " << actual.size() << ": bits 0x" << std::hex
         << bits_of(actual[*at]) << " vs 0x" << bits_of(expected[*at]) << std::dec << " ("
         << widen<double>(actual[*at]) << " vs " << widen<double>(expected[*at]) << ")";
}

// The two values of 16-bit type T around a finite |x| (equal if |x| is one of them), from its
// binary exponent alone: T's spacing there is 2^(e - mantissa bits), at least the spacing of its
// subnormals. The upper one may be 2^16 (float16) or 2^128 (bfloat16), beyond the largest
// finite value: inf once stored.
struct Neighbours {
  double down, up;
};
template <class T>
Neighbours neighbours(double magnitude) {
  constexpr int kMantissa = std::is_same_v<T, bfloat16> ? 7 : 10;
  constexpr int kMinExponent = std::is_same_v<T, bfloat16> ? -126 : -14;
  if (magnitude == 0.0) return {0.0, 0.0};
  int e = 0;
  std::frexp(magnitude, &e);  // magnitude in [2^(e-1), 2^e)
  const double spacing = std::ldexp(1.0, std::max(e - 1, kMinExponent) - kMantissa);
  const double down = std::floor(magnitude / spacing) * spacing;
  return {down, down == magnitude ? down : down + spacing};
}

template <class T>
double max_finite() {
  return std::is_same_v<T, bfloat16> ? widen<double>(bfloat16{0x7f7f}) : 65504.0;
}

// Whether `stored` is x rounded one way or the other in T: one of x's two neighbours, x itself
// if T holds it, T's NaN for a NaN, the same infinity for an infinity.
template <class T>
bool is_neighbour(T stored, double x) {
  const double s = widen<double>(stored);
  if (std::isnan(x)) return bits_of(stored) == (std::is_same_v<T, bfloat16> ? 0x7fc0u : 0x7e00u);
  if (std::isinf(x)) return s == x;
  if (std::signbit(s) != std::signbit(x)) return false;
  const Neighbours n = neighbours<T>(std::fabs(x));
  const double a = std::fabs(s);
  return a == n.down || a == n.up || (std::isinf(a) && n.up > max_finite<T>());
}

}  // namespace fastoptim::test
