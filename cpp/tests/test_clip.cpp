// clip_grad_norm: the norm (every order, mixed dtypes, bit-identical for any thread count and
// SIMD level), the clip folded into the next step, and bad input changing nothing.
#include <cmath>
#include <limits>
#include <sstream>

#include "support.hpp"

namespace fastoptim::test {
namespace {

template <class T>
std::vector<T> wave(std::size_t n, double phase) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<T>(std::sin(0.37 * i + phase) * 3.0);
  return v;
}

// The definition, in long double, relative to the largest magnitude m (m * (sum (|g| /
// m)^p)^(1/p), so that orders whose powers leave long double's range still have an answer), or
// max |g|.
template <class T>
long double reference_norm(const std::vector<std::vector<T>>& grads, double p) {
  long double m = 0;
  for (const auto& g : grads)
    for (T x : g) m = std::max(m, std::fabs(static_cast<long double>(x)));
  if (std::isinf(p) || m == 0) return m;
  long double sum = 0;
  for (const auto& g : grads)
    for (T x : g) sum += std::pow(std::fabs(static_cast<long double>(x)) / m,
                                  static_cast<long double>(p));
  return m * std::pow(sum, 1.0L / p);
}

TEST(ClipGradNorm, NormOfEveryOrderMatchesTheDefinition) {
  const double inf = std::numeric_limits<double>::infinity();
  // 1e300, 1e10, 1000: |g|^p leaves double's range (issue 16); the norm is still finite
  for (double p : {1.0, 2.0, 3.0, 0.5, inf, 1e300, 1e10, 1000.0}) {
    std::vector<std::vector<float>> grads = {wave<float>(100003, 0.1), wave<float>(17, 0.2),
                                             wave<float>(1, 0.3)};
    std::vector<float> w0(100003), w1(17), w2(1);
    Adam opt;
    opt.add_param(w0);
    opt.add_param(w1);
    opt.add_param(w2);
    const double norm = opt.clip_grad_norm({grads[0], grads[1], grads[2]}, 1.0, p);
    const long double want = reference_norm(grads, p);
    ASSERT_TRUE(std::isfinite(norm)) << p;
    EXPECT_NEAR(norm, static_cast<double>(want), 1e-12 * static_cast<double>(want)) << p;
  }
}

// float64 grads whose squares overflow (1e200) or underflow (1e-170), and large orders: finite
// and right, where the plain sum says inf or 0.
TEST(ClipGradNorm, Float64GradsWhosePowersLeaveDoubleRange) {
  for (double scale : {1e200, 1e-170, 1.0})
    for (double p : {1.0, 2.0, 3.0, 0.5, 1e300, 1e10, 1000.0}) {
      std::vector<std::vector<double>> grads = {wave<double>(70001, 0.4), wave<double>(9, 0.1)};
      for (auto& g : grads)
        for (double& x : g) x *= scale;
      std::vector<double> w0(70001), w1(9);
      Sgd opt;
      opt.add_param(w0);
      opt.add_param(w1);
      const double norm = opt.clip_grad_norm({grads[0], grads[1]}, 1.0, p);
      const long double want = reference_norm(grads, p);
      ASSERT_TRUE(std::isfinite(norm)) << scale << " " << p;
      EXPECT_NEAR(norm, static_cast<double>(want), 1e-12 * static_cast<double>(want))
          << scale << " " << p;
    }
}

// The clip after a huge order scales the next step's grads by max_norm / (norm + 1e-6), as a
// finite norm says, instead of zeroing them (the norm was inf).
TEST(ClipGradNorm, HugeOrderClipsTheNextStepByTheFiniteNorm) {
  const std::vector<float> g = wave<float>(5000, 0.2);
  std::vector<float> clipped(g.size(), 1.0f), manual(g.size(), 1.0f);
  Sgd a(SgdOptions{.lr = 0.1}), b(SgdOptions{.lr = 0.1});
  a.add_param(clipped);
  b.add_param(manual);
  const double norm = a.clip_grad_norm({g}, 0.5, 1e300);
  const double coef = 0.5 / (norm + 1e-6);
  ASSERT_LT(coef, 1.0);
  ASSERT_GT(coef, 0.1);
  std::vector<float> scaled(g);
  for (float& x : scaled) x = x * static_cast<float>(coef);
  a.step({g});
  b.step({scaled});
  EXPECT_EQ(clipped, manual);
}

// inf and NaN grads: the norm is inf or NaN at every order, as before (and as torch's).
TEST(ClipGradNorm, NonfiniteGradsStillGiveANonfiniteNorm) {
  const double inf = std::numeric_limits<double>::infinity();
  for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()})
    for (double p : {1.0, 2.0, 3.0, 0.5, inf, 1e300, 1e10, 1000.0}) {
      std::vector<float> g = wave<float>(40000, 0.2), w(g.size());
      g[12345] = bad;
      Sgd opt;
      opt.add_param(w);
      const double norm = opt.clip_grad_norm({g}, 1.0, p);
      if (std::isnan(bad)) EXPECT_TRUE(std::isnan(norm)) << p;
      else EXPECT_EQ(norm, inf) << p;
      EXPECT_THROW(opt.clip_grad_norm({g}, 1.0, p, true), std::invalid_argument) << p;
    }
}

TEST(ClipGradNorm, BitIdenticalAcrossThreadsAndLevels) {
  const std::vector<float> g32 = wave<float>(300001, 0.5);
  const std::vector<double> g64 = wave<double>(70001, 0.7);
  const std::array<double, 7> kOrders = {1.0, 2.0, 3.0, std::numeric_limits<double>::infinity(),
                                          1e300, 1000.0, 0.5};
  std::vector<double> norms;
  const std::string before = simd_level();
  for (const std::string& level : available_simd_levels()) {
    set_simd_level(level);
    for (int threads : {1, 2, 3}) {
      std::vector<float> w32(g32.size());
      std::vector<double> w64(g64.size());
      Sgd opt;
      opt.add_param(w32);
      opt.add_param(w64);
      opt.set_num_threads(threads);
      for (double p : kOrders) norms.push_back(opt.clip_grad_norm({g32, g64}, 1.0, p));
    }
  }
  set_simd_level(before);
  for (std::size_t i = kOrders.size(); i < norms.size(); ++i)
    EXPECT_EQ(norms[i], norms[i % kOrders.size()]) << i;
}

class ClipGradNormEveryRule : public testing::TestWithParam<NamedOptions> {};

TEST_P(ClipGradNormEveryRule, ClipIsFoldedIntoTheNextStepOnly) {
  const std::vector<float> g = wave<float>(50000, 0.9);
  std::vector<float> clipped(g.size(), 1.0f), manual(g.size(), 1.0f);
  auto a_ = make_optimizer(GetParam().options), b_ = make_optimizer(GetParam().options);
  Optimizer& a = *a_;
  Optimizer& b = *b_;
  a.add_param(clipped);
  b.add_param(manual);
  const double norm = a.clip_grad_norm({g}, 0.5);
  const double coef = std::min(1.0, 0.5 / (norm + 1e-6));
  ASSERT_LT(coef, 1.0);
  std::vector<float> scaled(g);
  for (float& x : scaled) x = x * static_cast<float>(coef);
  a.step({g});
  b.step({scaled});
  EXPECT_EQ(clipped, manual);
  a.step({g});  // the clip applied once: this step reads the raw grads
  b.step({g});
  EXPECT_EQ(clipped, manual);
  EXPECT_EQ(saved(a), saved(b));  // state (and NAdam's mu_product) alike
}

INSTANTIATE_TEST_SUITE_P(Grid, ClipGradNormEveryRule, testing::ValuesIn(option_grid()), grid_name);

TEST(ClipGradNorm, BadInputChangesNothing) {
  const std::vector<float> g = wave<float>(64, 0.1);
  std::vector<float> w(64, 1.0f), v(64, 1.0f);
  Adam opt, twin;
  opt.add_param(w);
  twin.add_param(v);
  opt.step({g});
  twin.step({g});
  const std::string state = saved(opt);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(opt.clip_grad_norm({g}, -1.0), std::invalid_argument);
  EXPECT_THROW(opt.clip_grad_norm({g}, nan), std::invalid_argument);
  for (double p : {0.0, -2.0, nan, -std::numeric_limits<double>::infinity()})
    EXPECT_THROW(opt.clip_grad_norm({g}, 1.0, p), std::invalid_argument) << p;
  EXPECT_THROW(opt.clip_grad_norm({Grad{}}, 1.0), std::invalid_argument);  // no grad at all
  EXPECT_THROW(opt.clip_grad_norm({g, g}, 1.0), std::invalid_argument);    // count
  std::vector<float> bad(g);
  bad[3] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(opt.clip_grad_norm({bad}, 1.0, 2.0, true), std::invalid_argument);
  EXPECT_EQ(saved(opt), state);
  opt.step({g});  // no clip pending after the failures
  twin.step({g});
  EXPECT_EQ(w, v);
}

}  // namespace
}  // namespace fastoptim::test

namespace fastoptim::test {
namespace {

// A param and its state for direct driver calls: every slot the options use, and the scalar
// state (NAdam's mu_product, float32) at 1.
template <class T>
struct DriverParam {
  std::vector<T> param;
  std::array<std::vector<T>, 3> slots;
  float scalars[2] = {1.0f, 1.0f};

  DriverParam(const AnyOptions& options, std::size_t size) : param(size, T(0.5)) {
    for (int slot = 0; slot < 3; ++slot)
      if (std::visit([&](const auto& o) { return uses_state_slot(o, slot); }, options))
        slots[static_cast<std::size_t>(slot)].assign(size, T(0));
  }
  ParamBuffers buffers(const std::vector<T>& grad, std::int64_t step) {
    ParamBuffers b;
    b.param = param.data(), b.grad = grad.data(), b.size = param.size(), b.step = step;
    for (std::size_t slot = 0; slot < 3; ++slot)
      b.state[slot] = slots[slot].empty() ? nullptr : slots[slot].data();
    b.scalar_state = scalars, b.scalar_dtype = DType::float32;
    return b;
  }
};

// The driver's GradFactors: unscale then clip, each a multiply in the element type as the grad
// is read, bit-identical to multiplying the grads first (torch's in-place unscale_ and clip_),
// for every rule at every level.
class GradFactorsEveryRule : public testing::TestWithParam<NamedOptions> {};

TEST_P(GradFactorsEveryRule, SameBitsAsMultiplyingTheGradsFirst) {
  const AnyOptions& options = GetParam().options;
  const std::vector<float> g = wave<float>(40000, 0.3);
  const double inv_scale = 1.0 / 1024.0, clip = 0.37;
  std::vector<float> scaled(g);
  for (float& x : scaled) x = (x * static_cast<float>(inv_scale)) * static_cast<float>(clip);
  const std::string before = simd_level();
  for (const std::string& level : available_simd_levels()) {
    set_simd_level(level);
    DriverParam<float> a(options, g.size()), b(options, g.size());
    for (std::int64_t s = 1; s <= 2; ++s) {
      const ParamBuffers x = a.buffers(g, s), y = b.buffers(scaled, s);
      std::visit(
          [&](const auto& o) {
            step(o, DType::float32, std::span(&x, 1), 2, GradFactors{inv_scale, clip});
            step(o, DType::float32, std::span(&y, 1), 2);
          },
          options);
    }
    EXPECT_EQ(a.param, b.param) << level;
    EXPECT_EQ(a.slots, b.slots) << level;
    EXPECT_EQ(a.scalars[0], b.scalars[0]) << level;
  }
  set_simd_level(before);
}

INSTANTIATE_TEST_SUITE_P(Grid, GradFactorsEveryRule, testing::ValuesIn(option_grid()), grid_name);

TEST(GradFactors, BadFactorsAreRejectedBeforeAnyWrite) {
  std::vector<double> w(8, 1.0), g(8, 1.0), m(8, 0.0);
  ParamBuffers b;
  b.param = w.data(), b.grad = g.data(), b.state[0] = m.data(), b.size = 8;
  const double inf = std::numeric_limits<double>::infinity();
  for (GradFactors f : {GradFactors{-1.0, 1.0}, GradFactors{inf, 1.0}, GradFactors{1.0, -0.5},
                        GradFactors{1.0, inf}})
    EXPECT_THROW(step(SgdOptions{.lr = 0.1, .momentum = 0.9}, DType::float64, std::span(&b, 1), 1,
                      f),
                 std::invalid_argument);
  EXPECT_EQ(w, std::vector<double>(8, 1.0));
  EXPECT_EQ(m, std::vector<double>(8, 0.0));
}

}  // namespace
}  // namespace fastoptim::test
