// "Never wrong, never out of bounds": bad input is std::invalid_argument with a useful message
// and changes nothing: subnormal options, per-step scalars that overflow the element type,
// step counts at and past kMaxStepCount (driver, set_step_count, load), and a mixed-dtype
// optimizer whose second batch is the invalid one.
#include <bit>
#include <limits>
#include <sstream>

#include "support.hpp"

namespace fastoptim::test {
namespace {

constexpr double kSubnormal = -1e-310;
constexpr std::int64_t kInt64Max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kInt64Min = std::numeric_limits<std::int64_t>::min();

#define EXPECT_MESSAGE(statement, expected) \
  EXPECT_EQ(invalid_argument_message([&] { statement; }), expected)

#define EXPECT_NO_INVALID(statement) EXPECT_MESSAGE(statement, "no exception")

// ---- options: Python's repr of the value, subnormals included -----------------------------
TEST(Reliability, SubnormalLearningRateIsInvalidArgumentWithPythonRepr) {
  EXPECT_MESSAGE(validate(SgdOptions{.lr = -1e-310}), "Invalid learning rate: -1e-310");
  EXPECT_MESSAGE(validate(SgdOptions{.lr = -5e-324}), "Invalid learning rate: -5e-324");
  EXPECT_MESSAGE(validate(SgdOptions{.lr = -1e-05}), "Invalid learning rate: -1e-05");
  EXPECT_MESSAGE(validate(SgdOptions{.lr = -0.0001}), "Invalid learning rate: -0.0001");
  EXPECT_MESSAGE(validate(SgdOptions{.lr = -0.1}), "Invalid learning rate: -0.1");
  EXPECT_MESSAGE(validate(SgdOptions{.lr = -123.0}), "Invalid learning rate: -123.0");
  EXPECT_MESSAGE(validate(SgdOptions{.lr = -1e16}), "Invalid learning rate: -1e+16");
  EXPECT_MESSAGE(validate(SgdOptions{.lr = -1e15}), "Invalid learning rate: -1000000000000000.0");
  EXPECT_MESSAGE(validate(SgdOptions{.lr = -1.7976931348623157e308}),
                 "Invalid learning rate: -1.7976931348623157e+308");
  EXPECT_MESSAGE(validate(SgdOptions{.lr = std::numeric_limits<double>::quiet_NaN()}),
                 "Invalid learning rate: nan");
  EXPECT_MESSAGE(validate(SgdOptions{.lr = -std::numeric_limits<double>::infinity()}),
                 "Invalid learning rate: -inf");
  EXPECT_MESSAGE(Sgd({.lr = -1e-310}), "Invalid learning rate: -1e-310");
}

TEST(Reliability, EveryCheckedOptionRejectsASubnormalNegativeValue) {
  const double v = kSubnormal;
  EXPECT_MESSAGE(validate(SgdOptions{.lr = v}), "Invalid learning rate: -1e-310");
  EXPECT_MESSAGE(validate(SgdOptions{.momentum = v}), "Invalid momentum value: -1e-310");
  EXPECT_MESSAGE(validate(SgdOptions{.weight_decay = v}), "Invalid weight_decay value: -1e-310");
  // torch.optim.SGD does not check dampening: a negative one is accepted.
  EXPECT_NO_INVALID(validate(SgdOptions{.dampening = v}));

  EXPECT_MESSAGE(validate(AdagradOptions{.lr = v}), "Invalid learning rate: -1e-310");
  EXPECT_MESSAGE(validate(AdagradOptions{.lr_decay = v}), "Invalid lr_decay value: -1e-310");
  EXPECT_MESSAGE(validate(AdagradOptions{.weight_decay = v}),
                 "Invalid weight_decay value: -1e-310");
  EXPECT_MESSAGE(validate(AdagradOptions{.initial_accumulator_value = v}),
                 "Invalid initial_accumulator_value value: -1e-310");
  EXPECT_MESSAGE(validate(AdagradOptions{.eps = v}), "Invalid epsilon value: -1e-310");

  EXPECT_MESSAGE(validate(AdadeltaOptions{.lr = v}), "Invalid learning rate: -1e-310");
  EXPECT_MESSAGE(validate(AdadeltaOptions{.rho = v}), "Invalid rho value: -1e-310");
  EXPECT_MESSAGE(validate(AdadeltaOptions{.eps = v}), "Invalid epsilon value: -1e-310");
  EXPECT_MESSAGE(validate(AdadeltaOptions{.weight_decay = v}),
                 "Invalid weight_decay value: -1e-310");

  EXPECT_MESSAGE(validate(RmspropOptions{.lr = v}), "Invalid learning rate: -1e-310");
  EXPECT_MESSAGE(validate(RmspropOptions{.alpha = v}), "Invalid alpha value: -1e-310");
  EXPECT_MESSAGE(validate(RmspropOptions{.eps = v}), "Invalid epsilon value: -1e-310");
  EXPECT_MESSAGE(validate(RmspropOptions{.weight_decay = v}),
                 "Invalid weight_decay value: -1e-310");
  EXPECT_MESSAGE(validate(RmspropOptions{.momentum = v}), "Invalid momentum value: -1e-310");

  for (bool decoupled : {false, true}) {
    AdamOptions o;
    o.decoupled_weight_decay = decoupled;
    auto with = [&](double AdamOptions::*field) {
      AdamOptions copy = o;
      copy.*field = v;
      return copy;
    };
    EXPECT_MESSAGE(validate(with(&AdamOptions::lr)), "Invalid learning rate: -1e-310");
    EXPECT_MESSAGE(validate(with(&AdamOptions::beta1)),
                   "Invalid beta parameter at index 0: -1e-310");
    EXPECT_MESSAGE(validate(with(&AdamOptions::beta2)),
                   "Invalid beta parameter at index 1: -1e-310");
    EXPECT_MESSAGE(validate(with(&AdamOptions::eps)), "Invalid epsilon value: -1e-310");
    EXPECT_MESSAGE(validate(with(&AdamOptions::weight_decay)),
                   "Invalid weight_decay value: -1e-310");
  }
  AdamWOptions w;
  w.eps = v;
  EXPECT_MESSAGE(AdamW{w}, "Invalid epsilon value: -1e-310");

  for (bool decoupled : {false, true}) {
    NadamOptions o;
    o.decoupled_weight_decay = decoupled;
    auto with = [&](double NadamOptions::*field) {
      NadamOptions copy = o;
      copy.*field = v;
      return copy;
    };
    EXPECT_MESSAGE(validate(with(&NadamOptions::lr)), "Invalid learning rate: -1e-310");
    EXPECT_MESSAGE(validate(with(&NadamOptions::beta1)),
                   "Invalid beta parameter at index 0: -1e-310");
    EXPECT_MESSAGE(validate(with(&NadamOptions::beta2)),
                   "Invalid beta parameter at index 1: -1e-310");
    EXPECT_MESSAGE(validate(with(&NadamOptions::eps)), "Invalid epsilon value: -1e-310");
    EXPECT_MESSAGE(validate(with(&NadamOptions::weight_decay)),
                   "Invalid weight_decay value: -1e-310");
    EXPECT_MESSAGE(validate(with(&NadamOptions::momentum_decay)),
                   "Invalid momentum_decay value: -1e-310");
  }
  for (bool decoupled : {false, true}) {
    RadamOptions o;
    o.decoupled_weight_decay = decoupled;
    auto with = [&](double RadamOptions::*field) {
      RadamOptions copy = o;
      copy.*field = v;
      return copy;
    };
    EXPECT_MESSAGE(validate(with(&RadamOptions::lr)), "Invalid learning rate: -1e-310");
    EXPECT_MESSAGE(validate(with(&RadamOptions::beta1)),
                   "Invalid beta parameter at index 0: -1e-310");
    EXPECT_MESSAGE(validate(with(&RadamOptions::beta2)),
                   "Invalid beta parameter at index 1: -1e-310");
    EXPECT_MESSAGE(validate(with(&RadamOptions::eps)), "Invalid epsilon value: -1e-310");
    EXPECT_MESSAGE(validate(with(&RadamOptions::weight_decay)),
                   "Invalid weight_decay value: -1e-310");
  }
  EXPECT_MESSAGE(validate(AdamaxOptions{.lr = v}), "Invalid learning rate: -1e-310");
  EXPECT_MESSAGE(validate(AdamaxOptions{.beta1 = v}), "Invalid beta parameter at index 0: -1e-310");
  EXPECT_MESSAGE(validate(AdamaxOptions{.beta2 = v}), "Invalid beta parameter at index 1: -1e-310");
  EXPECT_MESSAGE(validate(AdamaxOptions{.eps = v}), "Invalid epsilon value: -1e-310");
  EXPECT_MESSAGE(validate(AdamaxOptions{.weight_decay = v}),
                 "Invalid weight_decay value: -1e-310");
  EXPECT_MESSAGE(Nadam({.momentum_decay = v}), "Invalid momentum_decay value: -1e-310");
}

// ---- per-step scalars that overflow the element type ----------------------------------------
struct Mixed {
  std::vector<float> a = random_vector<float>(37, 1);
  std::vector<double> b = random_vector<double>(5, 2);
  std::vector<float> ga = random_vector<float>(37, 3);
  std::vector<double> gb = random_vector<double>(5, 4);
};

TEST(Reliability, WeightDecayThatOverflowsFloat32IsRejectedAndNothingChanges) {
  Mixed m;
  Adam opt({.lr = 0.01, .amsgrad = true});
  opt.add_param(m.a);
  opt.add_param(m.b);
  opt.step({m.ga, m.gb});
  const auto a0 = m.a;
  const auto b0 = m.b;
  const std::string state0 = saved(opt);

  opt.options().weight_decay = 1e300;
  EXPECT_MESSAGE(opt.step({m.ga, m.gb}), "weight_decay=1e+300 overflows float32");
  EXPECT_EQ(m.a, a0);
  EXPECT_EQ(m.b, b0);
  opt.options().weight_decay = 0.0;
  EXPECT_EQ(saved(opt), state0);
  // float64 holds 1e300: only the float32 param's batch is refused.
  opt.options().weight_decay = 1e300;
  EXPECT_NO_INVALID(opt.step({Grad{}, m.gb}));

  // Decoupled: the per-step factor 1 - lr * weight_decay is what overflows.
  AdamW w;
  w.options().lr = 1e-3;
  w.options().weight_decay = 1e300;
  std::vector<float> p(4, 1.0f), g(4, 0.5f);
  w.add_param(p);
  const std::string w0 = saved(w);
  EXPECT_MESSAGE(w.step({g}),
                 "lr=0.001 and weight_decay=1e+300 overflow float32 in 1 - lr * weight_decay");
  EXPECT_EQ(p, std::vector<float>(4, 1.0f));
  EXPECT_EQ(saved(w), w0);
  // In float64 the product itself leaves the double range.
  std::vector<double> q(4, 1.0), gq(4, 0.5);
  AdamW wd;
  wd.options().lr = 1e10;
  wd.options().weight_decay = 1e300;
  wd.add_param(q);
  EXPECT_MESSAGE(wd.step({gq}),
                 "lr=10000000000.0 and weight_decay=1e+300 overflow float64 in 1 - lr * "
                 "weight_decay");
  EXPECT_EQ(q, std::vector<double>(4, 1.0));
}

TEST(Reliability, OverflowingScalarsOfEveryRuleNameTheirOption) {
  std::vector<float> p(3, 1.0f), g(3, 0.5f);
  std::vector<ParamBuffers> buffers(1);
  std::vector<float> s0(3), s1(3), s2(3);
  buffers[0] = {p.data(), g.data(), {s0.data(), s1.data(), s2.data()}, 3, 1};
  auto message = [&](const auto& options) {
    const std::vector<float> p0 = p;
    const std::string text = invalid_argument_message(
        [&] { fastoptim::step(options, DType::float32, buffers); });
    if (text != "no exception") {
      EXPECT_EQ(p, p0) << text;  // a refused call wrote nothing
    }
    return text;
  };
  EXPECT_EQ(message(SgdOptions{.lr = 1e39}), "lr=1e+39 overflows float32");
  EXPECT_EQ(message(SgdOptions{.momentum = 1e39}), "momentum=1e+39 overflows float32");
  // dampening is read from the second step on (the first one copies the grad), as in torch.
  EXPECT_EQ(message(SgdOptions{.momentum = 0.5, .dampening = -1e39}), "no exception");
  buffers[0].step = 2;
  EXPECT_EQ(message(SgdOptions{.momentum = 0.5, .dampening = -1e39}),
            "dampening=-1e+39 overflows float32");
  EXPECT_EQ(message(SgdOptions{.dampening = -1e39}), "no exception");  // no momentum: unused
  EXPECT_EQ(message(AdagradOptions{.eps = 1e39}), "eps=1e+39 overflows float32");
  EXPECT_EQ(message(AdagradOptions{.lr = 1e39, .lr_decay = 0.5}),
            "lr=1e+39 and lr_decay=0.5 overflow float32 in lr / (1 + (step - 1) * lr_decay)");
  EXPECT_EQ(message(AdadeltaOptions{.lr = 1e39}), "lr=1e+39 overflows float32");
  EXPECT_EQ(message(RmspropOptions{.alpha = 1e39}), "alpha=1e+39 overflows float32");
  EXPECT_EQ(message(RmspropOptions{.momentum = 1e39}), "momentum=1e+39 overflows float32");
  EXPECT_EQ(message(RmspropOptions{.weight_decay = 1e39}), "weight_decay=1e+39 overflows float32");
  buffers[0].step = 1;
  EXPECT_EQ(message(AdamOptions{.lr = 1e38, .beta1 = 0.9}),
            "lr=1e+38 and beta1=0.9 overflow float32 in lr / (1 - beta1 ** step)");
  // Legitimate extremes pass: zeros, the largest finite float, and non-finite options torch
  // accepts (lr = inf is passed on, as torch passes it to its kernels).
  EXPECT_EQ(message(SgdOptions{.lr = 0.0, .momentum = 0.0}), "no exception");
  EXPECT_EQ(message(AdamOptions{.lr = 0.0, .eps = 0.0}), "no exception");
  EXPECT_EQ(message(AdagradOptions{.lr = 3.4e38, .eps = 0.0}), "no exception");
  EXPECT_EQ(message(AdamOptions{.lr = std::numeric_limits<double>::infinity()}), "no exception");

  // NAdam (its mu_product in float32, as the optimizer keeps it): the two addcdiv_ values.
  float mu_product = 1.0f;
  buffers[0].scalar_state = &mu_product;
  EXPECT_EQ(message(NadamOptions{.lr = 1e39}),
            "lr=1e+39 and beta1=0.9 and momentum_decay=0.004 overflow float32 in -lr * (1 - mu) / "
            "(1 - mu_product)");
  // beta1 0.99 and mu_t = beta1 from the first step: 1 - mu_product * mu_next is 0.0199, so
  // only the exp_avg value leaves float32
  EXPECT_EQ(message(NadamOptions{.lr = 1e37, .beta1 = 0.99, .momentum_decay = 1e6}),
            "lr=1e+37 and beta1=0.99 and momentum_decay=1000000.0 overflow float32 in -lr * "
            "mu_next / (1 - mu_product * mu_next)");
  EXPECT_EQ(message(NadamOptions{.eps = 1e39}), "eps=1e+39 overflows float32");
  EXPECT_EQ(message(NadamOptions{.weight_decay = 1e39}), "weight_decay=1e+39 overflows float32");
  EXPECT_EQ(message(NadamOptions{.lr = 1e-3, .weight_decay = 1e300, .decoupled_weight_decay = true}),
            "lr=0.001 and weight_decay=1e+300 overflow float32 in 1 - lr * weight_decay");
  EXPECT_EQ(mu_product, 1.0f);  // a refused call does not advance the scalar state either
  EXPECT_EQ(message(NadamOptions{.lr = 1e38}), "no exception");
  // a non-finite mu_product (edited in place) is named, not blamed on lr, beta1, momentum_decay
  mu_product = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(message(NadamOptions{}), "buffer 0: state 'mu_product' is nan; it must be a finite "
                                     "number");
  mu_product = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(message(NadamOptions{}), "buffer 0: state 'mu_product' is -inf; it must be a "
                                     "finite number");
  mu_product = 1.0f;
  buffers[0].scalar_state = nullptr;

  // RAdam: eps is read only when the step is rectified (torch adds it in _compute_adaptive_lr).
  EXPECT_EQ(message(RadamOptions{.lr = 1e39}), "lr=1e+39 overflows float32");
  EXPECT_EQ(message(RadamOptions{.weight_decay = 1e39}), "weight_decay=1e+39 overflows float32");
  EXPECT_EQ(message(RadamOptions{.eps = 1e39}), "no exception");  // step 1: not rectified
  buffers[0].step = 6;
  EXPECT_EQ(message(RadamOptions{.eps = 1e39}), "eps=1e+39 overflows float32");
  EXPECT_EQ(message(RadamOptions{.beta2 = 0.6, .eps = 1e39}), "no exception");  // never rectified
  buffers[0].step = 1;

  // Adamax: lr / (1 - beta1 ** step), and eps added to |grad|.
  EXPECT_EQ(message(AdamaxOptions{.lr = 1e38}),
            "lr=1e+38 and beta1=0.9 overflow float32 in lr / (1 - beta1 ** step)");
  EXPECT_EQ(message(AdamaxOptions{.eps = 1e39}), "eps=1e+39 overflows float32");
  EXPECT_EQ(message(AdamaxOptions{.weight_decay = 1e39}), "weight_decay=1e+39 overflows float32");
  EXPECT_EQ(message(AdamaxOptions{.lr = 3e37}), "no exception");
}

// ---- step counts -------------------------------------------------------------------------------
TEST(Reliability, DriverStepCountsAreOneToMax) {
  EXPECT_EQ(kMaxStepCount, 9007199254740991);
  std::vector<ParamBuffers> buffers(5);
  for (std::int64_t bad : {std::int64_t{0}, std::int64_t{-1}, kMaxStepCount + 1, kInt64Max,
                           kInt64Min}) {
    buffers[3].step = bad;
    EXPECT_MESSAGE(check_step_counts(buffers),
                   "buffer 3: step must be in 1..9007199254740991, got " + std::to_string(bad));
    EXPECT_MESSAGE(fastoptim::step(AdamOptions{}, DType::float32, buffers),
                   "buffer 3: step must be in 1..9007199254740991, got " + std::to_string(bad));
    EXPECT_MESSAGE(check_step(SgdOptions{}, DType::float64, buffers),
                   "buffer 3: step must be in 1..9007199254740991, got " + std::to_string(bad));
  }
  buffers[3].step = kMaxStepCount;
  EXPECT_NO_INVALID(check_step_counts(buffers));

  // At the largest step Adam's scalars are still exact and finite.
  std::vector<double> p(17, 1.0), g(17, 0.25), m(17, 0.0), v(17, 0.0);
  const ParamBuffers one{p.data(), g.data(), {m.data(), v.data(), nullptr}, 17, kMaxStepCount};
  EXPECT_NO_INVALID(fastoptim::step(AdamOptions{}, DType::float64, std::span(&one, 1)));
  for (double x : p) EXPECT_TRUE(std::isfinite(x));
}

// A checkpoint of Adam with params float32 (3), float64 (2), float32 (0), float64 (5).
struct Saved {
  std::vector<float> a = random_vector<float>(3, 5), c;
  std::vector<double> b = random_vector<double>(2, 6), d = random_vector<double>(5, 7);
  Adam opt{AdamOptions{.lr = 0.25, .amsgrad = true}};
  Saved() {
    opt.add_param(a);
    opt.add_param(b);
    opt.add_param(c);
    opt.add_param(d);
    opt.step({random_vector<float>(3, 8), random_vector<double>(2, 9), c,
              random_vector<double>(5, 10)});
  }
};

// `bytes` with param `index`'s step count replaced and the checksum recomputed.
std::string with_step(std::string bytes, std::size_t index, std::int64_t step) {
  // version 3: the 16 bytes of mixed-precision settings follow the options
  std::size_t at = 20 + 8 * read_le<std::uint32_t>(bytes, 16) + 16 + 8;
  for (std::size_t i = 0; i < index; ++i) {
    const int slots = std::popcount(static_cast<unsigned>(static_cast<unsigned char>(bytes[at + 1])));
    const std::size_t size = read_le<std::uint64_t>(bytes, at + 8);
    at += 24 + static_cast<std::size_t>(slots) * size * (bytes[at] == 0 ? 4 : 8);
  }
  write_le<std::int64_t>(bytes, at + 16, step);
  write_le<std::uint64_t>(bytes, bytes.size() - 8,
                          fnv1a(std::string_view(bytes).substr(0, bytes.size() - 8)));
  return bytes;
}

TEST(Reliability, LoadRejectsStepCountsOutOfRangeAndChangesNothing) {
  Saved source;
  const std::string bytes = saved(source.opt);

  Saved target;
  target.opt.options().lr = 0.125;
  target.opt.step({random_vector<float>(3, 11), Grad{}, Grad{}, random_vector<double>(5, 12)});
  const std::string before = saved(target.opt);
  const auto a0 = target.a;
  const auto b0 = target.b;
  const auto d0 = target.d;

  for (std::size_t index : {std::size_t{1}, std::size_t{2}}) {
    for (std::int64_t bad : {kInt64Max, std::int64_t{-1}, kMaxStepCount, kInt64Min}) {
      std::istringstream in(with_step(bytes, index, bad));
      EXPECT_MESSAGE(target.opt.load(in),
                     "fastoptim state: param " + std::to_string(index) + ": step count " +
                         std::to_string(bad) + " is out of range (0..9007199254740990)");
      EXPECT_EQ(saved(target.opt), before);  // options and every state bit unchanged
      EXPECT_EQ(target.opt.options().lr, 0.125);
    }
  }
  EXPECT_EQ(target.a, a0);
  EXPECT_EQ(target.b, b0);
  EXPECT_EQ(target.d, d0);

  // The largest loadable count: one more step is allowed, and that is the last one.
  std::istringstream in(with_step(bytes, 2, kMaxStepCount - 1));
  EXPECT_NO_INVALID(target.opt.load(in));
  EXPECT_EQ(target.opt.step_count(2), kMaxStepCount - 1);
  EXPECT_NO_INVALID(target.opt.step({Grad{}, Grad{}, target.c, Grad{}}));
  EXPECT_EQ(target.opt.step_count(2), kMaxStepCount);
  EXPECT_MESSAGE(target.opt.step({Grad{}, Grad{}, target.c, Grad{}}),
                 "param 2: step count 9007199254740991 cannot advance past 9007199254740991");
}

TEST(Reliability, SetStepCountLimits) {
  std::vector<float> p(4);
  for (const AnyOptions& options :
       {AnyOptions{SgdOptions{.momentum = 0.9}}, AnyOptions{AdamOptions{}},
        AnyOptions{NadamOptions{}}, AnyOptions{RadamOptions{}}, AnyOptions{AdamaxOptions{}}}) {
    auto opt = make_optimizer(options);
    SCOPED_TRACE(std::string(rule_name(opt->rule())));
    opt->add_param(p);
    for (std::int64_t bad : {std::int64_t{-1}, kMaxStepCount, kMaxStepCount + 1, kInt64Max,
                             kInt64Min}) {
      EXPECT_MESSAGE(opt->set_step_count(0, bad),
                     "param 0: step count " + std::to_string(bad) +
                         " is out of range (0..9007199254740990)");
      EXPECT_EQ(opt->step_count(0), 0);
    }
    EXPECT_NO_INVALID(opt->set_step_count(0, 0));
    EXPECT_NO_INVALID(opt->set_step_count(0, kMaxStepCount - 1));
    EXPECT_EQ(opt->step_count(0), kMaxStepCount - 1);
    std::vector<float> g(4, 0.5f);
    EXPECT_NO_INVALID(opt->step({g}));  // SGD too: its count is bounded like the others
    EXPECT_EQ(opt->step_count(0), kMaxStepCount);
    for (float x : p) EXPECT_TRUE(std::isfinite(x));  // the last step's scalars are finite
    const std::vector<float> p0 = p;
    const std::string state0 = saved(*opt);
    EXPECT_MESSAGE(opt->step({g}), "param 0: step count 9007199254740991 cannot advance past "
                                   "9007199254740991");
    EXPECT_EQ(p, p0);
    EXPECT_EQ(saved(*opt), state0);
  }
}

TEST(Reliability, InvalidFloat64BatchLeavesTheFloat32BatchUntouched) {
  // Reach a float64 step the driver rejects through the public API: the largest settable
  // count, one float64-only step to kMaxStepCount, then a step of both dtypes.
  // NAdam too: the float32 batch's mu_product does not advance either (save() holds it).
  for (const AnyOptions& options : {AnyOptions{AdamOptions{.lr = 0.1}},
                                    AnyOptions{NadamOptions{.lr = 0.1}}}) {
    Mixed m;
    auto opt_ = make_optimizer(options);
    Optimizer& opt = *opt_;
    SCOPED_TRACE(std::string(rule_name(opt.rule())));
    opt.add_param(m.a);
    opt.add_param(m.b);
    opt.step({m.ga, m.gb});
    opt.set_step_count(1, kMaxStepCount - 1);
    opt.step({Grad{}, m.gb});
    ASSERT_EQ(opt.step_count(1), kMaxStepCount);
    const auto a0 = m.a;
    const auto b0 = m.b;
    const std::string state0 = saved(opt);
    EXPECT_MESSAGE(opt.step({m.ga, m.gb}),
                   "param 1: step count 9007199254740991 cannot advance past 9007199254740991");
    EXPECT_EQ(m.a, a0);
    EXPECT_EQ(m.b, b0);
    EXPECT_EQ(saved(opt), state0);
  }
}

}  // namespace
}  // namespace fastoptim::test

namespace fastoptim::test {
namespace {

// A call names each stream's storage type; a combination the build has no kernel for is
// refused before anything is written.
TEST(StreamTypes, UnregisteredLayoutIsRefusedNamingTheTypes) {
  std::vector<float> p = {1.0f, 2.0f, 3.0f}, m(3, 0.0f), v(3, 0.0f);
  std::vector<double> g = {0.5, 0.5, 0.5};
  ParamBuffers b;
  b.param = p.data();
  b.grad = g.data();
  b.state[0] = m.data();
  b.state[1] = v.data();
  b.size = 3;
  const std::vector<float> before = p;
  const StreamTypes types(DType::float32, DType::float64, DType::float32);
  EXPECT_MESSAGE(step(AdamOptions{}, types, std::span(&b, 1)),
                 "no kernel for params of float32, grads of float64 and state of float32");
  EXPECT_EQ(p, before);
  EXPECT_EQ(m, std::vector<float>(3, 0.0f));
  // the registered all-float32 layout, named stream by stream, is the DType call
  std::vector<float> gf = {0.5f, 0.5f, 0.5f};
  b.grad = gf.data();
  step(AdamOptions{}, StreamTypes(DType::float32, DType::float32, DType::float32), std::span(&b, 1));
  std::vector<float> q = before, m2(3, 0.0f), v2(3, 0.0f);
  ParamBuffers c = b;
  c.param = q.data();
  c.state[0] = m2.data();
  c.state[1] = v2.data();
  step(AdamOptions{}, DType::float32, std::span(&c, 1));
  EXPECT_EQ(p, q);
}

}  // namespace
}  // namespace fastoptim::test
