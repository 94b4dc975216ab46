// torch.optim.Adagrad: lr decay, weight decay, an initial accumulator, maximize.
#pragma once

#include "fastoptim/rules/rule.hpp"

namespace fastoptim::rules {

struct Adagrad {
  struct Options {
    using Rule = Adagrad;
    double lr = 1e-2;
    double lr_decay = 0.0;
    double weight_decay = 0.0;
    double initial_accumulator_value = 0.0;
    double eps = 1e-10;
    bool maximize = false;
  };
  using O = Options;
  static constexpr const char* name = "adagrad";
  static constexpr const char* torch_name = "Adagrad";
  static constexpr const char* reference = "torch.optim.Adagrad";
  static constexpr auto fields = list<Field<O>>(
      number("lr", &O::lr), number("lr_decay", &O::lr_decay),
      number("weight_decay", &O::weight_decay),
      number("initial_accumulator_value", &O::initial_accumulator_value), number("eps", &O::eps),
      flag("maximize", &O::maximize));
  static constexpr auto checks = list<Check<O>>(
      check(&O::lr, Range::non_negative, "Invalid learning rate"),
      check(&O::lr_decay, Range::non_negative, "Invalid lr_decay value"),
      check(&O::weight_decay, Range::non_negative, "Invalid weight_decay value"),
      check(&O::initial_accumulator_value, Range::non_negative,
            "Invalid initial_accumulator_value value"),
      check(&O::eps, Range::non_negative, "Invalid epsilon value"));
  static constexpr const char* invalid(const O&) { return nullptr; }
  // torch fills `sum` with the constructor's initial_accumulator_value (not a later group's).
  static constexpr auto slots =
      list<Slot<O>>(Slot<O>{.name = "sum",
                            .initial_from = &O::initial_accumulator_value,
                            .non_negative = true});
  static constexpr List<ScalarSlot, 0> scalar_slots{};
  static constexpr auto args = list<Arg>(
      Arg{"lr"}, Arg{"lr_decay"}, Arg{"weight_decay"}, Arg{"initial_accumulator_value"},
      Arg{"eps"}, ignored_none("foreach", false), kw("maximize"),
      ignored_false("differentiable", true), ignored_none("fused", true));
  static constexpr bool has_step = true;
  static constexpr bool eager_state = true;  // torch creates `sum` in the constructor

  template <class C>
  struct Scalars {
    C neg_clr, weight_decay, eps;
    bool maximize, has_weight_decay;
  };

  template <class C, class Ctx>
  static Scalars<C> scalars(const O& o, const StepInput& in, Ctx& ctx) {
    const double clr = o.lr / (1.0 + (in.step - 1.0) * o.lr_decay);
    const bool decay = o.weight_decay != 0.0;
    return {ctx.template narrow<C>(-clr, {{"lr", o.lr}, {"lr_decay", o.lr_decay}},
                                   "lr / (1 + (step - 1) * lr_decay)"),
            decay ? ctx.template narrow<C>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                  : ctx.template unused<C>(o.weight_decay),
            ctx.template narrow<C>(o.eps, {{"eps", o.eps}}), o.maximize, decay};
  }

  template <class V, class Io, class C>
  static FASTOPTIM_INLINE void update(const Scalars<C>& s, const Io& io) {
    V g = io.grad();
    if (s.maximize) g = neg(g);
    if (s.has_weight_decay) g = fma(io.param(), V::set1(s.weight_decay), g);
    const V sum = fma(g, g, io.state(0));
    io.store_state(0, sum);
    const V std_dev = sqrt(sum) + V::set1(s.eps);
    // addcdiv_(grad, std, value=-clr): param + (-clr * grad) / std, as torch's CPU kernel
    io.store_param(io.param() + V::set1(s.neg_clr) * g / std_dev);
  }
};

}  // namespace fastoptim::rules

// The public names: the options struct, and the C++ optimizer class (fastoptim/optimizer.hpp).
namespace fastoptim {
template <class R>
class RuleOptimizer;
using AdagradOptions = rules::Adagrad::Options;
using Adagrad = RuleOptimizer<rules::Adagrad>;
}  // namespace fastoptim
