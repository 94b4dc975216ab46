// torch.optim.Adadelta: rho, eps, weight decay, maximize.
#pragma once

#include "fastoptim/rules/rule.hpp"

namespace fastoptim::rules {

struct Adadelta {
  struct Options {
    using Rule = Adadelta;
    double lr = 1.0;
    double rho = 0.9;
    double eps = 1e-6;
    double weight_decay = 0.0;
    bool maximize = false;
  };
  using O = Options;
  static constexpr const char* name = "adadelta";
  static constexpr const char* torch_name = "Adadelta";
  static constexpr const char* reference = "torch.optim.Adadelta";
  static constexpr auto fields = list<Field<O>>(
      number("lr", &O::lr), number("rho", &O::rho), number("eps", &O::eps),
      number("weight_decay", &O::weight_decay), flag("maximize", &O::maximize));
  static constexpr auto checks = list<Check<O>>(
      check(&O::lr, Range::non_negative, "Invalid learning rate"),
      check(&O::rho, Range::unit_closed, "Invalid rho value"),
      check(&O::eps, Range::non_negative, "Invalid epsilon value"),
      check(&O::weight_decay, Range::non_negative, "Invalid weight_decay value"));
  static constexpr const char* invalid(const O&) { return nullptr; }
  static constexpr auto slots = list<Slot<O>>(Slot<O>{.name = "square_avg", .non_negative = true},
                                              Slot<O>{.name = "acc_delta", .non_negative = true});
  static constexpr List<ScalarSlot, 0> scalar_slots{};
  static constexpr auto args = list<Arg>(
      Arg{"lr"}, Arg{"rho"}, Arg{"eps"}, Arg{"weight_decay"}, ignored_none("foreach", false),
      ignored_false("capturable", true), kw("maximize"), ignored_false("differentiable", true));
  static constexpr bool has_step = true;
  static constexpr bool eager_state = false;

  template <class C>
  struct Scalars {
    C neg_lr, rho, one_minus_rho, eps, weight_decay;
    bool maximize, has_weight_decay;
  };

  template <class C, class Ctx>
  static Scalars<C> scalars(const O& o, const StepInput&, Ctx& ctx) {
    const bool decay = o.weight_decay != 0.0;
    return {ctx.template narrow<C>(-o.lr, {{"lr", o.lr}}),
            ctx.template narrow<C>(o.rho, {{"rho", o.rho}}),
            ctx.template narrow<C>(1.0 - o.rho, {{"rho", o.rho}}),
            ctx.template narrow<C>(o.eps, {{"eps", o.eps}}),
            decay ? ctx.template narrow<C>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                  : ctx.template unused<C>(o.weight_decay),
            o.maximize,
            decay};
  }

  template <class V, class Io, class C>
  static FASTOPTIM_INLINE void update(const Scalars<C>& s, const Io& io) {
    V g = io.grad();
    if (s.maximize) g = neg(g);
    if (s.has_weight_decay) g = fma(io.param(), V::set1(s.weight_decay), g);
    const V one_minus_rho = V::set1(s.one_minus_rho);
    const V rho = V::set1(s.rho);
    const V eps = V::set1(s.eps);
    const V square_avg = fma(one_minus_rho * g, g, io.state(0) * rho);
    io.store_state(0, square_avg);
    const V std_dev = sqrt(square_avg + eps);
    V acc_delta = io.state(1);
    const V delta = sqrt(acc_delta + eps) / std_dev * g;
    acc_delta = fma(one_minus_rho * delta, delta, acc_delta * rho);
    io.store_state(1, acc_delta);
    io.store_param(fma(delta, V::set1(s.neg_lr), io.param()));
  }
};

}  // namespace fastoptim::rules

// The public names: the options struct, and the C++ optimizer class (fastoptim/optimizer.hpp).
namespace fastoptim {
template <class R>
class RuleOptimizer;
using AdadeltaOptions = rules::Adadelta::Options;
using Adadelta = RuleOptimizer<rules::Adadelta>;
}  // namespace fastoptim
