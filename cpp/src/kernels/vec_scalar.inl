// One-lane "vector": the tail of every loop, and the whole loop at the scalar level.
// Included inside namespace fastoptim::kernels::<isa>.

// One lane of 32-bit integers: stochastic rounding's random bits and bit tricks (kernel.inl).
struct ScalarU32 {
  uint32_t v;
  static FASTOPTIM_INLINE ScalarU32 set1(uint32_t x) { return {x}; }
  static FASTOPTIM_INLINE ScalarU32 iota(uint32_t first) { return {first}; }
};

template <class T>
struct Scalar {
  using Lane = T;
  using Bits = ScalarU32;
  using Mask = bool;  // lt, gt, unordered; select
  static constexpr size_t kLanes = 1;
  T v;
  static FASTOPTIM_INLINE Scalar load(const T* p) { return {*p}; }
  static FASTOPTIM_INLINE void store(T* p, Scalar x) { *p = x.v; }
  static FASTOPTIM_INLINE Scalar set1(T x) { return {x}; }
  // 16-bit storage, computed in float32 (fastoptim/types.hpp defines the conversions)
  static FASTOPTIM_INLINE Scalar load(const bfloat16* p) { return {to_float(*p)}; }
  static FASTOPTIM_INLINE void store(bfloat16* p, Scalar x) { *p = to_bfloat16(x.v); }
  static FASTOPTIM_INLINE Scalar load(const float16* p) { return {to_float(*p)}; }
  // a float32 grad of a float64 param
  static FASTOPTIM_INLINE Scalar load(const float* p)
    requires(sizeof(T) == 8)
  {
    return {static_cast<T>(*p)};
  }
  static FASTOPTIM_INLINE void store(float16* p, Scalar x) { *p = to_float16(x.v); }
};

template <class T>
FASTOPTIM_INLINE Scalar<T> operator+(Scalar<T> a, Scalar<T> b) { return {a.v + b.v}; }
template <class T>
FASTOPTIM_INLINE Scalar<T> operator-(Scalar<T> a, Scalar<T> b) { return {a.v - b.v}; }
template <class T>
FASTOPTIM_INLINE Scalar<T> operator*(Scalar<T> a, Scalar<T> b) { return {a.v * b.v}; }
template <class T>
FASTOPTIM_INLINE Scalar<T> operator/(Scalar<T> a, Scalar<T> b) { return {a.v / b.v}; }
template <class T>
FASTOPTIM_INLINE Scalar<T> neg(Scalar<T> a) { return {-a.v}; }
// Same NaN behaviour as x86 maxps(a, b): b unless a > b.
template <class T>
FASTOPTIM_INLINE Scalar<T> max(Scalar<T> a, Scalar<T> b) { return {a.v > b.v ? a.v : b.v}; }
FASTOPTIM_INLINE Scalar<float> sqrt(Scalar<float> a) { return {FASTOPTIM_SQRTF(a.v)}; }
// a * b + c rounded once, as torch's CPU kernels compute add(alpha=), addcmul and lerp
FASTOPTIM_INLINE Scalar<float> fma(Scalar<float> a, Scalar<float> b, Scalar<float> c) {
  return {FASTOPTIM_FMAF(a.v, b.v, c.v)};
}
FASTOPTIM_INLINE Scalar<double> fma(Scalar<double> a, Scalar<double> b, Scalar<double> c) {
  return {FASTOPTIM_FMA(a.v, b.v, c.v)};
}
FASTOPTIM_INLINE Scalar<double> sqrt(Scalar<double> a) { return {FASTOPTIM_SQRT(a.v)}; }

// A lane's bits read as another type of the same size (float <-> uint32_t, double <-> uint64_t).
template <class To, class From>
FASTOPTIM_INLINE To reinterpret_bits(From x) {
  static_assert(sizeof(To) == sizeof(From));
  union {
    From from;
    To to;
  } u{x};
  return u.to;
}

// The primitives vec_ops.inl builds maximum, abs and sign on. The comparisons are false when
// either side is NaN (C++'s, and torch's); a mask is a bool.
template <class T>
FASTOPTIM_INLINE bool lt(Scalar<T> a, Scalar<T> b) { return a.v < b.v; }
template <class T>
FASTOPTIM_INLINE bool gt(Scalar<T> a, Scalar<T> b) { return a.v > b.v; }
template <class T>
FASTOPTIM_INLINE bool unordered(Scalar<T> a, Scalar<T> b) { return a.v != a.v || b.v != b.v; }
template <class T>
FASTOPTIM_INLINE Scalar<T> select(bool mask, Scalar<T> yes, Scalar<T> no) {
  return mask ? yes : no;
}
// ~a & b on the bits
FASTOPTIM_INLINE Scalar<float> andnot(Scalar<float> a, Scalar<float> b) {
  return {reinterpret_bits<float>(~reinterpret_bits<uint32_t>(a.v) &
                                  reinterpret_bits<uint32_t>(b.v))};
}
FASTOPTIM_INLINE Scalar<double> andnot(Scalar<double> a, Scalar<double> b) {
  return {reinterpret_bits<double>(~reinterpret_bits<uint64_t>(a.v) &
                                   reinterpret_bits<uint64_t>(b.v))};
}

FASTOPTIM_INLINE ScalarU32 operator+(ScalarU32 a, ScalarU32 b) { return {a.v + b.v}; }
FASTOPTIM_INLINE ScalarU32 operator-(ScalarU32 a, ScalarU32 b) { return {a.v - b.v}; }
FASTOPTIM_INLINE ScalarU32 operator*(ScalarU32 a, ScalarU32 b) { return {a.v * b.v}; }
FASTOPTIM_INLINE ScalarU32 operator^(ScalarU32 a, ScalarU32 b) { return {a.v ^ b.v}; }
FASTOPTIM_INLINE ScalarU32 operator&(ScalarU32 a, ScalarU32 b) { return {a.v & b.v}; }
FASTOPTIM_INLINE ScalarU32 operator|(ScalarU32 a, ScalarU32 b) { return {a.v | b.v}; }
FASTOPTIM_INLINE ScalarU32 andnot(ScalarU32 a, ScalarU32 b) { return {~a.v & b.v}; }
template <int N>
FASTOPTIM_INLINE ScalarU32 shift_left(ScalarU32 a) { return {a.v << N}; }
template <int N>
FASTOPTIM_INLINE ScalarU32 shift_right(ScalarU32 a) { return {a.v >> N}; }
FASTOPTIM_INLINE ScalarU32 max_signed(ScalarU32 a, ScalarU32 b) {
  return {static_cast<int32_t>(a.v) > static_cast<int32_t>(b.v) ? a.v : b.v};
}
FASTOPTIM_INLINE ScalarU32 equal_mask(ScalarU32 a, ScalarU32 b) { return {a.v == b.v ? ~0u : 0u}; }
FASTOPTIM_INLINE ScalarU32 as_bits(Scalar<float> a) { return {detail::float_bits(a.v)}; }
FASTOPTIM_INLINE Scalar<float> from_bits(ScalarU32 a) { return {detail::bits_float(a.v)}; }
// small non-negative integers (< 2^24) to float, exactly; float (|x| < 2^31) to int, truncated.
// Outside that range (and NaN: stochastic rounding computes lanes it then discards) the
// result is x86's "integer indefinite" 0x80000000 rather than C++'s undefined behaviour.
FASTOPTIM_INLINE Scalar<float> int_to_float(ScalarU32 a) {
  return {static_cast<float>(static_cast<int32_t>(a.v))};
}
FASTOPTIM_INLINE ScalarU32 truncate_to_int(Scalar<float> a) {
  if (!(a.v > -2147483648.0f && a.v < 2147483648.0f)) return {0x80000000u};
  return {static_cast<uint32_t>(static_cast<int32_t>(a.v))};
}
FASTOPTIM_INLINE ScalarU32 less_mask(Scalar<float> a, Scalar<float> b) {
  return {a.v < b.v ? ~0u : 0u};
}
FASTOPTIM_INLINE ScalarU32 nan_mask(Scalar<float> a) { return {a.v != a.v ? ~0u : 0u}; }
