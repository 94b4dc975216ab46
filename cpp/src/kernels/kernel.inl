// The kernels of one ISA: every registered rule's element math per compute type, and the
// grad-norm pass. Included inside namespace
// fastoptim::kernels::<isa> by each isa_*.cpp, after its vector header, so every function here
// is compiled once per ISA and stays in that ISA's namespace. The rules' element math
// (fastoptim/rules/*.hpp) is instantiated here with this ISA's vectors.
//
// Operation order follows torch.optim's single-tensor (foreach=False) code line by line, with
// a fused multiply-add exactly where torch's CPU kernels use one (add with alpha, addcmul,
// lerp) and nowhere else (no contraction, no approximate reciprocals): every ISA gives
// bit-identical results, and float32/float64 steps match torch's to the bit far more often.
// Uniform flags are plain branches: they are predicted perfectly and the loops are
// memory-bound.

// A storage type S as compute vector V: the same type is a plain load; a 16-bit type widens
// to float32 lanes with the vector header's conversions, and then, for float64 lanes, exactly
// once more.
template <class V, class S>
FASTOPTIM_INLINE V load_as(const S* p) {
  if constexpr (rules::kSame<typename V::Lane, double> && kHalf<S>) {
    float wide[V::kLanes];
    for (size_t k = 0; k < V::kLanes; ++k) wide[k] = to_float(p[k]);
    return V::load(static_cast<const float*>(wide));
  } else {
    return V::load(p);  // the same type, or float32 lanes from 16-bit or float64 from float32
  }
}

// Stochastic rounding. Element e of a pair of streams (the param and state slot 0; slots 1
// and 2) draws 32 random bits, a counter-based hash of (e, the pair's key), the key itself a
// hash of (seed, step, param, pair) the driver made: the same bits at every SIMD level, for
// any thread split, and reproducible for a seed. Each stream of the pair rounds with 16 of
// them.
template <class U>
FASTOPTIM_INLINE U random_bits(uint32_t key, U index) {
  U x = index ^ U::set1(key);
  x = x ^ shift_right<16>(x);
  x = x * U::set1(0x7feb352du);
  x = x ^ shift_right<15>(x);
  x = x * U::set1(0x846ca68bu);
  return x ^ shift_right<16>(x);
}

// x rounded stochastically to bfloat16, in the high half of each lane (the low half is left
// over, for a truncating store): bfloat16 is float32's top half, and 16 random bits added below
// its last place carry into it with probability (|x| - lower) / spacing. inf stays inf (its
// low bits are zero); NaN becomes 0x7fc0, as the nearest-even store makes it.
template <class V>
FASTOPTIM_INLINE typename V::Bits bfloat16_stochastic_in_high_half(V x, typename V::Bits r) {
  using U = typename V::Bits;
  const U nan = nan_mask(x);
  return (nan & U::set1(0x7fc00000u)) | andnot(nan, as_bits(x) + shift_right<16>(r));
}

// x rounded to one of the two nearest values of 16-bit type S (x itself if it is one), away
// from zero with probability (|x| - lower) / spacing (to 2^-16), using the top 16 bits of r;
// inf and NaN pass unchanged. The result is exact in S, so the nearest-even store that follows
// keeps it.
template <class S, class V>
FASTOPTIM_INLINE V round_stochastically(V x, typename V::Bits r) {
  using U = typename V::Bits;
  if constexpr (rules::kSame<S, bfloat16>) {
    return from_bits(bfloat16_stochastic_in_high_half(x, r) & U::set1(0xffff0000u));
  } else {
    const U b = as_bits(x);
    const U exponent = b & U::set1(0x7f800000u);
    const U nonfinite = equal_mask(exponent, U::set1(0x7f800000u));
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
    const U rounded = as_bits((whole + up) * from_bits(spacing)) | sign;
    return from_bits((nonfinite & b) | andnot(nonfinite, rounded));
  }
}

// ---- loads and stores by run-time storage type ---------------------------------------------------
// A call's streams keep their storage types for the whole call: these branches are predicted
// perfectly, and each arm is the vector header's conversion.

// n = V::kLanes elements of a stream of storage type `type`, as compute vector V. float64 math
// reads float64 params and state, and grads of any type; float32 math never reads float64.
template <class V>
FASTOPTIM_INLINE V load_stream(int type, const void* base, size_t i) {
  if constexpr (rules::kSame<typename V::Lane, double>) {
    if (type == kF64) return V::load(static_cast<const double*>(base) + i);
  }
  if (type == kF32) return V::load(static_cast<const float*>(base) + i);
  if (type == kBF16) return load_as<V>(static_cast<const bfloat16*>(base) + i);
  return load_as<V>(static_cast<const float16*>(base) + i);
}

// A grad as the rule reads it: unscaled, then clipped (GradFactors), as every Io reads it.
template <class V, class C>
FASTOPTIM_INLINE V factored(V g, const GradFactors<C>& f) {
  if (f.unscale) g = g * V::set1(f.inv_scale);
  if (f.clip) g = g * V::set1(f.clip_coef);
  return g;
}

// What a rule's update sees at element i: each stream loaded and stored in its storage type,
// the grad unscaled and clipped as it is read. With a master copy, the param the rule reads and
// writes is the master (or the param, where the caller wrote it since the last step: param());
// the param stream receives it rounded to nearest.
template <class V>
struct Io {
  using C = typename V::Lane;
  static constexpr bool kWide = rules::kSame<C, double>;  // float64 params and state
  const Streams& p;
  size_t i;
  const GradFactors<C>& f;

  FASTOPTIM_INLINE V grad() const {
    return factored(load_stream<V>(p.grad_type, p.grad, i), f);
  }
  // With a master, the param may have been written since the last step (a copy_, a loaded
  // model, a clamp, an EMA swap). An untouched param is exactly the master rounded to nearest
  // even, as store_param left it; where its bits differ from that rounding, the write wins and
  // the param, widened exactly, is the master value this step starts from. Comparing bits,
  // not values, treats NaN, -0/+0 and inf like any other value.
  FASTOPTIM_INLINE V param() const {
    if constexpr (kWide) {
      return V::load(static_cast<const double*>(p.param) + i);
    } else {
      if (p.master == nullptr) return load_stream<V>(p.param_type, p.param, i);
      const V master = V::load(static_cast<const float*>(p.master) + i);
      if (p.param_type == kBF16) return written_or<bfloat16>(master);
      return written_or<float16>(master);
    }
  }
  template <class P>
  FASTOPTIM_INLINE V written_or(V master) const {
    const V current = V::load(static_cast<const P*>(p.param) + i);
    P stored[V::kLanes];  // through the store's own rounding: every level decides alike
    V::store(stored, master);
    const V untouched_value = V::load(static_cast<const P*>(stored));
    const typename V::Bits kept = equal_mask(as_bits(untouched_value), as_bits(current));
    return from_bits((kept & as_bits(master)) | andnot(kept, as_bits(current)));
  }
  FASTOPTIM_INLINE void store_param(V x) const {
    if constexpr (kWide) {
      V::store(static_cast<double*>(p.param) + i, x);
    } else {
      if (p.master != nullptr) {
        V::store(static_cast<float*>(p.master) + i, x);
        store_half(p.param_type, p.param, x);  // the master's rounding to nearest
      } else {
        store(p.param_type, p.param, x, 0);
      }
    }
  }
  FASTOPTIM_INLINE V state(int k) const {
    if constexpr (kWide) return V::load(static_cast<const double*>(p.state[k]) + i);
    else return load_stream<V>(p.state_type, p.state[k], i);
  }
  FASTOPTIM_INLINE void store_state(int k, V x) const {
    if constexpr (kWide) V::store(static_cast<double*>(p.state[k]) + i, x);
    else store(p.state_type, p.state[k], x, 1 + k);
  }

  // x into a float32 stream, or a 16-bit one: rounded stochastically when asked, else to
  // nearest even by the store
  FASTOPTIM_INLINE void store(int type, void* base, V x, int stream) const {
    if (type == kF32) {
      V::store(static_cast<float*>(base) + i, x);
      return;
    }
    if (p.stochastic) {
      using Bits = typename V::Bits;
      const int pair = stream >> 1;
      if (!drawn[pair]) {  // once per element for both streams of the pair
        bits[pair] = random_bits(p.keys[pair], Bits::iota(p.first + static_cast<uint32_t>(i)));
        drawn[pair] = true;
      }
      const Bits r = stream & 1 ? shift_left<16>(bits[pair]) : bits[pair];
      if (type == kBF16) x = round_stochastically<bfloat16>(x, r);
      else x = round_stochastically<float16>(x, r);
    }
    store_half(type, base, x);
  }
  FASTOPTIM_INLINE void store_half(int type, void* base, V x) const {
    if (type == kBF16) V::store(static_cast<bfloat16*>(base) + i, x);
    else V::store(static_cast<float16*>(base) + i, x);
  }
  // the random bits drawn for this element, per stream pair (stores are const: the rules
  // take `const Io&`)
  mutable typename V::Bits bits[2];
  mutable bool drawn[2] = {false, false};
};

// A call whose every stream is in the compute type and has no master copy (float32 and float64
// training, the common case): plain loads and stores, no branch on a storage type.
template <class V>
struct IoPlain {
  using C = typename V::Lane;
  const Streams& p;
  size_t i;
  const GradFactors<C>& f;

  FASTOPTIM_INLINE V grad() const {
    return factored(V::load(static_cast<const C*>(p.grad) + i), f);
  }
  FASTOPTIM_INLINE V param() const { return V::load(static_cast<const C*>(p.param) + i); }
  FASTOPTIM_INLINE void store_param(V x) const { V::store(static_cast<C*>(p.param) + i, x); }
  FASTOPTIM_INLINE V state(int k) const { return V::load(static_cast<const C*>(p.state[k]) + i); }
  FASTOPTIM_INLINE void store_state(int k, V x) const {
    V::store(static_cast<C*>(p.state[k]) + i, x);
  }
};

// A call whose every stream is bfloat16, at a level that converts bfloat16 as even and odd
// elements: two vectors at a time, the even-indexed elements of the block then the odd ones,
// each through the rule's update; the stores of the first wait for the second, and each
// stream's pair goes out in one store. Every element gets the same operations and random bits
// as in Io, so the results are the same bits.
template <class V>
struct PendingPair {
  V half[2][1 + rules::kMaxSlots];  // [even, odd][param, state slots]
  bool written[1 + rules::kMaxSlots] = {};
};

template <class V, int kOdd>
struct IoEvenOdd {
  using C = float;
  const Streams& p;
  size_t i;
  const GradFactors<C>& f;
  PendingPair<V>& pending;

  FASTOPTIM_INLINE V load(const void* base) const {
    V even, odd;
    load_even_odd(static_cast<const bfloat16*>(base) + i, even, odd);
    return kOdd ? odd : even;
  }
  FASTOPTIM_INLINE V grad() const {
    return factored(load(p.grad), f);
  }
  FASTOPTIM_INLINE V param() const { return load(p.param); }
  FASTOPTIM_INLINE V state(int k) const { return load(p.state[k]); }
  FASTOPTIM_INLINE void store_param(V x) const { put(0, x); }
  FASTOPTIM_INLINE void store_state(int k, V x) const { put(1 + k, x); }
  FASTOPTIM_INLINE void put(int stream, V x) const {
    if (p.stochastic) {
      using Bits = typename V::Bits;
      const int pair = stream >> 1;
      if (!drawn[pair]) {  // element i + 2k + kOdd of the block, for lane k
        const Bits index = shift_left<1>(Bits::iota(0)) +
                           Bits::set1(p.first + static_cast<uint32_t>(i) + kOdd);
        bits[pair] = random_bits(p.keys[pair], index);
        drawn[pair] = true;
      }
      // exact in its high half, stored by truncation (update_even_odd)
      x = from_bits(bfloat16_stochastic_in_high_half(
          x, stream & 1 ? shift_left<16>(bits[pair]) : bits[pair]));
    }
    pending.half[kOdd][stream] = x;
    pending.written[stream] = true;
  }
  mutable typename V::Bits bits[2];
  mutable bool drawn[2] = {false, false};
};

template <class R, class V, class Scalars>
FASTOPTIM_INLINE void update_even_odd(const Scalars& s, const Streams& streams, size_t i,
                                      const GradFactors<float>& f) {
  PendingPair<V> pending;
  R::template update<V>(s, IoEvenOdd<V, 0>{streams, i, f, pending});
  R::template update<V>(s, IoEvenOdd<V, 1>{streams, i, f, pending});
  for (int k = 0; k <= rules::kMaxSlots; ++k) {
    if (!pending.written[k]) continue;
    auto* to = static_cast<bfloat16*>(k == 0 ? streams.param : streams.state[k - 1]) + i;
    if (streams.stochastic)
      store_high_halves(to, as_bits(pending.half[0][k]), as_bits(pending.half[1][k]));
    else
      store_even_odd(to, pending.half[0][k], pending.half[1][k]);
  }
}

// Storage bytes per element of a stream of type `type`.
FASTOPTIM_INLINE size_t storage_bytes(int type) {
  return type == kF64 ? 8 : type == kF32 ? 4 : 2;
}

// Every storage type is a whole number of 16-bit units.
FASTOPTIM_INLINE void copy_bytes(void* to, const void* from, size_t bytes) {
  for (size_t k = 0; k < bytes / 2; ++k)
    static_cast<uint16_t*>(to)[k] = static_cast<const uint16_t*>(from)[k];
}

// Whether every stream of a call is stored as type `type`, with no master copy.
FASTOPTIM_INLINE bool all_streams(const Streams& s, int type) {
  return s.param_type == type && s.grad_type == type && s.state_type == type &&
         s.master == nullptr;
}

// Elements [i, end) of a call, end - i a multiple of V::kLanes: every stream in the compute
// type (plain loads and stores), or every stream bfloat16 (even and odd elements, two vectors a
// step, where the level has them), or any other layout (loads and stores by storage type).
template <class R, class V, class Scalars, class C>
FASTOPTIM_NOINLINE void update_vectors(const Scalars& scalars, const Streams& stream_ptrs,
                                       size_t i, size_t end, const GradFactors<C>& factors) {
  // Local copies: the stores could alias the caller's objects, which would force a reload of
  // every pointer and flag, and a broadcast of every scalar, on every iteration.
  const Scalars s = scalars;
  const Streams streams = stream_ptrs;
  const GradFactors<C> f = factors;
  constexpr int kCompute = kStorageId<C>;
  if (all_streams(streams, kCompute)) {
    for (; i < end; i += V::kLanes) R::template update<V>(s, IoPlain<V>{streams, i, f});
    return;
  }
  if constexpr (EvenOddBFloat16<V>) {
    if (all_streams(streams, kBF16))
      for (; i + 2 * V::kLanes <= end; i += 2 * V::kLanes)
        update_even_odd<R, V>(s, streams, i, f);
  }
  for (; i < end; i += V::kLanes) R::template update<V>(s, Io<V>{streams, i, f});
}

// Elements [i, i + n) of a call, 0 < n < V::kLanes: the head before the first aligned block,
// or the tail after the last. Each stream's n elements are copied into a vector's worth of
// zeroed local storage, one vector update runs there, and the param, master and state go back.
// The update is elementwise and the lanes past n are never copied back, so each element gets
// exactly the operations (and random bits) a full vector gives it, and no scalar copy of the
// rules is compiled at the vector levels.
template <class R, class V, class Scalars, class C>
FASTOPTIM_NOINLINE void update_partial(const Scalars& s, const Streams& streams, size_t i,
                                       size_t n, const GradFactors<C>& f) {
  constexpr size_t kBytes = V::kLanes * sizeof(typename V::Lane);  // the widest stream
  constexpr int kCount = 3 + rules::kMaxSlots;
  alignas(64) unsigned char local[kCount][kBytes] = {};
  // [0] param, [1] grad, [2] master, [3 + k] state slot k: each copied in, and all but the grad
  // copied back (what a rule does not write comes back as it was)
  Streams inside = streams;
  inside.first = streams.first + static_cast<uint32_t>(i);
  void* outside[kCount] = {streams.param, const_cast<void*>(streams.grad), streams.master};
  void** pointers[kCount] = {&inside.param, const_cast<void**>(&inside.grad), &inside.master};
  int types[kCount] = {streams.param_type, streams.grad_type, kF32};
  for (int k = 0; k < rules::kMaxSlots; ++k) {
    outside[3 + k] = streams.state[k];
    pointers[3 + k] = &inside.state[k];
    types[3 + k] = streams.state_type;
  }
  for (int k = 0; k < kCount; ++k) {
    if (outside[k] == nullptr) continue;
    copy_bytes(local[k], static_cast<unsigned char*>(outside[k]) + i * storage_bytes(types[k]),
               n * storage_bytes(types[k]));
    *pointers[k] = local[k];
  }
  update_vectors<R, V>(s, inside, 0, V::kLanes, f);
  for (int k = 0; k < kCount; ++k) {
    if (outside[k] == nullptr || k == 1) continue;
    copy_bytes(static_cast<unsigned char*>(outside[k]) + i * storage_bytes(types[k]), local[k],
               n * storage_bytes(types[k]));
  }
}

// Elements [from, to) of a call outside its aligned blocks: whole vectors, then the rest. The
// rest of a call in the compute type goes one lane at a time (cheap to compile, and the
// fastest for tensors of a few elements); any other layout through update_partial.
template <class R, class V, class Scalars, class C>
FASTOPTIM_INLINE void update_range(const Scalars& s, const Streams& streams, size_t from,
                                   size_t to, const GradFactors<C>& f) {
  const size_t whole = from + (to - from) / V::kLanes * V::kLanes;
  if (whole > from) update_vectors<R, V>(s, streams, from, whole, f);
  if constexpr (V::kLanes > 1) {
    if (whole == to) return;
    constexpr int kCompute = kStorageId<C>;
    if (all_streams(streams, kCompute)) {
      for (size_t i = whole; i < to; ++i)
        R::template update<Scalar<C>>(s, IoPlain<Scalar<C>>{streams, i, f});
    } else {
      update_partial<R, V>(s, streams, whole, to - whole, f);
    }
  }
}

template <class R, class C>
void run(const void* scalars, const void* factors, const Streams& stream_ptrs, size_t count) {
  using V = typename VecOf<C>::type;
  using Scalars = typename R::template Scalars<C>;
  const Streams& streams = stream_ptrs;
  const Scalars& s = *static_cast<const Scalars*>(scalars);
  const GradFactors<C>& f = *static_cast<const GradFactors<C>*>(factors);
  // A head up to the first block-aligned param address (counted in param elements; a block is
  // two vectors where the even/odd loop may run): wide accesses that straddle cache lines cost
  // ~20% on these streams, and NumPy's large arrays are only 16-byte aligned (the other
  // streams usually share the param's offset).
  const size_t block = EvenOddBFloat16<V> ? 2 * V::kLanes : V::kLanes;
  const size_t misaligned =
      reinterpret_cast<uintptr_t>(streams.param) / storage_bytes(streams.param_type) % block;
  size_t head = misaligned == 0 ? 0 : block - misaligned;
  if (head > count) head = count;
  update_range<R, V>(s, streams, 0, head, f);
  const size_t body = head + (count - head) / block * block;
  if (body > head) update_vectors<R, V>(s, streams, head, body, f);
  update_range<R, V>(s, streams, body, count, f);
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

// A rule's element transform as run<> takes a rule: its scalars and its element math.
template <class R>
struct TransformOf {
  template <class C>
  using Scalars = typename R::template TransformScalars<C>;
  template <class V, class Io, class C>
  static FASTOPTIM_INLINE void update(const Scalars<C>& s, const Io& io) {
    R::template transform<V>(s, io);
  }
};

template <class R>
constexpr void add_transforms(Kernel (&into)[2]) {
  if constexpr (rules::transform_count<R>() > 0) {
    into[0] = &run<TransformOf<R>, float>;
    into[1] = &run<TransformOf<R>, double>;
  }
}

#include "kernels/blockwise.inl"

// The table: every rule of the registry, per compute type.
template <class... R>
constexpr KernelTable make_table(rules::RuleList<R...>) {
  KernelTable table{};
  table.level = FASTOPTIM_ISA_NAME;
  size_t i = 0;
  ((table.kernels[i][0] = &run<R, float>, table.kernels[i][1] = &run<R, double>,
    add_transforms<R>(table.transforms[i]), ++i),
   ...);
  table.norms[0][0] = &norm_lanes<false, float>;
  table.norms[0][1] = &norm_lanes<false, double>;
  table.norms[1][0] = &norm_lanes<true, float>;
  table.norms[1][1] = &norm_lanes<true, double>;
  table.quantize = &quantize_blocks;
  table.dequantize = &dequantize_blocks;
  return table;
}

extern const KernelTable kTable;
constinit const KernelTable kTable = make_table(rules::All{});
