// Every available SIMD level bit-identical to the scalar level, and 1 vs 2 and 3 threads
// bit-identical, over sizes that hit every vector tail and the threaded path.
#include "support.hpp"

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

}  // namespace
}  // namespace fastoptim::test
