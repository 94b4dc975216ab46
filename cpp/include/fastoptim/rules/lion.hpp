// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), exact to the
// official PyTorch implementation, lion-pytorch 0.2's `Lion`: torch.optim has no Lion. Per
// element, in its op order:
//   param *= 1 - lr * weight_decay                       (decoupled weight decay, every step)
//   param += -lr * sgn(exp_avg * beta1 + (1 - beta1) * grad)
//   exp_avg = exp_avg * beta2 + (1 - beta2) * grad
// with torch's CPU kernels' rounding: `add(x, alpha=a)` is one fused multiply-add.
#pragma once

#include "fastoptim/rules/rule.hpp"

namespace fastoptim::rules {

struct Lion {
  struct Options {
    using Rule = Lion;
    double lr = 1e-4;
    double beta1 = 0.9;
    double beta2 = 0.99;
    double weight_decay = 0.0;
  };
  using O = Options;
  static constexpr const char* name = "lion";
  static constexpr const char* torch_name = "Lion";
  static constexpr const char* reference = "lion_pytorch.Lion";
  static constexpr auto fields = list<Field<O>>(
      number("lr", &O::lr), number("betas", &O::beta1, 0), number("betas", &O::beta2, 1),
      number("weight_decay", &O::weight_decay));
  // lion-pytorch asserts lr > 0 and 0 <= beta <= 1 in its constructor only; here the checks hold
  // at every step, and lr = 0 is accepted (a schedule may end there, which lion-pytorch steps).
  static constexpr auto checks = list<Check<O>>(
      check(&O::lr, Range::non_negative, "Invalid learning rate"),
      check(&O::beta1, Range::unit_closed, "Invalid beta parameter at index 0"),
      check(&O::beta2, Range::unit_closed, "Invalid beta parameter at index 1"),
      check(&O::weight_decay, Range::non_negative, "Invalid weight_decay value"));
  static constexpr const char* invalid(const O&) { return nullptr; }
  static constexpr auto slots = list<Slot<O>>(Slot<O>{"exp_avg"});
  static constexpr List<ScalarSlot, 0> scalar_slots{};
  static constexpr auto args = list<Arg>(Arg{"lr"}, Arg{"betas"}, Arg{"weight_decay"});
  static constexpr bool has_step = false;  // lion-pytorch keeps no step count
  // lion-pytorch's sgn of a complex value is z / |z|: not elementwise on the real view
  static constexpr bool complex_as_real = false;
  static constexpr bool eager_state = false;

  template <class C>
  struct Scalars {
    C decay, neg_lr, beta1, one_minus_beta1, beta2, one_minus_beta2;
  };

  template <class C, class Ctx>
  static Scalars<C> scalars(const O& o, const StepInput&, Ctx& ctx) {
    return {ctx.template narrow<C>(1.0 - o.lr * o.weight_decay,
                                   {{"lr", o.lr}, {"weight_decay", o.weight_decay}},
                                   "1 - lr * weight_decay"),
            ctx.template narrow<C>(-o.lr, {{"lr", o.lr}}),
            ctx.template narrow<C>(o.beta1, {{"beta1", o.beta1}}),
            ctx.template narrow<C>(1.0 - o.beta1, {{"beta1", o.beta1}}),
            ctx.template narrow<C>(o.beta2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(1.0 - o.beta2, {{"beta2", o.beta2}})};
  }

  template <class V, class Io, class C>
  static FASTOPTIM_INLINE void update(const Scalars<C>& s, const Io& io) {
    const V g = io.grad();
    const V exp_avg = io.state(0);
    // lion-pytorch multiplies even when weight_decay is 0 (by 1: a NaN payload is quieted)
    const V param = io.param() * V::set1(s.decay);
    const V direction = sign(fma(g, V::set1(s.one_minus_beta1), exp_avg * V::set1(s.beta1)));
    io.store_param(fma(direction, V::set1(s.neg_lr), param));
    io.store_state(0, fma(g, V::set1(s.one_minus_beta2), exp_avg * V::set1(s.beta2)));
  }
};

}  // namespace fastoptim::rules

// The public names: the options struct, and the C++ optimizer class (fastoptim/optimizer.hpp).
namespace fastoptim {
template <class R>
class RuleOptimizer;
using LionOptions = rules::Lion::Options;
using Lion = RuleOptimizer<rules::Lion>;
}  // namespace fastoptim
