// sse2 vectors for the rule math (kernel.inl). Included inside namespace fastoptim::kernels::sse2.

struct F32 {
  using Lane = float;
  static constexpr size_t kLanes = 4;
  __m128 v;
  static FASTOPTIM_INLINE F32 load(const float* p) { return {_mm_loadu_ps(p)}; }
  static FASTOPTIM_INLINE void store(float* p, F32 x) { _mm_storeu_ps(p, x.v); }
  static FASTOPTIM_INLINE F32 set1(float x) { return {_mm_set1_ps(x)}; }
};
struct F64 {
  using Lane = double;
  static constexpr size_t kLanes = 2;
  __m128d v;
  static FASTOPTIM_INLINE F64 load(const double* p) { return {_mm_loadu_pd(p)}; }
  static FASTOPTIM_INLINE void store(double* p, F64 x) { _mm_storeu_pd(p, x.v); }
  static FASTOPTIM_INLINE F64 set1(double x) { return {_mm_set1_pd(x)}; }
};

FASTOPTIM_INLINE F32 operator+(F32 a, F32 b) { return {_mm_add_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator-(F32 a, F32 b) { return {_mm_sub_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator*(F32 a, F32 b) { return {_mm_mul_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator/(F32 a, F32 b) { return {_mm_div_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 sqrt(F32 a) { return {_mm_sqrt_ps(a.v)}; }
FASTOPTIM_INLINE F32 max(F32 a, F32 b) { return {_mm_max_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 neg(F32 a) { return {_mm_xor_ps(a.v, _mm_set1_ps(-0.0f))}; }

FASTOPTIM_INLINE F64 operator+(F64 a, F64 b) { return {_mm_add_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator-(F64 a, F64 b) { return {_mm_sub_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator*(F64 a, F64 b) { return {_mm_mul_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator/(F64 a, F64 b) { return {_mm_div_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 sqrt(F64 a) { return {_mm_sqrt_pd(a.v)}; }
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

// The norm pass: 8 floats widened to doubles (lane order), |x|.
FASTOPTIM_INLINE void load8_widened(const float* p, F64* out) {
  const __m128 lo = _mm_loadu_ps(p), hi = _mm_loadu_ps(p + 4);
  out[0] = {_mm_cvtps_pd(lo)};
  out[1] = {_mm_cvtps_pd(_mm_movehl_ps(lo, lo))};
  out[2] = {_mm_cvtps_pd(hi)};
  out[3] = {_mm_cvtps_pd(_mm_movehl_ps(hi, hi))};
}
FASTOPTIM_INLINE F64 abs(F64 a) { return {_mm_andnot_pd(_mm_set1_pd(-0.0), a.v)}; }

// torch.maximum: the larger value, or NaN (all bits set, at every level) if either is NaN.
FASTOPTIM_INLINE F32 maximum(F32 a, F32 b) {
  return {_mm_or_ps(_mm_max_ps(a.v, b.v), _mm_cmpunord_ps(a.v, b.v))};
}
FASTOPTIM_INLINE F32 abs(F32 a) { return {_mm_andnot_ps(_mm_set1_ps(-0.0f), a.v)}; }
FASTOPTIM_INLINE F64 maximum(F64 a, F64 b) {
  return {_mm_or_pd(_mm_max_pd(a.v, b.v), _mm_cmpunord_pd(a.v, b.v))};
}
