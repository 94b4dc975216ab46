// torch.optim.Adam and AdamW: amsgrad, coupled or decoupled weight decay, maximize.
#pragma once

#include "fastoptim/rules/rule.hpp"

namespace fastoptim::rules {

// Adam and AdamW share everything but their names, torch's signature and two defaults. Each
// has its own Options struct, an aggregate (`fastoptim::AdamW opt({.lr = 1e-3})`): a
// designated initializer can name only a struct's own members, so AdamW's options cannot
// derive from Adam's. The two defaults come as a type (Clang before 18 and MSVC take no
// floating-point template arguments).
template <class Self, class Defaults>
struct AdamFamily {
  struct Options {
    using Rule = Self;
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = Defaults::weight_decay;
    bool amsgrad = false;
    bool maximize = false;
    bool decoupled_weight_decay = Defaults::decoupled_weight_decay;
  };
  using O = Options;
  static constexpr auto fields = list<Field<O>>(
      number("lr", &O::lr), number("betas", &O::beta1, 0), number("betas", &O::beta2, 1),
      number("eps", &O::eps), number("weight_decay", &O::weight_decay),
      flag("amsgrad", &O::amsgrad), flag("maximize", &O::maximize),
      flag("decoupled_weight_decay", &O::decoupled_weight_decay));
  static constexpr auto checks = list<Check<O>>(
      check(&O::lr, Range::non_negative, "Invalid learning rate"),
      check(&O::eps, Range::non_negative, "Invalid epsilon value"),
      check(&O::beta1, Range::unit_half_open, "Invalid beta parameter at index 0"),
      check(&O::beta2, Range::unit_half_open, "Invalid beta parameter at index 1"),
      check(&O::weight_decay, Range::non_negative, "Invalid weight_decay value"));
  static constexpr const char* invalid(const O&) { return nullptr; }
  static constexpr auto slots = list<Slot<O>>(
      Slot<O>{"exp_avg"}, Slot<O>{.name = "exp_avg_sq", .non_negative = true},
      Slot<O>{.name = "max_exp_avg_sq",
              .used = [](const O& o) { return o.amsgrad; },
              .non_negative = true});
  static constexpr List<ScalarSlot, 0> scalar_slots{};
  static constexpr bool has_step = true;
  static constexpr bool eager_state = false;

  template <class C>
  struct Scalars {
    C neg_step_size, beta2, one_minus_beta2, bias_correction2_sqrt, eps, weight_decay,
        decay_factor;
    Lerp<C> exp_avg_lerp;
    bool maximize, coupled_weight_decay, decoupled_weight_decay, amsgrad;
  };

  template <class C, class Ctx>
  static Scalars<C> scalars(const O& o, const StepInput& in, Ctx& ctx) {
    // As torch: Python floats, beta ** step with a float step, bias_correction2 ** 0.5.
    const double bias_correction1 = 1.0 - ctx.pow(o.beta1, in.step);
    const double bias_correction2 = 1.0 - ctx.pow(o.beta2, in.step);
    const double step_size = o.lr / bias_correction1;
    const bool decay = o.weight_decay != 0.0;
    const bool coupled = decay && !o.decoupled_weight_decay;
    const bool decoupled = decay && o.decoupled_weight_decay;
    const double decay_factor = 1.0 - o.lr * o.weight_decay;
    return {ctx.template narrow<C>(-step_size, {{"lr", o.lr}, {"beta1", o.beta1}},
                                   "lr / (1 - beta1 ** step)"),
            ctx.template narrow<C>(o.beta2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(1.0 - o.beta2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(ctx.pow(bias_correction2, 0.5), {{"beta2", o.beta2}}),
            ctx.template narrow<C>(o.eps, {{"eps", o.eps}}),
            coupled ? ctx.template narrow<C>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                    : ctx.template unused<C>(o.weight_decay),
            decoupled ? ctx.template narrow<C>(decay_factor,
                                               {{"lr", o.lr}, {"weight_decay", o.weight_decay}},
                                               "1 - lr * weight_decay")
                      : ctx.template unused<C>(decay_factor),
            make_lerp<C>(ctx.template narrow<C>(1.0 - o.beta1, {{"beta1", o.beta1}})),
            o.maximize,
            coupled,
            decoupled,
            o.amsgrad};
  }

  template <class V, class Io, class C>
  static FASTOPTIM_INLINE void update(const Scalars<C>& s, const Io& io) {
    V g = io.grad();
    V param = io.param();
    if (s.maximize) g = neg(g);
    if (s.decoupled_weight_decay) param = param * V::set1(s.decay_factor);
    if (s.coupled_weight_decay) g = fma(param, V::set1(s.weight_decay), g);
    const V exp_avg = lerp(io.state(0), g, s.exp_avg_lerp);
    io.store_state(0, exp_avg);
    const V exp_avg_sq = fma(V::set1(s.one_minus_beta2) * g, g, io.state(1) * V::set1(s.beta2));
    io.store_state(1, exp_avg_sq);
    V second_moment = exp_avg_sq;
    if (s.amsgrad) {
      second_moment = max(io.state(2), exp_avg_sq);
      io.store_state(2, second_moment);
    }
    const V denom = sqrt(second_moment) / V::set1(s.bias_correction2_sqrt) + V::set1(s.eps);
    // addcdiv_(exp_avg, denom, value=-step_size): param + (-step_size * exp_avg) / denom
    io.store_param(param + V::set1(s.neg_step_size) * exp_avg / denom);
  }
};

struct AdamDefaults {
  static constexpr double weight_decay = 0.0;
  static constexpr bool decoupled_weight_decay = false;
};
struct AdamWDefaults {
  static constexpr double weight_decay = 1e-2;
  static constexpr bool decoupled_weight_decay = true;
};

struct Adam : AdamFamily<Adam, AdamDefaults> {
  static constexpr const char* name = "adam";
  static constexpr const char* torch_name = "Adam";
  static constexpr const char* reference = "torch.optim.Adam";
  static constexpr auto args = list<Arg>(
      Arg{"lr"}, Arg{"betas"}, Arg{"eps"}, Arg{"weight_decay"}, Arg{"amsgrad"},
      ignored_none("foreach", true), kw("maximize"), ignored_false("capturable", true),
      ignored_false("differentiable", true), ignored_none("fused", true),
      kw("decoupled_weight_decay"));
};

// torch.optim.AdamW: Adam with decoupled weight decay, 1e-2 by default.
struct AdamW : AdamFamily<AdamW, AdamWDefaults> {
  static constexpr const char* name = "adamw";
  static constexpr const char* torch_name = "AdamW";
  static constexpr const char* reference = "torch.optim.AdamW";
  static constexpr auto args = list<Arg>(
      Arg{"lr"}, Arg{"betas"}, Arg{"eps"}, Arg{"weight_decay"}, Arg{"amsgrad"}, kw("maximize"),
      ignored_none("foreach", true), ignored_false("capturable", true),
      ignored_false("differentiable", true), ignored_none("fused", true));
};

}  // namespace fastoptim::rules

// The public names: the options struct, and the C++ optimizer class (fastoptim/optimizer.hpp).
namespace fastoptim {
template <class R>
class RuleOptimizer;
using AdamOptions = rules::Adam::Options;
using Adam = RuleOptimizer<rules::Adam>;
using AdamWOptions = rules::AdamW::Options;
using AdamW = RuleOptimizer<rules::AdamW>;
}  // namespace fastoptim
