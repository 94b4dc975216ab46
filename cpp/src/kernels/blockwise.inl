// Blockwise dynamic 8-bit quantization of state (int8 state, fastoptim/step.hpp): one routine
// pair per ISA, shared by every rule. The driver runs a rule's kernel on a float32 tile of the
// state (dequantize_blocks), then requantizes the tile (quantize_blocks): the quantization needs
// a whole block's values before its first code can be stored, so it cannot be an arm of the
// per-vector stores. Included inside namespace fastoptim::kernels::<isa> by kernel.inl.
//
// The decisions are torchao 0.18's quantize_8bit_with_qmap, made with the same float32
// operations, so every level gives the same codes: scale = max |x| of the block clipped below at
// 1e-12 (torch's amax and clip: a NaN propagates), y = x / scale, a binary search with y >=
// map[c + step] over the sorted 256-entry map, then up one code exactly when
// y - map[c] >= (map[c + 1] - map[c]) * 0.5 (a tie goes up).

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

// The code of y (= x / scale) in 32-bit lanes. A NaN y (a block holding a NaN or an inf)
// compares false everywhere, as in torchao: code 0. It is searched as -inf, which every
// comparison also puts below the map. Integer lanes throughout: the masks of float compares
// (less_mask) pick each step's increment.
template <class V>
FASTOPTIM_INLINE typename V::Bits nearest_code(V y, const float* map) {
  using U = typename V::Bits;
  y = from_bits((nan_mask(y) & U::set1(0xff800000u)) | andnot(nan_mask(y), as_bits(y)));
  U code = andnot(less_mask(y, V::set1(map[128])), U::set1(128u));
  for (uint32_t step = 64; step >= 1; step /= 2)
    code = code + andnot(less_mask(y, lookup<V>(map, code + U::set1(step))), U::set1(step));
  const U up = code + andnot(equal_mask(code, U::set1(255u)), U::set1(1u));
  const V low = lookup<V>(map, code);
  const U keep = less_mask(y - low, (lookup<V>(map, up) - low) * V::set1(0.5f));
  return (keep & code) | andnot(keep, up);
}

template <class V>
FASTOPTIM_INLINE void store_codes(uint8_t* to, typename V::Bits code) {
  float lanes[V::kLanes];
  V::store(lanes, from_bits(code));
  for (size_t k = 0; k < V::kLanes; ++k)
    to[k] = static_cast<uint8_t>(reinterpret_bits<uint32_t>(lanes[k]));
}

// values [0, count) into codes and one scale per block of `block` elements (the last block may
// be shorter)
void quantize_blocks(const float* values, size_t count, size_t block, const float* map,
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
      float lanes[V::kLanes];
      V::store(lanes, acc);
      for (size_t k = 0; k < V::kLanes; ++k) largest = maximum(largest, S{lanes[k]});
    }
    for (; i < n; ++i) largest = maximum(largest, abs(S{x[i]}));
    const float scale = largest.v < 1e-12f ? 1e-12f : largest.v;  // clip(1e-12); NaN stays
    scales[b] = scale;
    uint8_t* out = codes + first;
    i = 0;
    for (; i + V::kLanes <= n; i += V::kLanes)
      store_codes<V>(out + i, nearest_code(V::load(x + i) / V::set1(scale), map));
    for (; i < n; ++i) store_codes<S>(out + i, nearest_code(S{x[i]} / S{scale}, map));
  }
}

// codes [0, count) as float32: map[code] * the scale of its block
void dequantize_blocks(const uint8_t* codes, const float* scales, size_t count, size_t block,
                       const float* map, float* values) {
  for (size_t first = 0, b = 0; first < count; first += block, ++b) {
    const size_t n = count - first < block ? count - first : block;
    const float scale = scales[b];
    for (size_t i = 0; i < n; ++i) values[first + i] = map[codes[first + i]] * scale;
  }
}
