// neon (AArch64 Advanced SIMD) vectors for the rule math (kernel.inl). Included inside
// namespace fastoptim::kernels::neon.

// 32-bit integer lanes: stochastic rounding's random bits and bit tricks (kernel.inl).
struct U32 {
  uint32x4_t v;
  static FASTOPTIM_INLINE U32 set1(uint32_t x) { return {vdupq_n_u32(x)}; }
  static FASTOPTIM_INLINE U32 iota(uint32_t first) {
    const uint32_t lanes[4] = {0, 1, 2, 3};
    return {vaddq_u32(vdupq_n_u32(first), vld1q_u32(lanes))};
  }
};
struct F32 {
  using Lane = float;
  using Bits = U32;
  struct Mask {  // lanes of all ones or all zeros
    uint32x4_t v;
  };
  static constexpr size_t kLanes = 4;
  float32x4_t v;
  static FASTOPTIM_INLINE F32 load(const float* p) { return {vld1q_f32(p)}; }
  static FASTOPTIM_INLINE void store(float* p, F32 x) { vst1q_f32(p, x.v); }
  static FASTOPTIM_INLINE F32 set1(float x) { return {vdupq_n_f32(x)}; }
  // 16-bit storage (fastoptim/types.hpp): widened exactly, narrowed to nearest even
  static FASTOPTIM_INLINE F32 load(const bfloat16* p) {
    return {vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const uint16_t*>(p)), 16))};
  }
  static FASTOPTIM_INLINE void store(bfloat16* p, F32 x) {
    const uint32x4_t u = vreinterpretq_u32_f32(x.v);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    uint32x4_t r = vshrq_n_u32(vaddq_u32(u, vaddq_u32(lsb, vdupq_n_u32(0x7fff))), 16);
    r = vbslq_u32(vmvnq_u32(vceqq_f32(x.v, x.v)), vdupq_n_u32(0x7fc0), r);
    vst1_u16(reinterpret_cast<uint16_t*>(p), vmovn_u32(r));
  }
  static FASTOPTIM_INLINE F32 load(const float16* p) {
    return {vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(p))))};
  }
  static FASTOPTIM_INLINE void store(float16* p, F32 x) {
    // one NaN (types.hpp): 0x7fc00000 converts to 0x7e00
    const float32x4_t v = vbslq_f32(vceqq_f32(x.v, x.v), x.v,
                                    vreinterpretq_f32_u32(vdupq_n_u32(0x7fc00000)));
    vst1_u16(reinterpret_cast<uint16_t*>(p), vreinterpret_u16_f16(vcvt_f16_f32(v)));
  }
};
struct F64 {
  using Lane = double;
  using Bits = U32;  // no float64 layout stores 16-bit values: never drawn
  struct Mask {
    uint64x2_t v;
  };
  static constexpr size_t kLanes = 2;
  float64x2_t v;
  static FASTOPTIM_INLINE F64 load(const double* p) { return {vld1q_f64(p)}; }
  static FASTOPTIM_INLINE void store(double* p, F64 x) { vst1q_f64(p, x.v); }
  static FASTOPTIM_INLINE F64 set1(double x) { return {vdupq_n_f64(x)}; }
  // a float32 grad of a float64 param, widened exactly
  static FASTOPTIM_INLINE F64 load(const float* p) { return {vcvt_f64_f32(vld1_f32(p))}; }
};

FASTOPTIM_INLINE F32 operator+(F32 a, F32 b) { return {vaddq_f32(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator-(F32 a, F32 b) { return {vsubq_f32(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator*(F32 a, F32 b) { return {vmulq_f32(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator/(F32 a, F32 b) { return {vdivq_f32(a.v, b.v)}; }
FASTOPTIM_INLINE F32 sqrt(F32 a) { return {vsqrtq_f32(a.v)}; }
FASTOPTIM_INLINE F32 fma(F32 a, F32 b, F32 c) { return {vfmaq_f32(c.v, a.v, b.v)}; }
// vmaxq propagates NaN; select instead to match the scalar tail (b unless a > b).
FASTOPTIM_INLINE F32 max(F32 a, F32 b) { return {vbslq_f32(vcgtq_f32(a.v, b.v), a.v, b.v)}; }
FASTOPTIM_INLINE F32 neg(F32 a) { return {vnegq_f32(a.v)}; }

FASTOPTIM_INLINE F64 operator+(F64 a, F64 b) { return {vaddq_f64(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator-(F64 a, F64 b) { return {vsubq_f64(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator*(F64 a, F64 b) { return {vmulq_f64(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator/(F64 a, F64 b) { return {vdivq_f64(a.v, b.v)}; }
FASTOPTIM_INLINE F64 sqrt(F64 a) { return {vsqrtq_f64(a.v)}; }
FASTOPTIM_INLINE F64 fma(F64 a, F64 b, F64 c) { return {vfmaq_f64(c.v, a.v, b.v)}; }
FASTOPTIM_INLINE F64 max(F64 a, F64 b) { return {vbslq_f64(vcgtq_f64(a.v, b.v), a.v, b.v)}; }
FASTOPTIM_INLINE F64 neg(F64 a) { return {vnegq_f64(a.v)}; }

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
  const float32x4_t lo = vld1q_f32(p), hi = vld1q_f32(p + 4);
  out[0] = {vcvt_f64_f32(vget_low_f32(lo))};
  out[1] = {vcvt_high_f64_f32(lo)};
  out[2] = {vcvt_f64_f32(vget_low_f32(hi))};
  out[3] = {vcvt_high_f64_f32(hi)};
}

// The primitives vec_ops.inl builds maximum, abs and sign on: comparisons false when either
// side is NaN, select (bitwise), ~a & b on the bits. NEON has no unordered compare: NaN is the
// value not equal to itself.
FASTOPTIM_INLINE F32::Mask lt(F32 a, F32 b) { return {vcltq_f32(a.v, b.v)}; }
FASTOPTIM_INLINE F32::Mask gt(F32 a, F32 b) { return {vcgtq_f32(a.v, b.v)}; }
FASTOPTIM_INLINE F32::Mask unordered(F32 a, F32 b) {
  return {vmvnq_u32(vandq_u32(vceqq_f32(a.v, a.v), vceqq_f32(b.v, b.v)))};
}
FASTOPTIM_INLINE F32 select(F32::Mask mask, F32 yes, F32 no) {
  return {vbslq_f32(mask.v, yes.v, no.v)};
}
FASTOPTIM_INLINE F32 andnot(F32 a, F32 b) {
  return {vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(b.v), vreinterpretq_u32_f32(a.v)))};
}
FASTOPTIM_INLINE F64::Mask lt(F64 a, F64 b) { return {vcltq_f64(a.v, b.v)}; }
FASTOPTIM_INLINE F64::Mask gt(F64 a, F64 b) { return {vcgtq_f64(a.v, b.v)}; }
FASTOPTIM_INLINE F64::Mask unordered(F64 a, F64 b) {
  const uint64x2_t ordered = vandq_u64(vceqq_f64(a.v, a.v), vceqq_f64(b.v, b.v));
  return {vreinterpretq_u64_u32(vmvnq_u32(vreinterpretq_u32_u64(ordered)))};  // no vmvnq_u64
}
FASTOPTIM_INLINE F64 select(F64::Mask mask, F64 yes, F64 no) {
  return {vbslq_f64(mask.v, yes.v, no.v)};
}
FASTOPTIM_INLINE F64 andnot(F64 a, F64 b) {
  return {vreinterpretq_f64_u64(vbicq_u64(vreinterpretq_u64_f64(b.v), vreinterpretq_u64_f64(a.v)))};
}

FASTOPTIM_INLINE U32 operator+(U32 a, U32 b) { return {vaddq_u32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator-(U32 a, U32 b) { return {vsubq_u32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator*(U32 a, U32 b) { return {vmulq_u32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator^(U32 a, U32 b) { return {veorq_u32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator&(U32 a, U32 b) { return {vandq_u32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 operator|(U32 a, U32 b) { return {vorrq_u32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 andnot(U32 a, U32 b) { return {vbicq_u32(b.v, a.v)}; }
template <int N>
FASTOPTIM_INLINE U32 shift_left(U32 a) { return {vshlq_n_u32(a.v, N)}; }
template <int N>
FASTOPTIM_INLINE U32 shift_right(U32 a) { return {vshrq_n_u32(a.v, N)}; }
FASTOPTIM_INLINE U32 max_signed(U32 a, U32 b) {
  return {vreinterpretq_u32_s32(vmaxq_s32(vreinterpretq_s32_u32(a.v), vreinterpretq_s32_u32(b.v)))};
}
FASTOPTIM_INLINE U32 equal_mask(U32 a, U32 b) { return {vceqq_u32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 as_bits(F32 a) { return {vreinterpretq_u32_f32(a.v)}; }
FASTOPTIM_INLINE F32 from_bits(U32 a) { return {vreinterpretq_f32_u32(a.v)}; }
FASTOPTIM_INLINE F32 int_to_float(U32 a) { return {vcvtq_f32_s32(vreinterpretq_s32_u32(a.v))}; }
FASTOPTIM_INLINE U32 truncate_to_int(F32 a) { return {vreinterpretq_u32_s32(vcvtq_s32_f32(a.v))}; }
FASTOPTIM_INLINE U32 less_mask(F32 a, F32 b) { return {vcltq_f32(a.v, b.v)}; }
FASTOPTIM_INLINE U32 nan_mask(F32 a) { return {vmvnq_u32(vceqq_f32(a.v, a.v))}; }
