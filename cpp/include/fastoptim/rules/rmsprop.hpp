// torch.optim.RMSprop: alpha, eps, weight decay, momentum, centered, maximize.
#pragma once

#include "fastoptim/rules/rule.hpp"

namespace fastoptim::rules {

struct Rmsprop {
  struct Options {
    using Rule = Rmsprop;
    double lr = 1e-2;
    double alpha = 0.99;
    double eps = 1e-8;
    double weight_decay = 0.0;
    double momentum = 0.0;
    bool centered = false;
    bool maximize = false;
  };
  using O = Options;
  static constexpr const char* name = "rmsprop";
  static constexpr const char* torch_name = "RMSprop";
  static constexpr const char* reference = "torch.optim.RMSprop";
  static constexpr auto fields = list<Field<O>>(
      number("lr", &O::lr), number("alpha", &O::alpha), number("eps", &O::eps),
      number("weight_decay", &O::weight_decay), number("momentum", &O::momentum),
      flag("centered", &O::centered), flag("maximize", &O::maximize));
  static constexpr auto checks = list<Check<O>>(
      check(&O::lr, Range::non_negative, "Invalid learning rate"),
      check(&O::eps, Range::non_negative, "Invalid epsilon value"),
      check(&O::momentum, Range::non_negative, "Invalid momentum value"),
      check(&O::weight_decay, Range::non_negative, "Invalid weight_decay value"),
      check(&O::alpha, Range::non_negative, "Invalid alpha value"));
  static constexpr const char* invalid(const O&) { return nullptr; }
  static constexpr auto slots = list<Slot<O>>(
      Slot<O>{.name = "square_avg", .non_negative = true},
      Slot<O>{"momentum_buffer", [](const O& o) { return o.momentum > 0.0; }},
      Slot<O>{"grad_avg", [](const O& o) { return o.centered; }});
  static constexpr List<ScalarSlot, 0> scalar_slots{};
  static constexpr auto args = list<Arg>(
      Arg{"lr"}, Arg{"alpha"}, Arg{"eps"}, Arg{"weight_decay"}, Arg{"momentum"},
      Arg{"centered"}, ignored_false("capturable", false), ignored_none("foreach", false),
      Arg{"maximize"}, ignored_false("differentiable", false));
  static constexpr bool has_step = true;
  static constexpr bool eager_state = false;

  template <class C>
  struct Scalars {
    C neg_lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
    Lerp<C> grad_avg_lerp;
    bool maximize, has_weight_decay, has_momentum, centered;
  };

  template <class C, class Ctx>
  static Scalars<C> scalars(const O& o, const StepInput&, Ctx& ctx) {
    const bool decay = o.weight_decay != 0.0, momentum = o.momentum > 0.0;
    const C one_minus_alpha = ctx.template narrow<C>(1.0 - o.alpha, {{"alpha", o.alpha}});
    return {ctx.template narrow<C>(-o.lr, {{"lr", o.lr}}),
            ctx.template narrow<C>(o.alpha, {{"alpha", o.alpha}}),
            one_minus_alpha,
            ctx.template narrow<C>(o.eps, {{"eps", o.eps}}),
            decay ? ctx.template narrow<C>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                  : ctx.template unused<C>(o.weight_decay),
            momentum ? ctx.template narrow<C>(o.momentum, {{"momentum", o.momentum}})
                     : ctx.template unused<C>(o.momentum),
            make_lerp<C>(one_minus_alpha),
            o.maximize,
            decay,
            momentum,
            o.centered};
  }

  template <class V, class Io, class C>
  static FASTOPTIM_INLINE void update(const Scalars<C>& s, const Io& io) {
    V g = io.grad();
    if (s.maximize) g = neg(g);
    if (s.has_weight_decay) g = fma(io.param(), V::set1(s.weight_decay), g);
    const V square_avg = fma(V::set1(s.one_minus_alpha) * g, g, io.state(0) * V::set1(s.alpha));
    io.store_state(0, square_avg);
    V avg;
    if (s.centered) {
      const V grad_avg = lerp(io.state(2), g, s.grad_avg_lerp);
      io.store_state(2, grad_avg);
      // addcmul with value=-1: fma(-1 * grad_avg, grad_avg, square_avg)
      avg = sqrt(fma(neg(grad_avg), grad_avg, square_avg));
    } else {
      avg = sqrt(square_avg);
    }
    avg = avg + V::set1(s.eps);
    if (s.has_momentum) {
      const V buf = io.state(1) * V::set1(s.momentum) + g / avg;
      io.store_state(1, buf);
      io.store_param(fma(buf, V::set1(s.neg_lr), io.param()));
    } else {
      // addcdiv_(grad, avg, value=-lr): param + (-lr * grad) / avg, as torch's CPU kernel
      io.store_param(io.param() + V::set1(s.neg_lr) * g / avg);
    }
  }
};

}  // namespace fastoptim::rules

// The public names: the options struct, and the C++ optimizer class (fastoptim/optimizer.hpp).
namespace fastoptim {
template <class R>
class RuleOptimizer;
using RmspropOptions = rules::Rmsprop::Options;
using Rmsprop = RuleOptimizer<rules::Rmsprop>;
}  // namespace fastoptim
