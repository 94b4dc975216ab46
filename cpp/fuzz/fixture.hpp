// The optimizer the checkpoint fuzzer loads into, shared with the corpus generator so that the
// seed checkpoints match it: one rule (picked by the input's control byte), a fixed set of
// float32 and float64 params of several sizes (0 and odd ones included), stepped a few times
// so that its state exists before load() is tried.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "fastoptim/optimizer.hpp"

namespace fastoptim::fuzz {

// Control byte: bits 0-2 and 4 the rule id (bit 4 its fourth bit; mod the number of rules), bit
// 3 the option variant (plain / every slot and option), bit 7 "recompute the trailing checksum
// of the input before loading". (fastoptim 0.1 had six rules and bits 0-2 only: its seeds keep
// their meaning.)
inline constexpr unsigned kRuleCount = rules::All::size;
inline Rule control_rule(std::uint8_t control) {
  return static_cast<Rule>(((control & 7u) | ((control & 0x10u) >> 1)) % kRuleCount);
}
inline std::uint8_t control_of(Rule rule) {
  const auto id = static_cast<unsigned>(rule);
  return static_cast<std::uint8_t>((id & 7u) | ((id & 8u) << 1));
}
inline bool control_rich(std::uint8_t control) { return (control & 8u) != 0; }
inline bool control_reseal(std::uint8_t control) { return (control & 0x80u) != 0; }

inline std::unique_ptr<Optimizer> make_optimizer(Rule rule, bool rich) {
  switch (rule) {
    case Rule::sgd:
      return std::make_unique<Sgd>(rich ? SgdOptions{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.01,
                                                      .nesterov = true}
                                        : SgdOptions{.lr = 0.05});
    case Rule::adagrad:
      return std::make_unique<Adagrad>(
          rich ? AdagradOptions{.lr = 0.1, .lr_decay = 0.01, .weight_decay = 0.1,
                                .initial_accumulator_value = 0.25}
               : AdagradOptions{});
    case Rule::adadelta:
      return std::make_unique<Adadelta>(
          rich ? AdadeltaOptions{.lr = 0.5, .rho = 0.6, .weight_decay = 0.1, .maximize = true}
               : AdadeltaOptions{});
    case Rule::rmsprop:
      return std::make_unique<Rmsprop>(
          rich ? RmspropOptions{.momentum = 0.9, .centered = true} : RmspropOptions{});
    case Rule::adam:
      return std::make_unique<Adam>(
          rich ? AdamOptions{.lr = 0.01, .weight_decay = 0.1, .amsgrad = true} : AdamOptions{});
    case Rule::adamw: {
      AdamWOptions o;
      o.amsgrad = rich;
      return std::make_unique<AdamW>(o);
    }
    case Rule::nadam:
      return std::make_unique<Nadam>(
          rich ? NadamOptions{.lr = 0.01, .weight_decay = 0.1, .momentum_decay = 0.1,
                              .decoupled_weight_decay = true, .maximize = true}
               : NadamOptions{});
    case Rule::radam:  // beta2 0.9: rectified from step 6, so a loaded step count picks the branch
      return std::make_unique<Radam>(
          rich ? RadamOptions{.lr = 0.01, .beta2 = 0.9, .weight_decay = 0.1,
                              .decoupled_weight_decay = true}
               : RadamOptions{});
    case Rule::adamax:
      return std::make_unique<Adamax>(
          rich ? AdamaxOptions{.lr = 0.01, .beta1 = 0.5, .weight_decay = 0.1, .maximize = true}
               : AdamaxOptions{});
  }
  // A rule added to the registry without a case above: its defaults, both variants.
  std::unique_ptr<Optimizer> fallback;
  rules::for_each_rule([&](auto r) {
    using R = decltype(r);
    if (rule == rules::id<R>) fallback = std::make_unique<RuleOptimizer<R>>();
  });
  return fallback;
}

inline std::string saved(const Optimizer& opt) {
  std::ostringstream out;
  opt.save(out);
  return out.str();
}

// Deterministic values in [-1, 1).
template <class T>
std::vector<T> values(std::size_t n, std::uint64_t seed) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    v[i] = static_cast<T>(static_cast<double>(seed >> 11) * 0x1p-52 - 1.0);
  }
  return v;
}

// Params: float32 of 5, 0, 33 elements and float64 of 17, 0, 1, interleaved.
struct Fixture {
  std::vector<float> f32[3] = {values<float>(5, 1), {}, values<float>(33, 2)};
  std::vector<double> f64[3] = {values<double>(17, 3), {}, values<double>(1, 4)};
  std::unique_ptr<Optimizer> opt;

  Fixture(Rule rule, bool rich) : opt(make_optimizer(rule, rich)) {
    for (int k = 0; k < 3; ++k) {
      opt->add_param(f32[k]);
      opt->add_param(f64[k]);
    }
  }

  // One step; `skip` (a bit per param) leaves params without a grad. Same throw guarantees
  // as Optimizer::step.
  void step(std::uint64_t seed, unsigned skip = 0) {
    std::vector<std::vector<float>> g32;
    std::vector<std::vector<double>> g64;
    for (int k = 0; k < 3; ++k) {
      g32.push_back(values<float>(f32[k].size(), seed + 10 + k));
      g64.push_back(values<double>(f64[k].size(), seed + 20 + k));
    }
    std::vector<Grad> grads;
    for (int k = 0; k < 3; ++k) {
      grads.push_back((skip >> (2 * k)) & 1u ? Grad{} : Grad(g32[k]));
      grads.push_back((skip >> (2 * k + 1)) & 1u ? Grad{} : Grad(g64[k]));
    }
    opt->step(grads);
  }

  // The params' bytes (load() must never touch them).
  std::string params() const {
    std::string out;
    for (int k = 0; k < 3; ++k) {
      out.append(reinterpret_cast<const char*>(f32[k].data()), f32[k].size() * sizeof(float));
      out.append(reinterpret_cast<const char*>(f64[k].data()), f64[k].size() * sizeof(double));
    }
    return out;
  }
};

// FNV-1a 64 of all bytes but the last 8, written little-endian into those 8.
inline void reseal(std::string& bytes) {
  if (bytes.size() < 8) return;
  std::uint64_t h = 14695981039346656037ull;
  for (std::size_t i = 0; i < bytes.size() - 8; ++i)
    h = (h ^ static_cast<unsigned char>(bytes[i])) * 1099511628211ull;
  for (std::size_t i = 0; i < 8; ++i)
    bytes[bytes.size() - 8 + i] = static_cast<char>((h >> (8 * i)) & 0xFFu);
}

}  // namespace fastoptim::fuzz
