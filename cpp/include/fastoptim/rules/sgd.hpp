// torch.optim.SGD: momentum (with dampening, Nesterov), weight decay, maximize.
#pragma once

#include "fastoptim/rules/rule.hpp"

namespace fastoptim::rules {

struct Sgd {
  struct Options {
    using Rule = Sgd;
    double lr = 1e-3;
    double momentum = 0.0;
    double dampening = 0.0;
    double weight_decay = 0.0;
    bool nesterov = false;
    bool maximize = false;
  };
  using O = Options;
  static constexpr const char* name = "sgd";
  static constexpr const char* torch_name = "SGD";
  static constexpr const char* reference = "torch.optim.SGD";
  static constexpr auto fields = list<Field<O>>(
      number("lr", &O::lr), number("momentum", &O::momentum), number("dampening", &O::dampening),
      number("weight_decay", &O::weight_decay), flag("nesterov", &O::nesterov),
      flag("maximize", &O::maximize));
  static constexpr auto checks = list<Check<O>>(
      check(&O::lr, Range::non_negative, "Invalid learning rate"),
      check(&O::momentum, Range::non_negative, "Invalid momentum value"),
      check(&O::weight_decay, Range::non_negative, "Invalid weight_decay value"));
  // After the range checks, as torch checks it.
  static constexpr const char* invalid(const O& o) {
    return o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0)
               ? "Nesterov momentum requires a momentum and zero dampening"
               : nullptr;
  }
  static constexpr auto slots =
      list<Slot<O>>(Slot<O>{"momentum_buffer", [](const O& o) { return o.momentum != 0.0; }});
  static constexpr List<ScalarSlot, 0> scalar_slots{};
  static constexpr auto args = list<Arg>(
      Arg{"lr"}, Arg{"momentum"}, Arg{"dampening"}, Arg{"weight_decay"}, Arg{"nesterov"},
      kw("maximize"), ignored_none("foreach", true), ignored_false("differentiable", true),
      ignored_none("fused", true));
  // torch keeps no step for SGD: the driver's step is 1 when the momentum buffer is new (it is
  // then set to the gradient), else 2.
  static constexpr bool has_step = false;
  static constexpr bool eager_state = false;

  template <class C>
  struct Scalars {
    C neg_lr, weight_decay, momentum, one_minus_dampening;
    bool maximize, has_weight_decay, has_momentum, nesterov, first_step;
  };

  template <class C, class Ctx>
  static Scalars<C> scalars(const O& o, const StepInput& in, Ctx& ctx) {
    const bool decay = o.weight_decay != 0.0, momentum = o.momentum != 0.0;
    const bool first = in.step == 1.0;
    return {ctx.template narrow<C>(-o.lr, {{"lr", o.lr}}),
            decay ? ctx.template narrow<C>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                  : ctx.template unused<C>(o.weight_decay),
            momentum ? ctx.template narrow<C>(o.momentum, {{"momentum", o.momentum}})
                     : ctx.template unused<C>(o.momentum),
            momentum && !first
                ? ctx.template narrow<C>(1.0 - o.dampening, {{"dampening", o.dampening}})
                : ctx.template unused<C>(1.0 - o.dampening),
            o.maximize,
            decay,
            momentum,
            o.nesterov,
            first};
  }

  template <class V, class Io, class C>
  static FASTOPTIM_INLINE void update(const Scalars<C>& s, const Io& io) {
    V g = io.grad();
    if (s.maximize) g = neg(g);
    if (s.has_weight_decay) g = fma(io.param(), V::set1(s.weight_decay), g);
    if (s.has_momentum) {
      const V buf = s.first_step ? g
                                 : fma(g, V::set1(s.one_minus_dampening),
                                       io.state(0) * V::set1(s.momentum));
      io.store_state(0, buf);
      g = s.nesterov ? fma(buf, V::set1(s.momentum), g) : buf;
    }
    io.store_param(fma(g, V::set1(s.neg_lr), io.param()));
  }
};

}  // namespace fastoptim::rules

// The public names: the options struct, and the C++ optimizer class (fastoptim/optimizer.hpp).
namespace fastoptim {
template <class R>
class RuleOptimizer;
using SgdOptions = rules::Sgd::Options;
using Sgd = RuleOptimizer<rules::Sgd>;
}  // namespace fastoptim
