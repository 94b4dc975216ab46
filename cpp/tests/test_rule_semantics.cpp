// What NAdam, RAdam, Adamax and Schedule-Free do besides the element math test_rules.cpp checks
// against the reference: NAdam's mu_product (a float32 product, as torch keeps it; shown by the
// state view, set through set_scalar_state), RAdam's branch chosen per param and per step,
// Adamax's NaN-propagating maximum, Schedule-Free's group state, refused step and train/eval
// transforms, each the same at every SIMD level and thread count.
#include <cmath>
#include <limits>

#include "support.hpp"

namespace fastoptim::test {
namespace {

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Restores the SIMD level a test started with, however it ends.
struct LevelGuard {
  std::string before = simd_level();
  ~LevelGuard() { set_simd_level(before); }
};

// torch's mu_t of NAdam, in Python floats.
double nadam_mu(const NadamOptions& o, double step) {
  return o.beta1 * (1.0 - 0.5 * std::pow(0.96, step * o.momentum_decay));
}

// ---- NAdam: mu_product -------------------------------------------------------------------

TEST(NadamMuProduct, IsTheFloat32ProductOfTheMomentumCoefficients) {
  const NadamOptions options{.lr = 0.01, .momentum_decay = 0.1};
  std::vector<float> a = random_vector<float>(5, 1);
  std::vector<double> b = random_vector<double>(3, 2);
  std::vector<float> c = random_vector<float>(4, 3);
  Nadam opt(options);
  opt.add_param(a);
  opt.add_param(b);
  opt.add_param(c);
  for (std::size_t k = 0; k < 3; ++k) {  // before any step: torch's initial value, ones
    const ParamStateView view = opt.state(k);
    EXPECT_EQ(view.scalar_names[0], "mu_product");
    EXPECT_EQ(view.scalar_names[1], "");
    EXPECT_EQ(view.scalars[0], 1.0);
  }
  // mu_product *= mu on a 0-d float32 tensor: mu rounded to float32, multiplied in float32,
  // for the float64 param too (torch's scalar dtype is the default dtype, float32).
  float product = 1.0f, product_c = 1.0f;
  double exact = 1.0;
  std::int64_t steps_c = 0;
  for (int s = 1; s <= 20; ++s) {
    const bool skip_c = s % 3 == 0;  // c is skipped every third step: its product lags
    const auto ga = random_vector<float>(5, 10 + s);
    const auto gb = random_vector<double>(3, 40 + s);
    const auto gc = random_vector<float>(4, 70 + s);
    opt.step({ga, gb, skip_c ? Grad{} : Grad(gc)});
    const double mu = nadam_mu(options, s);
    product = product * static_cast<float>(mu);
    exact *= mu;
    if (!skip_c) product_c = product_c * static_cast<float>(nadam_mu(options, ++steps_c));
    EXPECT_EQ(opt.state(0).scalars[0], static_cast<double>(product)) << "step " << s;
    EXPECT_EQ(opt.state(1).scalars[0], static_cast<double>(product)) << "step " << s;
    EXPECT_EQ(opt.state(2).scalars[0], static_cast<double>(product_c)) << "step " << s;
    EXPECT_EQ(opt.state(2).step, steps_c);
  }
  // Kept in float32 all along, not a double product rounded when shown.
  EXPECT_NE(static_cast<float>(exact), product);

  // The other rules keep no scalar state.
  std::vector<float> p(3);
  for (const AnyOptions& other : {AnyOptions{RadamOptions{}}, AnyOptions{AdamaxOptions{}},
                                  AnyOptions{AdamOptions{}}}) {
    auto o = make_optimizer(other);
    o->add_param(p);
    const ParamStateView view = o->state(0);
    EXPECT_EQ(view.scalar_names[0], "");
    EXPECT_EQ(view.scalar_names[1], "");
  }
}

// The per-step scalars read the mu_product the param has: one set through set_scalar_state
// gives the trajectory of a reference starting from that value.
TEST(NadamMuProduct, SetScalarStateContinuesFromTheValueSet) {
  const NadamOptions options{.lr = 0.05, .weight_decay = 0.1};
  for (const std::string& level : available_simd_levels()) {
    LevelGuard guard;
    set_simd_level(level);
    SCOPED_TRACE(level);
    std::vector<double> p = random_vector<double>(17, 5);
    RefOptimizer<double> ref{options, {}};
    ref.add(p);
    Nadam opt(options);
    opt.add_param(p);
    for (int s = 0; s < 4; ++s) {
      if (s == 2) {
        opt.set_scalar_state(0, 0, 0.1);  // rounded to float32, as torch's tensor holds it
        ref.params[0].scalars[0].second = 0.1f;
        EXPECT_EQ(opt.state(0).scalars[0], static_cast<double>(0.1f));
      }
      const auto g = random_vector<double>(17, 20 + s);
      opt.step({g});
      ref.step({g});
      ASSERT_TRUE(bit_equal(p, ref.params[0].value)) << "step " << s;
      EXPECT_EQ(opt.state(0).scalars[0], static_cast<double>(ref.params[0].scalars[0].second));
    }
  }
}

TEST(NadamMuProduct, SetScalarStateValidatesAndChangesNothingOnError) {
  std::vector<float> p(4, 1.0f), g(4, 0.5f);
  Nadam opt;
  opt.add_param(p);
  opt.step({g});
  const std::string before = saved(opt);
  EXPECT_INVALID(opt.set_scalar_state(0, 1, 0.5), "nadam has no scalar state 1");
  EXPECT_INVALID(opt.set_scalar_state(0, -1, 0.5), "nadam has no scalar state -1");
  EXPECT_INVALID(opt.set_scalar_state(1, 0, 0.5), "param 1 does not exist");
  EXPECT_INVALID(opt.set_scalar_state(0, 0, kNan),
                 "param 0: mu_product must be a finite float32 value, got nan");
  EXPECT_INVALID(opt.set_scalar_state(0, 0, kInf),
                 "param 0: mu_product must be a finite float32 value, got inf");
  EXPECT_INVALID(opt.set_scalar_state(0, 0, -kInf),
                 "param 0: mu_product must be a finite float32 value, got -inf");
  EXPECT_INVALID(opt.set_scalar_state(0, 0, 1e39),
                 "param 0: mu_product must be a finite float32 value, got 1e+39");
  EXPECT_EQ(saved(opt), before);
  // The largest float32 is a float32 value.
  opt.set_scalar_state(0, 0, static_cast<double>(std::numeric_limits<float>::max()));
  EXPECT_EQ(opt.state(0).scalars[0], static_cast<double>(std::numeric_limits<float>::max()));

  for (const AnyOptions& other : {AnyOptions{AdamOptions{}}, AnyOptions{RadamOptions{}},
                                  AnyOptions{AdamaxOptions{}}}) {
    auto o = make_optimizer(other);
    o->add_param(p);
    EXPECT_INVALID(o->set_scalar_state(0, 0, 1.0),
                   std::string(rule_name(o->rule())) + " has no scalar state 0");
  }
}

// The driver keeps scalar state in the type the caller gives (ParamBuffers::scalar_dtype):
// float32 as torch by default, float64 as torch under a float64 default dtype.
TEST(NadamMuProduct, DriverMultipliesInTheScalarStatesType) {
  const NadamOptions options{.momentum_decay = 0.1};
  std::vector<double> p(9, 1.0), g(9, 0.25), m(9, 0.0), v(9, 0.0);
  float mu32 = 1.0f;
  double mu64 = 1.0;
  ParamBuffers b32{p.data(), g.data(), {m.data(), v.data(), nullptr}, 9, 1, &mu32,
                   DType::float32};
  std::vector<double> q(9, 1.0), n(9, 0.0), w(9, 0.0);
  ParamBuffers b64{q.data(), g.data(), {n.data(), w.data(), nullptr}, 9, 1, &mu64,
                   DType::float64};
  float want32 = 1.0f;
  double want64 = 1.0;
  for (std::int64_t s = 1; s <= 20; ++s) {
    b32.step = b64.step = s;
    fastoptim::step(options, DType::float64, std::span(&b32, 1));
    fastoptim::step(options, DType::float64, std::span(&b64, 1));
    want32 = want32 * static_cast<float>(nadam_mu(options, static_cast<double>(s)));
    want64 = want64 * nadam_mu(options, static_cast<double>(s));
    ASSERT_EQ(mu32, want32) << "step " << s;
    ASSERT_EQ(mu64, want64) << "step " << s;
  }
  EXPECT_NE(p, q);  // the coefficients read the product: different products, different params

  // No scalar state: refused before anything is written.
  b32.scalar_state = nullptr;
  const std::vector<double> p0 = p;
  EXPECT_INVALID(fastoptim::step(options, DType::float64, std::span(&b32, 1)),
                 "buffer 0: scalar state mu_product is null");
  EXPECT_EQ(p, p0);
}

// ---- RAdam: the rectification branch -------------------------------------------------------

// torch's rho_t > 5, in Python floats.
bool radam_rectified(double beta2, double step) {
  const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
  const double rho_t = rho_inf - 2.0 * step * std::pow(beta2, step) / (1.0 - std::pow(beta2, step));
  return rho_t > 5.0;
}

// eps is read only by the rectified branch: two runs that differ only in eps are bit-identical
// up to the first rectified step and differ from it on.
TEST(RadamBranches, EpsMattersFromTheFirstRectifiedStepOn) {
  for (double beta2 : {0.999, 0.9, 0.6}) {
    SCOPED_TRACE("beta2 " + std::to_string(beta2));
    int first_rectified = 0;
    for (int s = 1; s <= 40 && first_rectified == 0; ++s)
      if (radam_rectified(beta2, s)) first_rectified = s;
    if (beta2 == 0.6) EXPECT_EQ(first_rectified, 0);  // rho_inf = 4: never
    else EXPECT_EQ(first_rectified, 6);
    std::vector<float> a = random_vector<float>(37, 1), b = a;
    Radam small({.lr = 0.01, .beta2 = beta2, .eps = 1e-8});
    Radam large({.lr = 0.01, .beta2 = beta2, .eps = 0.5});
    small.add_param(a);
    large.add_param(b);
    for (int s = 1; s <= 12; ++s) {
      const auto g = random_vector<float>(37, 100 + s, -2.0, 2.0);
      small.step({g});
      large.step({g});
      if (first_rectified == 0 || s < first_rectified)
        ASSERT_TRUE(bit_equal(a, b)) << "step " << s << " is not rectified";
      else
        ASSERT_NE(a, b) << "step " << s << " is rectified";
    }
  }
}

// One driver call holds params at different step counts: each takes its own branch (a late
// param is unrectified while the others are rectified), in whichever thread's chunk it falls,
// and matches an optimizer that holds only that param; at every level, and with 2 and 3
// threads at the highest.
TEST(RadamBranches, ParamsAtDifferentStepsInOneCallTakeTheirOwnBranch) {
  const RadamOptions options{.lr = 0.01, .beta2 = 0.9, .weight_decay = 0.1};
  const std::vector<std::size_t> sizes = {20001, 3, 20003};
  constexpr int kSteps = 9;
  // param 2 joins at the fourth step: at its first step params 0 and 1 are at 4, and from the
  // sixth step on they are rectified while it is not
  auto present = [](std::size_t k, int s) { return k != 2 || s >= 3; };
  auto grad = [&](std::size_t k, int s) {
    return random_vector<float>(sizes[k], 50 * static_cast<std::size_t>(s) + k, -2.0, 2.0);
  };
  LevelGuard guard;
  set_simd_level("scalar");
  std::vector<std::vector<float>> alone;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    alone.push_back(random_vector<float>(sizes[k], 10 + k));
    Radam single(options);
    single.set_num_threads(1);
    single.add_param(alone[k]);
    for (int s = 0; s < kSteps; ++s)
      if (present(k, s)) single.step({grad(k, s)});
  }
  std::vector<std::pair<std::string, int>> runs;
  for (const std::string& level : available_simd_levels()) runs.push_back({level, 1});
  runs.push_back({available_simd_levels().back(), 2});
  runs.push_back({available_simd_levels().back(), 3});
  for (const auto& [level, threads] : runs) {
    SCOPED_TRACE(level + ", " + std::to_string(threads) + " threads");
    set_simd_level(level);
    std::vector<std::vector<float>> params;
    Radam together(options);
    together.set_num_threads(threads);
    for (std::size_t k = 0; k < sizes.size(); ++k) params.push_back(random_vector<float>(sizes[k], 10 + k));
    for (auto& p : params) together.add_param(p);
    for (int s = 0; s < kSteps; ++s) {
      std::vector<std::vector<float>> grads;
      std::vector<Grad> views;
      for (std::size_t k = 0; k < sizes.size(); ++k) {
        grads.push_back(grad(k, s));
        views.push_back(present(k, s) ? Grad(grads.back()) : Grad{});
      }
      together.step(views);
    }
    EXPECT_EQ(together.step_count(0), kSteps);
    EXPECT_EQ(together.step_count(2), kSteps - 3);
    for (std::size_t k = 0; k < sizes.size(); ++k)
      EXPECT_TRUE(bit_equal(params[k], alone[k])) << "param " << k;
  }
}

// ---- Adamax: exp_inf = torch.maximum(exp_inf * beta2, |grad| + eps) ------------------------

// Equal bits, or both NaN (torch's NaN bits are not specified).
template <class T>
testing::AssertionResult same_or_both_nan(const std::vector<T>& actual,
                                          const std::vector<T>& expected) {
  if (actual.size() != expected.size()) return testing::AssertionFailure() << "sizes differ";
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const bool both_nan = std::isnan(actual[i]) && std::isnan(expected[i]);
    if (!both_nan && std::memcmp(&actual[i], &expected[i], sizeof(T)) != 0)
      return testing::AssertionFailure() << "element " << i << ": " << actual[i] << " vs "
                                         << expected[i];
  }
  return testing::AssertionSuccess();
}

// A run of Adamax in which exp_inf meets NaN on either side of the maximum: a NaN (and an inf)
// in the grad of step 2, and NaN written into exp_inf before step 3 where the grad is finite.
// Returns the param, exp_avg and exp_inf of each size, concatenated.
template <class T>
std::vector<T> adamax_nan_run(const std::vector<std::size_t>& sizes, int threads,
                              std::vector<T>* reference = nullptr) {
  const AdamaxOptions options{.lr = 0.01, .weight_decay = 0.05};
  std::vector<T> out, ref_out;
  for (std::size_t size : sizes) {
    std::vector<T> p = random_vector<T>(size, 3);
    RefOptimizer<T> ref{options, {}};
    ref.add(p);
    Adamax opt(options);
    opt.set_num_threads(threads);
    opt.add_param(p);
    for (int s = 0; s < 4; ++s) {
      std::vector<T> g = random_vector<T>(size, 30 + s, -2.0, 2.0);
      if (s == 1)
        for (std::size_t i = 0; i < size; i += 5) g[i] = i % 10 == 0 ? T(kNan) : T(kInf);
      if (s == 2) {  // left side: exp_inf is NaN, the grad finite
        std::span<T> exp_inf = opt.state(0).buffer<T>(1);
        for (std::size_t i = 2; i < size; i += 7) exp_inf[i] = ref.params[0].slots[1][i] = T(kNan);
      }
      opt.step({g});
      ref.step({g});
    }
    const ParamStateView view = opt.state(0);
    const auto exp_avg = view.buffer<T>(0), exp_inf = view.buffer<T>(1);
    // every element the NaNs reached is NaN in exp_inf
    for (std::size_t i = 0; i < size; ++i) {
      if (i % 5 == 0 || (i >= 2 && (i - 2) % 7 == 0)) {
        EXPECT_TRUE(std::isnan(exp_inf[i])) << "size " << size << " element " << i;
      }
    }
    out.insert(out.end(), p.begin(), p.end());
    out.insert(out.end(), exp_avg.begin(), exp_avg.end());
    out.insert(out.end(), exp_inf.begin(), exp_inf.end());
    const RefParam<T>& r = ref.params[0];
    ref_out.insert(ref_out.end(), r.value.begin(), r.value.end());
    ref_out.insert(ref_out.end(), r.slots[0].begin(), r.slots[0].end());
    ref_out.insert(ref_out.end(), r.slots[1].begin(), r.slots[1].end());
  }
  if (reference != nullptr) *reference = ref_out;
  return out;
}

template <class T>
void check_adamax_nan() {
  LevelGuard guard;
  const std::vector<std::size_t> sizes = {1, 7, 37, 1023, 40001};
  set_simd_level("scalar");
  std::vector<T> reference;
  const std::vector<T> scalar = adamax_nan_run<T>(sizes, 1, &reference);
  EXPECT_TRUE(same_or_both_nan(scalar, reference));
  for (const std::string& level : available_simd_levels()) {
    set_simd_level(level);
    for (int threads : {1, 2, 3}) {
      SCOPED_TRACE(level + ", " + std::to_string(threads) + " threads");
      const std::vector<T> run = adamax_nan_run<T>(sizes, threads);
      EXPECT_TRUE(same_or_both_nan(run, reference));
      EXPECT_TRUE(bit_equal(run, scalar));  // NaN bits included: the same at every level
    }
  }
}

TEST(AdamaxNan, ExpInfIsNanIfEitherSideIsNanAtEveryLevelFloat32) { check_adamax_nan<float>(); }
TEST(AdamaxNan, ExpInfIsNanIfEitherSideIsNanAtEveryLevelFloat64) { check_adamax_nan<double>(); }

// ---- Schedule-Free: group state, the refused step, train() and eval() ---------------------

// schedulefree's train() and eval(): p.lerp_(z, 1 - beta1) and p.lerp_(z, 1 - 1 / beta1).
template <class T>
std::vector<T> lerped(const std::vector<T>& p, const std::vector<T>& z, double weight) {
  std::vector<T> out(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) out[i] = ref_lerp(p[i], z[i], to<T>(weight));
  return out;
}

template <class T>
void check_schedule_free_transforms() {
  LevelGuard guard;
  std::vector<T> first;
  for (const std::string& level : available_simd_levels()) {
    SCOPED_TRACE(level);
    set_simd_level(level);
    for (int threads : {1, 2}) {
      std::vector<T> p = random_vector<T>(20011, 3);  // above the serial threshold
      AdamWScheduleFree opt({.lr = 0.01, .weight_decay = 0.1, .warmup_steps = 2});
      opt.set_num_threads(threads);
      opt.add_param(p);
      EXPECT_EQ(opt.transforms(), (std::vector<std::string_view>{"train", "eval"}));
      const auto g = random_vector<T>(p.size(), 4);
      try {  // schedulefree's exception, word for word, before anything changes
        opt.step({g});
        ADD_FAILURE() << "a step in eval mode went through";
      } catch (const std::logic_error& e) {
        EXPECT_STREQ(e.what(), rules::kScheduleFreeEvalModeStep);
      }
      EXPECT_EQ(opt.options().k, 0.0);
      opt.transform("train");  // no state yet: only the flag
      EXPECT_TRUE(opt.options().train_mode);
      for (int s = 0; s < 3; ++s) opt.step({g});
      EXPECT_EQ(opt.options().k, 3.0);
      EXPECT_EQ(opt.options().scheduled_lr, 0.01);
      const ParamStateView view = opt.state(0);
      const auto z = view.buffer<T>(0);
      const std::vector<T> zs(z.begin(), z.end()), y = p;
      opt.transform("eval");
      EXPECT_FALSE(opt.options().train_mode);
      EXPECT_TRUE(bit_equal(p, lerped(y, zs, 1.0 - 1.0 / 0.9)));
      const std::vector<T> x = p;
      opt.transform("eval");  // already there: nothing
      EXPECT_TRUE(bit_equal(p, x));
      opt.transform("train");
      EXPECT_TRUE(bit_equal(p, lerped(x, zs, 1.0 - 0.9)));
      EXPECT_INVALID(opt.transform("test"), "adamw_schedulefree has no transform 'test'");
      if (first.empty()) first = p;
      else EXPECT_TRUE(bit_equal(p, first));
    }
  }
}

TEST(ScheduleFree, TransformsAreTheReferencesLerpsAtEveryLevelFloat32) {
  check_schedule_free_transforms<float>();
}
TEST(ScheduleFree, TransformsAreTheReferencesLerpsAtEveryLevelFloat64) {
  check_schedule_free_transforms<double>();
}

// The group state advances once per step, also when no param has a grad (schedulefree's k).
TEST(ScheduleFree, GroupStateAdvancesWithoutGrads) {
  std::vector<float> p = random_vector<float>(9, 1);
  SGDScheduleFree opt({.lr = 0.5, .warmup_steps = 4, .train_mode = true});
  opt.add_param(p);
  const std::vector<float> before = p;
  opt.step({Grad{}});
  opt.step({Grad{}});
  EXPECT_TRUE(bit_equal(p, before));
  EXPECT_EQ(opt.options().k, 2.0);
  EXPECT_EQ(opt.options().scheduled_lr, 0.5 * 2 / 4);
  EXPECT_EQ(opt.options().lr_max, 0.25);
  EXPECT_EQ(opt.options().weight_sum, 0.125 * 0.125 + 0.25 * 0.25);
}

}  // namespace
}  // namespace fastoptim::test
