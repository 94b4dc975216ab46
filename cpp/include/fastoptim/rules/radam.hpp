// torch.optim.RAdam: Adam with the variance rectification term; coupled or decoupled weight
// decay, maximize. A step is rectified when rho_t > 5, else the update is the bias-corrected
// momentum alone (both branches are torch's, chosen per step from the step count).
#pragma once

#include "fastoptim/rules/rule.hpp"

namespace fastoptim::rules {

struct Radam {
  struct Options {
    using Rule = Radam;
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;
    bool decoupled_weight_decay = false;
    bool maximize = false;
  };
  using O = Options;
  static constexpr const char* name = "radam";
  static constexpr const char* torch_name = "RAdam";
  static constexpr const char* reference = "torch.optim.RAdam";
  static constexpr auto fields = list<Field<O>>(
      number("lr", &O::lr), number("betas", &O::beta1, 0), number("betas", &O::beta2, 1),
      number("eps", &O::eps), number("weight_decay", &O::weight_decay),
      flag("decoupled_weight_decay", &O::decoupled_weight_decay), flag("maximize", &O::maximize));
  static constexpr auto checks = list<Check<O>>(
      check(&O::lr, Range::non_negative, "Invalid learning rate"),
      check(&O::eps, Range::non_negative, "Invalid epsilon value"),
      check(&O::beta1, Range::unit_half_open, "Invalid beta parameter at index 0"),
      check(&O::beta2, Range::unit_half_open, "Invalid beta parameter at index 1"),
      check(&O::weight_decay, Range::non_negative, "Invalid weight_decay value"));
  static constexpr const char* invalid(const O&) { return nullptr; }
  static constexpr auto slots = list<Slot<O>>(
      Slot<O>{"exp_avg"}, Slot<O>{.name = "exp_avg_sq", .non_negative = true});
  static constexpr List<ScalarSlot, 0> scalar_slots{};
  static constexpr auto args = list<Arg>(
      Arg{"lr"}, Arg{"betas"}, Arg{"eps"}, Arg{"weight_decay"}, Arg{"decoupled_weight_decay"},
      ignored_none("foreach", true), kw("maximize"), ignored_false("capturable", true),
      ignored_false("differentiable", true));
  static constexpr bool has_step = true;
  static constexpr bool eager_state = false;

  template <class C>
  struct Scalars {
    C beta2, one_minus_beta2, bias_correction1, lr, bias_correction2_sqrt, eps, rect,
        weight_decay, decay_factor;
    Lerp<C> exp_avg_lerp;
    bool maximize, coupled_weight_decay, decoupled_weight_decay, rectified;
  };

  template <class C, class Ctx>
  static Scalars<C> scalars(const O& o, const StepInput& in, Ctx& ctx) {
    const double step = in.step;
    const double bias_correction1 = 1.0 - ctx.pow(o.beta1, step);
    const double bias_correction2 = 1.0 - ctx.pow(o.beta2, step);
    const double rho_inf = 2.0 / (1.0 - o.beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * step * ctx.pow(o.beta2, step) / bias_correction2;
    const bool rectified = rho_t > 5.0;
    const double rect =
        rectified ? ctx.pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t),
                            0.5)
                  : 0.0;
    const bool decay = o.weight_decay != 0.0;
    const bool coupled = decay && !o.decoupled_weight_decay;
    const bool decoupled = decay && o.decoupled_weight_decay;
    const double decay_factor = 1.0 - o.lr * o.weight_decay;
    return {ctx.template narrow<C>(o.beta2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(1.0 - o.beta2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(bias_correction1, {{"beta1", o.beta1}}),
            ctx.template narrow<C>(o.lr, {{"lr", o.lr}}),
            rectified ? ctx.template narrow<C>(ctx.pow(bias_correction2, 0.5), {{"beta2", o.beta2}})
                      : ctx.template unused<C>(0.0),
            rectified ? ctx.template narrow<C>(o.eps, {{"eps", o.eps}})
                      : ctx.template unused<C>(o.eps),
            rectified ? ctx.template narrow<C>(rect, {{"beta2", o.beta2}})
                      : ctx.template unused<C>(0.0),
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
            rectified};
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
    // torch: param.add_(exp_avg / bc1 * lr [* adaptive_lr * rect], alpha=-1)
    V update = exp_avg / V::set1(s.bias_correction1) * V::set1(s.lr);
    if (s.rectified) {
      // bc2 ** 0.5 / t is Tensor.__rtruediv__: t.reciprocal() * bc2 ** 0.5
      const V adaptive_lr = V::set1(C(1)) / (sqrt(exp_avg_sq) + V::set1(s.eps)) *
                            V::set1(s.bias_correction2_sqrt);
      update = update * adaptive_lr * V::set1(s.rect);
    }
    io.store_param(param - update);
  }
};

}  // namespace fastoptim::rules

// The public names: the options struct, and the C++ optimizer class (fastoptim/optimizer.hpp).
namespace fastoptim {
template <class R>
class RuleOptimizer;
using RadamOptions = rules::Radam::Options;
using Radam = RuleOptimizer<rules::Radam>;
}  // namespace fastoptim
