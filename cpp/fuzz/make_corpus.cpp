// Writes the fuzzer's seed corpus: for each rule, option variant and mixed-precision variant a
// few valid checkpoints of the fuzz fixture (different step patterns and options), a truncated
// one, byte-flipped ones with and without the reseal flag, and for the default settings the
// stepped checkpoint in format version 2 and (rules without scalar state) version 1.
// Usage: make_corpus <directory>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "fixture.hpp"

using namespace fastoptim;
using namespace fastoptim::fuzz;

namespace {

void write(const std::string& path, std::uint8_t control, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.put(static_cast<char>(control));
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "make_corpus: cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

// The same checkpoint in format version 2: no mixed-precision settings (the defaults),
// resealed. Only for the default settings.
std::string to_version2(std::string bytes) {
  const std::size_t options = static_cast<unsigned char>(bytes[16]);
  bytes.erase(20 + 8 * options, 16);
  bytes[8] = 2;
  reseal(bytes);
  return bytes;
}

// The same checkpoint in format version 1 (fastoptim 0.1): version 1, no storage type bytes,
// resealed. Only for the default settings and rules without scalar state, which 0.1 did not
// have.
std::string to_version1(std::string bytes) {
  bytes = to_version2(bytes);
  auto u64 = [&](std::size_t at) {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t{static_cast<unsigned char>(bytes[at + i])} << (8 * i);
    return v;
  };
  bytes[8] = 1;
  const std::size_t options = static_cast<unsigned char>(bytes[16]);
  std::size_t at = 20 + 8 * options;
  const std::uint64_t params = u64(at);
  at += 8;
  for (std::uint64_t p = 0; p < params; ++p) {
    const bool f32 = bytes[at] == 0;
    const unsigned mask = static_cast<unsigned char>(bytes[at + 1]);
    for (int k = 2; k < 8; ++k) bytes[at + k] = 0;
    const std::uint64_t size = u64(at + 8);
    at += 24 + static_cast<std::size_t>(std::popcount(mask)) * size * (f32 ? 4 : 8);
  }
  reseal(bytes);
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus <directory>\n");
    return 2;
  }
  const std::string dir = argv[1];
  for (unsigned r = 0; r < kRuleCount; ++r) {
    for (int rich = 0; rich < 2; ++rich) {
      for (int v = 0; v < 4; ++v) {
        const auto rule = static_cast<Rule>(r);
        const std::uint8_t control =
            static_cast<std::uint8_t>(control_of(rule) | (rich ? 8 : 0) | control_of_variant(v));
        if (control_rule(control) != rule || control_rich(control) != (rich != 0) ||
            control_variant(control) != v) {
          std::fprintf(stderr, "make_corpus: control byte %u does not decode to rule %u\n",
                       unsigned{control}, r);
          return 1;
        }
        const std::string name = dir + "/" + std::string(rule_name(rule)) +
                                  (rich ? "_rich" : "_plain") +
                                  (v == 0 ? "" : "_mixed" + std::to_string(v));

        Fixture fresh(rule, rich, v);  // no step yet: step counts 0, lazily created slots absent
        write(name + "_fresh", control, saved(*fresh.opt));

        Fixture f(rule, rich, v);
        f.step(7);
        f.step(8, 0b010010);
        f.step(9, 0b000001);
        const std::string bytes = saved(*f.opt);
        write(name + "_stepped", control, bytes);
        if (v == 0) {
          write(name + "_v2", control, to_version2(bytes));
          if (f.opt->state(0).scalar_names[0].empty()) write(name + "_v1", control, to_version1(bytes));
        }

        write(name + "_truncated", control, bytes.substr(0, bytes.size() / 2));
        std::string flipped = bytes;
        flipped[flipped.size() / 3] = static_cast<char>(flipped[flipped.size() / 3] ^ 0x40);
        write(name + "_flipped", control, flipped);                                 // checksum fails
        write(name + "_flipped_resealed", static_cast<std::uint8_t>(control | 0x80), flipped);
        // param 0's step count near the limit, resealed by the harness
        std::string step_edit = bytes;
        const std::size_t options = static_cast<unsigned char>(bytes[16]);
        // (version 4, int8 state: block_size and min_8bit_size after the seed)
        const std::size_t quantization = static_cast<unsigned char>(bytes[8]) >= 4 ? 16 : 0;
        const std::size_t step_at = 20 + 8 * options + 16 + quantization + 8 + 16;
        const std::uint64_t big = (std::uint64_t{1} << 53) - 2;
        for (int i = 0; i < 8; ++i) step_edit[step_at + i] = static_cast<char>((big >> (8 * i)) & 0xFF);
        write(name + "_step_limit", static_cast<std::uint8_t>(control | 0x80), step_edit);
      }
    }
  }
  return 0;
}
