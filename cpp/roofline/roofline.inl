// The bench's roofline loop at one ISA: x += grad over the param and state streams, each loaded
// and stored in its own storage type with this level's vector header (cpp/src/kernels/vec_*.inl),
// the conversions a kernel of the same layout makes. Included inside
// namespace fastoptim::kernels::<isa>, after the vector headers.
//
// Two vectors per step: at one, the branch on each stream's type kept the mixed layouts' loops
// below memory speed (measured on the 2-core Zen 4 VM). Where every stream is bfloat16 and the
// level has them, load_even_odd/store_even_odd widen and narrow without crossing lanes: with
// F32::load/store's shuffles an all-bfloat16 loop was compute-bound there.

// A layout's streams share the storage type T; or T = void: each stream's type is a runtime
// value (a branch per stream and step, the same every time: predicted perfectly).
template <class T, class V>
FASTOPTIM_INLINE void load_two(const void* base, size_t i, int type, V& a, V& b) {
  if constexpr (rules::kSame<T, void>) {
    if constexpr (sizeof(typename V::Lane) == 8) {
      if (type == kRooflineFloat32) return load_two<float>(base, i, type, a, b);
      return load_two<double>(base, i, type, a, b);
    } else {
      if (type == kRooflineBFloat16) return load_two<bfloat16>(base, i, type, a, b);
      if (type == kRooflineFloat16) return load_two<float16>(base, i, type, a, b);
      return load_two<float>(base, i, type, a, b);
    }
  } else {
    const T* p = static_cast<const T*>(base) + i;
    a = b = V::load(p);
    if constexpr (V::kLanes > 1) b = V::load(p + V::kLanes);
  }
}

template <class T, class V>
FASTOPTIM_INLINE void add_two(void* base, size_t i, int type, V g0, V g1) {
  if constexpr (rules::kSame<T, void>) {
    if constexpr (sizeof(typename V::Lane) == 8) {
      add_two<double>(base, i, type, g0, g1);  // float64 arithmetic writes float64 only
    } else {
      if (type == kRooflineBFloat16) return add_two<bfloat16>(base, i, type, g0, g1);
      if (type == kRooflineFloat16) return add_two<float16>(base, i, type, g0, g1);
      add_two<float>(base, i, type, g0, g1);
    }
  } else {
    T* p = static_cast<T*>(base) + i;
    V::store(p, V::load(p) + g0);
    if constexpr (V::kLanes > 1) V::store(p + V::kLanes, V::load(p + V::kLanes) + g1);
  }
}

// x += grad for the elements of two vectors from element i on (one element with a one-lane V).
template <class T, class V>
FASTOPTIM_INLINE void add_grad(const RooflineStreams& s, size_t i) {
  V g0, g1;
  if constexpr (rules::kSame<T, bfloat16> && EvenOddBFloat16<V>) {
    load_even_odd(static_cast<const bfloat16*>(s.grad) + i, g0, g1);
    for (int w = 0; w < s.written_count; ++w) {
      bfloat16* x = static_cast<bfloat16*>(s.written[w]) + i;
      V x0, x1;
      load_even_odd(x, x0, x1);
      store_even_odd(x, x0 + g0, x1 + g1);
    }
  } else {
    load_two<T>(s.grad, i, s.grad_type, g0, g1);
    for (int w = 0; w < s.written_count; ++w)
      add_two<T>(s.written[w], i, s.written_types[w], g0, g1);
  }
}

template <class C, class T>
void roofline_pass(const RooflineStreams& streams, size_t first, size_t last) {
  using V = typename VecOf<C>::type;
  using S = Scalar<C>;
  constexpr size_t kStep = V::kLanes > 1 ? 2 * V::kLanes : 1;
  const RooflineStreams s = streams;  // a local copy: the stores cannot alias it
  // One lane at a time up to the param's next cache line, as the kernels align their vectors:
  // wide accesses that straddle cache lines are slower.
  const int param_type = s.written_types[0];
  const size_t param_bytes = param_type == kRooflineFloat64 ? 8
                             : param_type == kRooflineFloat32 ? 4
                                                              : 2;
  const size_t misaligned = (reinterpret_cast<uintptr_t>(s.written[0]) / param_bytes + first) %
                            (64 / param_bytes);
  const size_t head = first + (misaligned == 0 ? 0 : 64 / param_bytes - misaligned);
  size_t i = first;
  for (; i < head && i < last; ++i) add_grad<T, S>(s, i);
  for (; i + kStep <= last; i += kStep) add_grad<T, V>(s, i);
  for (; i < last; ++i) add_grad<T, S>(s, i);
}

// AdamW's exact arithmetic alone, which no layout avoids: per element one square root and two
// divisions in torch's order (m / (sqrt(v) / bias_correction2_sqrt + eps)), no conversions and
// no memory traffic when x and m stay in L1. Its rate bounds an exact AdamW step per thread
// whatever the bytes it moves.
void adamw_arithmetic(float* x, const float* m, size_t n) {
  using V = VecOf<float>::type;
  const V c = V::set1(1.25f), eps = V::set1(1e-8f);
  for (size_t i = 0; i + V::kLanes <= n; i += V::kLanes)
    V::store(x + i, V::load(m + i) / (sqrt(V::load(x + i)) / c + eps));
}

extern const RooflineTable kRooflineTable;
constinit const RooflineTable kRooflineTable = {
    FASTOPTIM_ISA_NAME,
    {&roofline_pass<float, float>, &roofline_pass<double, double>,
     &roofline_pass<float, bfloat16>, &roofline_pass<float, float16>},
    &roofline_pass<float, void>,
    &roofline_pass<double, void>,
    &adamw_arithmetic,
};
