// Schedule-Free AdamW and SGD (Defazio et al. 2024, "The Road Less Scheduled"), exact to the
// official implementation, schedulefree 1.4.1's AdamWScheduleFree and SGDScheduleFree
// (foreach=False): torch.optim has neither. The param holds the y sequence while training and
// the x sequence (the average to evaluate) after eval(); z is per-element state, a copy of
// the param at its first step. What schedulefree keeps per param group is group state here:
// the step count k, weight_sum, lr_max, scheduled_lr (advanced once per group and step, even
// for a group whose params have no grads) and train_mode (set by train() and eval(), the two
// transforms). Per element, in schedulefree's op order (torch's CPU rounding: add(alpha=) and
// addcmul are one fused multiply-add, lerp is torch's Lerp):
//   AdamW: exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
//          g = grad / (sqrt(exp_avg_sq / (1 - beta2 ** k)) + eps) [+ weight_decay * y]
//   SGD:   g = grad [+ weight_decay * y]
//   both:  y = lerp(y, z, ckp1) + lr * (beta1 * (1 - ckp1) - 1) * g;  z = z - lr * g
// schedulefree writes g into the param's grad (grad.div_, grad.add_); fastoptim reads the
// grad and leaves it as it was, as torch.optim's optimizers do.
#pragma once

#include "fastoptim/rules/rule.hpp"

namespace fastoptim::rules {

// schedulefree's Exception for a step in eval mode, word for word
inline constexpr char kScheduleFreeEvalModeStep[] =
    "Optimizer was not in train mode when step is called. Please insert .train() and "
    ".eval() calls on the optimizer. See documentation for details.";
inline constexpr char kBeta1Key[] = "beta1";
inline constexpr char kMomentumKey[] = "momentum";

// What both rules share, their base as AdamFamily is Adam's: the group state's once-per-step
// advance, the step refused in eval mode, and train()/eval(). `kBeta` is AdamW's betas[0] and
// SGD's momentum; the Options stay aggregates of their own, outside the rule.
template <class O, double O::*kBeta, const char* kBetaKey>
struct ScheduleFree {
  using Options = O;

  // schedulefree's group update, in Python floats: the warm-up, the largest lr so far, the
  // weight of this step in the average (ckp1 = weight / weight_sum).
  template <class Ctx>
  static void advance(O& o, const Ctx& ctx) {
    const double sched = o.k < o.warmup_steps ? (o.k + 1.0) / o.warmup_steps : 1.0;
    const double lr = o.lr * sched;
    o.scheduled_lr = lr;
    o.lr_max = o.lr_max > lr ? o.lr_max : lr;  // Python's max(lr, lr_max)
    o.weight_sum = o.weight_sum + weight(o.k + 1.0, o, ctx);
    o.k = o.k + 1.0;
  }
  // (k + 1) ** r * lr_max ** weight_lr_power, k + 1 the step's count
  template <class Ctx>
  static double weight(double count, const O& o, const Ctx& ctx) {
    return ctx.pow(count, o.r) * ctx.pow(o.lr_max, o.weight_lr_power);
  }
  // After advance(): this step's weight in the average; 0 where schedulefree's division by a
  // zero weight_sum raises ZeroDivisionError and it takes 0.
  template <class Ctx>
  static double ckp1(const O& o, Ctx& ctx) {
    const double w = weight(o.k, o, ctx);
    return o.weight_sum == 0.0 ? 0.0 : w / o.weight_sum;
  }

  // A rule's fields, then what both rules end with: the group state (checkpoint order)
  template <class... F>
  static constexpr auto fields_then_group_state(F... options) {
    return list<Field<O>>(options..., state_count("k", &O::k),
                          state_flag("train_mode", &O::train_mode),
                          state_number("weight_sum", &O::weight_sum),
                          state_number("lr_max", &O::lr_max),
                          state_number("scheduled_lr", &O::scheduled_lr));
  }
  // A rule's checks, then the warm-up's and the group state's
  template <class... C>
  static constexpr auto checks_then_schedule(C... checks) {
    return list<Check<O>>(checks..., check(&O::warmup_steps, Range::whole, "Invalid warmup_steps value"),
                          check(&O::k, Range::whole, "Invalid step count k"));
  }

  static constexpr const char* refused(const O& o) {
    return o.train_mode ? nullptr : kScheduleFreeEvalModeStep;
  }

  static constexpr auto transforms = list<Transform<O>>(
      Transform<O>{"train", &O::train_mode, true}, Transform<O>{"eval", &O::train_mode, false});
  template <class C>
  struct TransformScalars {
    Lerp<C> to_z;
  };
  // train(): p.lerp_(z, 1 - beta1), the param from x to y; eval(): p.lerp_(z, 1 - 1 / beta1),
  // from y back to x
  template <class C, class Ctx>
  static TransformScalars<C> transform_scalars(int index, const O& o, Ctx& ctx) {
    const double beta = o.*kBeta;
    const double w = index == 0 ? 1.0 - beta : 1.0 - 1.0 / beta;
    return {make_lerp<C>(ctx.template narrow<C>(w, {{kBetaKey, beta}},
                                                index == 0 ? "1 - beta" : "1 - 1 / beta"))};
  }
  template <class V, class Io, class C>
  static FASTOPTIM_INLINE void transform(const TransformScalars<C>& s, const Io& io) {
    io.store_param(lerp(io.param(), io.state(0), s.to_z));
  }
};

struct AdamWScheduleFree;
struct AdamWScheduleFreeOptions {
  using Rule = AdamWScheduleFree;
  double lr = 0.0025;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double warmup_steps = 0.0;
  double r = 0.0;
  double weight_lr_power = 2.0;
  // group state
  double k = 0.0;
  bool train_mode = false;
  double weight_sum = 0.0;
  double lr_max = -1.0;
  double scheduled_lr = 0.0;
};

struct AdamWScheduleFree
    : ScheduleFree<AdamWScheduleFreeOptions, &AdamWScheduleFreeOptions::beta1, kBeta1Key> {
  using O = Options;
  static constexpr const char* name = "adamw_schedulefree";
  static constexpr const char* torch_name = "AdamWScheduleFree";
  static constexpr const char* reference = "schedulefree.AdamWScheduleFree";
  static constexpr auto fields = fields_then_group_state(
      number("lr", &O::lr), number("betas", &O::beta1, 0), number("betas", &O::beta2, 1),
      number("eps", &O::eps), number("weight_decay", &O::weight_decay),
      count("warmup_steps", &O::warmup_steps), number("r", &O::r),
      number("weight_lr_power", &O::weight_lr_power));
  // schedulefree checks nothing; these are torch's AdamW checks (beta1 > 0: eval() divides by
  // it) and the group state's
  static constexpr auto checks = checks_then_schedule(
      check(&O::lr, Range::non_negative, "Invalid learning rate"),
      check(&O::eps, Range::non_negative, "Invalid epsilon value"),
      check(&O::beta1, Range::unit_open, "Invalid beta parameter at index 0"),
      check(&O::beta2, Range::unit_half_open, "Invalid beta parameter at index 1"),
      check(&O::weight_decay, Range::non_negative, "Invalid weight_decay value"));
  static constexpr const char* invalid(const O&) { return nullptr; }
  static constexpr auto slots =
      list<Slot<O>>(Slot<O>{"z", nullptr, nullptr, true},
                    Slot<O>{.name = "exp_avg_sq", .non_negative = true});
  static constexpr List<ScalarSlot, 0> scalar_slots{};
  static constexpr auto args = list<Arg>(
      Arg{"lr"}, Arg{"betas"}, Arg{"eps"}, Arg{"weight_decay"}, Arg{"warmup_steps"}, Arg{"r"},
      Arg{"weight_lr_power"}, ignored_true("foreach", false));
  static constexpr bool has_step = false;  // the step count is the group's k
  // schedulefree squares a complex grad as grad * grad (no conj) and takes a complex sqrt: not
  // elementwise on the real view
  static constexpr bool complex_as_real = false;
  static constexpr bool eager_state = false;

  template <class C>
  struct Scalars {
    C beta2, one_minus_beta2, bias_correction2, eps, weight_decay, y_coef, neg_lr;
    Lerp<C> to_z;
    bool decay;
  };

  // After advance(o): k counts this step.
  template <class C, class Ctx>
  static Scalars<C> scalars(const O& o, const StepInput&, Ctx& ctx) {
    const double ckp1 = ScheduleFree::ckp1(o, ctx);
    const double lr = o.scheduled_lr;
    return {ctx.template narrow<C>(o.beta2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(1.0 - o.beta2, {{"beta2", o.beta2}}),
            ctx.template narrow<C>(1.0 - ctx.pow(o.beta2, o.k), {{"beta2", o.beta2}}),
            ctx.template narrow<C>(o.eps, {{"eps", o.eps}}),
            o.weight_decay != 0.0
                ? ctx.template narrow<C>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                : ctx.template unused<C>(o.weight_decay),
            ctx.template narrow<C>(lr * (o.beta1 * (1.0 - ckp1) - 1.0),
                                   {{"lr", o.lr}, {"beta1", o.beta1}},
                                   "lr * (beta1 * (1 - ckp1) - 1)"),
            ctx.template narrow<C>(-lr, {{"lr", o.lr}}),
            make_lerp<C>(ctx.template narrow<C>(ckp1, {{"r", o.r}}, "ckp1")),
            o.weight_decay != 0.0};
  }

  template <class V, class Io, class C>
  static FASTOPTIM_INLINE void update(const Scalars<C>& s, const Io& io) {
    const V grad = io.grad();
    const V y = io.param();
    const V z = io.state(0);
    const V exp_avg_sq = fma(V::set1(s.one_minus_beta2) * grad, grad, io.state(1) * V::set1(s.beta2));
    io.store_state(1, exp_avg_sq);
    const V denom = sqrt(exp_avg_sq / V::set1(s.bias_correction2)) + V::set1(s.eps);
    V g = grad / denom;
    if (s.decay) g = fma(y, V::set1(s.weight_decay), g);
    io.store_param(fma(g, V::set1(s.y_coef), lerp(y, z, s.to_z)));
    io.store_state(0, fma(g, V::set1(s.neg_lr), z));
  }
};

struct SGDScheduleFree;
struct SGDScheduleFreeOptions {
  using Rule = SGDScheduleFree;
  double lr = 1.0;
  double momentum = 0.9;
  double weight_decay = 0.0;
  double warmup_steps = 0.0;
  double r = 0.0;
  double weight_lr_power = 2.0;
  // group state
  double k = 0.0;
  bool train_mode = false;
  double weight_sum = 0.0;
  double lr_max = -1.0;
  double scheduled_lr = 0.0;
};

struct SGDScheduleFree
    : ScheduleFree<SGDScheduleFreeOptions, &SGDScheduleFreeOptions::momentum, kMomentumKey> {
  using O = Options;
  static constexpr const char* name = "sgd_schedulefree";
  static constexpr const char* torch_name = "SGDScheduleFree";
  static constexpr const char* reference = "schedulefree.SGDScheduleFree";
  static constexpr auto fields = fields_then_group_state(
      number("lr", &O::lr), number("momentum", &O::momentum),
      number("weight_decay", &O::weight_decay), count("warmup_steps", &O::warmup_steps),
      number("r", &O::r), number("weight_lr_power", &O::weight_lr_power));
  // schedulefree's checks and words, then the group state's
  static constexpr auto checks = checks_then_schedule(
      check(&O::lr, Range::non_negative, "Invalid learning rate"),
      check(&O::weight_decay, Range::non_negative, "Invalid weight_decay value"),
      check(&O::momentum, Range::unit_open, "Momentum must be between 0 and 1 exclusive"));
  static constexpr const char* invalid(const O&) { return nullptr; }
  static constexpr auto slots = list<Slot<O>>(Slot<O>{"z", nullptr, nullptr, true});
  static constexpr List<ScalarSlot, 0> scalar_slots{};
  static constexpr auto args =
      list<Arg>(Arg{"lr"}, Arg{"momentum"}, Arg{"weight_decay"}, Arg{"warmup_steps"}, Arg{"r"},
                Arg{"weight_lr_power"}, ignored_true("foreach", false));
  static constexpr bool has_step = false;  // the step count is the group's k
  static constexpr bool eager_state = false;

  template <class C>
  struct Scalars {
    C weight_decay, y_coef, neg_lr;
    Lerp<C> to_z;
    bool decay;
  };

  // After advance(o).
  template <class C, class Ctx>
  static Scalars<C> scalars(const O& o, const StepInput&, Ctx& ctx) {
    const double ckp1 = ScheduleFree::ckp1(o, ctx);
    const double lr = o.scheduled_lr;
    return {o.weight_decay != 0.0
                ? ctx.template narrow<C>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                : ctx.template unused<C>(o.weight_decay),
            ctx.template narrow<C>(lr * (o.momentum * (1.0 - ckp1) - 1.0),
                                   {{"lr", o.lr}, {"momentum", o.momentum}},
                                   "lr * (momentum * (1 - ckp1) - 1)"),
            ctx.template narrow<C>(-lr, {{"lr", o.lr}}),
            make_lerp<C>(ctx.template narrow<C>(ckp1, {{"r", o.r}}, "ckp1")),
            o.weight_decay != 0.0};
  }

  template <class V, class Io, class C>
  static FASTOPTIM_INLINE void update(const Scalars<C>& s, const Io& io) {
    V g = io.grad();
    const V y = io.param();
    const V z = io.state(0);
    if (s.decay) g = fma(y, V::set1(s.weight_decay), g);
    io.store_param(fma(g, V::set1(s.y_coef), lerp(y, z, s.to_z)));
    io.store_state(0, fma(g, V::set1(s.neg_lr), z));
  }
};

}  // namespace fastoptim::rules

// The public names: the options structs, and the C++ optimizer classes (fastoptim/optimizer.hpp).
namespace fastoptim {
template <class R>
class RuleOptimizer;
using AdamWScheduleFreeOptions = rules::AdamWScheduleFree::Options;
using AdamWScheduleFree = RuleOptimizer<rules::AdamWScheduleFree>;
using SGDScheduleFreeOptions = rules::SGDScheduleFree::Options;
using SGDScheduleFree = RuleOptimizer<rules::SGDScheduleFree>;
}  // namespace fastoptim
