// torch.optim.Adamax: Adam with an infinity-norm second moment; weight decay, maximize.
#pragma once

#include "fastoptim/rules/rule.hpp"

namespace fastoptim::rules {

struct Adamax {
  struct Options {
    using Rule = Adamax;
    double lr = 2e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;
    bool maximize = false;
  };
  using O = Options;
  static constexpr const char* name = "adamax";
  static constexpr const char* torch_name = "Adamax";
  static constexpr const char* reference = "torch.optim.Adamax";
  static constexpr auto fields = list<Field<O>>(
      number("lr", &O::lr), number("betas", &O::beta1, 0), number("betas", &O::beta2, 1),
      number("eps", &O::eps), number("weight_decay", &O::weight_decay),
      flag("maximize", &O::maximize));
  static constexpr auto checks = list<Check<O>>(
      check(&O::lr, Range::non_negative, "Invalid learning rate"),
      check(&O::eps, Range::non_negative, "Invalid epsilon value"),
      check(&O::beta1, Range::unit_half_open, "Invalid beta parameter at index 0"),
      check(&O::beta2, Range::unit_half_open, "Invalid beta parameter at index 1"),
      check(&O::weight_decay, Range::non_negative, "Invalid weight_decay value"));
  static constexpr const char* invalid(const O&) { return nullptr; }
  static constexpr auto slots = list<Slot<O>>(Slot<O>{"exp_avg"}, Slot<O>{.name = "exp_inf", .non_negative = true});
  static constexpr List<ScalarSlot, 0> scalar_slots{};
  static constexpr auto args = list<Arg>(
      Arg{"lr"}, Arg{"betas"}, Arg{"eps"}, Arg{"weight_decay"}, ignored_none("foreach", false),
      kw("maximize"), ignored_false("differentiable", true), ignored_false("capturable", true));
  static constexpr bool has_step = true;
  static constexpr bool eager_state = false;

  template <class C>
  struct Scalars {
    C beta2, eps, weight_decay, neg_clr;
    Lerp<C> exp_avg_lerp;
    bool maximize, has_weight_decay;
  };

  template <class C, class Ctx>
  static Scalars<C> scalars(const O& o, const StepInput& in, Ctx& ctx) {
    const double clr = o.lr / (1.0 - ctx.pow(o.beta1, in.step));
    const bool decay = o.weight_decay != 0.0;
    return {ctx.template narrow<C>(o.beta2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(o.eps, {{"eps", o.eps}}),
            decay ? ctx.template narrow<C>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                  : ctx.template unused<C>(o.weight_decay),
            ctx.template narrow<C>(-clr, {{"lr", o.lr}, {"beta1", o.beta1}},
                                   "lr / (1 - beta1 ** step)"),
            make_lerp<C>(ctx.template narrow<C>(1.0 - o.beta1, {{"beta1", o.beta1}})),
            o.maximize,
            decay};
  }

  template <class V, class Io, class C>
  static FASTOPTIM_INLINE void update(const Scalars<C>& s, const Io& io) {
    V g = io.grad();
    if (s.maximize) g = neg(g);
    const V param = io.param();
    if (s.has_weight_decay) g = fma(param, V::set1(s.weight_decay), g);
    const V exp_avg = lerp(io.state(0), g, s.exp_avg_lerp);
    io.store_state(0, exp_avg);
    // torch.maximum: NaN if either side is NaN
    const V exp_inf = maximum(io.state(1) * V::set1(s.beta2), abs(g) + V::set1(s.eps));
    io.store_state(1, exp_inf);
    // addcdiv_(exp_avg, exp_inf, value=-clr): param + (-clr * exp_avg) / exp_inf
    io.store_param(param + V::set1(s.neg_clr) * exp_avg / exp_inf);
  }
};

}  // namespace fastoptim::rules

// The public names: the options struct, and the C++ optimizer class (fastoptim/optimizer.hpp).
namespace fastoptim {
template <class R>
class RuleOptimizer;
using AdamaxOptions = rules::Adamax::Options;
using Adamax = RuleOptimizer<rules::Adamax>;
}  // namespace fastoptim
