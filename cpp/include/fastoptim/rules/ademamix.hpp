// AdEMAMix (Pagliardini et al. 2024, "The AdEMAMix Optimizer: Better, Faster, Older",
// Algorithm 1), exact to bitsandbytes 0.50's `AdEMAMix` (32-bit state) on CPU: torch.optim has
// no AdEMAMix. Adam's fast EMA m1 (bias-corrected) mixed with a slow, uncorrected EMA m2 of
// weight alpha, over Adam's second moment nu. Per element, in bitsandbytes' CPU op order:
//   m1 = m1 * beta1 + (1 - beta1) * grad
//   m2 = m2 * beta3_t + (1 - beta3_t) * grad
//   nu = nu * beta2 + (1 - beta2) * grad * grad
//   param *= 1 - lr * weight_decay                     (only when weight_decay > 0)
//   param += -lr * (m1 / c1 + alpha_t * m2) / (sqrt(nu) / c2 + eps)
// with c1 = 1 - beta1 ** step, c2 = sqrt(1 - beta2 ** step), and the paper's warm-ups:
//   alpha_t = min(step * alpha / t_alpha, alpha)
//   beta3_t = min(exp(ln beta1 * ln beta3 / ((1 - s) * ln beta3 + s * ln beta1)), beta3),
//             s = step / t_beta3
// (None or 0: no warm-up, as bitsandbytes tests them for truth), with torch's CPU kernels'
// rounding: `add(x, alpha=a)` and `addcmul` are one fused multiply-add each. bitsandbytes
// computes in float32 for every param dtype; float64 params here compute in float64, exact to
// Algorithm 1 in float64.
#pragma once

#include "fastoptim/rules/rule.hpp"

namespace fastoptim::rules {

struct AdEMAMix {
  struct Options {
    using Rule = AdEMAMix;
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double beta3 = 0.9999;
    double alpha = 5.0;
    double t_alpha = kNone;  // steps of alpha's linear warm-up
    double t_beta3 = kNone;  // steps of beta3's warm-up
    double eps = 1e-8;
    double weight_decay = 1e-2;
  };
  using O = Options;
  static constexpr const char* name = "ademamix";
  static constexpr const char* torch_name = "AdEMAMix";
  static constexpr const char* reference = "bitsandbytes.optim.AdEMAMix";
  static constexpr auto fields = list<Field<O>>(
      number("lr", &O::lr), number("betas", &O::beta1, 0), number("betas", &O::beta2, 1),
      number("betas", &O::beta3, 2), number("alpha", &O::alpha),
      optional_number("t_alpha", &O::t_alpha), optional_number("t_beta3", &O::t_beta3),
      number("eps", &O::eps), number("weight_decay", &O::weight_decay));
  // bitsandbytes' checks, in its order and words; then alpha and the warm-up lengths, which it
  // leaves unchecked (a negative one would turn the mix or the warm-up around).
  static constexpr auto checks = list<Check<O>>(
      check(&O::lr, Range::non_negative, "Invalid learning rate"),
      check(&O::eps, Range::non_negative, "Invalid epsilon value"),
      check(&O::beta1, Range::unit_half_open, "Invalid beta parameter at index 0"),
      check(&O::beta2, Range::unit_half_open, "Invalid beta parameter at index 1"),
      check(&O::beta3, Range::unit_half_open, "Invalid beta parameter at index 2"),
      check(&O::weight_decay, Range::non_negative, "Invalid weight_decay value"),
      check(&O::alpha, Range::non_negative, "Invalid alpha value"),
      check(&O::t_alpha, Range::non_negative_or_none, "Invalid t_alpha value"),
      check(&O::t_beta3, Range::non_negative_or_none, "Invalid t_beta3 value"));
  static constexpr bool beta3_warmup(const O& o) { return !is_none(o.t_beta3) && o.t_beta3 != 0; }
  static constexpr const char* invalid(const O& o) {
    // bitsandbytes fails in math.log: the warm-up interpolates the betas' logarithms
    if (beta3_warmup(o) && (o.beta1 == 0 || o.beta3 == 0))
      return "Invalid betas for t_beta3: the beta3 warm-up needs beta1 > 0 and beta3 > 0";
    return nullptr;
  }
  static constexpr auto slots = list<Slot<O>>(Slot<O>{"m1"}, Slot<O>{"m2"}, Slot<O>{.name = "nu", .non_negative = true});
  static constexpr List<ScalarSlot, 0> scalar_slots{};
  // bitsandbytes' state_dict: {'step': int, '__bnb_optimizer_quant_state__': {'state1': m1 and
  // m2 stacked, 'state2': nu}}
  static constexpr CheckpointLayout<2> checkpoint{
      {{"state1", 2}, {"state2", 1}}, "__bnb_optimizer_quant_state__", true};
  static constexpr auto args =
      list<Arg>(Arg{"lr"}, Arg{"betas"}, Arg{"alpha"}, Arg{"t_alpha"}, Arg{"t_beta3"}, Arg{"eps"},
                Arg{"weight_decay"});
  static constexpr bool has_step = true;
  static constexpr bool eager_state = false;

  template <class C>
  struct Scalars {
    C beta1, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3, bias_correction1,
        bias_correction2_sqrt, alpha, eps, neg_lr, decay_factor;
    bool decay;
  };

  template <class C, class Ctx>
  static Scalars<C> scalars(const O& o, const StepInput& in, Ctx& ctx) {
    // As bitsandbytes: Python floats, an int step, min(x, cap) keeping x unless cap < x.
    double alpha = o.alpha;
    if (!is_none(o.t_alpha) && o.t_alpha != 0) {
      const double ramp = in.step * o.alpha / o.t_alpha;
      alpha = o.alpha < ramp ? o.alpha : ramp;
    }
    double beta3 = o.beta3;
    if (beta3_warmup(o)) {
      const double ln_beta1 = ctx.log(o.beta1), ln_beta3 = ctx.log(o.beta3);
      const double s = in.step / o.t_beta3;
      const double warm =
          ctx.exp(ln_beta1 * ln_beta3 / ((1.0 - s) * ln_beta3 + s * ln_beta1));
      beta3 = o.beta3 < warm ? o.beta3 : warm;
    }
    const bool decay = o.weight_decay > 0.0;
    const double decay_factor = 1.0 - o.lr * o.weight_decay;
    return {ctx.template narrow<C>(o.beta1, {{"beta1", o.beta1}}),
            ctx.template narrow<C>(1.0 - o.beta1, {{"beta1", o.beta1}}),
            ctx.template narrow<C>(o.beta2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(1.0 - o.beta2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(beta3, {{"beta1", o.beta1}, {"beta3", o.beta3}}),
            ctx.template narrow<C>(1.0 - beta3, {{"beta1", o.beta1}, {"beta3", o.beta3}}),
            ctx.template narrow<C>(1.0 - ctx.pow(o.beta1, in.step), {{"beta1", o.beta1}}),
            ctx.template narrow<C>(ctx.sqrt(1.0 - ctx.pow(o.beta2, in.step)),
                                   {{"beta2", o.beta2}}),
            ctx.template narrow<C>(alpha, {{"alpha", o.alpha}}),
            ctx.template narrow<C>(o.eps, {{"eps", o.eps}}),
            ctx.template narrow<C>(-o.lr, {{"lr", o.lr}}),
            decay ? ctx.template narrow<C>(decay_factor,
                                           {{"lr", o.lr}, {"weight_decay", o.weight_decay}},
                                           "1 - lr * weight_decay")
                  : ctx.template unused<C>(decay_factor),
            decay};
  }

  template <class V, class Io, class C>
  static FASTOPTIM_INLINE void update(const Scalars<C>& s, const Io& io) {
    const V g = io.grad();
    const V m1 = fma(g, V::set1(s.one_minus_beta1), io.state(0) * V::set1(s.beta1));
    io.store_state(0, m1);
    const V m2 = fma(g, V::set1(s.one_minus_beta3), io.state(1) * V::set1(s.beta3));
    io.store_state(1, m2);
    const V nu = fma(V::set1(s.one_minus_beta2) * g, g, io.state(2) * V::set1(s.beta2));
    io.store_state(2, nu);
    V param = io.param();
    if (s.decay) param = param * V::set1(s.decay_factor);
    const V mixed = m1 / V::set1(s.bias_correction1) + V::set1(s.alpha) * m2;
    const V adaptive = sqrt(nu) / V::set1(s.bias_correction2_sqrt) + V::set1(s.eps);
    io.store_param(fma(mixed / adaptive, V::set1(s.neg_lr), param));
  }
};

}  // namespace fastoptim::rules

// The public names: the options struct, and the C++ optimizer class (fastoptim/optimizer.hpp).
namespace fastoptim {
template <class R>
class RuleOptimizer;
using AdEMAMixOptions = rules::AdEMAMix::Options;
using AdEMAMix = RuleOptimizer<rules::AdEMAMix>;
}  // namespace fastoptim
