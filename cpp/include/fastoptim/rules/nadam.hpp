// torch.optim.NAdam: Nesterov-accelerated Adam with momentum decay; coupled or decoupled
// weight decay, maximize. Its per-param scalar state mu_product is the running product of the
// momentum coefficients mu_t, kept (and multiplied) in the step counter's type, as torch
// keeps it in a 0-d tensor.
#pragma once

#include "fastoptim/rules/rule.hpp"

namespace fastoptim::rules {

struct Nadam {
  struct Options {
    using Rule = Nadam;
    double lr = 2e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;
    double momentum_decay = 4e-3;
    bool decoupled_weight_decay = false;
    bool maximize = false;
  };
  using O = Options;
  static constexpr const char* name = "nadam";
  static constexpr const char* torch_name = "NAdam";
  static constexpr const char* reference = "torch.optim.NAdam";
  static constexpr auto fields = list<Field<O>>(
      number("lr", &O::lr), number("betas", &O::beta1, 0), number("betas", &O::beta2, 1),
      number("eps", &O::eps), number("weight_decay", &O::weight_decay),
      number("momentum_decay", &O::momentum_decay),
      flag("decoupled_weight_decay", &O::decoupled_weight_decay), flag("maximize", &O::maximize));
  static constexpr auto checks = list<Check<O>>(
      check(&O::lr, Range::non_negative, "Invalid learning rate"),
      check(&O::eps, Range::non_negative, "Invalid epsilon value"),
      check(&O::beta1, Range::unit_half_open, "Invalid beta parameter at index 0"),
      check(&O::beta2, Range::unit_half_open, "Invalid beta parameter at index 1"),
      check(&O::weight_decay, Range::non_negative, "Invalid weight_decay value"),
      check(&O::momentum_decay, Range::non_negative, "Invalid momentum_decay value"));
  static constexpr const char* invalid(const O&) { return nullptr; }
  static constexpr auto slots = list<Slot<O>>(
      Slot<O>{"exp_avg"}, Slot<O>{.name = "exp_avg_sq", .non_negative = true});
  static constexpr auto scalar_slots = list<ScalarSlot>(ScalarSlot{"mu_product", 1.0});
  static constexpr auto args = list<Arg>(
      Arg{"lr"}, Arg{"betas"}, Arg{"eps"}, Arg{"weight_decay"}, Arg{"momentum_decay"},
      Arg{"decoupled_weight_decay"}, ignored_none("foreach", true), kw("maximize"),
      ignored_false("capturable", true), ignored_false("differentiable", true));
  static constexpr bool has_step = true;
  static constexpr bool eager_state = false;

  template <class C>
  struct Scalars {
    C beta2, one_minus_beta2, bias_correction2, eps, weight_decay, decay_factor, grad_coef,
        exp_avg_coef;
    Lerp<C> exp_avg_lerp;
    bool maximize, coupled_weight_decay, decoupled_weight_decay;
  };

  template <class C, class Ctx>
  static Scalars<C> scalars(const O& o, const StepInput& in, Ctx& ctx) {
    // torch's single-tensor NAdam, in Python floats, except mu_product: a tensor in the step
    // counter's type, multiplied by mu there (ctx.scale_scalar).
    const double bias_correction2 = 1.0 - ctx.pow(o.beta2, in.step);
    const double mu = o.beta1 * (1.0 - 0.5 * ctx.pow(0.96, in.step * o.momentum_decay));
    const double mu_next =
        o.beta1 * (1.0 - 0.5 * ctx.pow(0.96, (in.step + 1.0) * o.momentum_decay));
    const double mu_product = ctx.scale_scalar(0, mu);
    const double mu_product_next = mu_product * mu_next;
    const double grad_coef = -o.lr * (1.0 - mu) / (1.0 - mu_product);
    const double exp_avg_coef = -o.lr * mu_next / (1.0 - mu_product_next);
    const bool decay = o.weight_decay != 0.0;
    const bool coupled = decay && !o.decoupled_weight_decay;
    const bool decoupled = decay && o.decoupled_weight_decay;
    const double decay_factor = 1.0 - o.lr * o.weight_decay;
    return {ctx.template narrow<C>(o.beta2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(1.0 - o.beta2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(bias_correction2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(o.eps, {{"eps", o.eps}}),
            coupled ? ctx.template narrow<C>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                    : ctx.template unused<C>(o.weight_decay),
            decoupled ? ctx.template narrow<C>(decay_factor,
                                               {{"lr", o.lr}, {"weight_decay", o.weight_decay}},
                                               "1 - lr * weight_decay")
                      : ctx.template unused<C>(decay_factor),
            ctx.template narrow<C>(
                grad_coef, {{"lr", o.lr}, {"beta1", o.beta1}, {"momentum_decay", o.momentum_decay}},
                "-lr * (1 - mu) / (1 - mu_product)"),
            ctx.template narrow<C>(
                exp_avg_coef,
                {{"lr", o.lr}, {"beta1", o.beta1}, {"momentum_decay", o.momentum_decay}},
                "-lr * mu_next / (1 - mu_product * mu_next)"),
            make_lerp<C>(ctx.template narrow<C>(1.0 - o.beta1, {{"beta1", o.beta1}})),
            o.maximize,
            coupled,
            decoupled};
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
    const V denom = sqrt(exp_avg_sq / V::set1(s.bias_correction2)) + V::set1(s.eps);
    // two addcdiv_ calls, each param + (value * t1) / t2 as torch's CPU kernel computes it
    param = param + V::set1(s.grad_coef) * g / denom;
    io.store_param(param + V::set1(s.exp_avg_coef) * exp_avg / denom);
  }
};

}  // namespace fastoptim::rules

// The public names: the options struct, and the C++ optimizer class (fastoptim/optimizer.hpp).
namespace fastoptim {
template <class R>
class RuleOptimizer;
using NadamOptions = rules::Nadam::Options;
using Nadam = RuleOptimizer<rules::Nadam>;
}  // namespace fastoptim
