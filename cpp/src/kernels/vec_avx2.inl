// avx2 vectors for the rule math (kernel.inl). Included inside namespace fastoptim::kernels::avx2.

// 32-bit integer lanes: stochastic rounding's random bits and bit tricks (kernel.inl).
struct U32 {
  __m256i v;
  static FASTOPTIM_INLINE U32 set1(uint32_t x) { return {_mm256_set1_epi32(static_cast<int>(x))}; }
  // int8 state's codes: 8 bytes, each widened to a 32-bit lane
  static FASTOPTIM_INLINE U32 load_bytes(const uint8_t* p) {
    return {_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))};
  }
  static FASTOPTIM_INLINE U32 iota(uint32_t first) {
    return {_mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first)),
                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))};
  }
};
struct F32 {
  using Lane = float;
  using Bits = U32;
  struct Mask {  // lanes of all ones or all zeros
    __m256 v;
  };
  static constexpr size_t kLanes = 8;
  __m256 v;
  static FASTOPTIM_INLINE F32 load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static FASTOPTIM_INLINE void store(float* p, F32 x) { _mm256_storeu_ps(p, x.v); }
  static FASTOPTIM_INLINE F32 set1(float x) { return {_mm256_set1_ps(x)}; }
  // 16-bit storage (fastoptim/types.hpp): widened exactly, narrowed to nearest even; float16
  // through F16C, which this level requires
  static FASTOPTIM_INLINE F32 load(const bfloat16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
  }
  static FASTOPTIM_INLINE void store(bfloat16* p, F32 x) {
    const __m256i u = _mm256_castps_si256(x.v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
    // packus works per 128-bit lane: [r0-3 r0-3 | r4-7 r4-7], then 64-bit quarters 0, 2
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xd8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
  static FASTOPTIM_INLINE F32 load(const float16* p) {
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  static FASTOPTIM_INLINE void store(float16* p, F32 x) {
    // one NaN (types.hpp): 0x7fc00000 converts to 0x7e00
    const __m256 v = _mm256_blendv_ps(x.v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)),
                                      _mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};
struct F64 {
  using Lane = double;
  using Bits = U32;  // no float64 layout stores 16-bit values: never drawn
  struct Mask {
    __m256d v;
  };
  static constexpr size_t kLanes = 4;
  __m256d v;
  static FASTOPTIM_INLINE F64 load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static FASTOPTIM_INLINE void store(double* p, F64 x) { _mm256_storeu_pd(p, x.v); }
  static FASTOPTIM_INLINE F64 set1(double x) { return {_mm256_set1_pd(x)}; }
  // a float32 grad of a float64 param, widened exactly
  static FASTOPTIM_INLINE F64 load(const float* p) { return {_mm256_cvtps_pd(_mm_loadu_ps(p))}; }
};

FASTOPTIM_INLINE F32 operator+(F32 a, F32 b) { return {_mm256_add_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator-(F32 a, F32 b) { return {_mm256_sub_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator*(F32 a, F32 b) { return {_mm256_mul_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator/(F32 a, F32 b) { return {_mm256_div_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 sqrt(F32 a) { return {_mm256_sqrt_ps(a.v)}; }
FASTOPTIM_INLINE F32 fma(F32 a, F32 b, F32 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
FASTOPTIM_INLINE F32 max(F32 a, F32 b) { return {_mm256_max_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 neg(F32 a) { return {_mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f))}; }

FASTOPTIM_INLINE F64 operator+(F64 a, F64 b) { return {_mm256_add_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator-(F64 a, F64 b) { return {_mm256_sub_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator*(F64 a, F64 b) { return {_mm256_mul_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator/(F64 a, F64 b) { return {_mm256_div_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 sqrt(F64 a) { return {_mm256_sqrt_pd(a.v)}; }
FASTOPTIM_INLINE F64 fma(F64 a, F64 b, F64 c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
FASTOPTIM_INLINE F64 max(F64 a, F64 b) { return {_mm256_max_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 neg(F64 a) { return {_mm256_xor_pd(a.v, _mm256_set1_pd(-0.0))}; }

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
  out[0] = {_mm256_cvtps_pd(_mm_loadu_ps(p))};
  out[1] = {_mm256_cvtps_pd(_mm_loadu_ps(p + 4))};
}

// The primitives vec_ops.inl builds maximum, abs and sign on: comparisons false when either
// side is NaN (ordered, quiet), select, ~a & b on the bits.
FASTOPTIM_INLINE F32::Mask lt(F32 a, F32 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ)}; }
FASTOPTIM_INLINE F32::Mask gt(F32 a, F32 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ)}; }
FASTOPTIM_INLINE F32::Mask unordered(F32 a, F32 b) {
  return {_mm256_cmp_ps(a.v, b.v, _CMP_UNORD_Q)};
}
FASTOPTIM_INLINE F32 select(F32::Mask mask, F32 yes, F32 no) {
  return {_mm256_blendv_ps(no.v, yes.v, mask.v)};
}
FASTOPTIM_INLINE F32 andnot(F32 a, F32 b) { return {_mm256_andnot_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F64::Mask lt(F64 a, F64 b) { return {_mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ)}; }
FASTOPTIM_INLINE F64::Mask gt(F64 a, F64 b) { return {_mm256_cmp_pd(a.v, b.v, _CMP_GT_OQ)}; }
FASTOPTIM_INLINE F64::Mask unordered(F64 a, F64 b) {
  return {_mm256_cmp_pd(a.v, b.v, _CMP_UNORD_Q)};
}
FASTOPTIM_INLINE F64 select(F64::Mask mask, F64 yes, F64 no) {
  return {_mm256_blendv_pd(no.v, yes.v, mask.v)};
}
FASTOPTIM_INLINE F64 andnot(F64 a, F64 b) { return {_mm256_andnot_pd(a.v, b.v)}; }

FASTOPTIM_INLINE U32 operator+(U32 a, U32 b) { return {_mm256_add_epi32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator-(U32 a, U32 b) { return {_mm256_sub_epi32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator*(U32 a, U32 b) { return {_mm256_mullo_epi32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator^(U32 a, U32 b) { return {_mm256_xor_si256(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator&(U32 a, U32 b) { return {_mm256_and_si256(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator|(U32 a, U32 b) { return {_mm256_or_si256(a.v, b.v)}; }
FASTOPTIM_INLINE U32 andnot(U32 a, U32 b) { return {_mm256_andnot_si256(a.v, b.v)}; }
template <int N>
FASTOPTIM_INLINE U32 shift_left(U32 a) { return {_mm256_slli_epi32(a.v, N)}; }
template <int N>
FASTOPTIM_INLINE U32 shift_right(U32 a) { return {_mm256_srli_epi32(a.v, N)}; }
FASTOPTIM_INLINE U32 max_signed(U32 a, U32 b) { return {_mm256_max_epi32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 equal_mask(U32 a, U32 b) { return {_mm256_cmpeq_epi32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 as_bits(F32 a) { return {_mm256_castps_si256(a.v)}; }
FASTOPTIM_INLINE F32 from_bits(U32 a) { return {_mm256_castsi256_ps(a.v)}; }
FASTOPTIM_INLINE F32 int_to_float(U32 a) { return {_mm256_cvtepi32_ps(a.v)}; }
FASTOPTIM_INLINE U32 truncate_to_int(F32 a) { return {_mm256_cvttps_epi32(a.v)}; }
FASTOPTIM_INLINE U32 less_mask(F32 a, F32 b) {
  return {_mm256_castps_si256(_mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ))};
}
FASTOPTIM_INLINE U32 nan_mask(F32 a) {
  return {_mm256_castps_si256(_mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q))};
}

// blockwise.inl's map lookups: 8 floats of a table by 32-bit index
FASTOPTIM_INLINE F32 gather(const float* table, U32 index) {
  return {_mm256_i32gather_ps(table, index.v, 4)};
}
// int8 state's codes: each of the 8 lanes (0..255) stored as a byte (U32::load_bytes widens)
FASTOPTIM_INLINE void narrow_to_bytes(uint8_t* p, U32 a) {
  const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(a.v),
                                         _mm256_extracti128_si256(a.v, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(words, words));
}

// ---- bfloat16 as even and odd elements (the bench's roofline, cpp/roofline/roofline.inl) -------
// 2 * kLanes bfloat16 values as two vectors: the even-indexed elements and the odd-indexed ones.
// Neither direction moves data across lanes (F32::load/store widen and narrow with shuffles),
// so a loop whose every stream is bfloat16 and whose math is elementwise converts faster this
// way. store_even_odd rounds as F32::store does: nearest even, a NaN stored as 0x7fc0.
FASTOPTIM_INLINE void load_even_odd(const bfloat16* p, F32& even, F32& odd) {
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  even = {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
  odd = {_mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(static_cast<int>(0xffff0000u))))};
}
// x rounded to bfloat16 in the high half of each 32-bit lane (the low half is left over)
FASTOPTIM_INLINE __m256i bfloat16_in_high_half(F32 x) {
  const __m256i u = _mm256_castps_si256(x.v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc00000),
                            _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q)));
}
// the high halves of even's lanes and odd's, interleaved: even's shifted into the low halves,
// odd's kept in the high ones
FASTOPTIM_INLINE void store_high_halves(bfloat16* p, U32 even, U32 odd) {
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm256_or_si256(_mm256_srli_epi32(even.v, 16), _mm256_and_si256(odd.v, high)));
}
FASTOPTIM_INLINE void store_even_odd(bfloat16* p, F32 even, F32 odd) {
  store_high_halves(p, {bfloat16_in_high_half(even)}, {bfloat16_in_high_half(odd)});
}
