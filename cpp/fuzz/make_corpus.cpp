// Writes the fuzzer's seed corpus: for each rule and option variant a few valid checkpoints of
// the fuzz fixture (different step patterns and options), a truncated one and byte-flipped
// ones with and without the reseal flag. Usage: make_corpus <directory>
#include <cstdint>
#include <cstdio>
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

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus <directory>\n");
    return 2;
  }
  const std::string dir = argv[1];
  for (int r = 0; r < 6; ++r) {
    for (int rich = 0; rich < 2; ++rich) {
      const auto rule = static_cast<Rule>(r);
      const std::uint8_t control = static_cast<std::uint8_t>(r | (rich ? 8 : 0));
      const std::string name = dir + "/" + std::string(rule_name(rule)) + (rich ? "_rich" : "_plain");

      Fixture fresh(rule, rich);  // no step yet: step counts 0, lazily created slots absent
      write(name + "_fresh", control, saved(*fresh.opt));

      Fixture f(rule, rich);
      f.step(7);
      f.step(8, 0b010010);
      f.step(9, 0b000001);
      const std::string bytes = saved(*f.opt);
      write(name + "_stepped", control, bytes);

      write(name + "_truncated", control, bytes.substr(0, bytes.size() / 2));
      std::string flipped = bytes;
      flipped[flipped.size() / 3] = static_cast<char>(flipped[flipped.size() / 3] ^ 0x40);
      write(name + "_flipped", control, flipped);                                 // checksum fails
      write(name + "_flipped_resealed", static_cast<std::uint8_t>(control | 0x80), flipped);
      std::string step_edit = bytes;  // param 0's step count near the limit, resealed by the harness
      const std::size_t options = static_cast<unsigned char>(bytes[16]);
      const std::size_t step_at = 20 + 8 * options + 8 + 16;
      const std::uint64_t big = (std::uint64_t{1} << 53) - 2;
      for (int i = 0; i < 8; ++i) step_edit[step_at + i] = static_cast<char>((big >> (8 * i)) & 0xFF);
      write(name + "_step_limit", static_cast<std::uint8_t>(control | 0x80), step_edit);
    }
  }
  return 0;
}
