// avx512 vectors for the rule math (kernel.inl). Included inside namespace fastoptim::kernels::avx512.

// 32-bit integer lanes: stochastic rounding's random bits and bit tricks (kernel.inl).
struct U32 {
  __m512i v;
  static FASTOPTIM_INLINE U32 set1(uint32_t x) { return {_mm512_set1_epi32(static_cast<int>(x))}; }
  // int8 state's codes: 16 bytes, each widened to a 32-bit lane
  static FASTOPTIM_INLINE U32 load_bytes(const uint8_t* p) {
    return {_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  static FASTOPTIM_INLINE U32 iota(uint32_t first) {
    return {_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(first)),
                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))};
  }
};
struct F32 {
  using Lane = float;
  using Bits = U32;
  struct Mask {  // one bit per lane: the compares write mask registers, blends read them
    __mmask16 v;
  };
  static constexpr size_t kLanes = 16;
  __m512 v;
  static FASTOPTIM_INLINE F32 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  // int8 state's 256-entry map in 16 registers, looked up by permutes (lookup_map256): on
  // Zen 4 a zmm gather costs several times the 8 two-register permutes and 7 blends
  struct Map256 {
    __m512 t[16];
  };
  static FASTOPTIM_INLINE Map256 load_map256(const float* p) {
    Map256 m;
    for (int k = 0; k < 16; ++k) m.t[k] = _mm512_loadu_ps(p + 16 * k);
    return m;
  }
  // map[index] per lane, index in 0..255: each register pair serves 32 entries (the index's
  // low 5 bits), its bits 5, 6 and 7 pick among the 8 results
  static FASTOPTIM_INLINE F32 lookup_map256(const Map256& m, U32 index) {
    __m512 r[8];
    for (int k = 0; k < 8; ++k) r[k] = _mm512_permutex2var_ps(m.t[2 * k], index.v, m.t[2 * k + 1]);
    const __mmask16 b5 = _mm512_test_epi32_mask(index.v, _mm512_set1_epi32(32));
    const __mmask16 b6 = _mm512_test_epi32_mask(index.v, _mm512_set1_epi32(64));
    const __mmask16 b7 = _mm512_test_epi32_mask(index.v, _mm512_set1_epi32(128));
    const __m512 s0 = _mm512_mask_blend_ps(b5, r[0], r[1]), s1 = _mm512_mask_blend_ps(b5, r[2], r[3]);
    const __m512 s2 = _mm512_mask_blend_ps(b5, r[4], r[5]), s3 = _mm512_mask_blend_ps(b5, r[6], r[7]);
    const __m512 u0 = _mm512_mask_blend_ps(b6, s0, s1), u1 = _mm512_mask_blend_ps(b6, s2, s3);
    return {_mm512_mask_blend_ps(b7, u0, u1)};
  }
  static FASTOPTIM_INLINE void store(float* p, F32 x) { _mm512_storeu_ps(p, x.v); }
  static FASTOPTIM_INLINE F32 set1(float x) { return {_mm512_set1_ps(x)}; }
  // 16-bit storage (fastoptim/types.hpp): widened exactly, narrowed to nearest even
  static FASTOPTIM_INLINE F32 load(const bfloat16* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  }
  static FASTOPTIM_INLINE void store(bfloat16* p, F32 x) {
    const __m512i u = _mm512_castps_si512(x.v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q),
                              _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }
  static FASTOPTIM_INLINE F32 load(const float16* p) {
    return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  static FASTOPTIM_INLINE void store(float16* p, F32 x) {
    // one NaN (types.hpp): 0x7fc00000 converts to 0x7e00
    const __m512 v = _mm512_mask_mov_ps(x.v, _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q),
                                        _mm512_castsi512_ps(_mm512_set1_epi32(0x7fc00000)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};
struct F64 {
  using Lane = double;
  using Bits = U32;  // no float64 layout stores 16-bit values: never drawn
  struct Mask {
    __mmask8 v;
  };
  static constexpr size_t kLanes = 8;
  __m512d v;
  static FASTOPTIM_INLINE F64 load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static FASTOPTIM_INLINE void store(double* p, F64 x) { _mm512_storeu_pd(p, x.v); }
  static FASTOPTIM_INLINE F64 set1(double x) { return {_mm512_set1_pd(x)}; }
  // a float32 grad of a float64 param, widened exactly
  static FASTOPTIM_INLINE F64 load(const float* p) { return {_mm512_cvtps_pd(_mm256_loadu_ps(p))}; }
};

FASTOPTIM_INLINE F32 operator+(F32 a, F32 b) { return {_mm512_add_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator-(F32 a, F32 b) { return {_mm512_sub_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator*(F32 a, F32 b) { return {_mm512_mul_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator/(F32 a, F32 b) { return {_mm512_div_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 sqrt(F32 a) { return {_mm512_sqrt_ps(a.v)}; }
FASTOPTIM_INLINE F32 fma(F32 a, F32 b, F32 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
FASTOPTIM_INLINE F32 max(F32 a, F32 b) { return {_mm512_max_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 neg(F32 a) { return {_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(INT32_MIN)))}; }

FASTOPTIM_INLINE F64 operator+(F64 a, F64 b) { return {_mm512_add_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator-(F64 a, F64 b) { return {_mm512_sub_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator*(F64 a, F64 b) { return {_mm512_mul_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator/(F64 a, F64 b) { return {_mm512_div_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 sqrt(F64 a) { return {_mm512_sqrt_pd(a.v)}; }
FASTOPTIM_INLINE F64 fma(F64 a, F64 b, F64 c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
FASTOPTIM_INLINE F64 max(F64 a, F64 b) { return {_mm512_max_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 neg(F64 a) { return {_mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(a.v), _mm512_set1_epi64(INT64_MIN)))}; }

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
  out[0] = {_mm512_cvtps_pd(_mm256_loadu_ps(p))};
}

// The primitives vec_ops.inl builds maximum, abs and sign on: comparisons false when either
// side is NaN (ordered, quiet), select, ~a & b on the bits (integer: andnot_ps is AVX512DQ).
FASTOPTIM_INLINE F32::Mask lt(F32 a, F32 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ)}; }
FASTOPTIM_INLINE F32::Mask gt(F32 a, F32 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ)}; }
FASTOPTIM_INLINE F32::Mask unordered(F32 a, F32 b) {
  return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_UNORD_Q)};
}
FASTOPTIM_INLINE F32 select(F32::Mask mask, F32 yes, F32 no) {
  return {_mm512_mask_blend_ps(mask.v, no.v, yes.v)};
}
FASTOPTIM_INLINE F32 andnot(F32 a, F32 b) {
  return {_mm512_castsi512_ps(
      _mm512_andnot_si512(_mm512_castps_si512(a.v), _mm512_castps_si512(b.v)))};
}
FASTOPTIM_INLINE F64::Mask lt(F64 a, F64 b) { return {_mm512_cmp_pd_mask(a.v, b.v, _CMP_LT_OQ)}; }
FASTOPTIM_INLINE F64::Mask gt(F64 a, F64 b) { return {_mm512_cmp_pd_mask(a.v, b.v, _CMP_GT_OQ)}; }
FASTOPTIM_INLINE F64::Mask unordered(F64 a, F64 b) {
  return {_mm512_cmp_pd_mask(a.v, b.v, _CMP_UNORD_Q)};
}
FASTOPTIM_INLINE F64 select(F64::Mask mask, F64 yes, F64 no) {
  return {_mm512_mask_blend_pd(mask.v, no.v, yes.v)};
}
FASTOPTIM_INLINE F64 andnot(F64 a, F64 b) {
  return {_mm512_castsi512_pd(
      _mm512_andnot_si512(_mm512_castpd_si512(a.v), _mm512_castpd_si512(b.v)))};
}

FASTOPTIM_INLINE U32 operator+(U32 a, U32 b) { return {_mm512_add_epi32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator-(U32 a, U32 b) { return {_mm512_sub_epi32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator*(U32 a, U32 b) { return {_mm512_mullo_epi32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator^(U32 a, U32 b) { return {_mm512_xor_si512(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator&(U32 a, U32 b) { return {_mm512_and_si512(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator|(U32 a, U32 b) { return {_mm512_or_si512(a.v, b.v)}; }
FASTOPTIM_INLINE U32 andnot(U32 a, U32 b) { return {_mm512_andnot_si512(a.v, b.v)}; }
template <int N>
FASTOPTIM_INLINE U32 shift_left(U32 a) { return {_mm512_slli_epi32(a.v, N)}; }
template <int N>
FASTOPTIM_INLINE U32 shift_right(U32 a) { return {_mm512_srli_epi32(a.v, N)}; }
FASTOPTIM_INLINE U32 max_signed(U32 a, U32 b) { return {_mm512_max_epi32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 equal_mask(U32 a, U32 b) {
  return {_mm512_maskz_mov_epi32(_mm512_cmpeq_epi32_mask(a.v, b.v), _mm512_set1_epi32(-1))};
}
FASTOPTIM_INLINE U32 as_bits(F32 a) { return {_mm512_castps_si512(a.v)}; }
FASTOPTIM_INLINE F32 from_bits(U32 a) { return {_mm512_castsi512_ps(a.v)}; }
FASTOPTIM_INLINE F32 int_to_float(U32 a) { return {_mm512_cvtepi32_ps(a.v)}; }
FASTOPTIM_INLINE U32 truncate_to_int(F32 a) { return {_mm512_cvttps_epi32(a.v)}; }
FASTOPTIM_INLINE U32 less_mask(F32 a, F32 b) {
  return {_mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), _mm512_set1_epi32(-1))};
}
FASTOPTIM_INLINE U32 nan_mask(F32 a) {
  return {_mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q), _mm512_set1_epi32(-1))};
}

// blockwise.inl's map lookups: 16 floats of a table by 32-bit index
FASTOPTIM_INLINE F32 gather(const float* table, U32 index) {
  return {_mm512_i32gather_ps(index.v, table, 4)};
}
// int8 state's codes: the low byte of each of the 16 lanes stored (U32::load_bytes widens)
FASTOPTIM_INLINE void narrow_to_bytes(uint8_t* p, U32 a) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(a.v));
}

// ---- bfloat16 as even and odd elements (the bench's roofline, cpp/roofline/roofline.inl) -------
// 2 * kLanes bfloat16 values as two vectors: the even-indexed elements and the odd-indexed ones.
// Neither direction moves data across lanes (F32::load/store widen and narrow with shuffles),
// so a loop whose every stream is bfloat16 and whose math is elementwise converts faster this
// way. store_even_odd rounds as F32::store does: nearest even, a NaN stored as 0x7fc0.
FASTOPTIM_INLINE void load_even_odd(const bfloat16* p, F32& even, F32& odd) {
  const __m512i w = _mm512_loadu_si512(p);
  even = {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
  odd = {_mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xffff0000u))))};
}
// x rounded to bfloat16 in the high half of each 32-bit lane (the low half is left over)
FASTOPTIM_INLINE __m512i bfloat16_in_high_half(F32 x) {
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q),
                               _mm512_set1_epi32(0x7fc00000));
}
// the high halves of even's lanes and odd's, interleaved: even's shifted into the low halves,
// odd's kept in the high ones (a | (b & c))
FASTOPTIM_INLINE void store_high_halves(bfloat16* p, U32 even, U32 odd) {
  _mm512_storeu_si512(p, _mm512_ternarylogic_epi32(_mm512_srli_epi32(even.v, 16), odd.v,
                                                   _mm512_set1_epi32(static_cast<int>(0xffff0000u)),
                                                   0xf8));
}
FASTOPTIM_INLINE void store_even_odd(bfloat16* p, F32 even, F32 odd) {
  store_high_halves(p, {bfloat16_in_high_half(even)}, {bfloat16_in_high_half(odd)});
}
