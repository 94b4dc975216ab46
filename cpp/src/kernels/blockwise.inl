// Blockwise dynamic 8-bit quantization of state (int8 state, fastoptim/step.hpp): one routine
// pair per ISA, shared by every rule. The driver runs a rule's kernel on a float32 tile of the
// state (dequantize_blocks), then requantizes the tile (quantize_blocks): the quantization needs
// a whole block's values before its first code can be stored, so it cannot be an arm of the
// per-vector stores. Included inside namespace fastoptim::kernels::<isa> by kernel.inl.
//
// The decisions are torchao 0.18's quantize_8bit_with_qmap: scale = max |x| of the block clipped
// below at 1e-12 (torch's amax and clip: a NaN propagates), y = x / scale, then torchao's code of
// y (a binary search with y >= map[c + step] over the sorted 256-entry map, then up one code
// exactly when y - map[c] >= (map[c + 1] - map[c]) * 0.5 in float32: a tie goes up), which the
// bucket table below gives in one read (driver.cpp builds it from that search).

// map[index] for each lane (index: 0..255 in 32-bit lanes): the level's gather instruction
// where it has one (avx2, avx512: `gather` in its vector header), else lane by lane
template <class V>
FASTOPTIM_INLINE V lookup(const float* map, typename V::Bits index) {
  if constexpr (requires { gather(map, index); }) {
    return gather(map, index);
  } else {
    float at[V::kLanes], out[V::kLanes];
    V::store(at, from_bits(index));
    for (size_t k = 0; k < V::kLanes; ++k) out[k] = map[reinterpret_bits<uint32_t>(at[k])];
    return V::load(static_cast<const float*>(out));
  }
}

// The codes of a vector y (= x / scale, |y| <= 1 or NaN) from the map's bucket table
// (driver.cpp: code_buckets, built from torchao's decision itself): |y|'s float32 bits above
// 2^-24 in buckets of 2^16 (the exponent and 7 mantissa bits), a table per sign; each entry holds
// the code at the bucket's smallest |y| and where in the bucket (its low 16 bits) the code moves
// one step (up for y >= 0, down for y < 0; 0x10000: nowhere). No bucket holds two of torchao's
// decision points, and below 2^-24 the code is that of 0 (both checked where the table is
// built), so the code is exact, with one table read per vector. A NaN y gets code 0.
template <class V>
FASTOPTIM_INLINE typename V::Bits nearest_codes(V y, const uint32_t* buckets) {
  using U = typename V::Bits;
  const U nan = nan_mask(y);
  const U sign = shift_right<31>(as_bits(y));
  const U magnitude = andnot(nan, andnot(U::set1(0x80000000u), as_bits(y)));
  const U above = max_signed(magnitude - U::set1(0x33800000u), U::set1(0u));
  const U index = shift_right<16>(above) + sign * U::set1(kCodeBucketsPerSign);
  const U entry = as_bits(lookup<V>(reinterpret_cast<const float*>(buckets), index));
  const U step = shift_right<31>((above & U::set1(0xffffu)) - (entry & U::set1(0xffffffu)));
  const U code = shift_right<24>(entry) + (step ^ sign ^ U::set1(1u));
  return andnot(nan, code & U::set1(0xffu));
}

// Codes (0..255 in 32-bit lanes) stored as bytes, and bytes loaded as codes: the level's
// narrowing store and widening load where its vector header has them, else lane by lane.
template <class V>
FASTOPTIM_INLINE void store_codes(uint8_t* to, typename V::Bits code) {
  if constexpr (requires { narrow_to_bytes(to, code); }) {
    narrow_to_bytes(to, code);
  } else {
    float lanes[V::kLanes];
    V::store(lanes, from_bits(code));
    for (size_t k = 0; k < V::kLanes; ++k)
      to[k] = static_cast<uint8_t>(reinterpret_bits<uint32_t>(lanes[k]));
  }
}
template <class V>
FASTOPTIM_INLINE typename V::Bits load_codes(const uint8_t* from) {
  if constexpr (requires { V::Bits::load_bytes(from); }) {
    return V::Bits::load_bytes(from);
  } else {
    float lanes[V::kLanes];
    for (size_t k = 0; k < V::kLanes; ++k) lanes[k] = reinterpret_bits<float>(uint32_t{from[k]});
    return as_bits(V::load(static_cast<const float*>(lanes)));
  }
}

// values [0, count) into codes and one scale per block of `block` elements (the last block may
// be shorter)
void quantize_blocks(const float* values, size_t count, size_t block, const uint32_t* buckets,
                     uint8_t* codes, float* scales) {
  using V = typename VecOf<float>::type;
  using S = Scalar<float>;
  for (size_t first = 0, b = 0; first < count; first += block, ++b) {
    const size_t n = count - first < block ? count - first : block;
    const float* x = values + first;
    size_t i = 0;
    S largest{0.0f};
    if (n >= V::kLanes) {
      V acc = V::set1(0.0f);
      for (; i + V::kLanes <= n; i += V::kLanes) acc = maximum(acc, abs(V::load(x + i)));
      // the lanes' maximum on their bits: each lane is +0 or above, whose floats order as
      // their bits do, or maximum's NaN, every bit set, which is larger than all of them
      // (the bits `maximum` would give, without a NaN test per lane)
      float lanes[V::kLanes];
      V::store(lanes, acc);
      uint32_t top = 0;
      for (size_t k = 0; k < V::kLanes; ++k) {
        const uint32_t lane = reinterpret_bits<uint32_t>(lanes[k]);
        top = lane > top ? lane : top;
      }
      largest = S{reinterpret_bits<float>(top)};
    }
    for (; i < n; ++i) largest = maximum(largest, abs(S{x[i]}));
    const float scale = largest.v < 1e-12f ? 1e-12f : largest.v;  // clip(1e-12); NaN stays
    scales[b] = scale;
    uint8_t* out = codes + first;
    i = 0;
    for (; i + V::kLanes <= n; i += V::kLanes)
      store_codes<V>(out + i, nearest_codes(V::load(x + i) / V::set1(scale), buckets));
    for (; i < n; ++i) store_codes<S>(out + i, nearest_codes(S{x[i]} / S{scale}, buckets));
  }
}

// the whole vectors of n codes of one block; returns how many were done: the map in registers
// where the level looks up 256 entries there (F32::lookup_map256), else gathered where it has a
// gather, else none (a lane-by-lane vector is no faster than the scalar loop)
template <class V>
size_t dequantize_vectors(const uint8_t* codes, float scale, size_t n, const float* map,
                          float* values) {
  const V s = V::set1(scale);
  size_t i = 0;
  if constexpr (requires { V::load_map256(map); }) {
    const auto table = V::load_map256(map);
    for (; i + V::kLanes <= n; i += V::kLanes)
      V::store(values + i, V::lookup_map256(table, load_codes<V>(codes + i)) * s);
  } else if constexpr (requires(typename V::Bits index) { gather(map, index); }) {
    for (; i + V::kLanes <= n; i += V::kLanes)
      V::store(values + i, gather(map, load_codes<V>(codes + i)) * s);
  }
  return i;
}

// codes [0, count) as float32: map[code] * the scale of its block
void dequantize_blocks(const uint8_t* codes, const float* scales, size_t count, size_t block,
                       const float* map, float* values) {
  using V = typename VecOf<float>::type;
  for (size_t first = 0, b = 0; first < count; first += block, ++b) {
    const size_t n = count - first < block ? count - first : block;
    const float scale = scales[b];
    size_t i = dequantize_vectors<V>(codes + first, scale, n, map, values + first);
    for (; i < n; ++i) values[first + i] = map[codes[first + i]] * scale;
  }
}
