// libFuzzer target for Optimizer::load(): whatever the bytes, load() either throws
// std::invalid_argument and changes nothing, or succeeds with a state that saves, loads back
// to the same bytes and steps without undefined behaviour (ASan + UBSan watch that).
//
// Input: one control byte (fixture.hpp: rule, option variant, mixed-precision variant, reseal
// flag), then the checkpoint. With the reseal flag the harness rewrites the trailing FNV-1a checksum, so
// that mutations reach the parser past the checksum instead of all failing there.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

#include "fixture.hpp"

namespace {

using namespace fastoptim;
using namespace fastoptim::fuzz;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_checkpoint_load: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t control = data[0];
  const Rule rule = control_rule(control);
  const bool rich = control_rich(control);
  const int variant_id = control_variant(control);
  std::string input(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (control_reseal(control)) reseal(input);

  // A stepped optimizer, one of its params skipped once: unequal step counts, state present.
  Fixture f(rule, rich, variant_id);
  f.step(1);
  f.step(2, 0b000100);
  const std::string before = saved(*f.opt);
  const std::string params_before = f.params();

  bool loaded = false;
  {
    std::istringstream in(input);
    try {
      f.opt->load(in);
      loaded = true;
    } catch (const std::invalid_argument&) {
    } catch (...) {
      fail("load() threw something other than std::invalid_argument");
    }
  }
  if (f.params() != params_before) fail("load() wrote to a param");
  if (!loaded) {
    if (saved(*f.opt) != before) fail("a rejected load() changed the optimizer");
    return 0;
  }

  // Accepted: what it saves loads into an optimizer with other options, and saves the same.
  const std::string after = saved(*f.opt);
  {
    Fixture other(rule, !rich, variant_id);
    std::istringstream in(after);
    try {
      other.opt->load(in);
    } catch (...) {
      fail("the state saved after a successful load() does not load");
    }
    if (saved(*other.opt) != after) fail("save() -> load() -> save() is not the identity");
  }

  // And it steps: either it updates (no UB), or it refuses with no change: loaded options
  // whose per-step scalars overflow, a step count at its limit (std::invalid_argument), or a
  // mode whose step the rule refuses (Schedule-Free saved in eval mode: std::logic_error).
  for (int s = 0; s < 2; ++s) {
    const std::string state = saved(*f.opt);
    const std::string params = f.params();
    try {
      f.step(100 + static_cast<std::uint64_t>(s), s == 0 ? 0u : 0b100001u);
    } catch (const std::logic_error&) {  // (std::invalid_argument is one)
      if (saved(*f.opt) != state || f.params() != params) fail("a refused step() changed something");
      break;
    } catch (...) {
      fail("step() threw something other than std::invalid_argument or std::logic_error");
    }
  }
  (void)saved(*f.opt);
  return 0;
}
