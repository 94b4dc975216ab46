// Every rule's options struct is an aggregate, so the README's forms compile for every rule in
// the registry: `fastoptim::AdamW opt({.lr = 1e-3, .weight_decay = 0.01});` and, with the
// mixed-precision settings, `AdamW opt({.lr = 1e-3}, {.master_weights = true, ...})`. The
// static_asserts are the compile test (this file does not build if a rule breaks a form); the
// TESTs check that the forms keep torch's defaults for every field they do not name.
#include <limits>
#include <type_traits>

#include "support.hpp"

namespace fastoptim::test {
namespace {

// Every rule has `lr` (torch's first argument) and `weight_decay`; these forms need nothing
// more, so they can be checked for each rule of rules::All without a hand-kept list.
template <class R>
concept DesignatedOptions = requires {
  static_cast<void>(typename R::Options{.lr = 0.5});
  RuleOptimizer<R>({.lr = 0.5});
  RuleOptimizer<R>({.lr = 0.5, .weight_decay = 0.25});
  RuleOptimizer<R>({.lr = 0.5}, {.master_weights = true, .state_dtype = DType::bfloat16,
                                 .stochastic_rounding = false, .seed = 0});
};

template <class... R>
constexpr bool all_aggregates(rules::RuleList<R...>) {
  return (std::is_aggregate_v<typename R::Options> && ...);
}
template <class... R>
constexpr bool all_designated(rules::RuleList<R...>) {
  return (DesignatedOptions<R> && ...);
}
static_assert(all_aggregates(rules::All{}), "an options struct is not an aggregate");
static_assert(all_designated(rules::All{}), "a rule's designated-initializer form fails");

// The README's forms, as written there.
static_assert(requires { AdamW({.lr = 1e-3, .weight_decay = 0.01}); });
static_assert(requires { Adam({.lr = 1e-3, .amsgrad = true}); });
static_assert(requires {
  AdamW({.lr = 1e-3}, {.master_weights = true, .state_dtype = DType::bfloat16,
                       .stochastic_rounding = false, .seed = 0});
});

// None (kNone, a NaN, which compares unequal to itself) as -inf, which no option holds.
template <class R>
std::vector<double> field_values(const typename R::Options& o) {
  std::vector<double> values;
  for (const auto& f : R::fields) {
    const double v = f.number != nullptr ? o.*f.number : (o.*f.flag ? 1.0 : 0.0);
    values.push_back(rules::is_none(v) ? -std::numeric_limits<double>::infinity() : v);
  }
  return values;
}

TEST(OptionsAggregate, NamedFieldsSetOthersKeepTorchsDefaults) {
  int checked = 0;
  rules::for_each_rule([&](auto rule) {
    using R = decltype(rule);
    SCOPED_TRACE(R::name);
    const typename R::Options defaults{};
    const RuleOptimizer<R> opt({.lr = 0.5, .weight_decay = 0.25});
    std::vector<double> want = field_values<R>(defaults);
    std::size_t i = 0;
    for (const auto& f : R::fields) {
      if (std::string(f.key) == "lr") want[i] = 0.5;
      if (std::string(f.key) == "weight_decay") want[i] = 0.25;
      ++i;
    }
    EXPECT_EQ(field_values<R>(opt.options()), want);
    // the value-initialised struct and the default-constructed optimizer agree
    EXPECT_EQ(field_values<R>(RuleOptimizer<R>().options()), field_values<R>(defaults));
    ++checked;
  });
  EXPECT_EQ(checked, static_cast<int>(rules::All::size));
}

TEST(OptionsAggregate, AdamWKeepsItsOwnDefaults) {
  // AdamW's options are their own struct now (not derived from Adam's): its two defaults.
  const AdamWOptions adamw{.lr = 1e-3};
  EXPECT_EQ(adamw.weight_decay, 1e-2);
  EXPECT_TRUE(adamw.decoupled_weight_decay);
  const AdamOptions adam{.lr = 1e-3};
  EXPECT_EQ(adam.weight_decay, 0.0);
  EXPECT_FALSE(adam.decoupled_weight_decay);
}

TEST(OptionsAggregate, MixedPrecisionFormSetsThePrecision) {
  rules::for_each_rule([&](auto rule) {
    using R = decltype(rule);
    SCOPED_TRACE(R::name);
    const RuleOptimizer<R> opt({.lr = 0.5}, {.master_weights = true,
                                             .state_dtype = DType::bfloat16,
                                             .stochastic_rounding = true, .seed = 7});
    EXPECT_EQ(opt.options().lr, 0.5);
    EXPECT_EQ(opt.precision(), (Precision{.master_weights = true, .state_dtype = DType::bfloat16,
                                          .stochastic_rounding = true, .seed = 7}));
  });
}

}  // namespace
}  // namespace fastoptim::test
