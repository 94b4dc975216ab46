// 16-bit storage (bfloat16, float16): the conversions against independent references, every
// SIMD level converting with the same bits (NaN, inf, subnormals and ties included), and a
// 16-bit step equal, bit for bit, to the float32 step on the widened values rounded once (torch's
// fused=True semantics for reduced precision).
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "support.hpp"

namespace fastoptim::test {
namespace {

std::uint32_t bits_of(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
float from_bits(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// Reference narrowing, written apart from types.hpp: the nearest of the two neighbours by
// exact double arithmetic, ties to the even one.
std::uint16_t ref_bfloat16(float x) {
  if (std::isnan(x)) return 0x7fc0;
  const std::uint32_t u = bits_of(x);
  const std::uint16_t down = static_cast<std::uint16_t>(u >> 16);
  if ((u & 0xffffu) == 0) return down;
  const std::uint16_t up = static_cast<std::uint16_t>(down + 1);  // away from zero
  const double d = std::fabs(static_cast<double>(x) - from_bits(std::uint32_t{down} << 16));
  const float up_value = from_bits(std::uint32_t{up} << 16);
  const double e = std::isinf(up_value) ? std::fabs(std::ldexp(1.0, 128) - std::fabs(x))
                                        : std::fabs(static_cast<double>(up_value) - x);
  if (d < e) return down;
  if (e < d) return up;
  return (down & 1) ? up : down;
}

#if defined(__FLT16_MAX__) && (defined(__x86_64__) || defined(__i386__))  // C++ _Float16
// The compiler's own float16 (libgcc or F16C): an independent conversion.
std::uint16_t ref_float16(float x) {
  const _Float16 h = static_cast<_Float16>(x);
  std::uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
float ref_widen(std::uint16_t b) {
  _Float16 h;
  std::memcpy(&h, &b, 2);
  return static_cast<float>(h);
}
#endif

// Floats that probe every branch of a narrowing: zeros, subnormals of both formats, the
// largest finite values and their rounding edges, exact ties, infinities, NaNs with payloads.
std::vector<float> probe_floats() {
  std::vector<float> out = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f,
                            6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f, 2.9802326e-08f,
                            1.0e-30f, -1.0e-40f, std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            from_bits(0x7fc00000u), from_bits(0xffc00001u), from_bits(0x7f800001u),
                            from_bits(0x7fbfffffu), from_bits(0xff812345u)};
  for (std::uint32_t base : {0x3f800000u, 0x00800000u, 0x38800000u, 0x33800000u, 0x477fe000u,
                             0x7f7f0000u, 0x3f818000u}) {
    for (std::uint32_t low : {0x0000u, 0x0001u, 0x0fffu, 0x1000u, 0x1001u, 0x2000u, 0x3000u,
                              0x7fffu, 0x8000u, 0x8001u, 0x18000u, 0xffffu}) {
      out.push_back(from_bits(base + low));
      out.push_back(from_bits((base + low) | 0x80000000u));
    }
  }
  std::uint64_t state = 12345;
  for (int k = 0; k < 20000; ++k) out.push_back(from_bits(static_cast<std::uint32_t>(splitmix64(state))));
  return out;
}

TEST(Storage, BfloatConversionsMatchTheReference) {
  for (std::uint32_t b = 0; b < 65536; ++b)
    ASSERT_EQ(bits_of(to_float(bfloat16{static_cast<std::uint16_t>(b)})), b << 16) << b;
  for (float x : probe_floats()) ASSERT_EQ(to_bfloat16(x).bits, ref_bfloat16(x)) << std::hexfloat << x;
}

#if defined(__FLT16_MAX__) && (defined(__x86_64__) || defined(__i386__))  // C++ _Float16
TEST(Storage, HalfConversionsMatchTheCompilers) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float ours = to_float(float16{static_cast<std::uint16_t>(b)});
    const float theirs = ref_widen(static_cast<std::uint16_t>(b));
    if (std::isnan(theirs)) {
      ASSERT_TRUE(std::isnan(ours)) << b;
      ASSERT_EQ(std::signbit(ours), std::signbit(theirs)) << b;
    } else {
      ASSERT_EQ(bits_of(ours), bits_of(theirs)) << b;
    }
  }
  for (float x : probe_floats()) {
    const std::uint16_t ours = to_float16(x).bits, theirs = ref_float16(x);
    if (std::isnan(x)) {
      ASSERT_EQ(ours, 0x7e00u) << std::hexfloat << x;  // the one float16 NaN
      ASSERT_EQ(theirs & 0x7e00u, 0x7e00u) << std::hexfloat << x;
    } else {
      ASSERT_EQ(ours, theirs) << std::hexfloat << x;
    }
  }
}
#endif

// param + grad at every level (SGD, lr 1, maximize: param + -1 * -grad), the sums being floats
// that are generally not representable in 16 bits: the scalar level stores the one-lane
// conversion of the float32 sum (a NaN's sign and payload are the arithmetic's, which IEEE
// leaves open: there only NaN-ness is compared), and every level stores the scalar level's bits.
template <class S>
void check_sum_narrowing(DType dtype) {
  std::vector<float> values = probe_floats();
  const std::size_t n = values.size() - values.size() % 2;
  std::vector<S> a(n / 2), b(n / 2);
  for (std::size_t k = 0; k < n / 2; ++k) {
    a[k] = S{static_cast<std::uint16_t>(bits_of(values[2 * k]) >> 16)};
    b[k] = S{static_cast<std::uint16_t>(bits_of(values[2 * k + 1]) >> 8)};
  }
  const SgdOptions options{.lr = 1.0, .maximize = true};
  auto run = [&](const std::string& level, int threads) {
    set_simd_level(level);
    std::vector<S> p = a;
    ParamBuffers buffers;
    buffers.param = p.data();
    buffers.grad = b.data();
    buffers.size = p.size();
    step(options, dtype, std::span(&buffers, 1), threads);
    return p;
  };
  const std::vector<S> reference = run("scalar", 1);
  for (std::size_t k = 0; k < a.size(); ++k) {
    const float sum = to_float(a[k]) + to_float(b[k]);
    S expected;
    if constexpr (std::is_same_v<S, bfloat16>) expected = to_bfloat16(sum);
    else expected = to_float16(sum);
    if (std::isnan(sum))
      ASSERT_TRUE(std::isnan(to_float(reference[k]))) << k;
    else
      ASSERT_EQ(reference[k].bits, expected.bits) << k << ": " << std::hexfloat << sum;
  }
  for (const std::string& level : available_simd_levels())
    for (int threads : {1, 2}) {
      const std::vector<S> p = run(level, threads);
      for (std::size_t k = 0; k < p.size(); ++k)
        ASSERT_EQ(p[k].bits, reference[k].bits)
            << level << " " << threads << " threads, element " << k << ": " << std::hexfloat
            << to_float(a[k]) << " + " << to_float(b[k]);
    }
  set_simd_level(available_simd_levels().back());
}

TEST(Storage, EveryLevelNarrowsBfloatAsTheOneLaneConversion) {
  check_sum_narrowing<bfloat16>(DType::bfloat16);
}
TEST(Storage, EveryLevelNarrowsHalfAsTheOneLaneConversion) {
  check_sum_narrowing<float16>(DType::float16);
}

// One rule, `steps` steps on 16-bit buffers through the driver, against the float32 kernel on
// the widened values with each stored value rounded once: the same bits.
template <class S>
void check_against_float32(const NamedOptions& named, DType dtype, S (*narrow)(float),
                           const std::string& level) {
  const std::size_t n = 1037;
  const int steps = steps_for(named.options, 4);
  std::vector<S> p(n), m[3];
  std::vector<float> pf(n), mf[3];
  const auto start = random_vector<float>(n, 3, -2.0, 2.0);
  for (std::size_t i = 0; i < n; ++i) p[i] = narrow(start[i]);
  std::visit(
      [&](const auto& o) {
        for (int s = 0; s < 3; ++s) {
          const bool used = uses_state_slot(o, s);
          const double initial = s == 0 && std::is_same_v<std::decay_t<decltype(o)>, AdagradOptions>
                                     ? std::get<AdagradOptions>(named.options).initial_accumulator_value
                                     : 0.0;
          if (used) m[s].assign(n, narrow(static_cast<float>(initial)));
        }
        float scalar16 = 1.0f, scalar32 = 1.0f;  // NAdam's mu_product
        for (int k = 0; k < steps; ++k) {
          const auto g32 = random_vector<float>(n, 100 + k, -1.0, 1.0);
          std::vector<S> g(n);
          for (std::size_t i = 0; i < n; ++i) g[i] = narrow(g32[i]);
          // float32 twin: widen everything, one float32 step, round every stream back
          std::vector<float> gw(n);
          for (std::size_t i = 0; i < n; ++i) {
            pf[i] = to_float(p[i]);
            gw[i] = to_float(g[i]);
          }
          for (int s = 0; s < 3; ++s) {
            mf[s].resize(m[s].size());
            for (std::size_t i = 0; i < m[s].size(); ++i) mf[s][i] = to_float(m[s][i]);
          }
          ParamBuffers ref;
          ref.param = pf.data();
          ref.grad = gw.data();
          for (int s = 0; s < 3; ++s) ref.state[s] = mf[s].empty() ? nullptr : mf[s].data();
          ref.size = n;
          ref.step = k + 1;
          ref.scalar_state = &scalar32;
          set_simd_level("scalar");
          step(o, DType::float32, std::span(&ref, 1), 1);
          set_simd_level(level);
          ParamBuffers ours = ref;
          ours.param = p.data();
          ours.grad = g.data();
          for (int s = 0; s < 3; ++s) ours.state[s] = m[s].empty() ? nullptr : m[s].data();
          ours.scalar_state = &scalar16;
          step(o, dtype, std::span(&ours, 1), 2);
          for (std::size_t i = 0; i < n; ++i)
            ASSERT_EQ(p[i].bits, narrow(pf[i]).bits)
                << named.name << " at " << level << ", step " << k << " param " << i;
          for (int s = 0; s < 3; ++s)
            for (std::size_t i = 0; i < m[s].size(); ++i)
              ASSERT_EQ(m[s][i].bits, narrow(mf[s][i]).bits)
                  << named.name << " step " << k << " slot " << s << " element " << i;
          ASSERT_EQ(scalar16, scalar32) << named.name;
        }
      },
      named.options);
  set_simd_level(available_simd_levels().back());
}

class Storage16 : public testing::TestWithParam<NamedOptions> {};

// at every SIMD level: each one equal to the rounded float32 step is all of them bit-identical
TEST_P(Storage16, BfloatStepIsTheFloat32StepRoundedOnce) {
  for (const std::string& level : available_simd_levels())
    check_against_float32<bfloat16>(GetParam(), DType::bfloat16, &to_bfloat16, level);
}
TEST_P(Storage16, HalfStepIsTheFloat32StepRoundedOnce) {
  for (const std::string& level : available_simd_levels())
    check_against_float32<float16>(GetParam(), DType::float16, &to_float16, level);
}

INSTANTIATE_TEST_SUITE_P(Grid, Storage16, testing::ValuesIn(option_grid()), grid_name);

// ---- int8 state: blockwise dynamic 8-bit codes ---------------------------------------------------
// The reference, written apart from blockwise.inl: per block the largest magnitude (NaN if any
// element is NaN) clipped below at 1e-12, then torchao's decisions one element at a time: the
// binary search with `>=` and the rounding of the residual against half the gap (a tie up).
void ref_quantize(const std::vector<float>& x, std::size_t block, bool signed_map,
                  std::vector<std::uint8_t>& codes, std::vector<float>& scales) {
  const float* map = dynamic_map(signed_map);
  codes.assign(x.size(), 0);
  scales.assign((x.size() + block - 1) / block, 0.0f);
  for (std::size_t b = 0; b * block < x.size(); ++b) {
    const std::size_t first = b * block, last = std::min(x.size(), first + block);
    float largest = 0.0f;
    bool nan = false;
    for (std::size_t i = first; i < last; ++i) {
      nan = nan || std::isnan(x[i]);
      largest = std::max(largest, std::fabs(x[i]));
    }
    const float scale = nan ? std::numeric_limits<float>::quiet_NaN()
                            : (largest < 1e-12f ? 1e-12f : largest);
    scales[b] = scale;
    for (std::size_t i = first; i < last; ++i) {
      const float y = x[i] / scale;
      int code = y >= map[128] ? 128 : 0;
      for (int step = 64; step >= 1; step /= 2)
        if (y >= map[code + step]) code += step;
      const int up = std::min(code + 1, 255);
      if (y - map[code] >= (map[up] - map[code]) * 0.5f) code = up;
      codes[i] = static_cast<std::uint8_t>(code);
    }
  }
}

// quantize at every level gives the reference's codes and scales (a NaN scale: any NaN)
void expect_reference_codes_at_every_level(const std::vector<float>& x, std::size_t block,
                                           bool signed_map) {
  std::vector<std::uint8_t> want_codes;
  std::vector<float> want_scales;
  ref_quantize(x, block, signed_map, want_codes, want_scales);
  for (const std::string& level : available_simd_levels()) {
    set_simd_level(level);
    std::vector<std::uint8_t> codes(x.size());
    std::vector<float> scales(want_scales.size());
    quantize(x.data(), x.size(), block, signed_map, codes.data(), scales.data());
    for (std::size_t i = 0; i < x.size(); ++i)
      ASSERT_EQ(codes[i], want_codes[i]) << level << " element " << i << " " << x[i];
    for (std::size_t b = 0; b < scales.size(); ++b)
      ASSERT_TRUE(bits_of(scales[b]) == bits_of(want_scales[b]) ||
                  (std::isnan(scales[b]) && std::isnan(want_scales[b])))
          << level << " block " << b;
  }
  set_simd_level(available_simd_levels().back());
}

std::vector<float> int8_probe(bool signed_map, std::size_t block) {
  std::vector<float> x;
  std::uint64_t state = 7;
  auto uniform = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<std::int64_t>(state >> 11) - (1ll << 52)) * 0x1p-52f;
  };
  for (std::size_t i = 0; i < 3 * block + 13; ++i)
    x.push_back(uniform() * std::ldexp(1.0f, static_cast<int>(i % 40) - 30));
  const float* map = dynamic_map(signed_map);
  x.push_back(1.0f);  // a block whose elements are the map's midpoints (ties) and neighbours
  for (int c = 0; c < 255 && x.size() % block != 0; ++c) {
    const float mid = map[c] + (map[c + 1] - map[c]) * 0.5f;
    x.push_back(c % 2 ? mid : std::nextafter(mid, 0.0f));
  }
  while (x.size() % block != 0) x.push_back(0.0f);
  x.push_back(std::numeric_limits<float>::quiet_NaN());  // a NaN block
  x.push_back(std::numeric_limits<float>::infinity());
  for (std::size_t i = 2; i < block; ++i) x.push_back(0.5f);
  for (std::size_t i = 0; i < block; ++i) x.push_back(i % 3 ? 0.0f : 1e-13f);  // below 1e-12
  x.push_back(-3.0f);  // a partial last block
  if (!signed_map)
    for (float& v : x) v = std::fabs(v);
  return x;
}

// The codes are read from a table of buckets of |y|'s float32 bits (2^16 values each, above
// 2^-24; blockwise.inl): every value within 3 of a bucket's edges, every 4099th float32 value in
// [-1, 1], and the values around every decision point of the map (its midpoints), at every
// level, against the search. Blocks of 65536 whose first element is 1 (scale 1: y = x).
TEST(Storage, Int8CodesAtEveryBucketEdgeAreTheSearchs) {
  for (bool signed_map : {true, false}) {
    std::vector<float> x;
    auto add = [&](std::uint32_t magnitude_bits) {
      const float a = std::bit_cast<float>(magnitude_bits);
      if (!(a <= 1.0f)) return;
      x.push_back(a);
      x.push_back(-a);
    };
    for (std::uint32_t edge = 0x33800000u; edge <= 0x3f810000u; edge += 0x10000u)
      for (std::uint32_t d = 0; d < 7; ++d) add(edge + d - 3);
    for (std::uint32_t bits = 0; bits <= 0x3f800000u; bits += 4099) add(bits);
    const float* map = dynamic_map(signed_map);
    for (int c = 0; c < 255; ++c) {
      const float mid = map[c] + (map[c + 1] - map[c]) * 0.5f;
      for (float v = std::nextafter(std::nextafter(mid, -2.0f), -2.0f), k = 0; k < 5;
           ++k, v = std::nextafter(v, 2.0f))
        x.push_back(v);
    }
    const std::size_t block = 65536;
    for (std::size_t at = 0; at < x.size(); at += block) x.insert(x.begin() + at, 1.0f);
    expect_reference_codes_at_every_level(x, block, signed_map);
  }
}

TEST(Storage, Int8QuantizationIsTheReferenceAtEveryLevel) {
  for (bool signed_map : {true, false})
    for (std::size_t block : {32, 256, 2048}) {
      const std::vector<float> x = int8_probe(signed_map, block);
      expect_reference_codes_at_every_level(x, block, signed_map);
      std::vector<std::uint8_t> codes;
      std::vector<float> scales, values(x.size());
      ref_quantize(x, block, signed_map, codes, scales);
      for (const std::string& level : available_simd_levels()) {
        set_simd_level(level);
        dequantize(codes.data(), scales.data(), x.size(), block, signed_map, values.data());
        for (std::size_t i = 0; i < x.size(); ++i) {
          const float want = dynamic_map(signed_map)[codes[i]] * scales[i / block];
          ASSERT_TRUE(bits_of(values[i]) == bits_of(want) ||
                      (std::isnan(values[i]) && std::isnan(want)))
              << level << " element " << i;
        }
      }
    }
  set_simd_level(available_simd_levels().back());
  EXPECT_THROW(check_block_size(48), std::invalid_argument);
  EXPECT_THROW(check_block_size(16), std::invalid_argument);
  EXPECT_NO_THROW(check_block_size(65536));
}

// An int8 step is the float32 step from the dequantized state, each slot then quantized; the
// same bits at every level and thread count (blocks never split between threads).
template <class R>
void check_int8_step(const typename R::Options& options, std::size_t size) {
  std::vector<float> start(size), grad(size);
  std::uint64_t state = 11;
  for (std::size_t i = 0; i < size; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    start[i] = static_cast<float>(static_cast<std::int64_t>(state >> 11) - (1ll << 52)) * 0x1p-52f;
    grad[i] = start[i] * 0.5f - 0.1f;
  }
  const Precision int8{.state_dtype = DType::int8, .block_size = 128, .min_8bit_size = 0};
  std::vector<std::vector<float>> results;
  for (const std::string& level : available_simd_levels())
    for (int threads : {1, 2, 3}) {
      set_simd_level(level);
      std::vector<float> p = start, ref = start;
      RuleOptimizer<R> opt(options, int8);
      RuleOptimizer<R> ref_opt(options);
      opt.set_num_threads(threads);
      opt.add_param(std::span<float>(p));
      ref_opt.add_param(std::span<float>(ref));
      for (int step = 0; step < 3; ++step) {
        ref_opt.allocate_state(0);
        const ParamStateView view = opt.state(0), ref_view = ref_opt.state(0);
        for (int slot = 0; slot < 3; ++slot)
          if (view.buffers[slot] != nullptr) {
            const std::vector<float> values = view.values(slot);
            std::copy(values.begin(), values.end(), ref_view.buffer<float>(slot).begin());
          }
        if (step > 0) ref_opt.set_step_count(0, opt.step_count(0));
        opt.step({std::span<const float>(grad)});
        ref_opt.step({std::span<const float>(grad)});
        ASSERT_EQ(0, std::memcmp(p.data(), ref.data(), size * 4)) << level << " step " << step;
        const ParamStateView after = opt.state(0), ref_after = ref_opt.state(0);
        for (int slot = 0; slot < 3; ++slot) {
          if (after.buffers[slot] == nullptr) continue;
          std::vector<std::uint8_t> codes(size);
          std::vector<float> scales((size + 127) / 128);
          quantize(ref_after.buffer<float>(slot).data(), size, 128, !after.non_negative[slot],
                   codes.data(), scales.data());
          ASSERT_EQ(0, std::memcmp(codes.data(), after.buffers[slot], size)) << level << slot;
          ASSERT_EQ(0, std::memcmp(scales.data(), after.scales[slot], scales.size() * 4));
        }
      }
      results.push_back(p);
    }
  set_simd_level(available_simd_levels().back());
  for (const auto& r : results) ASSERT_EQ(0, std::memcmp(r.data(), results[0].data(), size * 4));
}

TEST(Storage, Int8StepIsTheFloat32StepQuantized) {
  check_int8_step<rules::AdamW>({.lr = 1e-2, .amsgrad = true}, 40003);
  check_int8_step<rules::Rmsprop>({.lr = 1e-2, .momentum = 0.5, .centered = true}, 20001);
  check_int8_step<rules::Lion>({.lr = 1e-3}, 17000);
}

TEST(Storage, Int8CheckpointsRoundTripAndRefuseOtherSettings) {
  std::vector<float> p(5000, 0.5f), q, grad(5000, 0.25f);
  fastoptim::AdamW opt({.lr = 1e-2}, {.state_dtype = DType::int8});
  opt.add_param(std::span<float>(p));
  opt.step({std::span<const float>(grad)});
  std::stringstream saved;
  opt.save(saved);
  const std::string bytes = saved.str();
  q = p;
  fastoptim::AdamW other({.lr = 1e-2}, {.state_dtype = DType::int8});
  other.add_param(std::span<float>(q));
  std::istringstream in(bytes);
  other.load(in);
  opt.step({std::span<const float>(grad)});
  other.step({std::span<const float>(grad)});
  EXPECT_EQ(0, std::memcmp(p.data(), q.data(), p.size() * 4));
  EXPECT_EQ(opt.state(0).values(1), other.state(0).values(1));
  fastoptim::AdamW wrong({.lr = 1e-2}, {.state_dtype = DType::int8, .block_size = 512});
  std::vector<float> r = p;
  wrong.add_param(std::span<float>(r));
  std::istringstream again(bytes);
  try {
    wrong.load(again);
    FAIL() << "loaded a checkpoint of another block size";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("block_size=256"), std::string::npos) << e.what();
  }
  EXPECT_EQ(wrong.state(0).buffers[0], nullptr);  // nothing changed
  fastoptim::AdamW small({.lr = 1e-2}, {.state_dtype = DType::int8});
  std::vector<float> tiny(100, 1.0f), tiny_grad(100, 1.0f);
  small.add_param(std::span<float>(tiny));
  small.step({std::span<const float>(tiny_grad)});
  EXPECT_EQ(small.state_dtype(0), DType::float32);  // below min_8bit_size
}

}  // namespace
}  // namespace fastoptim::test
