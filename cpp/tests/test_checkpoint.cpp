// save()/load(): round trips that continue bit-identically, the documented byte layout, and
// rejection of corrupt or mismatched input with nothing changed.
#include <bit>
#include <cmath>
#include <limits>
#include <sstream>

#include "support.hpp"

namespace fastoptim::test {
namespace {

// Re-seals an edited file with a valid checksum, so that the check under test is the one
// that has to catch it.
void reseal(std::string& bytes) {
  write_le<std::uint64_t>(bytes, bytes.size() - 8,
                          fnv1a(std::string_view(bytes).substr(0, bytes.size() - 8)));
}

std::string load_error(Optimizer& opt, const std::string& bytes) {
  std::istringstream in(bytes);
  try {
    opt.load(in);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no exception";
}

class Checkpoint : public testing::TestWithParam<NamedOptions> {};

TEST_P(Checkpoint, RoundTripContinuesBitIdentically) {
  std::vector<float> a = random_vector<float>(37, 1), a_copy;
  std::vector<double> b = random_vector<double>(5, 2), b_copy;
  auto opt = make_optimizer(GetParam().options);
  opt->add_param(a);
  opt->add_param(b);
  for (int s = 0; s < 3; ++s) {
    const auto ga = random_vector<float>(37, 10 + s);
    const auto gb = random_vector<double>(5, 20 + s);
    opt->step({ga, s == 0 ? Grad{} : Grad(gb)});
  }
  lr_of(*opt) *= 0.25;  // options are part of the checkpoint
  const std::string bytes = saved(*opt);
  a_copy = a;
  b_copy = b;

  AnyOptions other = GetParam().options;
  lr_of(other) = 0.5;
  auto restored = make_optimizer(other);
  restored->add_param(a_copy);
  restored->add_param(b_copy);
  std::istringstream in(bytes + "trailing data");
  restored->load(in);
  std::string rest;
  std::getline(in, rest);
  EXPECT_EQ(rest, "trailing data");  // load() reads exactly its own bytes
  EXPECT_EQ(lr_of(*restored), lr_of(*opt));
  EXPECT_EQ(restored->step_count(0), 3);
  EXPECT_EQ(restored->step_count(1), 2);
  EXPECT_EQ(saved(*restored), bytes);

  for (int s = 0; s < 3; ++s) {
    const auto ga = random_vector<float>(37, 30 + s);
    const auto gb = random_vector<double>(5, 40 + s);
    opt->step({ga, gb});
    restored->step({ga, gb});
  }
  EXPECT_TRUE(bit_equal(a, a_copy));
  EXPECT_TRUE(bit_equal(b, b_copy));
}

TEST_P(Checkpoint, EveryTruncationAndEveryByteFlipIsRejectedWithoutChanges) {
  std::vector<float> a = random_vector<float>(3, 3);
  std::vector<double> b = random_vector<double>(2, 4);
  auto source = make_optimizer(GetParam().options);
  source->add_param(a);
  source->add_param(b);
  std::vector<float> ga = {0.1f, -0.2f, 0.3f};
  std::vector<double> gb = {0.4, -0.5};
  source->step({ga, gb});
  source->step({ga, gb});
  const std::string bytes = saved(*source);

  std::vector<float> ta(3, 9.0f);
  std::vector<double> tb(2, 9.0);
  auto target = make_optimizer(GetParam().options);
  target->add_param(ta);
  target->add_param(tb);
  target->step({ga, Grad{}});
  const std::string before = saved(*target);
  const std::vector<float> ta_before = ta;
  const std::vector<double> tb_before = tb;

  for (std::size_t n = 0; n < bytes.size(); ++n) {
    const std::string message = load_error(*target, bytes.substr(0, n));
    ASSERT_NE(message.find("truncated"), std::string::npos) << "prefix " << n << ": " << message;
  }
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    std::string corrupt = bytes;
    corrupt[i] = static_cast<char>(corrupt[i] ^ 0x10);
    const std::string message = load_error(*target, corrupt);
    ASSERT_NE(message, "no exception") << "flipped byte " << i;
  }
  EXPECT_EQ(saved(*target), before);
  EXPECT_EQ(ta, ta_before);  // load() never touches params
  EXPECT_EQ(tb, tb_before);
}

INSTANTIATE_TEST_SUITE_P(Grid, Checkpoint, testing::ValuesIn(option_grid()), grid_name);

struct Fixture {
  std::vector<float> a = {1.0f, 2.0f, 3.0f};
  std::vector<double> b = {4.0, 5.0};
  Adam opt{AdamOptions{.lr = 0.25, .amsgrad = true}};
  Fixture() {
    opt.add_param(a);
    opt.add_param(b);
    std::vector<float> ga = {0.5f, 0.5f, 0.5f};
    std::vector<double> gb = {0.5, 0.5};
    opt.step({ga, gb});
    opt.step({ga, Grad{}});
  }
};

TEST(CheckpointFormat, ByteLayoutIsTheDocumentedOne) {
  Fixture f;
  const std::string bytes = saved(f.opt);
  std::size_t at = 0;
  EXPECT_EQ(bytes.substr(0, 8), "FOPTSTAT");
  EXPECT_EQ(read_le<std::uint32_t>(bytes, 8), 3u);
  EXPECT_EQ(bytes[12], static_cast<char>(Rule::adam));
  EXPECT_EQ(bytes.substr(13, 3), std::string(3, '\0'));
  ASSERT_EQ(read_le<std::uint32_t>(bytes, 16), 8u);
  const double expected_options[] = {0.25, 0.9, 0.999, 1e-8, 0.0, 1.0, 0.0, 0.0};
  for (int k = 0; k < 8; ++k)
    EXPECT_EQ(std::bit_cast<double>(read_le<std::uint64_t>(bytes, 20 + 8 * k)), expected_options[k]);
  at = 20 + 64;
  // the default mixed-precision settings: no master, state_dtype unset (255), no stochastic
  // rounding, seed 0
  EXPECT_EQ(bytes.substr(at, 8), std::string("\0\xff\0\0\0\0\0\0", 8));
  EXPECT_EQ(read_le<std::uint64_t>(bytes, at + 8), 0u);
  at += 16;
  EXPECT_EQ(read_le<std::uint64_t>(bytes, at), 2u);
  at += 8;
  // param 0: float32, slots 0-2 stored as float32, 3 elements, step 2
  EXPECT_EQ(bytes[at], 0);
  EXPECT_EQ(bytes[at + 1], 0b111);
  EXPECT_EQ(bytes.substr(at + 2, 6), std::string(6, '\0'));
  EXPECT_EQ(read_le<std::uint64_t>(bytes, at + 8), 3u);
  EXPECT_EQ(read_le<std::int64_t>(bytes, at + 16), 2);
  at += 24;
  const ParamStateView v0 = f.opt.state(0);
  for (int slot = 0; slot < 3; ++slot)
    for (std::size_t i = 0; i < 3; ++i, at += 4)
      EXPECT_EQ(std::bit_cast<float>(read_le<std::uint32_t>(bytes, at)), v0.buffer<float>(slot)[i]);
  // param 1: float64, slots stored as float64, step 1
  EXPECT_EQ(bytes[at], 1);
  EXPECT_EQ(bytes[at + 1], 0b111);
  EXPECT_EQ(bytes.substr(at + 2, 6), std::string("\1\1\1\0\0\0", 6));
  EXPECT_EQ(read_le<std::uint64_t>(bytes, at + 8), 2u);
  EXPECT_EQ(read_le<std::int64_t>(bytes, at + 16), 1);
  at += 24;
  const ParamStateView v1 = f.opt.state(1);
  for (int slot = 0; slot < 3; ++slot)
    for (std::size_t i = 0; i < 2; ++i, at += 8)
      EXPECT_EQ(std::bit_cast<double>(read_le<std::uint64_t>(bytes, at)), v1.buffer<double>(slot)[i]);
  EXPECT_EQ(read_le<std::uint64_t>(bytes, at), fnv1a(std::string_view(bytes).substr(0, at)));
  EXPECT_EQ(bytes.size(), at + 8);
}

// A version-3 file as version 2 wrote it: no mixed-precision settings block.
std::string to_version2(std::string bytes) {
  const std::size_t block = 20 + 8 * read_le<std::uint32_t>(bytes, 16);
  bytes.erase(block, 16);
  write_le<std::uint32_t>(bytes, 8, 2);
  reseal(bytes);
  return bytes;
}

// Version 2 (fastoptim before mixed precision) loads: the default settings.
TEST(CheckpointFormat, Version2FilesStillLoad) {
  Fixture f;
  const std::string bytes = to_version2(saved(f.opt));
  std::vector<float> a = f.a;
  std::vector<double> b = f.b;
  Adam target{AdamOptions{}};
  target.add_param(a);
  target.add_param(b);
  std::istringstream in(bytes);
  target.load(in);
  EXPECT_EQ(saved(target), saved(f.opt));
  // into an optimizer with other settings: refused, nothing changed
  Adam other{AdamOptions{}, Precision{.state_dtype = DType::bfloat16}};
  std::vector<float> c = f.a;
  other.add_param(c);
  std::vector<double> d = f.b;
  EXPECT_INVALID(other.add_param(d), "param 1: no kernel for float64 params with bfloat16 state");
  std::istringstream in2(bytes);
  EXPECT_INVALID(other.load(in2), "saved with mixed-precision settings {master_weights=false, "
                                  "state_dtype=default");
}

// fastoptim 0.1 wrote version 1: no storage type bytes (every slot in the param's type).
TEST(CheckpointFormat, Version1FilesStillLoad) {
  Fixture f;
  std::string bytes = to_version2(saved(f.opt));
  write_le<std::uint32_t>(bytes, 8, 1);
  const std::size_t param0 = 20 + 64 + 8, param1 = param0 + 24 + 9 * 4;
  for (std::size_t at : {param0, param1})
    for (std::size_t k = 2; k < 8; ++k) bytes[at + k] = 0;
  reseal(bytes);
  std::vector<float> a = f.a;
  std::vector<double> b = f.b;
  Adam target{AdamOptions{}};
  target.add_param(a);
  target.add_param(b);
  std::istringstream in(bytes);
  target.load(in);
  EXPECT_EQ(saved(target), saved(f.opt));
  // a version 1 file with storage bytes set is corrupt
  bytes[param0 + 2] = 1;
  reseal(bytes);
  EXPECT_NE(load_error(target, bytes).find("reserved header bytes"), std::string::npos);
}

// Version 1 was written by fastoptim 0.1 for its six rules only: a later rule id in a version-1
// file is corrupt (its scalar state, NAdam's mu_product, has no place there).
TEST(CheckpointFormat, Version1NamesOnlyTheRulesOf01) {
  std::vector<float> a = {1.0f, 2.0f, 3.0f};
  std::vector<float> g = {0.5f, -0.5f, 0.25f};
  Nadam opt;
  opt.add_param(a);
  opt.step({g});
  std::string bytes = to_version2(saved(opt));
  write_le<std::uint32_t>(bytes, 8, 1);
  const std::size_t param0 = 20 + 8 * read_le<std::uint32_t>(bytes, 16) + 8;
  for (std::size_t k = 2; k < 8; ++k) bytes[param0 + k] = 0;
  reseal(bytes);
  std::vector<float> b = a;
  Nadam target;
  target.add_param(b);
  const std::string before = saved(target);
  EXPECT_NE(load_error(target, bytes).find("format version 1 has no rule nadam"),
            std::string::npos);
  EXPECT_EQ(saved(target), before);
}

TEST(CheckpointFormat, StorageTypesThatDifferAreRejected) {
  Fixture f;
  std::string bytes = saved(f.opt);
  const std::size_t param0 = 20 + 64 + 16 + 8;
  std::vector<float> a = f.a;
  std::vector<double> b = f.b;
  Adam target{AdamOptions{}};
  target.add_param(a);
  target.add_param(b);
  const std::string before = saved(target);
  bytes[param0 + 3] = 1;  // exp_avg_sq of the float32 param "saved as float64"
  reseal(bytes);
  EXPECT_NE(load_error(target, bytes).find("state 'exp_avg_sq' saved as storage type 1"),
            std::string::npos);
  EXPECT_EQ(saved(target), before);
}

TEST(CheckpointFormat, MismatchesAreNamed) {
  Fixture f;
  const std::string bytes = saved(f.opt);

  // A different rule.
  {
    std::vector<float> a(3);
    std::vector<double> b(2);
    AdamW other;
    other.add_param(a);
    other.add_param(b);
    EXPECT_NE(load_error(other, bytes).find("saved by adam, loading into adamw"), std::string::npos);
  }
  // Different params: count, size, dtype.
  {
    std::vector<float> a(3);
    Adam other;
    other.add_param(a);
    EXPECT_NE(load_error(other, bytes).find("saved state has 2 params, the optimizer has 1"),
              std::string::npos);
  }
  {
    std::vector<float> a(4);
    std::vector<double> b(2);
    Adam other;
    other.add_param(a);
    other.add_param(b);
    EXPECT_NE(load_error(other, bytes).find("param 0: saved with 3 elements, the param has 4"),
              std::string::npos);
  }
  {
    std::vector<float> a(3), b(2);
    Adam other;
    other.add_param(a);
    other.add_param(b);
    EXPECT_NE(load_error(other, bytes).find("param 1: saved as float64, the param is float32"),
              std::string::npos);
  }
  // Edited and re-sealed: each field's own check fires.
  std::vector<float> a(3);
  std::vector<double> b(2);
  Adam target;
  target.add_param(a);
  target.add_param(b);
  const std::string before = saved(target);
  auto edited = [&](auto&& edit) {
    std::string copy = bytes;
    edit(copy);
    reseal(copy);
    return load_error(target, copy);
  };
  EXPECT_NE(edited([](std::string& s) { s[0] = 'X'; }).find("bad magic"), std::string::npos);
  EXPECT_NE(edited([](std::string& s) { write_le<std::uint32_t>(s, 8, 5); })
                .find("format version 5 is not supported"),
            std::string::npos);
  constexpr auto kUnknown = rules::All::size;  // the first id no rule has
  EXPECT_NE(edited([](std::string& s) { s[12] = static_cast<char>(kUnknown); })
                .find("unknown rule id " + std::to_string(kUnknown)),
            std::string::npos);
  EXPECT_NE(edited([](std::string& s) { s[14] = 1; }).find("reserved header bytes"), std::string::npos);
  EXPECT_NE(edited([](std::string& s) { write_le<std::uint32_t>(s, 16, 7); })
                .find("7 option values, adam has 8"),
            std::string::npos);
  EXPECT_NE(edited([](std::string& s) { write_le(s, 20, std::bit_cast<std::uint64_t>(-1.0)); })
                .find("Invalid learning rate: -1.0"),
            std::string::npos);
  EXPECT_NE(edited([](std::string& s) { write_le(s, 20 + 40, std::bit_cast<std::uint64_t>(0.5)); })
                .find("amsgrad must be 0 or 1"),
            std::string::npos);
  const std::size_t param0 = 20 + 64 + 16 + 8;
  EXPECT_NE(edited([&](std::string& s) { s[param0] = 7; }).find("param 0: unknown dtype id 7"),
            std::string::npos);
  EXPECT_NE(edited([&](std::string& s) { s[param0 + 1] = 0b10111; })
                .find("param 0: state slot 4 does not exist for adam"),
            std::string::npos);
  EXPECT_NE(edited([&](std::string& s) { s[param0 + 1] = 0b1111; })
                .find("param 0: a master copy is stored, this optimizer keeps none for float32 "
                      "params"),
            std::string::npos);
  EXPECT_NE(edited([&](std::string& s) { s[param0 + 6] = 1; }).find("reserved header bytes"),
            std::string::npos);
  EXPECT_NE(edited([&](std::string& s) { s[param0 + 7] = 1; }).find("reserved header bytes"),
            std::string::npos);
  // the mixed-precision block
  EXPECT_NE(edited([](std::string& s) { s[84] = 2; }).find("mixed-precision flags must be 0 or 1"),
            std::string::npos);
  EXPECT_NE(edited([](std::string& s) { s[86] = 7; }).find("mixed-precision flags must be 0 or 1"),
            std::string::npos);
  EXPECT_NE(edited([](std::string& s) { s[85] = 3; }).find("state_dtype setting 3 is not valid"),
            std::string::npos);
  EXPECT_NE(edited([](std::string& s) { s[89] = 1; }).find("reserved mixed-precision bytes"),
            std::string::npos);
  EXPECT_NE(edited([](std::string& s) { s[84] = 1; })
                .find("saved with mixed-precision settings {master_weights=true, "
                      "state_dtype=default, stochastic_rounding=false, seed=0}, this optimizer "
                      "has {master_weights=false,"),
            std::string::npos);
  EXPECT_NE(edited([](std::string& s) { s[85] = 2; }).find("state_dtype=bfloat16"),
            std::string::npos);
  EXPECT_NE(edited([](std::string& s) { s[86] = 1; }).find("stochastic_rounding=true, seed=0}"),
            std::string::npos);
  EXPECT_NE(edited([&](std::string& s) { write_le<std::int64_t>(s, param0 + 16, -3); })
                .find("param 0: step count -3 is out of range (0..9007199254740990)"),
            std::string::npos);
  EXPECT_EQ(saved(target), before);  // none of the rejected inputs changed anything
  // A resealed edit of a state value is well-formed: it loads.
  EXPECT_EQ(edited([&](std::string& s) { s[param0 + 30] ^= 1; }), "no exception");
  EXPECT_NE(saved(target), before);
  // A data edit without resealing is caught by the checksum.
  {
    std::string copy = bytes;
    copy[param0 + 30] ^= 1;
    Adam fresh;
    std::vector<float> fa(3);
    std::vector<double> fb(2);
    fresh.add_param(fa);
    fresh.add_param(fb);
    const std::string fresh_before = saved(fresh);
    EXPECT_NE(load_error(fresh, copy).find("checksum mismatch"), std::string::npos);
    EXPECT_EQ(saved(fresh), fresh_before);
  }
}

// NAdam: two slots and the scalar state mu_product, a float32 value stored as f64 after them.
struct NadamFixture {
  std::vector<float> a = {1.0f, 2.0f, 3.0f};
  std::vector<double> b = {4.0, 5.0};
  Nadam opt{NadamOptions{
      .lr = 0.25, .weight_decay = 0.5, .momentum_decay = 0.1, .decoupled_weight_decay = true}};
  NadamFixture() {
    opt.add_param(a);
    opt.add_param(b);
    std::vector<float> ga = {0.5f, 0.5f, 0.5f};
    std::vector<double> gb = {0.5, 0.5};
    opt.step({ga, gb});
    opt.step({ga, Grad{}});
  }
  static constexpr std::size_t kParam0 = 20 + 64 + 16 + 8;
  static constexpr std::size_t kScalar0 = kParam0 + 24 + 2 * 3 * 4;
  static constexpr std::size_t kParam1 = kScalar0 + 8;
  static constexpr std::size_t kScalar1 = kParam1 + 24 + 2 * 2 * 8;
};

// mu_t of the fixture's options, and the float32 product torch keeps.
float fixture_mu_product(int steps) {
  float product = 1.0f;
  for (int t = 1; t <= steps; ++t)
    product = product * static_cast<float>(0.9 * (1.0 - 0.5 * std::pow(0.96, t * 0.1)));
  return product;
}

TEST(CheckpointFormat, NadamStoresMuProductAfterTheSlots) {
  NadamFixture f;
  const std::string bytes = saved(f.opt);
  EXPECT_EQ(bytes.substr(0, 8), "FOPTSTAT");
  EXPECT_EQ(read_le<std::uint32_t>(bytes, 8), 3u);
  EXPECT_EQ(bytes[12], 6);  // Rule::nadam
  ASSERT_EQ(read_le<std::uint32_t>(bytes, 16), 8u);
  // lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize
  const double expected_options[] = {0.25, 0.9, 0.999, 1e-8, 0.5, 0.1, 1.0, 0.0};
  for (int k = 0; k < 8; ++k)
    EXPECT_EQ(std::bit_cast<double>(read_le<std::uint64_t>(bytes, 20 + 8 * k)), expected_options[k])
        << "option " << k;
  EXPECT_EQ(read_le<std::uint64_t>(bytes, 20 + 64 + 16), 2u);
  // param 0: float32, exp_avg and exp_avg_sq as float32, scalar state float32, step 2
  std::size_t at = NadamFixture::kParam0;
  EXPECT_EQ(bytes.substr(at, 8), std::string("\0\3\0\0\0\0\0\0", 8));
  EXPECT_EQ(read_le<std::uint64_t>(bytes, at + 8), 3u);
  EXPECT_EQ(read_le<std::int64_t>(bytes, at + 16), 2);
  at += 24;
  const ParamStateView v0 = f.opt.state(0);
  for (int slot = 0; slot < 2; ++slot)
    for (std::size_t i = 0; i < 3; ++i, at += 4)
      EXPECT_EQ(std::bit_cast<float>(read_le<std::uint32_t>(bytes, at)), v0.buffer<float>(slot)[i]);
  ASSERT_EQ(at, NadamFixture::kScalar0);
  const double mu0 = std::bit_cast<double>(read_le<std::uint64_t>(bytes, at));
  EXPECT_EQ(mu0, static_cast<double>(fixture_mu_product(2)));
  EXPECT_EQ(mu0, v0.scalars[0]);
  at += 8;
  // param 1: float64 slots; its mu_product is float32 all the same (torch's scalar dtype)
  EXPECT_EQ(bytes.substr(at, 8), std::string("\1\3\1\1\0\0\0\0", 8));
  EXPECT_EQ(read_le<std::uint64_t>(bytes, at + 8), 2u);
  EXPECT_EQ(read_le<std::int64_t>(bytes, at + 16), 1);
  at += 24;
  const ParamStateView v1 = f.opt.state(1);
  for (int slot = 0; slot < 2; ++slot)
    for (std::size_t i = 0; i < 2; ++i, at += 8)
      EXPECT_EQ(std::bit_cast<double>(read_le<std::uint64_t>(bytes, at)), v1.buffer<double>(slot)[i]);
  ASSERT_EQ(at, NadamFixture::kScalar1);
  EXPECT_EQ(std::bit_cast<double>(read_le<std::uint64_t>(bytes, at)),
            static_cast<double>(fixture_mu_product(1)));
  at += 8;
  EXPECT_EQ(read_le<std::uint64_t>(bytes, at), fnv1a(std::string_view(bytes).substr(0, at)));
  EXPECT_EQ(bytes.size(), at + 8);
}

TEST(CheckpointFormat, NadamMuProductLoadsBitExactly) {
  NadamFixture f;
  f.opt.set_scalar_state(1, 0, 0x1.fffffep-3);  // a float32 value with every mantissa bit set
  const std::string bytes = saved(f.opt);
  std::vector<float> a = f.a;
  std::vector<double> b = f.b;
  Nadam target;
  target.add_param(a);
  target.add_param(b);
  std::istringstream in(bytes);
  target.load(in);
  EXPECT_EQ(target.state(0).scalars[0], static_cast<double>(fixture_mu_product(2)));
  EXPECT_EQ(target.state(1).scalars[0], 0x1.fffffep-3);
  EXPECT_EQ(target.options().momentum_decay, 0.1);
  EXPECT_EQ(saved(target), bytes);
  const std::vector<float> ga = {0.25f, -0.5f, 1.0f};
  const std::vector<double> gb = {-0.25, 0.75};
  f.opt.step({ga, gb});
  target.step({ga, gb});
  EXPECT_TRUE(bit_equal(a, f.a));
  EXPECT_TRUE(bit_equal(b, f.b));
  EXPECT_EQ(saved(target), saved(f.opt));
}

TEST(CheckpointFormat, NadamScalarStateThatIsNotFloat32IsRejectedWithNothingChanged) {
  NadamFixture f;
  const std::string bytes = saved(f.opt);
  std::vector<float> a = {7.0f, 8.0f, 9.0f};
  std::vector<double> b = {1.5, 2.5};
  Nadam target({.lr = 0.125});
  target.add_param(a);
  target.add_param(b);
  const std::vector<float> ga = {0.1f, 0.2f, 0.3f};
  target.step({ga, Grad{}});
  const std::string before = saved(target);
  const std::vector<float> a0 = a;
  const std::vector<double> b0 = b;
  auto with_scalar = [&](std::size_t at, double value) {
    std::string copy = bytes;
    write_le(copy, at, std::bit_cast<std::uint64_t>(value));
    reseal(copy);
    return load_error(target, copy);
  };
  EXPECT_EQ(with_scalar(NadamFixture::kScalar0, 0.1),
            "fastoptim state: param 0: mu_product 0.1 is not a finite float32 value");
  EXPECT_EQ(with_scalar(NadamFixture::kScalar1, 0.1),
            "fastoptim state: param 1: mu_product 0.1 is not a finite float32 value");
  EXPECT_EQ(with_scalar(NadamFixture::kScalar0, std::numeric_limits<double>::quiet_NaN()),
            "fastoptim state: param 0: mu_product nan is not a finite float32 value");
  EXPECT_EQ(with_scalar(NadamFixture::kScalar0, std::numeric_limits<double>::infinity()),
            "fastoptim state: param 0: mu_product inf is not a finite float32 value");
  EXPECT_EQ(with_scalar(NadamFixture::kScalar1, -std::numeric_limits<double>::infinity()),
            "fastoptim state: param 1: mu_product -inf is not a finite float32 value");
  EXPECT_EQ(with_scalar(NadamFixture::kScalar0, 1e39),  // finite, beyond float32
            "fastoptim state: param 0: mu_product 1e+39 is not a finite float32 value");
  EXPECT_EQ(with_scalar(NadamFixture::kScalar0, 1e-50),  // below float32's smallest subnormal
            "fastoptim state: param 0: mu_product 1e-50 is not a finite float32 value");
  // Its storage type byte must say float32.
  {
    std::string copy = bytes;
    copy[NadamFixture::kParam0 + 5] = 1;
    reseal(copy);
    EXPECT_EQ(load_error(target, copy),
              "fastoptim state: param 0: scalar state saved as storage type 1, this optimizer "
              "keeps it as float32");
  }
  EXPECT_EQ(saved(target), before);
  EXPECT_EQ(a, a0);
  EXPECT_EQ(b, b0);
  // A float32 value, resealed, is a well-formed checkpoint: it loads.
  EXPECT_EQ(with_scalar(NadamFixture::kScalar0, 0.5), "no exception");
  EXPECT_EQ(target.state(0).scalars[0], 0.5);
}

// RAdam and Adamax keep no scalar state: nothing follows their slots.
TEST(CheckpointFormat, RadamAndAdamaxHaveNoScalarBytes) {
  for (const AnyOptions& options : {AnyOptions{RadamOptions{}}, AnyOptions{AdamaxOptions{}}}) {
    std::vector<float> p = {1.0f, 2.0f, 3.0f}, g = {0.5f, -0.5f, 0.25f};
    auto opt = make_optimizer(options);
    opt->add_param(p);
    opt->step({g});
    const std::string bytes = saved(*opt);
    const std::size_t fields = std::holds_alternative<RadamOptions>(options) ? 7 : 6;
    SCOPED_TRACE(std::string(rule_name(opt->rule())));
    EXPECT_EQ(static_cast<unsigned char>(bytes[12]), static_cast<unsigned>(opt->rule()));
    EXPECT_EQ(read_le<std::uint32_t>(bytes, 16), fields);
    const std::size_t param0 = 20 + 8 * fields + 16 + 8;
    EXPECT_EQ(bytes.substr(param0, 8), std::string("\0\3\0\0\0\0\0\0", 8));
    EXPECT_EQ(bytes.size(), param0 + 24 + 2 * 3 * 4 + 8);
  }
}

TEST(CheckpointFormat, SgdSlotAbsenceRoundTrips) {
  // torch's SGD keeps momentum_buffer None until momentum is used; the format keeps that.
  std::vector<float> p(4, 1.0f), q(4, 1.0f), g(4, 1.0f);
  Sgd opt({.lr = 0.1});
  opt.add_param(p);
  opt.step({g});
  const std::string bytes = saved(opt);
  Sgd other({.lr = 0.1, .momentum = 0.9});
  other.add_param(q);
  other.step({g});  // has a momentum buffer now
  std::istringstream in(bytes);
  other.load(in);
  EXPECT_TRUE(other.state(0).buffer<float>(0).empty());
  EXPECT_EQ(other.options().momentum, 0.0);
}

}  // namespace
}  // namespace fastoptim::test
