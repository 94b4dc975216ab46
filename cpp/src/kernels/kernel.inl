// The kernels of one ISA: every registered (rule, layout) pair, and the grad-norm pass.
// Included inside namespace fastoptim::kernels::<isa> by each isa_*.cpp, after its vector
// header, so every function here is compiled once per ISA and stays in that ISA's namespace.
// The rules' element math (fastoptim/rules/*.hpp) is instantiated here with this ISA's vectors.
//
// Operation order follows torch.optim's single-tensor (foreach=False) code line by line, with
// a fused multiply-add exactly where torch's CPU kernels use one (add with alpha, addcmul,
// lerp) and nowhere else (no contraction, no approximate reciprocals): every ISA gives
// bit-identical results, and float32/float64 steps match torch's to the bit far more often.
// Uniform flags are plain branches: they are predicted perfectly and the loops are
// memory-bound.

// A stream's storage type to the compute vector V and back: the one place a conversion
// happens (stochastic rounding, below, first moves a value onto the 16-bit grid). The same
// type is a plain load and store; a 16-bit storage type (bfloat16, float16) widens to and
// narrows from float32 lanes with the vector header's conversions.
template <class V, class S>
FASTOPTIM_INLINE V load_as(const S* p) {
  if constexpr (rules::kSame<typename V::Lane, double> && kHalf<S>) {
    // a 16-bit grad of a float64 param: widened exactly to float32 lanes, then to float64
    float wide[V::kLanes];
    for (size_t k = 0; k < V::kLanes; ++k) wide[k] = to_float(p[k]);
    return V::load(static_cast<const float*>(wide));
  } else {
    return V::load(p);  // the same type, or float32 lanes from 16-bit or float64 from float32
  }
}
template <class V, class S>
FASTOPTIM_INLINE void store_as(S* p, V x) {
  static_assert(rules::kSame<S, typename V::Lane> || rules::kSame<typename V::Lane, float>,
                "16-bit storage computes in float32");
  V::store(p, x);
}

// Stochastic rounding. Element e of a pair of streams (the param and state slot 0; slots 1
// and 2) draws 32 random bits, a counter-based hash of (e, the pair's key), the key itself a
// hash of (seed, step, param, pair) the driver made: the same bits at every SIMD level, for
// any thread split, and reproducible for a seed. Each stream of the pair rounds with 16 of
// them.
template <class U>
FASTOPTIM_INLINE U random_bits(uint32_t key, uint32_t first) {
  U x = U::iota(first) ^ U::set1(key);
  x = x ^ shift_right<16>(x);
  x = x * U::set1(0x7feb352du);
  x = x ^ shift_right<15>(x);
  x = x * U::set1(0x846ca68bu);
  return x ^ shift_right<16>(x);
}

// x rounded to one of the two nearest values of 16-bit type S (x itself if it is one), away
// from zero with probability (|x| - lower) / spacing (to 2^-16), using the top 16 bits of r;
// inf and NaN pass unchanged. The result is exact in S, so the nearest-even store that follows keeps it.
template <class S, class V>
FASTOPTIM_INLINE V round_stochastically(V x, typename V::Bits r) {
  using U = typename V::Bits;
  const U b = as_bits(x);
  const U exponent = b & U::set1(0x7f800000u);
  const U nonfinite = equal_mask(exponent, U::set1(0x7f800000u));
  U rounded;
  if constexpr (rules::kSame<S, bfloat16>) {
    // bfloat16 is float32's top half: add 16 random bits below it and cut them off
    rounded = (b + shift_right<16>(r)) & U::set1(0xffff0000u);
  } else {
    // float16: its spacing at |x| is 2^(exponent - 10), at least 2^-24 (subnormals); |x| in
    // units of it splits exactly into a whole part and a fraction, which 16 random bits
    // compare against
    const U sign = b & U::set1(0x80000000u);
    const V magnitude = from_bits(b ^ sign);
    const U spacing = max_signed(exponent - U::set1(10u << 23), U::set1(0x33800000u));
    const V units = magnitude * from_bits(U::set1(254u << 23) - spacing);  // |x| / spacing
    const V whole = int_to_float(truncate_to_int(units));
    const V uniform = int_to_float(shift_right<16>(r)) * V::set1(0x1p-16f);
    const V up = from_bits(less_mask(uniform, units - whole) & as_bits(V::set1(1.0f)));
    rounded = as_bits((whole + up) * from_bits(spacing)) | sign;
  }
  return from_bits((nonfinite & b) | andnot(nonfinite, rounded));
}

// What a rule's update sees at element i: each stream loaded and stored in its layout's
// storage type, the grad unscaled and clipped as it is read. With a master copy, the param
// the rule reads and writes is the master (or the param, where the user wrote it since the last
// step: param()); the param stream receives it rounded to nearest.
template <class V, class L>
struct Io {
  using C = typename V::Lane;
  static constexpr bool kMaster = !rules::kSame<typename L::master, void>;
  const Streams& p;
  size_t i;
  const GradFactors<C>& f;

  FASTOPTIM_INLINE V grad() const {
    V g = load_as<V>(static_cast<const typename L::grad*>(p.grad) + i);
    if (f.unscale) g = g * V::set1(f.inv_scale);
    if (f.clip) g = g * V::set1(f.clip_coef);
    return g;
  }
  // With a master, the param may have been written since the last step (a copy_, a loaded
  // model, a clamp, an EMA swap). An untouched param is exactly the master rounded to nearest
  // even, as store_param left it; where its bits differ from that rounding, the write wins and
  // the param, widened exactly, is the master value this step starts from. Comparing bits,
  // not values, treats NaN, -0/+0 and inf like any other value.
  FASTOPTIM_INLINE V param() const {
    using P = typename L::param;
    const V current = load_as<V>(static_cast<const P*>(p.param) + i);
    if constexpr (kMaster) {
      const V master = load_as<V>(static_cast<const typename L::master*>(p.master) + i);
      P stored[V::kLanes];  // through the store's own rounding: every level decides alike
      V::store(stored, master);
      const V untouched_value = V::load(static_cast<const P*>(stored));
      const typename V::Bits kept = equal_mask(as_bits(untouched_value), as_bits(current));
      return from_bits((kept & as_bits(master)) | andnot(kept, as_bits(current)));
    } else {
      return current;
    }
  }
  FASTOPTIM_INLINE void store_param(V x) const {
    if constexpr (kMaster) store_as(static_cast<typename L::master*>(p.master) + i, x);
    else x = rounded<typename L::param>(x, 0);
    store_as(static_cast<typename L::param*>(p.param) + i, x);
  }
  FASTOPTIM_INLINE V state(int k) const {
    return load_as<V>(static_cast<const typename L::state*>(p.state[k]) + i);
  }
  FASTOPTIM_INLINE void store_state(int k, V x) const {
    store_as(static_cast<typename L::state*>(p.state[k]) + i, rounded<typename L::state>(x, 1 + k));
  }

  // x as a store of type S rounds it: stochastically when asked and S is 16-bit; else the
  // store rounds to nearest even
  template <class S>
  FASTOPTIM_INLINE V rounded(V x, int stream) const {
    if constexpr (kHalf<S>) {
      if (p.stochastic) {
        using Bits = typename V::Bits;
        const int pair = stream >> 1;
        if (!drawn[pair]) {  // once per element for both streams of the pair
          bits[pair] = random_bits<Bits>(p.keys[pair], p.first + static_cast<uint32_t>(i));
          drawn[pair] = true;
        }
        return round_stochastically<S>(x, stream & 1 ? shift_left<16>(bits[pair]) : bits[pair]);
      }
    }
    return x;
  }
  // the random bits drawn for this element, per stream pair (stores are const: the rules
  // take `const Io&`)
  mutable typename V::Bits bits[2];
  mutable bool drawn[2] = {false, false};
};

template <class R, class L>
void run(const void* scalars, const void* factors, const Streams& stream_ptrs, size_t count) {
  using C = typename L::compute;
  using V = typename VecOf<C>::type;
  using S = Scalar<C>;
  using Scalars = typename R::template Scalars<C>;
  const Streams streams = stream_ptrs;
  // Local copies: stores through C* could alias the fields of *scalars, which would force a
  // reload and broadcast of every scalar on every iteration.
  const Scalars s = *static_cast<const Scalars*>(scalars);
  const GradFactors<C> f = *static_cast<const GradFactors<C>*>(factors);
  // One-lane head up to the first vector-aligned param address (counted in param elements):
  // wide accesses that straddle cache lines cost ~20% on these streams, and NumPy's large
  // arrays are only 16-byte aligned (the other streams usually share the param's offset).
  const size_t misaligned =
      reinterpret_cast<uintptr_t>(streams.param) / sizeof(typename L::param) % V::kLanes;
  const size_t head = misaligned == 0 ? 0 : V::kLanes - misaligned;
  size_t i = 0;
  for (; i < head && i < count; ++i) R::template update<S>(s, Io<S, L>{streams, i, f});
  for (; i + V::kLanes <= count; i += V::kLanes) R::template update<V>(s, Io<V, L>{streams, i, f});
  for (; i < count; ++i) R::template update<S>(s, Io<S, L>{streams, i, f});
}

// The grad norm's inner loop: elements [0, n) (n a multiple of 8) into 8 double lanes, element
// k into lane k % 8, each lane adding in element order. Every ISA keeps exactly those eight
// sums (as 1, 2, 4 or 8 registers), so the result is the same bits at every level.
template <class T>
FASTOPTIM_INLINE void load8(const T* p, typename VecOf<double>::type* out) {
  using D = typename VecOf<double>::type;
  if constexpr (sizeof(T) == 4) {
    load8_widened(p, out);
  } else {
    for (size_t r = 0; r < 8 / D::kLanes; ++r) out[r] = D::load(p + r * D::kLanes);
  }
}

template <bool kSquares, class T>
void norm_lanes(const void* grad, size_t n, double* lanes) {
  using D = typename VecOf<double>::type;
  constexpr size_t kRegs = 8 / D::kLanes;
  D acc[kRegs];
  for (size_t r = 0; r < kRegs; ++r) acc[r] = D::load(lanes + r * D::kLanes);
  const T* g = static_cast<const T*>(grad);
  for (size_t i = 0; i < n; i += 8) {
    D x[kRegs];
    load8(g + i, x);
    for (size_t r = 0; r < kRegs; ++r) acc[r] = acc[r] + (kSquares ? x[r] * x[r] : abs(x[r]));
  }
  for (size_t r = 0; r < kRegs; ++r) D::store(lanes + r * D::kLanes, acc[r]);
}

// The table: a kernel for every rule of the registry and every registered layout.
template <class R, class... L>
constexpr void fill_row(Kernel* row, LayoutList<L...>) {
  size_t j = 0;
  ((row[j++] = &run<R, L>), ...);
}
template <class... R>
constexpr KernelTable make_table(rules::RuleList<R...>) {
  KernelTable table{};
  table.level = FASTOPTIM_ISA_NAME;
  size_t i = 0;
  (fill_row<R>(table.kernels[i++], Registered{}), ...);
  table.norms[0][0] = &norm_lanes<false, float>;
  table.norms[0][1] = &norm_lanes<false, double>;
  table.norms[1][0] = &norm_lanes<true, float>;
  table.norms[1][1] = &norm_lanes<true, double>;
  return table;
}

extern const KernelTable kTable;
constinit const KernelTable kTable = make_table(rules::All{});
