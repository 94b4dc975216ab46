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

// The thresholds of the search's first four steps (64, 32, 16, 8 added to a code that is a
// multiple of twice the step), 16 entries at most each: at those steps the map is read from a
// 16-entry table, in registers where the level has a permute (`permute16`), and only the last
// three steps and the rounding read the whole map.
struct SearchTables {
  alignas(64) float level[4][16];
};
FASTOPTIM_INLINE void make_search_tables(const float* map, SearchTables& t) {
  for (uint32_t l = 0; l < 4; ++l) {
    const uint32_t step = 64u >> l;
    for (uint32_t k = 0; k < 16; ++k)
      t.level[l][k] = k < 128 / step ? map[k * 2 * step + step] : 0.0f;
  }
}

// table[index] for index 0..15
template <class V>
FASTOPTIM_INLINE V lookup16(const float* table, typename V::Bits index) {
  if constexpr (requires { permute16(table, index); }) return permute16(table, index);
  else return lookup<V>(table, index);
}

// The codes of kN vectors y (= x / scale) in 32-bit lanes. A NaN y (a block holding a NaN or an
// inf) compares false everywhere, as in torchao: code 0. It is searched as -inf, which every
// comparison also puts below the map. Integer lanes throughout: the masks of float compares
// (less_mask) pick each step's increment. Each step of the search waits for the previous one's
// lookup; kN independent vectors go through each step together, so that their lookups overlap.
template <size_t kN, class V>
FASTOPTIM_INLINE void nearest_codes(V (&y)[kN], const float* map, const SearchTables& t,
                                    typename V::Bits (&code)[kN]) {
  using U = typename V::Bits;
  for (size_t j = 0; j < kN; ++j) {
    y[j] = from_bits((nan_mask(y[j]) & U::set1(0xff800000u)) | andnot(nan_mask(y[j]), as_bits(y[j])));
    code[j] = andnot(less_mask(y[j], V::set1(map[128])), U::set1(128u));
  }
  // map[code + step] = level[code / (2 * step)]
  for (size_t j = 0; j < kN; ++j)
    code[j] = code[j] + andnot(less_mask(y[j], lookup16<V>(t.level[0], shift_right<7>(code[j]))),
                               U::set1(64u));
  for (size_t j = 0; j < kN; ++j)
    code[j] = code[j] + andnot(less_mask(y[j], lookup16<V>(t.level[1], shift_right<6>(code[j]))),
                               U::set1(32u));
  for (size_t j = 0; j < kN; ++j)
    code[j] = code[j] + andnot(less_mask(y[j], lookup16<V>(t.level[2], shift_right<5>(code[j]))),
                               U::set1(16u));
  for (size_t j = 0; j < kN; ++j)
    code[j] = code[j] + andnot(less_mask(y[j], lookup16<V>(t.level[3], shift_right<4>(code[j]))),
                               U::set1(8u));
  for (uint32_t step = 4; step >= 1; step /= 2)
    for (size_t j = 0; j < kN; ++j)
      code[j] = code[j] + andnot(less_mask(y[j], lookup<V>(map, code[j] + U::set1(step))),
                                 U::set1(step));
  for (size_t j = 0; j < kN; ++j) {
    const U up = code[j] + andnot(equal_mask(code[j], U::set1(255u)), U::set1(1u));
    const V low = lookup<V>(map, code[j]);
    const U keep = less_mask(y[j] - low, (lookup<V>(map, up) - low) * V::set1(0.5f));
    code[j] = (keep & code[j]) | andnot(keep, up);
  }
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
  SearchTables tables;
  make_search_tables(map, tables);
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
    constexpr size_t kN = 4;
    typename V::Bits code[kN];
    for (; i + kN * V::kLanes <= n; i += kN * V::kLanes) {
      V y[kN];
      for (size_t j = 0; j < kN; ++j) y[j] = V::load(x + i + j * V::kLanes) / V::set1(scale);
      nearest_codes(y, map, tables, code);
      for (size_t j = 0; j < kN; ++j) store_codes<V>(out + i + j * V::kLanes, code[j]);
    }
    for (; i + V::kLanes <= n; i += V::kLanes) {
      V y[1] = {V::load(x + i) / V::set1(scale)};
      typename V::Bits single[1];
      nearest_codes(y, map, tables, single);
      store_codes<V>(out + i, single[0]);
    }
    for (; i < n; ++i) {
      S y[1] = {S{x[i]} / S{scale}};
      ScalarU32 one[1];
      nearest_codes(y, map, tables, one);
      store_codes<S>(out + i, one[0]);
    }
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
