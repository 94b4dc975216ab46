// The scalar level: one lane, portable C++. Included inside namespace fastoptim::kernels::scalar.

template <class T>
struct VecOf {
  using type = Scalar<T>;
};

// The norm pass: 8 floats widened to doubles.
FASTOPTIM_INLINE void load8_widened(const float* p, Scalar<double>* out) {
  for (int k = 0; k < 8; ++k) out[k] = {static_cast<double>(p[k])};
}
