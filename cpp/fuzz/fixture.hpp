// The optimizer the checkpoint fuzzer loads into, shared with the corpus generator so that the
// seed checkpoints match it: one rule and mixed-precision variant (picked by the input's
// control byte), a fixed set of params of several sizes (0 and odd ones included) and storage
// types, stepped a few times so that its state exists before load() is tried.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "fastoptim/optimizer.hpp"

namespace fastoptim::fuzz {

// Control byte: bits 0-2 and 4 the rule id (bit 4 its fourth bit; mod the number of rules), bit
// 3 the option variant (plain / every slot and option), bits 5-6 the mixed-precision variant
// (0: the default settings with float32 and float64 params, as before mixed precision; 1-3:
// 16-bit params, master copies, int8 and bfloat16 state, stochastic rounding: see kVariants;
// variant 2 held bfloat16 state without master copies before int8 state), bit 7
// "recompute the trailing checksum of the input before loading". (fastoptim 0.1 had six rules
// and bits 0-2 only, format 2 bits 0-4: their seeds keep their meaning.)
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
inline int control_variant(std::uint8_t control) { return (control >> 5) & 3; }
inline std::uint8_t control_of_variant(int variant) {
  return static_cast<std::uint8_t>((variant & 3) << 5);
}

// A param of the fixture: its storage type, its grads' type, its size.
struct ParamKind {
  DType param, grad;
  std::size_t size;
};
struct Variant {
  Precision precision;
  std::vector<ParamKind> params;
};
inline const Variant& variant(int v) {
  using enum DType;
  static const Variant kVariants[4] = {
      // float32 of 5, 0, 33 elements and float64 of 17, 0, 1, interleaved
      {{}, {{float32, float32, 5}, {float64, float64, 17}, {float32, float32, 0},
            {float64, float64, 0}, {float32, float32, 33}, {float64, float64, 1}}},
      // master copies (float32 state beside them) and stochastic rounding of 16-bit params
      {{.master_weights = true, .stochastic_rounding = true, .seed = 7},
       {{float32, float32, 5}, {bfloat16, bfloat16, 17}, {float16, float16, 0},
        {float16, float16, 9}, {bfloat16, bfloat16, 1}, {float64, float64, 3},
        {float32, bfloat16, 4}}},
      // int8 state (blocks of 32; params of fewer than 9 elements keep float32 state), a
      // partial last block (70 elements), nearest-even (bfloat16 state: variant 3)
      {{.state_dtype = int8, .block_size = 32, .min_8bit_size = 9},
       {{float32, float32, 5}, {bfloat16, bfloat16, 17}, {bfloat16, bfloat16, 0},
        {float32, float16, 9}, {bfloat16, bfloat16, 1}, {float32, float32, 70}}},
      // master copies with bfloat16 state, stochastic rounding
      {{.master_weights = true, .state_dtype = bfloat16, .stochastic_rounding = true,
        .seed = ~0ull},
       {{float32, float32, 5}, {bfloat16, bfloat16, 17}, {float16, float16, 0},
        {float16, float16, 9}, {bfloat16, bfloat16, 1}, {float32, bfloat16, 2}}}};
  return kVariants[v & 3];
}

inline std::unique_ptr<Optimizer> make_optimizer(Rule rule, bool rich);
inline std::unique_ptr<Optimizer> make_optimizer(Rule rule, bool rich, const Precision& precision) {
  auto opt = make_optimizer(rule, rich);
  opt->set_precision(precision);
  return opt;
}

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
  // A rule added to the registry without a case above: its defaults, both variants, in its
  // training mode (the transforms that set it: Schedule-Free starts in eval mode, where a
  // step is refused).
  std::unique_ptr<Optimizer> fallback;
  rules::for_each_rule([&](auto r) {
    using R = decltype(r);
    if (rule != rules::id<R>) return;
    fallback = std::make_unique<RuleOptimizer<R>>();
    if constexpr (requires { R::transforms; })
      for (const auto& t : R::transforms)
        if (t.to) fallback->transform(t.name);
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

// n deterministic values of storage type `dtype`, as bytes (16-bit types rounded from float32).
inline std::vector<unsigned char> values_of(DType dtype, std::size_t n, std::uint64_t seed) {
  std::vector<unsigned char> out;
  auto put = [&](const auto& v) {
    out.resize(v.size() * sizeof(v[0]));
    if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  };
  if (dtype == DType::float64) {
    put(values<double>(n, seed));
    return out;
  }
  const std::vector<float> f = values<float>(n, seed);
  if (dtype == DType::float32) {
    put(f);
  } else if (dtype == DType::bfloat16) {
    std::vector<bfloat16> b(n);
    for (std::size_t i = 0; i < n; ++i) b[i] = to_bfloat16(f[i]);
    put(b);
  } else {
    std::vector<float16> h(n);
    for (std::size_t i = 0; i < n; ++i) h[i] = to_float16(f[i]);
    put(h);
  }
  return out;
}

template <class T>
std::span<T> as(std::vector<unsigned char>& bytes) {
  return {reinterpret_cast<T*>(bytes.data()), bytes.size() / sizeof(T)};
}
template <class T>
std::span<const T> as(const std::vector<unsigned char>& bytes) {
  return {reinterpret_cast<const T*>(bytes.data()), bytes.size() / sizeof(T)};
}

// A variant's settings for a rule: int8 state is for moments, so a rule with a slot that copies
// the param (Schedule-Free's z, whose step refuses int8 state) keeps bfloat16 state instead.
inline Precision precision_for(Rule rule, Precision precision) {
  rules::for_each_rule([&](auto r) {
    using R = decltype(r);
    if (rule != rules::id<R> || precision.state_dtype != DType::int8) return;
    for (const auto& slot : R::slots)
      if (slot.from_param) precision.state_dtype = DType::bfloat16;
  });
  return precision;
}

struct Fixture {
  const Variant& kinds;
  std::vector<std::vector<unsigned char>> data;
  std::unique_ptr<Optimizer> opt;

  Fixture(Rule rule, bool rich, int variant_id = 0)
      : kinds(variant(variant_id)),
        opt(make_optimizer(rule, rich, precision_for(rule, kinds.precision))) {
    for (std::size_t k = 0; k < kinds.params.size(); ++k)
      data.push_back(values_of(kinds.params[k].param, kinds.params[k].size, 1 + k));
    for (std::size_t k = 0; k < kinds.params.size(); ++k) {
      switch (kinds.params[k].param) {
        case DType::float32: opt->add_param(as<float>(data[k])); break;
        case DType::float64: opt->add_param(as<double>(data[k])); break;
        case DType::bfloat16: opt->add_param(as<bfloat16>(data[k])); break;
        case DType::float16: opt->add_param(as<float16>(data[k])); break;
      }
    }
  }

  // One step; `skip` (a bit per param) leaves params without a grad. Same throw guarantees
  // as Optimizer::step.
  void step(std::uint64_t seed, unsigned skip = 0) {
    std::vector<std::vector<unsigned char>> g;
    for (std::size_t k = 0; k < kinds.params.size(); ++k)
      g.push_back(values_of(kinds.params[k].grad, kinds.params[k].size, seed + 10 + k));
    std::vector<Grad> grads;
    for (std::size_t k = 0; k < kinds.params.size(); ++k) {
      if ((skip >> k) & 1u) {
        grads.emplace_back();
        continue;
      }
      switch (kinds.params[k].grad) {
        case DType::float32: grads.emplace_back(as<float>(std::as_const(g[k]))); break;
        case DType::float64: grads.emplace_back(as<double>(std::as_const(g[k]))); break;
        case DType::bfloat16: grads.emplace_back(as<bfloat16>(std::as_const(g[k]))); break;
        case DType::float16: grads.emplace_back(as<float16>(std::as_const(g[k]))); break;
      }
    }
    opt->step(grads);
  }

  // The params' bytes (load() must never touch them).
  std::string params() const {
    std::string out;
    for (const auto& d : data) out.append(reinterpret_cast<const char*>(d.data()), d.size());
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
