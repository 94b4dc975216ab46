// Dispatch: the levels this CPU offers, forcing one, and FASTOPTIM_SIMD read on first use (in a
// fresh process each: gtest's threadsafe death tests re-execute the binary).
#include <cstdio>
#include <cstdlib>

#include "support.hpp"

namespace fastoptim::test {
namespace {

void set_env(const char* name, const char* value) {
#if defined(_WIN32)
  _putenv_s(name, value);
#else
  setenv(name, value, 1);
#endif
}

TEST(Dispatch, LevelsStartWithScalarAndIncludeTheActiveOne) {
  const auto levels = available_simd_levels();
  ASSERT_FALSE(levels.empty());
  EXPECT_EQ(levels.front(), "scalar");
  EXPECT_NE(std::find(levels.begin(), levels.end(), simd_level()), levels.end());
}

// The architecture's baseline SIMD level is always built and always runnable, so a build that
// silently fell back to scalar-only kernels (a wrong target-processor test in CMake) fails here.
// (A development build of fewer levels, -DFASTOPTIM_SIMD_LEVELS=avx2, may leave it out.)
TEST(Dispatch, ArchitectureBaselineLevelIsAvailable) {
  const auto levels = available_simd_levels();
#if defined(FASTOPTIM_TEST_EVERY_LEVEL_BUILT)
  auto has = [&](const char* name) {
    return std::find(levels.begin(), levels.end(), name) != levels.end();
  };
#if defined(__x86_64__) || defined(_M_X64)
  EXPECT_TRUE(has("sse2"));
#elif defined(__aarch64__) || defined(_M_ARM64)
  EXPECT_TRUE(has("neon"));
#endif
#endif
  if (std::getenv("FASTOPTIM_SIMD") == nullptr) {
    EXPECT_EQ(simd_level(), levels.back());
  }
}

TEST(Dispatch, SetLevelTakesEffectAndUnknownLevelThrows) {
  const std::string before = simd_level();
  for (const std::string& level : available_simd_levels()) {
    set_simd_level(level);
    EXPECT_EQ(simd_level(), level);
  }
  set_simd_level(before);
  try {
    set_simd_level("avx9000");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("avx9000"), std::string::npos) << e.what();
  }
  EXPECT_EQ(simd_level(), before);  // unchanged by the failed call
}

class DispatchEnv : public testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

// In the child: set FASTOPTIM_SIMD, then print the level the first use chooses.
void report_level_with_env(const char* value) {
  set_env("FASTOPTIM_SIMD", value);
  std::fprintf(stderr, "level=%s\n", simd_level().c_str());
  std::fflush(stderr);
  std::exit(0);
}

TEST_F(DispatchEnv, ScalarForcesTheScalarLevel) {
  EXPECT_EXIT(report_level_with_env("scalar"), testing::ExitedWithCode(0), "level=scalar\n");
}

TEST_F(DispatchEnv, EveryAvailableLevelCanBeForced) {
  for (const std::string& level : available_simd_levels()) {
    const std::string expected = "level=" + level + "\n";
    EXPECT_EXIT(report_level_with_env(level.c_str()), testing::ExitedWithCode(0), expected);
  }
}

TEST_F(DispatchEnv, UnknownValueWarnsAndUsesTheBestLevel) {
  const std::string expected =
      "unknown FASTOPTIM_SIMD=bogus.*level=" + available_simd_levels().back() + "\n";
  EXPECT_EXIT(report_level_with_env("bogus"), testing::ExitedWithCode(0), expected);
}

TEST_F(DispatchEnv, UnavailableLevelWarnsAndFallsBack) {
  // A known level this machine or build cannot run ("neon" on x86-64, "avx512" elsewhere).
  std::string missing;
  for (const char* level : {"avx512", "neon", "avx2", "sse2"}) {
    const auto levels = available_simd_levels();
    if (std::find(levels.begin(), levels.end(), level) == levels.end()) {
      missing = level;
      break;
    }
  }
  if (missing.empty()) GTEST_SKIP() << "every known level is available";
  const std::string expected = "FASTOPTIM_SIMD=" + missing + " is not available.*level=" +
                               available_simd_levels().back() + "\n";
  EXPECT_EXIT(report_level_with_env(missing.c_str()), testing::ExitedWithCode(0), expected);
}

TEST(Dispatch, ThreadSettings) {
  const int before = get_num_threads();
  EXPECT_GE(before, 1);
  set_num_threads(2);
  EXPECT_EQ(get_num_threads(), 2);
  EXPECT_THROW(set_num_threads(0), std::invalid_argument);
  set_num_threads(before);
  EXPECT_FALSE(openmp_runtime().empty());
}

}  // namespace
}  // namespace fastoptim::test
