// Element functions written once, on the primitives every level's vector header defines for its
// compute vectors (vec_scalar.inl's Scalar<T> included): lt, gt, unordered (masks of type
// V::Mask), select(mask, yes, no), andnot (~a & b on the bits), and max, the instruction's
// (b unless a > b). Included inside namespace fastoptim::kernels::<isa>, after the vector headers.
// Every level computes the same bits, NaN payloads included: the kernels are bit-identical
// across levels, and cpp/tests/test_simd.cpp checks each function at each level.

template <class V>
concept ComputeVector = requires { typename V::Mask; };

// A lane with every bit set: the NaN that maximum gives (what maxps | cmpunord gives at the
// x86 levels, kept at every level so that results do not change).
template <class T>
FASTOPTIM_INLINE T all_bits_set() {
  if constexpr (sizeof(T) == 4) {
    return reinterpret_bits<T>(~uint32_t{0});
  } else {
    return reinterpret_bits<T>(~uint64_t{0});
  }
}

// torch.maximum: NaN if either is NaN, else the larger; of two equal values (+0 and -0), b.
template <ComputeVector V>
FASTOPTIM_INLINE V maximum(V a, V b) {
  return select(unordered(a, b), V::set1(all_bits_set<typename V::Lane>()), max(a, b));
}

// torch.abs: the sign bit cleared, so -0 gives +0 and a NaN keeps its payload.
template <ComputeVector V>
FASTOPTIM_INLINE V abs(V a) {
  return andnot(V::set1(typename V::Lane(-0.0)), a);
}

// torch.sign, as its CPU kernel computes it, (0 < a) - (a < 0): +1 above zero (+inf and
// subnormals included), -1 below, and +0 for +0, -0 and every NaN.
template <ComputeVector V>
FASTOPTIM_INLINE V sign(V a) {
  using T = typename V::Lane;
  const V zero = V::set1(T(0));
  return select(gt(a, zero), V::set1(T(1)), select(lt(a, zero), V::set1(T(-1)), zero));
}
