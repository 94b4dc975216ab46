// avx2 vectors for the rule math (kernel.inl). Included inside namespace fastoptim::kernels::avx2.

struct F32 {
  using Lane = float;
  static constexpr size_t kLanes = 8;
  __m256 v;
  static FASTOPTIM_INLINE F32 load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static FASTOPTIM_INLINE void store(float* p, F32 x) { _mm256_storeu_ps(p, x.v); }
  static FASTOPTIM_INLINE F32 set1(float x) { return {_mm256_set1_ps(x)}; }
};
struct F64 {
  using Lane = double;
  static constexpr size_t kLanes = 4;
  __m256d v;
  static FASTOPTIM_INLINE F64 load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static FASTOPTIM_INLINE void store(double* p, F64 x) { _mm256_storeu_pd(p, x.v); }
  static FASTOPTIM_INLINE F64 set1(double x) { return {_mm256_set1_pd(x)}; }
};

FASTOPTIM_INLINE F32 operator+(F32 a, F32 b) { return {_mm256_add_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator-(F32 a, F32 b) { return {_mm256_sub_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator*(F32 a, F32 b) { return {_mm256_mul_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 operator/(F32 a, F32 b) { return {_mm256_div_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 sqrt(F32 a) { return {_mm256_sqrt_ps(a.v)}; }
FASTOPTIM_INLINE F32 max(F32 a, F32 b) { return {_mm256_max_ps(a.v, b.v)}; }
FASTOPTIM_INLINE F32 neg(F32 a) { return {_mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f))}; }

FASTOPTIM_INLINE F64 operator+(F64 a, F64 b) { return {_mm256_add_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator-(F64 a, F64 b) { return {_mm256_sub_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator*(F64 a, F64 b) { return {_mm256_mul_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 operator/(F64 a, F64 b) { return {_mm256_div_pd(a.v, b.v)}; }
FASTOPTIM_INLINE F64 sqrt(F64 a) { return {_mm256_sqrt_pd(a.v)}; }
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

// The norm pass: 8 floats widened to doubles (lane order), |x|.
FASTOPTIM_INLINE void load8_widened(const float* p, F64* out) {
  out[0] = {_mm256_cvtps_pd(_mm_loadu_ps(p))};
  out[1] = {_mm256_cvtps_pd(_mm_loadu_ps(p + 4))};
}
FASTOPTIM_INLINE F64 abs(F64 a) { return {_mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v)}; }

// torch.maximum: the larger value, or NaN (all bits set, at every level) if either is NaN.
FASTOPTIM_INLINE F32 maximum(F32 a, F32 b) {
  return {_mm256_or_ps(_mm256_max_ps(a.v, b.v), _mm256_cmp_ps(a.v, b.v, _CMP_UNORD_Q))};
}
FASTOPTIM_INLINE F32 abs(F32 a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
FASTOPTIM_INLINE F64 maximum(F64 a, F64 b) {
  return {_mm256_or_pd(_mm256_max_pd(a.v, b.v), _mm256_cmp_pd(a.v, b.v, _CMP_UNORD_Q))};
}
