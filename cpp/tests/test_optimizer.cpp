// The stateful API: validation before any write, skipped params, per-param step counts, mixed
// dtypes, options changed between steps, state views and restoring through them.
#include <functional>
#include <sstream>

#include "support.hpp"

namespace fastoptim::test {
namespace {

TEST(Options, DefaultsAreTorchs) {
  EXPECT_EQ(Sgd().options().lr, 1e-3);
  EXPECT_EQ(Adagrad().options().lr, 1e-2);
  EXPECT_EQ(Adagrad().options().eps, 1e-10);
  EXPECT_EQ(Adadelta().options().lr, 1.0);
  EXPECT_EQ(Adadelta().options().rho, 0.9);
  EXPECT_EQ(Rmsprop().options().alpha, 0.99);
  EXPECT_EQ(Adam().options().beta2, 0.999);
  EXPECT_EQ(Adam().options().weight_decay, 0.0);
  EXPECT_EQ(AdamW().options().weight_decay, 1e-2);
  EXPECT_TRUE(AdamW().options().decoupled_weight_decay);
  EXPECT_EQ(Adam().rule(), Rule::adam);
  EXPECT_EQ(rule_name(AdamW().rule()), "adamw");

  // torch.optim.NAdam(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
  // momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False)
  const NadamOptions nadam = Nadam().options();
  EXPECT_EQ(nadam.lr, 2e-3);
  EXPECT_EQ(nadam.beta1, 0.9);
  EXPECT_EQ(nadam.beta2, 0.999);
  EXPECT_EQ(nadam.eps, 1e-8);
  EXPECT_EQ(nadam.weight_decay, 0.0);
  EXPECT_EQ(nadam.momentum_decay, 4e-3);
  EXPECT_FALSE(nadam.decoupled_weight_decay);
  EXPECT_FALSE(nadam.maximize);
  // torch.optim.RAdam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
  // decoupled_weight_decay=False, maximize=False)
  const RadamOptions radam = Radam().options();
  EXPECT_EQ(radam.lr, 1e-3);
  EXPECT_EQ(radam.beta1, 0.9);
  EXPECT_EQ(radam.beta2, 0.999);
  EXPECT_EQ(radam.eps, 1e-8);
  EXPECT_EQ(radam.weight_decay, 0.0);
  EXPECT_FALSE(radam.decoupled_weight_decay);
  EXPECT_FALSE(radam.maximize);
  // torch.optim.Adamax(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, maximize=False)
  const AdamaxOptions adamax = Adamax().options();
  EXPECT_EQ(adamax.lr, 2e-3);
  EXPECT_EQ(adamax.beta1, 0.9);
  EXPECT_EQ(adamax.beta2, 0.999);
  EXPECT_EQ(adamax.eps, 1e-8);
  EXPECT_EQ(adamax.weight_decay, 0.0);
  EXPECT_FALSE(adamax.maximize);

  // Rule ids are stored in checkpoints: never renumbered.
  EXPECT_EQ(Nadam().rule(), Rule::nadam);
  EXPECT_EQ(Radam().rule(), Rule::radam);
  EXPECT_EQ(Adamax().rule(), Rule::adamax);
  EXPECT_EQ(static_cast<int>(Rule::nadam), 6);
  EXPECT_EQ(static_cast<int>(Rule::radam), 7);
  EXPECT_EQ(static_cast<int>(Rule::adamax), 8);
  EXPECT_EQ(rule_name(Rule::nadam), "nadam");
  EXPECT_EQ(rule_name(Rule::radam), "radam");
  EXPECT_EQ(rule_name(Rule::adamax), "adamax");
}

TEST(Validation, InvalidOptionsThrowWithTorchsWording) {
  EXPECT_INVALID(Sgd({.lr = -1.0}), "Invalid learning rate: -1.0");
  EXPECT_INVALID(Sgd({.lr = 0.1, .momentum = 0.0, .nesterov = true}), "Nesterov momentum");
  EXPECT_INVALID(Adam({.lr = 0.1, .beta1 = 1.0}), "Invalid beta parameter at index 0: 1.0");
  EXPECT_INVALID(Adam({.lr = 0.1, .beta2 = -0.5}), "Invalid beta parameter at index 1: -0.5");
  EXPECT_INVALID(Adagrad({.lr = 0.1, .lr_decay = -1.0}), "Invalid lr_decay value: -1.0");
  EXPECT_INVALID(Adadelta({.lr = 1.0, .rho = 1.5}), "Invalid rho value: 1.5");
  EXPECT_INVALID(Rmsprop({.lr = 0.1, .alpha = -0.1}), "Invalid alpha value: -0.1");
  AdamWOptions bad;
  bad.eps = -1e-8;
  EXPECT_INVALID(AdamW{bad}, "Invalid epsilon value: -1e-08");

  Adam opt({.lr = 0.1});
  AdamOptions worse = opt.options();
  worse.weight_decay = -1.0;
  EXPECT_INVALID(opt.set_options(worse), "Invalid weight_decay value: -1.0");
  EXPECT_EQ(opt.options().weight_decay, 0.0);  // unchanged
}

// The whole message, as torch.optim's constructors word it, and the option as a value.
void expect_invalid_option(const std::function<void()>& fn, const std::string& message,
                           const std::string& key, int index, double value) {
  try {
    fn();
    ADD_FAILURE() << "no exception, expected " << message;
  } catch (const InvalidOption& e) {
    EXPECT_EQ(std::string(e.what()), message);
    EXPECT_EQ(e.key(), key) << message;
    EXPECT_EQ(e.index(), index) << message;
    EXPECT_EQ(e.value(), value) << message;
    EXPECT_EQ(e.problem(), message.substr(0, message.rfind(": "))) << message;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not an InvalidOption: " << e.what();
  }
}

TEST(Validation, NewRulesUseTorchsWordingAndOrder) {
  expect_invalid_option([] { Nadam({.momentum_decay = -1.0}); },
                        "Invalid momentum_decay value: -1.0", "momentum_decay", -1, -1.0);
  expect_invalid_option([] { Nadam({.beta2 = 1.0}); }, "Invalid beta parameter at index 1: 1.0",
                        "betas", 1, 1.0);
  expect_invalid_option([] { Nadam({.beta1 = -0.5}); },
                        "Invalid beta parameter at index 0: -0.5", "betas", 0, -0.5);
  expect_invalid_option([] { Nadam({.lr = -2.0}); }, "Invalid learning rate: -2.0", "lr", -1,
                        -2.0);
  expect_invalid_option([] { Nadam({.eps = -1e-8}); }, "Invalid epsilon value: -1e-08", "eps",
                        -1, -1e-8);
  expect_invalid_option([] { Nadam({.weight_decay = -0.1}); }, "Invalid weight_decay value: -0.1",
                        "weight_decay", -1, -0.1);
  expect_invalid_option([] { Radam({.beta2 = 1.0}); }, "Invalid beta parameter at index 1: 1.0",
                        "betas", 1, 1.0);
  expect_invalid_option([] { Radam({.beta1 = 1.0}); }, "Invalid beta parameter at index 0: 1.0",
                        "betas", 0, 1.0);
  expect_invalid_option([] { Radam({.weight_decay = -1.0}); }, "Invalid weight_decay value: -1.0",
                        "weight_decay", -1, -1.0);
  expect_invalid_option([] { Adamax({.beta2 = 1.0}); }, "Invalid beta parameter at index 1: 1.0",
                        "betas", 1, 1.0);
  expect_invalid_option([] { Adamax({.eps = -1.0}); }, "Invalid epsilon value: -1.0", "eps", -1,
                        -1.0);
  expect_invalid_option([] { Adamax({.lr = -0.5}); }, "Invalid learning rate: -0.5", "lr", -1,
                        -0.5);
  // validate() on the options struct, and step() after a bad value set through options()
  expect_invalid_option([] { validate(NadamOptions{.momentum_decay = -1.0}); },
                        "Invalid momentum_decay value: -1.0", "momentum_decay", -1, -1.0);

  // torch's order: lr, eps, betas[0], betas[1], weight_decay, momentum_decay.
  expect_invalid_option(
      [] { Nadam({.beta2 = 1.0, .weight_decay = -1.0, .momentum_decay = -1.0}); },
      "Invalid beta parameter at index 1: 1.0", "betas", 1, 1.0);
  expect_invalid_option([] { Nadam({.weight_decay = -1.0, .momentum_decay = -1.0}); },
                        "Invalid weight_decay value: -1.0", "weight_decay", -1, -1.0);
  expect_invalid_option([] { Radam({.beta1 = 2.0, .eps = -1.0}); }, "Invalid epsilon value: -1.0",
                        "eps", -1, -1.0);
  expect_invalid_option([] { Adamax({.lr = -1.0, .beta1 = 2.0}); }, "Invalid learning rate: -1.0",
                        "lr", -1, -1.0);

  // momentum_decay has no upper bound in torch; beta 0 is valid.
  EXPECT_NO_THROW(Nadam({.beta1 = 0.0, .beta2 = 0.0, .momentum_decay = 1e6}));
  EXPECT_NO_THROW(Radam({.beta1 = 0.0, .beta2 = 0.0}));
  EXPECT_NO_THROW(Adamax({.beta1 = 0.0, .beta2 = 0.0}));

  // An invalid value set through options() is caught by step(), before anything is written.
  std::vector<float> p(5, 1.0f), g(5, 0.5f);
  Nadam opt;
  opt.add_param(p);
  opt.step({g});
  const std::string state = saved(opt);
  const std::vector<float> p0 = p;
  opt.options().momentum_decay = -1.0;
  expect_invalid_option([&] { opt.step({g}); }, "Invalid momentum_decay value: -1.0",
                        "momentum_decay", -1, -1.0);
  EXPECT_EQ(p, p0);
  opt.options().momentum_decay = 4e-3;
  EXPECT_EQ(saved(opt), state);
  NadamOptions worse = opt.options();
  worse.beta2 = 1.0;
  expect_invalid_option([&] { opt.set_options(worse); }, "Invalid beta parameter at index 1: 1.0",
                        "betas", 1, 1.0);
  EXPECT_EQ(opt.options().beta2, 0.999);
}

TEST(Validation, NothingIsWrittenWhenAStepFails) {
  std::vector<float> a = random_vector<float>(40, 1), b = random_vector<float>(9, 2);
  std::vector<double> c = random_vector<double>(5, 3);
  Adam opt({.lr = 0.1, .amsgrad = true});
  opt.add_param(a);
  opt.add_param(b);
  opt.add_param(c);
  std::vector<float> ga(40, 0.5f), gb(9, 0.25f);
  std::vector<double> gc(5, 0.125);
  opt.step({ga, gb, gc});  // state exists now
  const auto a0 = a, b0 = b;
  const auto c0 = c;
  const std::string state0 = saved(opt);
  auto unchanged = [&] {
    EXPECT_EQ(a, a0);
    EXPECT_EQ(b, b0);
    EXPECT_EQ(c, c0);
    EXPECT_EQ(saved(opt), state0);
  };

  std::vector<float> short_grad(8, 1.0f);
  EXPECT_INVALID(opt.step({ga, short_grad, gc}), "param 1: grad has 8 elements, param has 9");
  unchanged();
  std::vector<double> gb_double(9, 1.0);
  EXPECT_INVALID(opt.step({ga, gb_double, gc}), "param 1: grad is float64, param is float32");
  unchanged();
  std::vector<float> gc_short(4, 1.0f);  // a float32 grad of a float64 param is valid
  EXPECT_INVALID(opt.step({ga, gb, gc_short}), "param 2: grad has 4 elements, param has 5");
  unchanged();
  EXPECT_INVALID(opt.step({ga, gb}), "step() got 2 grads for 3 params");
  unchanged();
  EXPECT_INVALID(opt.step({ga, Grad(a.data() + 3, 9), gc}), "param 1: grad overlaps param 0");
  unchanged();
  opt.options().lr = -0.5;  // an invalid value set through the reference is caught by step()
  EXPECT_INVALID(opt.step({ga, gb, gc}), "Invalid learning rate: -0.5");
  opt.options().lr = 0.1;
  unchanged();

  // The failure is in the last param: the first ones, valid, are not written either.
  Sgd fresh({.lr = 0.1, .momentum = 0.9});
  std::vector<float> p(3, 1.0f), q(4, 1.0f);
  fresh.add_param(p);
  fresh.add_param(q);
  std::vector<float> gp(3, 1.0f), gq(5, 1.0f);
  EXPECT_INVALID(fresh.step({gp, gq}), "param 1: grad has 5 elements, param has 4");
  EXPECT_EQ(p, std::vector<float>(3, 1.0f));
  EXPECT_EQ(fresh.step_count(0), 0);
  EXPECT_TRUE(fresh.state(0).buffer<float>(0).empty());  // no momentum buffer created
}

TEST(Validation, OverlappingParamsAreRejected) {
  std::vector<float> storage(100);
  Adam opt;
  opt.add_param(std::span<float>(storage).subspan(0, 50));
  EXPECT_INVALID(opt.add_param(std::span<float>(storage).subspan(49, 10)), "param 1 overlaps param 0");
  EXPECT_EQ(opt.num_params(), 1u);
  opt.add_param(std::span<float>(storage).subspan(50, 50));  // adjacent is fine
  EXPECT_INVALID(opt.add_param(storage.data() + 99, 1), "param 2 overlaps param 1");
  EXPECT_INVALID(opt.add_param(static_cast<float*>(nullptr), 3), "param 2: data is null");
  EXPECT_EQ(opt.num_params(), 2u);
}

TEST(Step, SkippedParamKeepsItsValueStateAndStepCount) {
  std::vector<double> a = random_vector<double>(10, 4), b = random_vector<double>(10, 5);
  Rmsprop opt({.lr = 0.01, .momentum = 0.5});
  opt.add_param(a);
  opt.add_param(b);
  std::vector<double> ga(10, 0.3), gb(10, -0.2);
  opt.step({ga, gb});
  const auto b1 = b;
  std::vector<double> slot0(opt.state(1).buffer<double>(0).begin(), opt.state(1).buffer<double>(0).end());
  opt.step({ga, Grad{}});
  opt.step({ga, nullptr});
  EXPECT_EQ(b, b1);
  EXPECT_EQ(opt.step_count(0), 3);
  EXPECT_EQ(opt.step_count(1), 1);
  auto now = opt.state(1).buffer<double>(0);
  EXPECT_TRUE(std::equal(now.begin(), now.end(), slot0.begin()));
}

TEST(Step, PerParamStepCountsDriveBiasCorrection) {
  // Param b joins late (skipped for 3 steps): its Adam bias correction starts at step 1, as
  // torch's per-param state["step"] does, so it matches an optimizer that only ever saw b.
  std::vector<float> a = random_vector<float>(16, 6), b = random_vector<float>(16, 7);
  std::vector<float> b_alone = b;
  Adam opt({.lr = 0.05});
  opt.add_param(a);
  opt.add_param(b);
  Adam single({.lr = 0.05});
  single.add_param(b_alone);
  for (int s = 0; s < 6; ++s) {
    const auto ga = random_vector<float>(16, 10 + s), gb = random_vector<float>(16, 20 + s);
    if (s < 3) {
      opt.step({ga, Grad{}});
    } else {
      opt.step({ga, gb});
      single.step({gb});
    }
  }
  EXPECT_EQ(opt.step_count(0), 6);
  EXPECT_EQ(opt.step_count(1), 3);
  EXPECT_TRUE(bit_equal(b, b_alone));
}

TEST(Step, MixedDtypesInOneOptimizer) {
  std::vector<float> f = random_vector<float>(33, 8);
  std::vector<double> d = random_vector<double>(17, 9);
  AnyOptions options = AdamWOptions{};
  RefOptimizer<float> ref_f{options, {}};
  RefOptimizer<double> ref_d{options, {}};
  ref_f.add(f);
  ref_d.add(d);
  AdamW opt;
  opt.add_param(f);
  opt.add_param(d);
  EXPECT_EQ(opt.param_dtype(0), DType::float32);
  EXPECT_EQ(opt.param_dtype(1), DType::float64);
  EXPECT_EQ(opt.param_size(1), 17u);
  for (int s = 0; s < 4; ++s) {
    const auto gf = random_vector<float>(33, 30 + s);
    const auto gd = random_vector<double>(17, 40 + s);
    opt.step({gf, gd});
    ref_f.step({gf});
    ref_d.step({gd});
  }
  EXPECT_TRUE(bit_equal(f, ref_f.params[0].value));
  EXPECT_TRUE(bit_equal(d, ref_d.params[0].value));
}

TEST(Step, GradFormsAreEquivalent) {
  std::vector<float> p1 = random_vector<float>(12, 11), p2 = p1, p3 = p1;
  const std::vector<float> g = random_vector<float>(12, 12);
  Sgd a({.lr = 0.1, .momentum = 0.9}), b({.lr = 0.1, .momentum = 0.9}), c({.lr = 0.1, .momentum = 0.9});
  a.add_param(p1);
  b.add_param(p2.data(), p2.size());
  c.add_param(std::span<float>(p3));
  for (int s = 0; s < 3; ++s) {
    a.step({g});
    const std::vector<std::span<const float>> spans = {g};
    b.step(spans);
    c.step({Grad(g.data(), g.size())});
  }
  EXPECT_EQ(p1, p2);
  EXPECT_EQ(p1, p3);
}

TEST(Step, EmptyParamsAndNoParams) {
  Adam none;
  none.step(std::span<const Grad>());  // nothing to do
  std::vector<float> empty, one = {1.0f};
  Adam opt({.lr = 0.5});
  opt.add_param(empty);
  opt.add_param(one);
  std::vector<float> g_empty, g_one = {1.0f};
  opt.step({g_empty, g_one});
  EXPECT_EQ(opt.step_count(0), 1);
  EXPECT_FLOAT_EQ(one[0], 0.5f);
}

TEST(Step, OptionsChangedBetweenStepsTakeEffect) {
  // Toggling amsgrad on mid-run creates max_exp_avg_sq (zeros) on the next step.
  std::vector<double> p = random_vector<double>(8, 13);
  AnyOptions options = AdamOptions{.lr = 0.1};
  RefOptimizer<double> ref{options, {}};
  ref.add(p);
  Adam opt({.lr = 0.1});
  opt.add_param(p);
  for (int s = 0; s < 5; ++s) {
    if (s == 2) {
      opt.options().amsgrad = true;
      std::get<AdamOptions>(ref.options).amsgrad = true;
      opt.options().lr = 0.02;
      std::get<AdamOptions>(ref.options).lr = 0.02;
    }
    const auto g = random_vector<double>(8, 60 + s);
    opt.step({g});
    ref.step({g});
    ASSERT_TRUE(bit_equal(p, ref.params[0].value)) << "step " << s;
  }
  EXPECT_FALSE(opt.state(0).buffer<double>(2).empty());
}

TEST(StateView, NamesSlotsAndDtypeChecks) {
  std::vector<float> p(5, 1.0f);
  Rmsprop opt({.lr = 0.01, .momentum = 0.9, .centered = true});
  opt.add_param(p);
  std::vector<float> g(5, 0.5f);
  opt.step({g});
  const ParamStateView view = opt.state(0);
  EXPECT_EQ(view.names[0], "square_avg");
  EXPECT_EQ(view.names[1], "momentum_buffer");
  EXPECT_EQ(view.names[2], "grad_avg");
  EXPECT_EQ(view.size, 5u);
  EXPECT_EQ(view.step, 1);
  EXPECT_EQ(view.buffer<float>(0).size(), 5u);
  EXPECT_INVALID(view.buffer<double>(0), "requested float64, the state is float32");
  EXPECT_INVALID(view.buffer<float>(3), "slot must be 0, 1 or 2");
  EXPECT_INVALID(opt.state(1), "param 1 does not exist");
  EXPECT_EQ(opt.state().size(), 1u);
  EXPECT_EQ(Adagrad().state().size(), 0u);
}

TEST(StateView, RestoringThroughViewsContinuesTheSameTrajectory) {
  for (const NamedOptions& named : option_grid()) {
    SCOPED_TRACE(named.name);
    std::vector<double> a = random_vector<double>(21, 14), b = random_vector<double>(3, 15);
    auto first = make_optimizer(named.options);
    first->add_param(a);
    first->add_param(b);
    for (int s = 0; s < 3; ++s) {
      const auto ga = random_vector<double>(21, 70 + s), gb = random_vector<double>(3, 80 + s);
      first->step({ga, s == 1 ? Grad{} : Grad(gb)});
    }
    // A program's own checkpoint: copy params, options (with the group state of Schedule-Free),
    // step counts and buffers out, then into a new one.
    std::vector<double> a2 = a, b2 = b;
    auto second = make_optimizer(current_options(*first));
    second->add_param(a2);
    second->add_param(b2);
    for (std::size_t k = 0; k < 2; ++k) {
      const ParamStateView from = first->state(k);
      second->allocate_state(k);
      second->set_step_count(k, from.step);
      for (int j = 0; j < 2; ++j)  // NAdam's mu_product
        if (!from.scalar_names[static_cast<std::size_t>(j)].empty())
          second->set_scalar_state(k, j, from.scalars[static_cast<std::size_t>(j)]);
      const ParamStateView to = second->state(k);
      for (int slot = 0; slot < 3; ++slot) {
        auto src = from.buffer<double>(slot);
        auto dst = to.buffer<double>(slot);
        ASSERT_EQ(src.size(), dst.size()) << "slot " << slot;
        std::copy(src.begin(), src.end(), dst.begin());
      }
    }
    for (int s = 0; s < 3; ++s) {
      const auto ga = random_vector<double>(21, 90 + s), gb = random_vector<double>(3, 95 + s);
      first->step({ga, gb});
      second->step({ga, gb});
    }
    EXPECT_TRUE(bit_equal(a, a2));
    EXPECT_TRUE(bit_equal(b, b2));
    EXPECT_EQ(saved(*first), saved(*second));  // the scalar state came across too
  }
  Adam opt;
  std::vector<float> p(2);
  opt.add_param(p);
  EXPECT_INVALID(opt.set_step_count(0, -1), "param 0: step count -1 is out of range (0..9007199254740990)");
}

TEST(Optimizer, MoveKeepsParamsAndState) {
  std::vector<float> p(4, 1.0f), g(4, 1.0f);
  Adam opt({.lr = 0.1});
  opt.add_param(p);
  opt.step({g});
  Adam moved = std::move(opt);
  moved.step({g});
  EXPECT_EQ(moved.step_count(0), 2);
  EXPECT_FLOAT_EQ(p[0], 0.8f);
}

}  // namespace
}  // namespace fastoptim::test
