// Every available SIMD level bit-identical to the scalar level, and 1 vs 2 and 3 threads
// bit-identical, over sizes that hit every vector tail and the threaded path. And the vector
// headers' comparisons, select and the element functions built on them (vec_ops.inl) at every
// level, against the scalar level and against torch's semantics.
#include <cmath>
#include <cstring>
#include <limits>

#include "support.hpp"

#if defined(__x86_64__) || defined(_M_X64)
// GCC 12 warns (-Wmaybe-uninitialized) on its own _mm512_undefined_*() where AVX-512 intrinsics
// inline into a function built with -Wall; a false positive fixed in GCC 13.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#define FASTOPTIM_TEST_X86 1
#elif defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>
#define FASTOPTIM_TEST_NEON 1
#endif
#include "kernels/isa_prelude.hpp"

// ---- each level's vector headers, compiled here with its instruction set ----------------------
// The kernel objects export only their tables, so the element functions are tested on copies of
// the headers compiled in this file, each level in its own namespace and with its own target
// (GCC and Clang: a target region; MSVC compiles any intrinsic anywhere). A level runs only where
// available_simd_levels() lists it.
#define FASTOPTIM_TEST_STRINGIFY(x) #x
#if defined(__clang__)
#define FASTOPTIM_TEST_TARGET_BEGIN(features)                                                     \
  _Pragma(FASTOPTIM_TEST_STRINGIFY(                                                               \
      clang attribute push(__attribute__((target(features))), apply_to = function)))
#define FASTOPTIM_TEST_TARGET_END _Pragma("clang attribute pop")
#elif defined(__GNUC__)
#define FASTOPTIM_TEST_TARGET_BEGIN(features) \
  _Pragma("GCC push_options") _Pragma(FASTOPTIM_TEST_STRINGIFY(GCC target(features)))
#define FASTOPTIM_TEST_TARGET_END _Pragma("GCC pop_options")
#else
#define FASTOPTIM_TEST_TARGET_BEGIN(features)
#define FASTOPTIM_TEST_TARGET_END
#endif

namespace fastoptim::simd_ops_test {

// What probe_ops writes: the masks as 1 or 0, select(lt(a, b), a, b), maximum(a, b), abs(a),
// sign(a).
enum Op { kLt, kGt, kUnordered, kSelect, kMaximum, kAbs, kSign, kOpCount };
inline const char* const kOpNames[kOpCount] = {"lt", "gt", "unordered", "select", "maximum",
                                               "abs", "sign"};

template <class T>
using ProbeOps = void (*)(const T* a, const T* b, std::size_t n, T* const* out);

}  // namespace fastoptim::simd_ops_test

// The probe, written once and defined in each level's namespace (inside its target region):
// the ops on pairs (a[i], b[i]), n a multiple of the level's vector width.
#define FASTOPTIM_TEST_DEFINE_PROBE_OPS                                                           \
  template <class T>                                                                              \
  void probe_ops(const T* a, const T* b, std::size_t n, T* const* out) {                          \
    using V = typename VecOf<T>::type;                                                            \
    const V one = V::set1(T(1)), zero = V::set1(T(0));                                            \
    for (std::size_t i = 0; i < n; i += V::kLanes) {                                              \
      const V x = V::load(a + i), y = V::load(b + i);                                             \
      V::store(out[kLt] + i, select(lt(x, y), one, zero));                                        \
      V::store(out[kGt] + i, select(gt(x, y), one, zero));                                        \
      V::store(out[kUnordered] + i, select(unordered(x, y), one, zero));                          \
      V::store(out[kSelect] + i, select(lt(x, y), x, y));                                         \
      V::store(out[kMaximum] + i, maximum(x, y));                                                 \
      V::store(out[kAbs] + i, abs(x));                                                            \
      V::store(out[kSign] + i, sign(x));                                                          \
    }                                                                                             \
  }                                                                                               \
  inline constexpr ProbeOps<float> kProbeF32 = &probe_ops<float>;                                 \
  inline constexpr ProbeOps<double> kProbeF64 = &probe_ops<double>;

namespace fastoptim::simd_ops_test::scalar {
#include "kernels/vec_scalar.inl"
#include "kernels/vec_none.inl"
#include "kernels/vec_ops.inl"
FASTOPTIM_TEST_DEFINE_PROBE_OPS
}  // namespace fastoptim::simd_ops_test::scalar

#if defined(FASTOPTIM_TEST_X86)
namespace fastoptim::simd_ops_test::sse2 {
#include "kernels/vec_scalar.inl"
#include "kernels/vec_sse2.inl"
#include "kernels/vec_ops.inl"
FASTOPTIM_TEST_DEFINE_PROBE_OPS
}  // namespace fastoptim::simd_ops_test::sse2

FASTOPTIM_TEST_TARGET_BEGIN("avx2,fma,f16c")
namespace fastoptim::simd_ops_test::avx2 {
#include "kernels/vec_scalar.inl"
#include "kernels/vec_avx2.inl"
#include "kernels/vec_ops.inl"
FASTOPTIM_TEST_DEFINE_PROBE_OPS
}  // namespace fastoptim::simd_ops_test::avx2
FASTOPTIM_TEST_TARGET_END

FASTOPTIM_TEST_TARGET_BEGIN("avx512f,fma")
namespace fastoptim::simd_ops_test::avx512 {
#include "kernels/vec_scalar.inl"
#include "kernels/vec_avx512.inl"
#include "kernels/vec_ops.inl"
FASTOPTIM_TEST_DEFINE_PROBE_OPS
}  // namespace fastoptim::simd_ops_test::avx512
FASTOPTIM_TEST_TARGET_END
#endif

#if defined(FASTOPTIM_TEST_NEON)
namespace fastoptim::simd_ops_test::neon {
#include "kernels/vec_scalar.inl"
#include "kernels/vec_neon.inl"
#include "kernels/vec_ops.inl"
FASTOPTIM_TEST_DEFINE_PROBE_OPS
}  // namespace fastoptim::simd_ops_test::neon
#endif

namespace fastoptim::test {
namespace {

const std::vector<std::size_t> kSizes = {1, 7, 15, 16, 17, 1023, 4097, 100003};

// Runs `steps` steps of `options` (RAdam: enough to reach its rectified branch) on params of
// `sizes` (all in one optimizer, so one driver call covers them) and returns the params, every
// state buffer and the scalar state, concatenated.
template <class T>
std::vector<T> trajectory(const AnyOptions& options, const std::vector<std::size_t>& sizes,
                          int threads, int steps = 3) {
  steps = steps_for(options, steps);
  std::vector<std::vector<T>> params;
  auto opt = make_optimizer(options);
  opt->set_num_threads(threads);
  for (std::size_t k = 0; k < sizes.size(); ++k) params.push_back(random_vector<T>(sizes[k], 7 + k));
  for (auto& p : params) opt->add_param(std::span<T>(p));
  for (int s = 0; s < steps; ++s) {
    std::vector<std::vector<T>> grads;
    for (std::size_t k = 0; k < sizes.size(); ++k)
      grads.push_back(random_vector<T>(sizes[k], 50 * s + k + 1, -3.0, 3.0));
    std::vector<Grad> views(grads.begin(), grads.end());
    opt->step(views);
  }
  std::vector<T> out;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    out.insert(out.end(), params[k].begin(), params[k].end());
    const ParamStateView view = opt->state(k);
    for (int slot = 0; slot < 3; ++slot) {
      std::span<T> b = view.buffer<T>(slot);
      out.insert(out.end(), b.begin(), b.end());
    }
    for (double scalar : view.scalars) out.push_back(static_cast<T>(scalar));  // float32 values
  }
  return out;
}

class SimdLevels : public testing::TestWithParam<NamedOptions> {
 protected:
  void TearDown() override { set_simd_level(available_simd_levels().back()); }

  template <class T>
  void check() {
    const auto levels = available_simd_levels();
    ASSERT_EQ(levels.front(), "scalar");
    auto run_all = [&](const std::vector<std::size_t>& sizes) {
      set_simd_level("scalar");
      const std::vector<T> expected = trajectory<T>(GetParam().options, sizes, 1);
      for (const std::string& level : levels) {
        set_simd_level(level);
        EXPECT_TRUE(bit_equal(trajectory<T>(GetParam().options, sizes, 1), expected))
            << "level " << level << ", " << sizes.size() << " params, first size "
            << sizes.front();
      }
    };
    for (std::size_t size : kSizes) run_all({size});
    run_all(kSizes);  // all sizes as params of one optimizer: chunks cross buffer boundaries
  }
};

TEST_P(SimdLevels, Float32MatchesScalar) { check<float>(); }
TEST_P(SimdLevels, Float64MatchesScalar) { check<double>(); }

INSTANTIATE_TEST_SUITE_P(Grid, SimdLevels, testing::ValuesIn(option_grid()), grid_name);

class Threads : public testing::TestWithParam<NamedOptions> {
 protected:
  template <class T>
  void check() {
    for (const auto& sizes : {std::vector<std::size_t>{100003}, kSizes,
                              std::vector<std::size_t>{40000, 3, 40001}}) {
      const std::vector<T> one = trajectory<T>(GetParam().options, sizes, 1);
      EXPECT_TRUE(bit_equal(trajectory<T>(GetParam().options, sizes, 2), one))
          << sizes.size() << " params";
      EXPECT_TRUE(bit_equal(trajectory<T>(GetParam().options, sizes, 3), one))
          << sizes.size() << " params, 3 threads";
    }
  }
};

TEST_P(Threads, Float32OneVsTwoIdentical) { check<float>(); }
TEST_P(Threads, Float64OneVsTwoIdentical) { check<double>(); }

INSTANTIATE_TEST_SUITE_P(Grid, Threads, testing::ValuesIn(option_grid()), grid_name);

// Levels and thread counts together: every level with 2 and 3 threads bit-identical to the
// scalar level on one thread, all sizes as params of one optimizer (odd sizes, chunks that
// cross buffer boundaries).
class LevelsTimesThreads : public testing::TestWithParam<NamedOptions> {
 protected:
  void TearDown() override { set_simd_level(available_simd_levels().back()); }
};

TEST_P(LevelsTimesThreads, Float32MatchesScalarOneThread) {
  set_simd_level("scalar");
  const std::vector<float> expected = trajectory<float>(GetParam().options, kSizes, 1);
  for (const std::string& level : available_simd_levels()) {
    set_simd_level(level);
    for (int threads : {2, 3})
      EXPECT_TRUE(bit_equal(trajectory<float>(GetParam().options, kSizes, threads), expected))
          << "level " << level << ", " << threads << " threads";
  }
}

INSTANTIATE_TEST_SUITE_P(Grid, LevelsTimesThreads, testing::ValuesIn(option_grid()), grid_name);

// ---- comparisons, select, maximum, abs, sign at every level ----------------------------------

struct OpsLevel {
  const char* name;
  simd_ops_test::ProbeOps<float> f32;
  simd_ops_test::ProbeOps<double> f64;
  template <class T>
  simd_ops_test::ProbeOps<T> probe() const {
    if constexpr (sizeof(T) == 4) {
      return f32;
    } else {
      return f64;
    }
  }
};

// Every level this file compiles, the scalar level first.
const std::vector<OpsLevel>& ops_levels() {
  namespace t = simd_ops_test;
  static const std::vector<OpsLevel> levels = {
      {"scalar", t::scalar::kProbeF32, t::scalar::kProbeF64},
#if defined(FASTOPTIM_TEST_X86)
      {"sse2", t::sse2::kProbeF32, t::sse2::kProbeF64},
      {"avx2", t::avx2::kProbeF32, t::avx2::kProbeF64},
      {"avx512", t::avx512::kProbeF32, t::avx512::kProbeF64},
#endif
#if defined(FASTOPTIM_TEST_NEON)
      {"neon", t::neon::kProbeF32, t::neon::kProbeF64},
#endif
  };
  return levels;
}

// The levels to run: those available_simd_levels() lists (built and supported by this CPU).
// A level the library has and this file does not compile fails the test.
std::vector<OpsLevel> available_ops_levels() {
  std::vector<OpsLevel> out;
  for (const std::string& name : available_simd_levels()) {
    bool found = false;
    for (const OpsLevel& level : ops_levels())
      if (name == level.name) {
        out.push_back(level);
        found = true;
      }
    EXPECT_TRUE(found) << "level " << name << " has no element-function test here";
  }
  return out;
}

template <class T>
using BitsOf = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

template <class T>
BitsOf<T> bits(T x) {
  BitsOf<T> u;
  std::memcpy(&u, &x, sizeof(T));
  return u;
}
template <class T>
T from_bits(BitsOf<T> u) {
  T x;
  std::memcpy(&x, &u, sizeof(T));
  return x;
}

// Zeros, ones, the ends of the normal and subnormal ranges, infinities, NaNs of both signs
// (quiet and signalling, with payloads), neighbours of 1 (comparisons one ulp apart), and
// random bit patterns.
template <class T>
std::vector<T> op_probe_values() {
  using L = std::numeric_limits<T>;
  using U = BitsOf<T>;
  std::vector<T> out = {T(0), -T(0), T(1), -T(1), T(0.5), T(-2.5), T(3), L::max(), L::lowest(),
                        L::min(), -L::min(), L::denorm_min(), -L::denorm_min(),
                        L::min() / T(1024), -L::min() / T(3), L::infinity(), -L::infinity(),
                        std::nextafter(T(1), T(2)), std::nextafter(T(1), T(0)),
                        std::nextafter(T(-1), T(-2))};
  const U sign_bit = U{1} << (sizeof(T) * 8 - 1);
  const U inf = bits(L::infinity());
  const U quiet = bits(L::quiet_NaN());
  for (U nan : {quiet, quiet | sign_bit, inf | 1, inf | sign_bit | 0x12345, ~U{0} >> 1, ~U{0}})
    out.push_back(from_bits<T>(nan));
  std::uint64_t state = 2024;
  for (int k = 0; k < 24; ++k) out.push_back(from_bits<T>(static_cast<U>(splitmix64(state))));
  return out;
}

// Each op of `level` on every ordered pair of `values`, one vector per op.
template <class T>
std::vector<std::vector<T>> run_ops(const OpsLevel& level, const std::vector<T>& values) {
  std::vector<T> a, b;
  for (T x : values)
    for (T y : values) {
      a.push_back(x);
      b.push_back(y);
    }
  const std::size_t n = a.size();
  const std::size_t padded = (n + 15) / 16 * 16;  // a multiple of every level's width
  a.resize(padded, T(0));
  b.resize(padded, T(0));
  std::vector<std::vector<T>> out(simd_ops_test::kOpCount, std::vector<T>(padded));
  T* outs[simd_ops_test::kOpCount];
  for (int op = 0; op < simd_ops_test::kOpCount; ++op) outs[op] = out[op].data();
  level.probe<T>()(a.data(), b.data(), padded, outs);
  for (auto& o : out) o.resize(n);
  return out;
}

template <class T>
void check_levels_match_scalar() {
  const std::vector<T> values = op_probe_values<T>();
  const auto levels = available_ops_levels();
  ASSERT_FALSE(levels.empty());
  ASSERT_STREQ(levels.front().name, "scalar");
  const auto expected = run_ops<T>(levels.front(), values);
  for (const OpsLevel& level : levels) {
    const auto actual = run_ops<T>(level, values);
    for (int op = 0; op < simd_ops_test::kOpCount; ++op)
      EXPECT_TRUE(bit_equal(actual[op], expected[op]))
          << simd_ops_test::kOpNames[op] << " at level " << level.name;
  }
}

TEST(SimdOps, Float32EveryLevelMatchesScalar) { check_levels_match_scalar<float>(); }
TEST(SimdOps, Float64EveryLevelMatchesScalar) { check_levels_match_scalar<double>(); }

// torch's semantics, written from the definitions (std:: functions and bits), at every level:
// - comparisons false when either side is NaN; unordered when either is;
// - torch.maximum: NaN if either is NaN (fastoptim's NaN: every bit set, at every level), else
//   the larger; of +0 and -0, b (torch's own kernels give either zero, depending on the path);
// - torch.abs: the sign bit cleared, NaN payloads kept (what torch's CPU kernels return);
// - torch.sign: +1 for x > 0 (subnormals and +inf included), -1 for x < 0, and +0 (not -0)
//   for +0, -0 and every NaN: torch 2.x's CPU kernel computes (0 < x) - (x < 0), checked for
//   float32 and float64 at ATen's default, avx2 and avx512 capabilities.
template <class T>
void check_torch_semantics() {
  using U = BitsOf<T>;
  const U sign_bit = U{1} << (sizeof(T) * 8 - 1);
  const std::vector<T> values = op_probe_values<T>();
  for (const OpsLevel& level : available_ops_levels()) {
    const auto out = run_ops<T>(level, values);
    std::size_t failures = 0;
    auto expect_bits = [&](int op, std::size_t i, T a, T b, T expected) {
      if (bits(out[op][i]) == bits(expected)) return;
      if (++failures > 20) return;
      ADD_FAILURE() << simd_ops_test::kOpNames[op] << " at level " << level.name << " of "
                    << std::hexfloat << a << " (0x" << std::hex << bits(a) << "), " << b
                    << " (0x" << bits(b) << "): 0x" << bits(out[op][i]) << ", expected 0x"
                    << bits(expected) << std::dec << std::defaultfloat;
    };
    std::size_t i = 0;
    for (T a : values)
      for (T b : values) {
        const bool nan = std::isnan(a) || std::isnan(b);
        expect_bits(simd_ops_test::kLt, i, a, b, T(!nan && a < b ? 1 : 0));
        expect_bits(simd_ops_test::kGt, i, a, b, T(!nan && a > b ? 1 : 0));
        expect_bits(simd_ops_test::kUnordered, i, a, b, T(nan ? 1 : 0));
        expect_bits(simd_ops_test::kSelect, i, a, b, a < b ? a : b);
        expect_bits(simd_ops_test::kMaximum, i, a, b, nan ? from_bits<T>(~U{0}) : a > b ? a : b);
        expect_bits(simd_ops_test::kAbs, i, a, b, from_bits<T>(bits(a) & ~sign_bit));
        expect_bits(simd_ops_test::kSign, i, a, b, a > 0 ? T(1) : (a < 0 ? T(-1) : T(0)));
        if (!nan) {  // the same, by value: std::fmax and std::fabs
          EXPECT_EQ(out[simd_ops_test::kMaximum][i], std::fmax(a, b));
          EXPECT_EQ(out[simd_ops_test::kAbs][i], std::fabs(a));
        }
        ++i;
      }
    EXPECT_EQ(failures, 0u) << "level " << level.name;
  }
}

TEST(SimdOps, Float32TorchSemantics) { check_torch_semantics<float>(); }
TEST(SimdOps, Float64TorchSemantics) { check_torch_semantics<double>(); }

// The special values spelled out, so that a reader sees the contract (and a change of the
// probe above cannot hide it).
template <class T>
void check_special_values() {
  using L = std::numeric_limits<T>;
  using U = BitsOf<T>;
  const U sign_bit = U{1} << (sizeof(T) * 8 - 1);
  const T nan = L::quiet_NaN(), negative_nan = from_bits<T>(bits(nan) | sign_bit);
  const T all_ones_nan = from_bits<T>(~U{0});
  const T zero = T(0), negative_zero = -T(0), inf = L::infinity(), sub = L::denorm_min();
  struct Case {
    T a, b, maximum, abs, sign;
  };
  const std::vector<Case> cases = {
      {T(2), T(-3), T(2), T(2), T(1)},
      {T(-2), T(3), T(3), T(2), T(-1)},
      {zero, negative_zero, negative_zero, zero, zero},  // maximum: b of two equal values
      {negative_zero, zero, zero, zero, zero},           // sign(-0) is +0
      {inf, T(1), inf, inf, T(1)},
      {-inf, T(1), T(1), inf, T(-1)},
      {sub, zero, sub, sub, T(1)},
      {-sub, zero, zero, sub, T(-1)},
      {nan, T(1), all_ones_nan, nan, zero},  // sign(NaN) is +0
      {negative_nan, T(1), all_ones_nan, nan, zero},
      {T(1), nan, all_ones_nan, T(1), T(1)},
  };
  std::vector<T> a, b;
  for (const Case& c : cases) {
    a.push_back(c.a);
    b.push_back(c.b);
  }
  const std::size_t n = a.size();
  a.resize(16, T(0));
  b.resize(16, T(0));
  for (const OpsLevel& level : available_ops_levels()) {
    std::vector<std::vector<T>> out(simd_ops_test::kOpCount, std::vector<T>(16));
    T* outs[simd_ops_test::kOpCount];
    for (int op = 0; op < simd_ops_test::kOpCount; ++op) outs[op] = out[op].data();
    level.probe<T>()(a.data(), b.data(), 16, outs);
    for (std::size_t i = 0; i < n; ++i) {
      EXPECT_EQ(bits(out[simd_ops_test::kMaximum][i]), bits(cases[i].maximum))
          << level.name << " maximum, case " << i;
      EXPECT_EQ(bits(out[simd_ops_test::kAbs][i]), bits(cases[i].abs))
          << level.name << " abs, case " << i;
      EXPECT_EQ(bits(out[simd_ops_test::kSign][i]), bits(cases[i].sign))
          << level.name << " sign, case " << i;
    }
  }
}

TEST(SimdOps, Float32SpecialValues) { check_special_values<float>(); }
TEST(SimdOps, Float64SpecialValues) { check_special_values<double>(); }

}  // namespace
}  // namespace fastoptim::test
