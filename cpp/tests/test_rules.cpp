// Every rule and option combination against the plain scalar reference (support.hpp), bit for
// bit, at every SIMD level: params after each step, state buffers, scalar state and step
// counts at the end.
#include "support.hpp"

namespace fastoptim::test {
namespace {

class RulesVsReference : public testing::TestWithParam<NamedOptions> {};

template <class T>
void check_against_reference(const AnyOptions& options) {
  const std::vector<std::size_t> sizes = {1, 7, 33};
  const int steps = steps_for(options, 6);
  RefOptimizer<T> ref{options, {}};
  std::vector<std::vector<T>> params;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    params.push_back(random_vector<T>(sizes[k], 100 + k));
    ref.add(params.back());
  }
  auto opt = make_optimizer(options);
  for (auto& p : params) opt->add_param(std::span<T>(p));

  for (int s = 0; s < steps; ++s) {
    if (s == 4) {  // lr changed between steps, as a scheduler would
      lr_of(*opt) *= 0.5;
      lr_of(ref.options) *= 0.5;
    }
    std::vector<std::optional<std::vector<T>>> grads;
    std::vector<Grad> views;
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      if (s == 2 && k == 1) {  // no grad: the param is skipped, its step count stays
        grads.emplace_back(std::nullopt);
        views.emplace_back();
      } else {
        grads.emplace_back(random_vector<T>(sizes[k], 1000 * s + k, -2.0, 2.0));
        views.emplace_back(std::span<const T>(*grads.back()));
      }
    }
    opt->step(views);
    ref.step(grads);
    for (std::size_t k = 0; k < sizes.size(); ++k)
      ASSERT_TRUE(bit_equal(params[k], ref.params[k].value)) << "param " << k << " step " << s;
  }
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    const ParamStateView view = opt->state(k);
    EXPECT_EQ(view.step, ref.params[k].step) << "param " << k;
    EXPECT_EQ(opt->step_count(k), k == 1 ? steps - 1 : steps);
    for (int slot = 0; slot < 3; ++slot) {
      const std::vector<T>& expected = ref.params[k].slots[slot];
      std::span<T> actual = view.buffer<T>(slot);
      EXPECT_EQ(actual.empty(), expected.empty()) << "param " << k << " slot " << slot;
      if (!expected.empty()) {
        EXPECT_TRUE(bit_equal(std::span<const T>(actual), std::span<const T>(expected)))
            << "param " << k << " slot " << view.names[slot];
      }
    }
    // The scalar state (NAdam's mu_product), float32 whatever the param's type, as torch.
    const auto& scalars = ref.params[k].scalars;
    for (std::size_t j = 0; j < view.scalar_names.size(); ++j) {
      if (j >= scalars.size()) {
        EXPECT_EQ(view.scalar_names[j], "") << "param " << k << " scalar " << j;
        continue;
      }
      EXPECT_EQ(view.scalar_names[j], scalars[j].first) << "param " << k;
      EXPECT_EQ(view.scalars[j], static_cast<double>(scalars[j].second))
          << "param " << k << " " << scalars[j].first;
    }
  }
}

TEST_P(RulesVsReference, Float32EveryLevel) {
  const std::string before = simd_level();
  for (const std::string& level : available_simd_levels()) {
    SCOPED_TRACE("SIMD level " + level);
    set_simd_level(level);
    check_against_reference<float>(GetParam().options);
  }
  set_simd_level(before);
}

TEST_P(RulesVsReference, Float64EveryLevel) {
  const std::string before = simd_level();
  for (const std::string& level : available_simd_levels()) {
    SCOPED_TRACE("SIMD level " + level);
    set_simd_level(level);
    check_against_reference<double>(GetParam().options);
  }
  set_simd_level(before);
}

INSTANTIATE_TEST_SUITE_P(Grid, RulesVsReference, testing::ValuesIn(option_grid()), grid_name);

// Every registered rule is in the grid, so every grid-driven test covers it.
TEST(OptionGrid, CoversEveryRegisteredRule) {
  std::vector<bool> covered(rules::All::size, false);
  for (const NamedOptions& named : option_grid())
    covered[static_cast<std::size_t>(make_optimizer(named.options)->rule())] = true;
  for (std::size_t r = 0; r < covered.size(); ++r)
    EXPECT_TRUE(covered[r]) << rule_name(static_cast<Rule>(r)) << " has no grid entry";
  EXPECT_EQ(std::variant_size_v<AnyOptions>, rules::All::size);
}

}  // namespace
}  // namespace fastoptim::test
