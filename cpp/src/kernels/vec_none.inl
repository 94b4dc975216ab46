// The scalar level: one lane, portable C++. Included inside namespace fastoptim::kernels::scalar.

template <class T>
struct VecOf {
  using type = Scalar<T>;
};
