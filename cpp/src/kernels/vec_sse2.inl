// sse2 vectors for the rule math (kernel.inl). Included inside namespace fastoptim::kernels::sse2.

// 32-bit integer lanes: stochastic rounding's random bits and bit tricks (kernel.inl).
struct U32 {
  __m128i v;
  static FASTOPTIM_INLINE U32 set1(uint32_t x) { return {_mm_set1_epi32(static_cast<int>(x))}; }
  static FASTOPTIM_INLINE U32 iota(uint32_t first) {
    return {_mm_add_epi32(_mm_set1_epi32(static_cast<int>(first)), _mm_setr_epi32(0, 1, 2, 3))};
  }
};
struct F32 {
  using Lane = float;
  using Bits = U32;
  struct Mask {  // lanes of all ones or all zeros
    __m128 v;
  };
  static constexpr size_t kLanes = 4;
  __m128 v;
  static FASTOPTIM_INLINE F32 load(const float* p) { return {_mm_loadu_ps(p)}; }
  static FASTOPTIM_INLINE void store(float* p, F32 x) { _mm_storeu_ps(p, x.v); }
  static FASTOPTIM_INLINE F32 set1(float x) { return {_mm_set1_ps(x)}; }
  // 16-bit storage (fastoptim/types.hpp): bfloat16 with integer SSE2, float16 one lane at a
  // time (SSE2 has no half-precision conversion)
  static FASTOPTIM_INLINE F32 load(const bfloat16* p) {
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return {_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h))};
  }
  static FASTOPTIM_INLINE void store(bfloat16* p, F32 x) {
    const __m128i u = _mm_castps_si128(x.v);
    const __m128i lsb = _mm_and_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(1));
    __m128i r = _mm_srli_epi32(_mm_add_epi32(u, _mm_add_epi32(lsb, _mm_set1_epi32(0x7fff))), 16);
    const __m128i nan = _mm_castps_si128(_mm_cmpunord_ps(x.v, x.v));
    r = _mm_or_si128(_mm_andnot_si128(nan, r), _mm_and_si128(nan, _mm_set1_epi32(0x7fc0)));
    // sign-extend so that the signed pack keeps the 16 bits
    r = _mm_srai_epi32(_mm_slli_epi32(r, 16), 16);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi32(r, r));
  }
  // (out of line: the lane-by-lane conversion inlined into every float16 load and store of
  // every kernel made this the slowest unit to compile; no CPU with float16 training lacks F16C)
  [[gnu::noinline]] static F32 load(const float16* p) {
    return {_mm_setr_ps(to_float(p[0]), to_float(p[1]), to_float(p[2]), to_float(p[3]))};
  }
  [[gnu::noinline]] static void store(float16* p, F32 x) {
    float lanes[4];
    _mm_storeu_ps(lanes, x.v);
    for (int k = 0; k < 4; ++k) p[k] = to_float16(lanes[k]);
  }
};
struct F64 {
  using Lane = double;
  using Bits = U32;  // no float64 layout stores 16-bit values: never drawn
  struct Mask {
    __m128d v;
  };
  static constexpr size_t kLanes = 2;
  __m128d v;
  static FASTOPTIM_INLINE F64 load(const double* p) { return {_mm_loadu_pd(p)}; }
  static FASTOPTIM_INLINE void store(double* p, F64 x) { _mm_storeu_pd(p, x.v); }
  static FASTOPTIM_INLINE F64 set1(double x) { return {_mm_set1_pd(x)}; }
  // a float32 grad of a float64 param, widened exactly
  static FASTOPTIM_INLINE F64 load(const float* p) {
    return {_mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
  }
};

FASTOPTIM_INLINE F32 operator+(F32 a, F32 b) { return {_mm_add_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator-(F32 a, F32 b) { return {_mm_sub_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator*(F32 a, F32 b) { return {_mm_mul_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator/(F32 a, F32 b) { return {_mm_div_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 sqrt(F32 a) { return {_mm_sqrt_ps(a.v)}; }
// SSE2 has no fused multiply-add: each lane through the C library's correctly rounded fmaf
FASTOPTIM_INLINE F32 fma(F32 a, F32 b, F32 c) {
  float x[4], y[4], z[4];
  _mm_storeu_ps(x, a.v);
  _mm_storeu_ps(y, b.v);
  _mm_storeu_ps(z, c.v);
  return {_mm_setr_ps(FASTOPTIM_FMAF(x[0], y[0], z[0]), FASTOPTIM_FMAF(x[1], y[1], z[1]),
                      FASTOPTIM_FMAF(x[2], y[2], z[2]), FASTOPTIM_FMAF(x[3], y[3], z[3]))};
}
FASTOPTIM_INLINE F32 max(F32 a, F32 b) { return {_mm_max_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 neg(F32 a) { return {_mm_xor_ps(a.v, _mm_set1_ps(-0.0f))}; }

FASTOPTIM_INLINE F64 operator+(F64 a, F64 b) { return {_mm_add_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator-(F64 a, F64 b) { return {_mm_sub_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator*(F64 a, F64 b) { return {_mm_mul_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator/(F64 a, F64 b) { return {_mm_div_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 sqrt(F64 a) { return {_mm_sqrt_pd(a.v)}; }
FASTOPTIM_INLINE F64 fma(F64 a, F64 b, F64 c) {
  double x[2], y[2], z[2];
  _mm_storeu_pd(x, a.v);
  _mm_storeu_pd(y, b.v);
  _mm_storeu_pd(z, c.v);
  return {_mm_setr_pd(FASTOPTIM_FMA(x[0], y[0], z[0]), FASTOPTIM_FMA(x[1], y[1], z[1]))};
}
FASTOPTIM_INLINE F64 max(F64 a, F64 b) { return {_mm_max_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 neg(F64 a) { return {_mm_xor_pd(a.v, _mm_set1_pd(-0.0))}; }

template <class T>
struct VecOf;
template <>
struct VecOf<float> {
  using type = F32;
};
template <>
struct VecOf<double> {
  using type = F64;
};

// The norm pass: 8 floats widened to doubles (lane order).
FASTOPTIM_INLINE void load8_widened(const float* p, F64* out) {
  const __m128 lo = _mm_loadu_ps(p), hi = _mm_loadu_ps(p + 4);
  out[0] = {_mm_cvtps_pd(lo)};
  out[1] = {_mm_cvtps_pd(_mm_movehl_ps(lo, lo))};
  out[2] = {_mm_cvtps_pd(hi)};
  out[3] = {_mm_cvtps_pd(_mm_movehl_ps(hi, hi))};
}

// The primitives vec_ops.inl builds maximum, abs and sign on: comparisons false when either
// side is NaN, select (SSE2 has no blend), ~a & b on the bits.
FASTOPTIM_INLINE F32::Mask lt(F32 a, F32 b) { return {_mm_cmplt_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32::Mask gt(F32 a, F32 b) { return {_mm_cmpgt_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32::Mask unordered(F32 a, F32 b) { return {_mm_cmpunord_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 select(F32::Mask mask, F32 yes, F32 no) {
  return {_mm_or_ps(_mm_and_ps(mask.v, yes.v), _mm_andnot_ps(mask.v, no.v))};
}
FASTOPTIM_INLINE F32 andnot(F32 a, F32 b) { return {_mm_andnot_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F64::Mask lt(F64 a, F64 b) { return {_mm_cmplt_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64::Mask gt(F64 a, F64 b) { return {_mm_cmpgt_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64::Mask unordered(F64 a, F64 b) { return {_mm_cmpunord_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 select(F64::Mask mask, F64 yes, F64 no) {
  return {_mm_or_pd(_mm_and_pd(mask.v, yes.v), _mm_andnot_pd(mask.v, no.v))};
}
FASTOPTIM_INLINE F64 andnot(F64 a, F64 b) { return {_mm_andnot_pd(a.v, b.v)}; }

FASTOPTIM_INLINE U32 operator+(U32 a, U32 b) { return {_mm_add_epi32(a.v, b.v)}; }
// SSE2 has no 32-bit multiply-low: lanes 0, 2 and lanes 1, 3 as 64-bit products, low halves kept
FASTOPTIM_INLINE U32 operator-(U32 a, U32 b) { return {_mm_sub_epi32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator*(U32 a, U32 b) {
  const __m128i even = _mm_mul_epu32(a.v, b.v);
  const __m128i odd = _mm_mul_epu32(_mm_srli_epi64(a.v, 32), _mm_srli_epi64(b.v, 32));
  return {_mm_unpacklo_epi32(_mm_shuffle_epi32(even, 0x08), _mm_shuffle_epi32(odd, 0x08))};
}
FASTOPTIM_INLINE U32 operator^(U32 a, U32 b) { return {_mm_xor_si128(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator&(U32 a, U32 b) { return {_mm_and_si128(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator|(U32 a, U32 b) { return {_mm_or_si128(a.v, b.v)}; }
FASTOPTIM_INLINE U32 andnot(U32 a, U32 b) { return {_mm_andnot_si128(a.v, b.v)}; }
template <int N>
FASTOPTIM_INLINE U32 shift_left(U32 a) { return {_mm_slli_epi32(a.v, N)}; }
template <int N>
FASTOPTIM_INLINE U32 shift_right(U32 a) { return {_mm_srli_epi32(a.v, N)}; }
FASTOPTIM_INLINE U32 max_signed(U32 a, U32 b) {
  const __m128i a_greater = _mm_cmpgt_epi32(a.v, b.v);
  return {_mm_or_si128(_mm_and_si128(a_greater, a.v), _mm_andnot_si128(a_greater, b.v))};
}
FASTOPTIM_INLINE U32 equal_mask(U32 a, U32 b) { return {_mm_cmpeq_epi32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 as_bits(F32 a) { return {_mm_castps_si128(a.v)}; }
FASTOPTIM_INLINE F32 from_bits(U32 a) { return {_mm_castsi128_ps(a.v)}; }
FASTOPTIM_INLINE F32 int_to_float(U32 a) { return {_mm_cvtepi32_ps(a.v)}; }
FASTOPTIM_INLINE U32 truncate_to_int(F32 a) { return {_mm_cvttps_epi32(a.v)}; }
FASTOPTIM_INLINE U32 less_mask(F32 a, F32 b) { return {_mm_castps_si128(_mm_cmplt_ps(a.v, b.v))}; }
FASTOPTIM_INLINE U32 nan_mask(F32 a) { return {_mm_castps_si128(_mm_cmpunord_ps(a.v, a.v))}; }
