// Shared test machinery: an option grid over every rule and flag, a plain scalar reference of
// each rule written from torch.optim's single-tensor code, deterministic data, bit comparisons.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "fastoptim/fastoptim.hpp"

namespace fastoptim::test {

// The options struct of every registered rule (rules.hpp), in Rule id order: a rule added to
// the registry is in every grid-driven test's type set without an edit here.
template <class... R>
std::variant<typename R::Options...> options_variant(rules::RuleList<R...>);
using AnyOptions = decltype(options_variant(rules::All{}));

struct NamedOptions {
  std::string name;
  AnyOptions options;
};

// Every flag of every rule on and off at least once, non-default hyperparameters.
inline std::vector<NamedOptions> option_grid() {
  std::vector<NamedOptions> grid;
  auto sgd = [&](std::string name, auto&& set) {
    SgdOptions o;
    o.lr = 0.05;
    set(o);
    grid.push_back({"sgd_" + name, o});
  };
  sgd("plain", [](SgdOptions&) {});
  sgd("momentum", [](SgdOptions& o) { o.momentum = 0.9; });
  sgd("nesterov_wd", [](SgdOptions& o) { o.momentum = 0.8, o.nesterov = true, o.weight_decay = 0.05; });
  sgd("dampening_maximize",
      [](SgdOptions& o) { o.momentum = 0.5, o.dampening = 0.3, o.maximize = true; });

  auto adagrad = [&](std::string name, auto&& set) {
    AdagradOptions o;
    o.lr = 0.1;
    set(o);
    grid.push_back({"adagrad_" + name, o});
  };
  adagrad("plain", [](AdagradOptions&) {});
  adagrad("all", [](AdagradOptions& o) {
    o.lr_decay = 0.05, o.weight_decay = 0.1, o.initial_accumulator_value = 0.3, o.eps = 1e-3,
    o.maximize = true;
  });

  auto adadelta = [&](std::string name, auto&& set) {
    AdadeltaOptions o;
    set(o);
    grid.push_back({"adadelta_" + name, o});
  };
  adadelta("plain", [](AdadeltaOptions&) {});
  adadelta("all", [](AdadeltaOptions& o) {
    o.lr = 0.5, o.rho = 0.6, o.eps = 1e-4, o.weight_decay = 0.1, o.maximize = true;
  });

  auto rmsprop = [&](std::string name, auto&& set) {
    RmspropOptions o;
    set(o);
    grid.push_back({"rmsprop_" + name, o});
  };
  rmsprop("plain", [](RmspropOptions&) {});
  rmsprop("momentum_centered", [](RmspropOptions& o) {
    o.momentum = 0.9, o.centered = true, o.weight_decay = 0.05, o.alpha = 0.8;
  });
  rmsprop("centered_maximize", [](RmspropOptions& o) { o.centered = true, o.maximize = true, o.alpha = 0.3; });
  rmsprop("momentum", [](RmspropOptions& o) { o.momentum = 0.5, o.eps = 1e-3; });

  auto adam = [&](std::string name, auto&& set) {
    AdamOptions o;
    o.lr = 0.01;
    set(o);
    grid.push_back({"adam_" + name, o});
  };
  adam("plain", [](AdamOptions&) {});
  adam("amsgrad_wd", [](AdamOptions& o) { o.amsgrad = true, o.weight_decay = 0.1; });
  adam("maximize_decoupled", [](AdamOptions& o) {
    o.maximize = true, o.decoupled_weight_decay = true, o.weight_decay = 0.2, o.beta1 = 0.3;
  });

  auto adamw = [&](std::string name, auto&& set) {
    AdamWOptions o;
    o.lr = 0.01;
    set(o);
    grid.push_back({"adamw_" + name, o});
  };
  adamw("plain", [](AdamWOptions&) {});
  adamw("amsgrad_maximize", [](AdamWOptions& o) {
    o.amsgrad = true, o.maximize = true, o.beta2 = 0.9, o.eps = 1e-6;
  });

  auto nadam = [&](std::string name, auto&& set) {
    NadamOptions o;
    o.lr = 0.01;
    set(o);
    grid.push_back({"nadam_" + name, o});
  };
  nadam("plain", [](NadamOptions&) {});  // momentum_decay 4e-3
  nadam("no_momentum_decay_wd", [](NadamOptions& o) {
    o.momentum_decay = 0.0, o.weight_decay = 0.1, o.beta2 = 0.9;
  });
  nadam("decoupled_maximize", [](NadamOptions& o) {
    o.momentum_decay = 0.1, o.decoupled_weight_decay = true, o.weight_decay = 0.2,
    o.maximize = true, o.beta1 = 0.3, o.eps = 1e-3;
  });

  // rho_t > 5 (rectified) from step 6 for beta2 0.999 and 0.9; beta2 0.6 has rho_inf = 4 <= 5,
  // never rectified. Short runs take RAdam further (steps_for) so that both branches run.
  auto radam = [&](std::string name, auto&& set) {
    RadamOptions o;
    o.lr = 0.01;
    set(o);
    grid.push_back({"radam_" + name, o});
  };
  radam("plain", [](RadamOptions&) {});
  radam("rectified_wd", [](RadamOptions& o) { o.beta2 = 0.9, o.weight_decay = 0.1; });
  radam("rectified_decoupled_maximize", [](RadamOptions& o) {
    o.beta2 = 0.9, o.decoupled_weight_decay = true, o.weight_decay = 0.05, o.maximize = true,
    o.eps = 1e-3;
  });
  radam("unrectified_decoupled", [](RadamOptions& o) {
    o.beta1 = 0.5, o.beta2 = 0.6, o.decoupled_weight_decay = true, o.weight_decay = 0.2;
  });

  auto adamax = [&](std::string name, auto&& set) {
    AdamaxOptions o;
    o.lr = 0.01;
    set(o);
    grid.push_back({"adamax_" + name, o});
  };
  adamax("plain", [](AdamaxOptions&) {});
  adamax("wd_maximize", [](AdamaxOptions& o) { o.weight_decay = 0.1, o.maximize = true; });
  adamax("betas_eps", [](AdamaxOptions& o) { o.beta1 = 0.5, o.beta2 = 0.7, o.eps = 1e-3; });
  auto lion = [&](std::string name, auto&& set) {
    LionOptions o;
    o.lr = 0.01;
    set(o);
    grid.push_back({"lion_" + name, o});
  };
  lion("plain", [](LionOptions&) {});
  lion("wd_betas", [](LionOptions& o) { o.weight_decay = 0.5, o.beta1 = 0.5, o.beta2 = 0.0; });
  auto ademamix = [&](std::string name, auto&& set) {
    AdEMAMixOptions o;
    o.lr = 0.01;
    set(o);
    grid.push_back({"ademamix_" + name, o});
  };
  ademamix("plain", [](AdEMAMixOptions&) {});
  ademamix("no_decay", [](AdEMAMixOptions& o) { o.weight_decay = 0.0; });
  ademamix("warmups_betas", [](AdEMAMixOptions& o) {
    o.t_alpha = 5, o.t_beta3 = 8, o.beta1 = 0.5, o.beta2 = 0.9, o.beta3 = 0.99, o.alpha = 2.0,
    o.eps = 1e-3, o.weight_decay = 0.1;
  });

  // Schedule-Free in train mode, as train() leaves a fresh optimizer (a step in eval mode throws)
  auto adamw_sf = [&](std::string name, auto&& set) {
    AdamWScheduleFreeOptions o;
    o.lr = 0.01;
    o.train_mode = true;
    set(o);
    grid.push_back({"adamw_schedulefree_" + name, o});
  };
  adamw_sf("plain", [](AdamWScheduleFreeOptions&) {});
  adamw_sf("warmup_r_wd", [](AdamWScheduleFreeOptions& o) {
    o.warmup_steps = 3, o.r = 0.5, o.weight_lr_power = 1.0, o.weight_decay = 0.1, o.beta1 = 0.5,
    o.beta2 = 0.9, o.eps = 1e-3;
  });
  auto sgd_sf = [&](std::string name, auto&& set) {
    SGDScheduleFreeOptions o;
    o.lr = 0.1;
    o.train_mode = true;
    set(o);
    grid.push_back({"sgd_schedulefree_" + name, o});
  };
  sgd_sf("plain", [](SGDScheduleFreeOptions&) {});
  sgd_sf("warmup_r_wd", [](SGDScheduleFreeOptions& o) {
    o.warmup_steps = 3, o.r = 1.0, o.weight_lr_power = 0.0, o.weight_decay = 0.1, o.momentum = 0.5;
  });

  return grid;
}

// RAdam's first rectified step is 6 (beta2 0.9 or 0.999): a run that should take both branches
// takes at least this many steps, one more than 6 so that a param skipped once gets there too.
inline constexpr int kRadamSteps = 7;
inline int steps_for(const AnyOptions& options, int steps) {
  return std::holds_alternative<RadamOptions>(options) ? std::max(steps, kRadamSteps) : steps;
}

// gtest prints a parameter with this instead of dumping its bytes.
inline void PrintTo(const NamedOptions& options, std::ostream* out) { *out << options.name; }

inline std::string grid_name(const testing::TestParamInfo<NamedOptions>& info) {
  return info.param.name;
}

// The rule's transforms that set the mode its step needs (Schedule-Free's train(): its
// optimizers start in eval mode, where a step throws).
template <class R>
void ready_to_step(RuleOptimizer<R>& opt) {
  if constexpr (rules::transform_count<R>() > 0)
    for (const auto& t : R::transforms)
      if (t.to) opt.transform(t.name);
}

inline std::unique_ptr<Optimizer> make_optimizer(const AnyOptions& options) {
  return std::visit(
      [](const auto& o) -> std::unique_ptr<Optimizer> {
        using R = typename std::decay_t<decltype(o)>::Rule;
        auto opt = std::make_unique<RuleOptimizer<R>>(o);
        ready_to_step(*opt);
        return opt;
      },
      options);
}

// An optimizer's options as they are now (its group state included: Schedule-Free's k, ...).
inline AnyOptions current_options(const Optimizer& opt) {
  AnyOptions out;
  rules::for_each_rule([&](auto r) {
    using R = decltype(r);
    if (opt.rule() == rules::id<R>) out = static_cast<const RuleOptimizer<R>&>(opt).options();
  });
  return out;
}

inline double& lr_of(Optimizer& opt) {
  double* lr = nullptr;
  rules::for_each_rule([&](auto r) {
    using R = decltype(r);
    if (opt.rule() == rules::id<R>) lr = &static_cast<RuleOptimizer<R>&>(opt).options().lr;
  });
  if (lr == nullptr) throw std::logic_error("unknown rule");
  return *lr;
}

inline double& lr_of(AnyOptions& options) {
  return std::visit([](auto& o) -> double& { return o.lr; }, options);
}

// ---- deterministic data ----------------------------------------------------------------------
inline std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [lo, hi), exactly representable in T.
template <class T>
std::vector<T> random_vector(std::size_t n, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::vector<T> out(n);
  std::uint64_t state = seed * 0x2545F4914F6CDD1Dull + n;
  for (T& x : out) {
    const double u = static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-53;
    x = static_cast<T>(lo + (hi - lo) * u);
  }
  return out;
}

// ---- bit comparison --------------------------------------------------------------------------
template <class T>
testing::AssertionResult bit_equal(std::span<const T> actual, std::span<const T> expected) {
  if (actual.size() != expected.size())
    return testing::AssertionFailure()
           << "sizes differ: " << actual.size() << " vs " << expected.size();
  for (std::size_t i = 0; i < actual.size(); ++i)
    if (std::memcmp(&actual[i], &expected[i], sizeof(T)) != 0)
      return testing::AssertionFailure() << "first difference at element " << i << " of "
                                         << actual.size() << ": " << actual[i] << " vs "
                                         << expected[i] << " (" << std::hexfloat << actual[i]
                                         << " vs " << expected[i] << std::defaultfloat << ")";
  return testing::AssertionSuccess();
}
template <class T>
testing::AssertionResult bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return bit_equal(std::span<const T>(a), std::span<const T>(b));
}

// ---- the scalar reference: torch.optim's single-tensor code, one element at a time ----------
// Each hyperparameter is computed in double and rounded to T once, as torch hands Python floats
// to its kernels; no FMA (the tests are compiled with -ffp-contract=off).
template <class T>
struct RefParam {
  std::vector<T> value;
  std::array<std::vector<T>, 3> slots;  // empty: not created yet
  std::int64_t step = 0;
  // Per-param scalar state, named as in torch's state dict (NAdam: mu_product). torch keeps it
  // in a 0-d float32 tensor (the default dtype) for float32 and float64 params alike.
  std::vector<std::pair<std::string, float>> scalars;
};

template <class T>
T to(double x) {
  return static_cast<T>(x);
}

// torch.lerp(start, end, weight) on CPU: fused multiply-adds.
template <class T>
T ref_lerp(T start, T end, T weight) {
  return std::abs(weight) < T(0.5) ? std::fma(weight, end - start, start)
                                   : std::fma(weight - T(1), end - start, end);
}

template <class T>
T ref_sqrt(T x) {
  return std::sqrt(x);
}

// torch.maximum on CPU: NaN if either side is NaN, else the larger.
template <class T>
T ref_maximum(T a, T b) {
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<T>::quiet_NaN();
  return std::max(a, b);
}

template <class T>
void ref_ensure(std::vector<T>& slot, std::size_t n, double value = 0.0) {
  if (slot.empty()) slot.assign(n, to<T>(value));
}

template <class T>
void ref_step(const SgdOptions& o, RefParam<T>& p, const std::vector<T>& grad) {
  const bool momentum = o.momentum != 0.0;
  const bool fresh = momentum && p.slots[0].empty();
  if (momentum) ref_ensure(p.slots[0], p.value.size());
  for (std::size_t i = 0; i < p.value.size(); ++i) {
    T g = o.maximize ? -grad[i] : grad[i];
    if (o.weight_decay != 0.0) g = std::fma(p.value[i], to<T>(o.weight_decay), g);
    if (momentum) {
      T& buf = p.slots[0][i];
      buf = fresh ? g : std::fma(g, to<T>(1.0 - o.dampening), buf * to<T>(o.momentum));
      g = o.nesterov ? std::fma(buf, to<T>(o.momentum), g) : buf;
    }
    p.value[i] = std::fma(g, to<T>(-o.lr), p.value[i]);
  }
  ++p.step;
}

template <class T>
void ref_step(const AdagradOptions& o, RefParam<T>& p, const std::vector<T>& grad) {
  ref_ensure(p.slots[0], p.value.size(), o.initial_accumulator_value);
  const std::int64_t step = ++p.step;
  const double clr = o.lr / (1.0 + static_cast<double>(step - 1) * o.lr_decay);
  for (std::size_t i = 0; i < p.value.size(); ++i) {
    T g = o.maximize ? -grad[i] : grad[i];
    if (o.weight_decay != 0.0) g = std::fma(p.value[i], to<T>(o.weight_decay), g);
    T& sum = p.slots[0][i];
    sum = std::fma(g, g, sum);
    const T std_dev = ref_sqrt(sum) + to<T>(o.eps);
    p.value[i] = p.value[i] + to<T>(-clr) * g / std_dev;
  }
}

template <class T>
void ref_step(const AdadeltaOptions& o, RefParam<T>& p, const std::vector<T>& grad) {
  ref_ensure(p.slots[0], p.value.size());
  ref_ensure(p.slots[1], p.value.size());
  ++p.step;
  const T rho = to<T>(o.rho), one_minus_rho = to<T>(1.0 - o.rho), eps = to<T>(o.eps);
  for (std::size_t i = 0; i < p.value.size(); ++i) {
    T g = o.maximize ? -grad[i] : grad[i];
    if (o.weight_decay != 0.0) g = std::fma(p.value[i], to<T>(o.weight_decay), g);
    T& square_avg = p.slots[0][i];
    T& acc_delta = p.slots[1][i];
    square_avg = std::fma(one_minus_rho * g, g, square_avg * rho);
    const T std_dev = ref_sqrt(square_avg + eps);
    const T delta = ref_sqrt(acc_delta + eps) / std_dev * g;
    acc_delta = std::fma(one_minus_rho * delta, delta, acc_delta * rho);
    p.value[i] = std::fma(delta, to<T>(-o.lr), p.value[i]);
  }
}

template <class T>
void ref_step(const RmspropOptions& o, RefParam<T>& p, const std::vector<T>& grad) {
  const std::size_t n = p.value.size();
  ref_ensure(p.slots[0], n);
  if (o.momentum > 0.0) ref_ensure(p.slots[1], n);
  if (o.centered) ref_ensure(p.slots[2], n);
  ++p.step;
  for (std::size_t i = 0; i < n; ++i) {
    T g = o.maximize ? -grad[i] : grad[i];
    if (o.weight_decay != 0.0) g = std::fma(p.value[i], to<T>(o.weight_decay), g);
    T& square_avg = p.slots[0][i];
    square_avg = std::fma(to<T>(1.0 - o.alpha) * g, g, square_avg * to<T>(o.alpha));
    T avg;
    if (o.centered) {
      T& grad_avg = p.slots[2][i];
      grad_avg = ref_lerp(grad_avg, g, to<T>(1.0 - o.alpha));
      avg = ref_sqrt(std::fma(-grad_avg, grad_avg, square_avg));
    } else {
      avg = ref_sqrt(square_avg);
    }
    avg = avg + to<T>(o.eps);
    if (o.momentum > 0.0) {
      T& buf = p.slots[1][i];
      buf = buf * to<T>(o.momentum) + g / avg;
      p.value[i] = std::fma(buf, to<T>(-o.lr), p.value[i]);
    } else {
      p.value[i] = p.value[i] + to<T>(-o.lr) * g / avg;
    }
  }
}

// Adam and AdamW (their options are two structs of the same fields).
template <class T, class O>
  requires std::is_same_v<O, AdamOptions> || std::is_same_v<O, AdamWOptions>
void ref_step(const O& o, RefParam<T>& p, const std::vector<T>& grad) {
  const std::size_t n = p.value.size();
  ref_ensure(p.slots[0], n);
  ref_ensure(p.slots[1], n);
  if (o.amsgrad) ref_ensure(p.slots[2], n);
  const double step = static_cast<double>(++p.step);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, step);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, step);
  const double step_size = o.lr / bias_correction1;
  const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);
  for (std::size_t i = 0; i < n; ++i) {
    T g = o.maximize ? -grad[i] : grad[i];
    T param = p.value[i];
    if (o.weight_decay != 0.0) {
      if (o.decoupled_weight_decay) param = param * to<T>(1.0 - o.lr * o.weight_decay);
      else g = std::fma(param, to<T>(o.weight_decay), g);
    }
    T& exp_avg = p.slots[0][i];
    T& exp_avg_sq = p.slots[1][i];
    exp_avg = ref_lerp(exp_avg, g, to<T>(1.0 - o.beta1));
    exp_avg_sq = std::fma(to<T>(1.0 - o.beta2) * g, g, exp_avg_sq * to<T>(o.beta2));
    T second = exp_avg_sq;
    if (o.amsgrad) {
      T& max_sq = p.slots[2][i];
      max_sq = std::max(max_sq, exp_avg_sq);
      second = max_sq;
    }
    const T denom = ref_sqrt(second) / to<T>(bias_correction2_sqrt) + to<T>(o.eps);
    p.value[i] = param + to<T>(-step_size) * exp_avg / denom;
  }
}

// torch.optim.NAdam, _single_tensor_nadam (capturable and differentiable off). mu_product is
// a float32 tensor: `mu_product *= mu` converts the Python float mu to float32 and multiplies in
// float32; the coefficients then read it back as a Python float (_get_value).
template <class T>
void ref_step(const NadamOptions& o, RefParam<T>& p, const std::vector<T>& grad) {
  const std::size_t n = p.value.size();
  ref_ensure(p.slots[0], n);
  ref_ensure(p.slots[1], n);
  if (p.scalars.empty()) p.scalars = {{"mu_product", 1.0f}};
  const double step = static_cast<double>(++p.step);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, step);
  const double mu = o.beta1 * (1.0 - 0.5 * std::pow(0.96, step * o.momentum_decay));
  const double mu_next = o.beta1 * (1.0 - 0.5 * std::pow(0.96, (step + 1.0) * o.momentum_decay));
  float& mu_product = p.scalars[0].second;
  mu_product = mu_product * static_cast<float>(mu);
  const double mu_product_next = static_cast<double>(mu_product) * mu_next;
  const double grad_value = -o.lr * (1.0 - mu) / (1.0 - static_cast<double>(mu_product));
  const double exp_avg_value = (-o.lr * mu_next) / (1.0 - mu_product_next);
  for (std::size_t i = 0; i < n; ++i) {
    T g = o.maximize ? -grad[i] : grad[i];
    T param = p.value[i];
    if (o.weight_decay != 0.0) {
      if (o.decoupled_weight_decay) param = param * to<T>(1.0 - o.lr * o.weight_decay);
      else g = std::fma(param, to<T>(o.weight_decay), g);
    }
    T& exp_avg = p.slots[0][i];
    T& exp_avg_sq = p.slots[1][i];
    exp_avg = ref_lerp(exp_avg, g, to<T>(1.0 - o.beta1));
    exp_avg_sq = std::fma(to<T>(1.0 - o.beta2) * g, g, exp_avg_sq * to<T>(o.beta2));
    const T denom = ref_sqrt(exp_avg_sq / to<T>(bias_correction2)) + to<T>(o.eps);
    // addcdiv_(t1, t2, value): self + value * t1 / t2
    param = param + to<T>(grad_value) * g / denom;
    p.value[i] = param + to<T>(exp_avg_value) * exp_avg / denom;
  }
}

// torch.optim.RAdam, _single_tensor_radam (capturable and differentiable off): the branch is
// chosen per step from rho_t, in Python floats.
template <class T>
void ref_step(const RadamOptions& o, RefParam<T>& p, const std::vector<T>& grad) {
  const std::size_t n = p.value.size();
  ref_ensure(p.slots[0], n);
  ref_ensure(p.slots[1], n);
  const double step = static_cast<double>(++p.step);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, step);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, step);
  const double rho_inf = 2.0 / (1.0 - o.beta2) - 1.0;
  const double rho_t = rho_inf - 2.0 * step * std::pow(o.beta2, step) / bias_correction2;
  const bool rectified = rho_t > 5.0;
  const double rect =
      rectified ? std::pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                               ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t),
                           0.5)
                : 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    T g = o.maximize ? -grad[i] : grad[i];
    T param = p.value[i];
    if (o.weight_decay != 0.0) {
      if (o.decoupled_weight_decay) param = param * to<T>(1.0 - o.lr * o.weight_decay);
      else g = std::fma(param, to<T>(o.weight_decay), g);
    }
    T& exp_avg = p.slots[0][i];
    T& exp_avg_sq = p.slots[1][i];
    exp_avg = ref_lerp(exp_avg, g, to<T>(1.0 - o.beta1));
    exp_avg_sq = std::fma(to<T>(1.0 - o.beta2) * g, g, exp_avg_sq * to<T>(o.beta2));
    const T bias_corrected_exp_avg = exp_avg / to<T>(bias_correction1);
    T update;
    if (rectified) {
      // (bias_correction2 ** 0.5) / t is Tensor.__rtruediv__: t.reciprocal() * bc2 ** 0.5
      const T exp_avg_sq_sqrt = ref_sqrt(exp_avg_sq) + to<T>(o.eps);
      const T adaptive_lr = (T(1) / exp_avg_sq_sqrt) * to<T>(std::pow(bias_correction2, 0.5));
      update = bias_corrected_exp_avg * to<T>(o.lr) * adaptive_lr * to<T>(rect);
    } else {
      update = bias_corrected_exp_avg * to<T>(o.lr);
    }
    p.value[i] = param + T(-1) * update;  // add_(update, alpha=-1.0)
  }
}

// torch.optim.Adamax, _single_tensor_adamax (capturable and differentiable off).
template <class T>
void ref_step(const AdamaxOptions& o, RefParam<T>& p, const std::vector<T>& grad) {
  const std::size_t n = p.value.size();
  ref_ensure(p.slots[0], n);
  ref_ensure(p.slots[1], n);
  const double step = static_cast<double>(++p.step);
  const double clr = o.lr / (1.0 - std::pow(o.beta1, step));
  for (std::size_t i = 0; i < n; ++i) {
    T g = o.maximize ? -grad[i] : grad[i];
    if (o.weight_decay != 0.0) g = std::fma(p.value[i], to<T>(o.weight_decay), g);
    T& exp_avg = p.slots[0][i];
    T& exp_inf = p.slots[1][i];
    exp_avg = ref_lerp(exp_avg, g, to<T>(1.0 - o.beta1));
    exp_inf = ref_maximum(exp_inf * to<T>(o.beta2), std::abs(g) + to<T>(o.eps));
    p.value[i] = p.value[i] + to<T>(-clr) * exp_avg / exp_inf;  // addcdiv_(value=-clr)
  }
}

// Lion as lion-pytorch 0.2 steps it (rules/lion.hpp): decay, the sign step, the momentum.
template <class T>
T ref_sign(T x) {
  return x > T(0) ? T(1) : x < T(0) ? T(-1) : T(0);
}

template <class T>
void ref_step(const LionOptions& o, RefParam<T>& p, const std::vector<T>& grad) {
  const std::size_t n = p.value.size();
  ref_ensure(p.slots[0], n);
  for (std::size_t i = 0; i < n; ++i) {
    T& exp_avg = p.slots[0][i];
    const T param = p.value[i] * to<T>(1.0 - o.lr * o.weight_decay);
    const T c = std::fma(grad[i], to<T>(1.0 - o.beta1), exp_avg * to<T>(o.beta1));
    p.value[i] = std::fma(ref_sign(c), to<T>(-o.lr), param);
    exp_avg = std::fma(grad[i], to<T>(1.0 - o.beta2), exp_avg * to<T>(o.beta2));
  }
  ++p.step;  // the C++ optimizer counts updates for every rule
}

// AdEMAMix as bitsandbytes 0.50 steps it on CPU (rules/ademamix.hpp): the warm-ups from the
// group's values, the three EMAs, decay when weight_decay > 0, the mixed step.
template <class T>
void ref_step(const AdEMAMixOptions& o, RefParam<T>& p, const std::vector<T>& grad) {
  const std::size_t n = p.value.size();
  for (auto& slot : p.slots) ref_ensure(slot, n);
  const double step = static_cast<double>(++p.step);
  const double alpha =
      o.t_alpha > 0 ? std::min(step * o.alpha / o.t_alpha, o.alpha) : o.alpha;  // NaN: None
  double beta3 = o.beta3;
  if (o.t_beta3 > 0) {
    const double ln1 = std::log(o.beta1), ln3 = std::log(o.beta3), s = step / o.t_beta3;
    beta3 = std::min(std::exp(ln1 * ln3 / ((1 - s) * ln3 + s * ln1)), o.beta3);
  }
  const double c1 = 1.0 - std::pow(o.beta1, step);
  const double c2 = std::sqrt(1.0 - std::pow(o.beta2, step));
  for (std::size_t i = 0; i < n; ++i) {
    const T g = grad[i];
    T& m1 = p.slots[0][i];
    T& m2 = p.slots[1][i];
    T& nu = p.slots[2][i];
    m1 = std::fma(g, to<T>(1.0 - o.beta1), m1 * to<T>(o.beta1));
    m2 = std::fma(g, to<T>(1.0 - beta3), m2 * to<T>(beta3));
    nu = std::fma(to<T>(1.0 - o.beta2) * g, g, nu * to<T>(o.beta2));
    T param = p.value[i];
    if (o.weight_decay > 0) param = param * to<T>(1.0 - o.lr * o.weight_decay);
    const T mixed = m1 / to<T>(c1) + to<T>(alpha) * m2;
    const T adaptive = std::sqrt(nu) / to<T>(c2) + to<T>(o.eps);
    p.value[i] = std::fma(mixed / adaptive, to<T>(-o.lr), param);
  }
}

// Schedule-Free as schedulefree 1.4.1 steps it (foreach=False; rules/schedule_free.hpp): the
// group's warm-up, lr_max and weights once per step, then per param the y and z updates.
template <class O>
void ref_advance(O& o) {
  if constexpr (requires { o.weight_sum; }) {
    const double lr = o.lr * (o.k < o.warmup_steps ? (o.k + 1) / o.warmup_steps : 1.0);
    o.scheduled_lr = lr;
    o.lr_max = std::max(lr, o.lr_max);
    o.weight_sum += std::pow(o.k + 1, o.r) * std::pow(o.lr_max, o.weight_lr_power);
    o.k += 1;
  }
}

// After ref_advance: the y and z updates from g (the normalised grad, decay added).
template <class O, class T>
void ref_schedule_free(const O& o, double beta, RefParam<T>& p, std::size_t i, T g) {
  const double weight = std::pow(o.k, o.r) * std::pow(o.lr_max, o.weight_lr_power);
  const double c = o.weight_sum == 0.0 ? 0.0 : weight / o.weight_sum;
  if (o.weight_decay != 0.0) g = std::fma(p.value[i], to<T>(o.weight_decay), g);
  T& z = p.slots[0][i];
  p.value[i] = std::fma(g, to<T>(o.scheduled_lr * (beta * (1.0 - c) - 1.0)),
                        ref_lerp(p.value[i], z, to<T>(c)));
  z = std::fma(g, to<T>(-o.scheduled_lr), z);
}

template <class T>
void ref_step(const AdamWScheduleFreeOptions& o, RefParam<T>& p, const std::vector<T>& grad) {
  if (p.slots[0].empty()) p.slots[0] = p.value;  // z: a copy of the param
  ref_ensure(p.slots[1], p.value.size());
  for (std::size_t i = 0; i < p.value.size(); ++i) {
    T& v = p.slots[1][i];
    v = std::fma(to<T>(1.0 - o.beta2) * grad[i], grad[i], v * to<T>(o.beta2));
    const T denom = ref_sqrt(v / to<T>(1.0 - std::pow(o.beta2, o.k))) + to<T>(o.eps);
    ref_schedule_free(o, o.beta1, p, i, grad[i] / denom);
  }
  ++p.step;
}

template <class T>
void ref_step(const SGDScheduleFreeOptions& o, RefParam<T>& p, const std::vector<T>& grad) {
  if (p.slots[0].empty()) p.slots[0] = p.value;
  for (std::size_t i = 0; i < p.value.size(); ++i) ref_schedule_free(o, o.momentum, p, i, grad[i]);
  ++p.step;
}

// A reference optimizer over the same param list; std::nullopt grads skip a param.
template <class T>
struct RefOptimizer {
  AnyOptions options;
  std::vector<RefParam<T>> params;

  void add(std::vector<T> value) {
    RefParam<T> p;
    p.value = std::move(value);
    if (const auto* a = std::get_if<AdagradOptions>(&options))  // torch: state at construction
      p.slots[0].assign(p.value.size(), to<T>(a->initial_accumulator_value));
    // torch creates mu_product (ones) on the first step; our optimizer holds its initial value
    // from add_param on, so the reference shows it from the start too.
    if (std::holds_alternative<NadamOptions>(options)) p.scalars = {{"mu_product", 1.0f}};
    params.push_back(std::move(p));
  }
  void step(const std::vector<std::optional<std::vector<T>>>& grads) {
    std::visit([](auto& o) { ref_advance(o); }, options);  // group state: once per step
    for (std::size_t i = 0; i < params.size(); ++i)
      if (grads[i]) std::visit([&](const auto& o) { ref_step(o, params[i], *grads[i]); }, options);
  }
};

// ---- checkpoint bytes and error messages (the stateful-API tests) ------------------------------

// The whole observable state of an optimizer, as bytes: its options and state (save()).
inline std::string saved(const Optimizer& opt) {
  std::ostringstream out;
  opt.save(out);
  return out.str();
}

// The message of the std::invalid_argument `fn` throws; anything else is a failure.
template <class Fn>
std::string invalid_argument_message(Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  } catch (...) {
    return "wrong exception type: not a std::exception";
  }
  return "no exception";
}

#define EXPECT_INVALID(statement, fragment)                                    \
  do {                                                                         \
    const std::string message_ = invalid_argument_message([&] { statement; }); \
    EXPECT_NE(message_.find(fragment), std::string::npos) << message_;         \
  } while (0)

// The checkpoint format's FNV-1a 64 and little-endian fields, to edit saved bytes.
inline std::uint64_t fnv1a(std::string_view bytes) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

template <class U>
U read_le(const std::string& bytes, std::size_t offset) {
  U value = 0;
  for (std::size_t i = 0; i < sizeof(U); ++i)
    value |= static_cast<U>(static_cast<unsigned char>(bytes[offset + i])) << (8 * i);
  return value;
}

template <class U>
void write_le(std::string& bytes, std::size_t offset, U value) {
  for (std::size_t i = 0; i < sizeof(U); ++i)
    bytes[offset + i] = static_cast<char>((static_cast<std::uint64_t>(value) >> (8 * i)) & 0xFF);
}

}  // namespace fastoptim::test
