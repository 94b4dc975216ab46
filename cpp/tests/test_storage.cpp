// 16-bit storage (bfloat16, float16): the conversions against independent references, every
// SIMD level converting with the same bits (NaN, inf, subnormals and ties included), and a
// 16-bit step equal, bit for bit, to the float32 step on the widened values rounded once (torch's
// fused=True semantics for reduced precision).
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

}  // namespace
}  // namespace fastoptim::test
