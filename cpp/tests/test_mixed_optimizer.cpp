// Mixed precision in the C++ optimizer: bfloat16/float16 params, 16-bit grads of float32 params,
// the Precision settings (master weights, state storage, stochastic rounding), their
// validation, state views, clip_grad_norm, and checkpoints that carry every stream's storage
// type and the settings.
#include <sstream>

#include "mixed_support.hpp"

namespace fastoptim::test {
namespace {

// ---- params of any storage type, as bytes ------------------------------------------------------
std::vector<unsigned char> values_of(DType t, std::size_t n, std::uint64_t seed, double lo,
                                     double hi) {
  std::vector<unsigned char> out;
  auto put = [&](auto x) {
    const auto* b = reinterpret_cast<const unsigned char*>(&x);
    out.insert(out.end(), b, b + sizeof(x));
  };
  if (t == DType::float64) {
    for (double x : random_vector<double>(n, seed, lo, hi)) put(x);
  } else {
    for (float x : random_vector<float>(n, seed, lo, hi)) {
      if (t == DType::float32) put(x);
      else if (t == DType::bfloat16) put(to_bfloat16(x));
      else put(to_float16(x));
    }
  }
  return out;
}

template <class F>
decltype(auto) with_type(DType t, F&& f) {
  switch (t) {
    case DType::float32: return f(float{});
    case DType::float64: return f(double{});
    case DType::bfloat16: return f(bfloat16{});
    case DType::float16: break;
    case DType::int8: throw std::invalid_argument("int8 is a state type, never a param's");
  }
  return f(float16{});
}

template <class T>
std::span<T> typed(std::vector<unsigned char>& bytes) {
  return {reinterpret_cast<T*>(bytes.data()), bytes.size() / sizeof(T)};
}
template <class T>
std::span<const T> typed(const std::vector<unsigned char>& bytes) {
  return {reinterpret_cast<const T*>(bytes.data()), bytes.size() / sizeof(T)};
}

// Element i widened to double.
double value_at(DType t, const std::vector<unsigned char>& bytes, std::size_t i) {
  return with_type(t, [&](auto z) { return widen<double>(typed<decltype(z)>(bytes)[i]); });
}

struct Param {
  DType param, grad;
  std::size_t size;
  std::vector<unsigned char> data;
};

Grad grad_of(DType t, const std::vector<unsigned char>& bytes) {
  return with_type(t, [&](auto z) { return Grad(typed<decltype(z)>(bytes)); });
}

std::size_t add(Optimizer& opt, Param& p) {
  return with_type(p.param, [&](auto z) { return opt.add_param(typed<decltype(z)>(p.data)); });
}

// The params a Precision allows, each kind that fits: float32 (float32 and bfloat16 grads),
// bfloat16, float16, float64; odd sizes, one empty.
std::vector<Param> model_for(const Precision& precision) {
  std::vector<Param> out;
  auto param = [&](DType p, DType g, std::size_t n) {
    out.push_back({p, g, n, values_of(p, n, 10 + out.size(), -2.0, 2.0)});
  };
  param(DType::float32, DType::float32, 33);
  param(DType::bfloat16, DType::bfloat16, 37);
  if (precision.state_dtype != DType::bfloat16 || precision.master_weights)
    param(DType::float16, DType::float16, 9);
  param(DType::float32, DType::bfloat16, 7);
  if (!precision.state_dtype) param(DType::float64, DType::float64, 5);
  param(DType::bfloat16, DType::bfloat16, 0);
  param(DType::float32, DType::float16, 1);
  return out;
}

// One step's grads, `skip` (a bit per param) absent.
struct Grads {
  std::vector<std::vector<unsigned char>> data;
  std::vector<Grad> views;
};
Grads grads_for(const std::vector<Param>& params, int step, unsigned skip = 0) {
  Grads g;
  for (std::size_t k = 0; k < params.size(); ++k)
    g.data.push_back(values_of(params[k].grad, params[k].size, 1000 * step + k, -1.0, 1.0));
  for (std::size_t k = 0; k < params.size(); ++k)
    g.views.push_back((skip >> k) & 1u ? Grad{} : grad_of(params[k].grad, g.data[k]));
  return g;
}

std::unique_ptr<Optimizer> make(const AnyOptions& options, const Precision& precision) {
  return std::visit(
      [&](const auto& o) -> std::unique_ptr<Optimizer> {
        return std::make_unique<RuleOptimizer<typename std::decay_t<decltype(o)>::Rule>>(o,
                                                                                       precision);
      },
      options);
}

std::string describe(const Precision& p) {
  return std::string(p.master_weights ? "master " : "") +
         (p.state_dtype ? std::string("state=") + name_of(*p.state_dtype) + " " : "") +
         (p.stochastic_rounding ? "stochastic seed=" + std::to_string(p.seed) : "nearest");
}

// The settings the tests go through.
std::vector<Precision> all_settings() {
  return {Precision{},
          Precision{.master_weights = true},
          Precision{.state_dtype = DType::float32},
          Precision{.state_dtype = DType::bfloat16},
          Precision{.master_weights = true, .state_dtype = DType::bfloat16},
          Precision{.stochastic_rounding = true, .seed = 7},
          Precision{.master_weights = true, .stochastic_rounding = true, .seed = (1ull << 63) + 5},
          Precision{.master_weights = true, .state_dtype = DType::bfloat16,
                    .stochastic_rounding = true, .seed = 3},
          Precision{.state_dtype = DType::bfloat16, .stochastic_rounding = true, .seed = 3}};
}

// ---- the optimizer against the driver ----------------------------------------------------------
// A param's streams as the driver takes them, kept by the test: what the optimizer must do
// with its state (created as described, in the resolved storage types), its master copy (the
// param's values at its first update), its ids and step counts.
struct Mirror {
  Param p;
  DType state;
  bool master;
  std::array<std::vector<unsigned char>, 3> slots{};
  std::array<bool, 3> allocated{};
  std::vector<float> master_copy{};
  bool master_made = false;
  float scalar = 1.0f;  // NAdam's mu_product
  std::int64_t step = 0;
};

// A slot of `size` elements of `value` in `dtype`.
std::vector<unsigned char> filled(DType dtype, std::size_t size, double value) {
  return with_type(dtype, [&](auto z) {
    using S = decltype(z);
    std::vector<unsigned char> b(size * sizeof(S));
    for (S& x : typed<S>(b)) {
      if constexpr (std::is_same_v<S, double>) x = value;
      else x = narrow<S>(static_cast<float>(value));
    }
    return b;
  });
}

// A slot as the optimizer creates it: zero, or a copy of the param (Schedule-Free's z).
template <class O>
std::vector<unsigned char> new_slot(const Mirror& m, int slot) {
  if (!O::Rule::slots[static_cast<std::size_t>(slot)].from_param) return filled(m.state, m.p.size, 0.0);
  return with_type(m.state, [&](auto z) {
    using S = decltype(z);
    std::vector<unsigned char> b(m.p.size * sizeof(S));
    auto out = typed<S>(b);
    for (std::size_t i = 0; i < m.p.size; ++i) {
      if constexpr (std::is_same_v<S, double>) out[i] = value_at(m.p.param, m.p.data, i);
      else out[i] = narrow<S>(static_cast<float>(value_at(m.p.param, m.p.data, i)));
    }
    return b;
  });
}

// One step of every mirror, each a driver call of its own; then the group state advances
// (fastoptim::advance_group), once per step.
template <class O>
void mirror_step(O& o, std::vector<Mirror>& ms, const Grads& g, const Precision& precision) {
  for (std::size_t k = 0; k < ms.size(); ++k) {
    Mirror& m = ms[k];
    if (!g.views[k].present()) continue;
    bool fresh = false;
    for (int s = 0; s < 3; ++s) {
      if (m.allocated[s] || !uses_state_slot(o, s)) continue;
      m.slots[s] = new_slot<O>(m, s);  // (Adagrad's sum exists from the start)
      m.allocated[s] = true;
      fresh = fresh || s == 0;
    }
    if (m.master && !m.master_made) {
      for (std::size_t i = 0; i < m.p.size; ++i)
        m.master_copy.push_back(static_cast<float>(value_at(m.p.param, m.p.data, i)));
      m.master_made = true;
    }
    ParamBuffers b;
    b.param = m.p.data.data();
    b.grad = g.views[k].data();
    for (int s = 0; s < 3; ++s) b.state[s] = m.allocated[s] ? m.slots[s].data() : nullptr;
    b.size = m.p.size;
    b.master = m.master ? m.master_copy.data() : nullptr;
    b.step = std::is_same_v<O, SgdOptions> ? (fresh ? 1 : 2) : m.step + 1;
    b.scalar_state = &m.scalar;
    b.id = k;
    b.rounding_step = m.step + 1;
    ++m.step;
    const StreamTypes types(m.p.param, m.p.grad, m.state, m.master,
                            Rounding{precision.stochastic_rounding, precision.seed});
    fastoptim::step(o, types, std::span(&b, 1), 1);
  }
  advance_group(o);
}

// Everything the optimizer holds for param k equals the mirror.
testing::AssertionResult same_as_mirror(Optimizer& opt, std::size_t k, const Mirror& m,
                                        const Param& actual) {
  if (actual.data != m.p.data) return testing::AssertionFailure() << "param values differ";
  const ParamStateView v = opt.state(k);
  if (v.state_dtype != m.state) return testing::AssertionFailure() << "state dtype";
  if (v.step != m.step) return testing::AssertionFailure() << "step " << v.step << " vs " << m.step;
  for (int s = 0; s < 3; ++s) {
    if ((v.buffers[s] != nullptr) != m.allocated[s])
      return testing::AssertionFailure() << "slot " << s << " allocated differently";
    if (!m.slots[s].empty() &&
        std::memcmp(v.buffers[s], m.slots[s].data(), m.slots[s].size()) != 0)
      return testing::AssertionFailure() << "slot " << s << " differs";
  }
  if ((v.master != nullptr) != m.master_made)
    return testing::AssertionFailure() << "master copy present: " << (v.master != nullptr);
  if (!m.master_copy.empty() &&
      std::memcmp(v.master, m.master_copy.data(), m.master_copy.size() * 4) != 0)
    return testing::AssertionFailure() << "master copy differs";
  if (!v.scalar_names[0].empty() && v.scalars[0] != m.scalar)
    return testing::AssertionFailure() << "scalar state differs";
  return testing::AssertionSuccess();
}

class MixedOptimizerGrid : public testing::TestWithParam<NamedOptions> {};

// Every rule, every setting, params of every kind in one optimizer (one driver call per
// storage-type combination): each param as one driver call of its own layout, with the
// param's index as its stochastic-rounding id and its update count as the step.
TEST_P(MixedOptimizerGrid, EveryParamKindAndSettingIsItsLayoutsDriverStep) {
  std::visit(
      [&](const auto& o) {
        for (const Precision& precision : all_settings()) {
          SCOPED_TRACE(describe(precision));
          std::vector<Param> params = model_for(precision);
          std::vector<Mirror> mirrors;
          auto opt = make(GetParam().options, precision);
          opt->set_num_threads(2);
          for (Param& p : params) {
            add(*opt, p);
            const bool master = precision.master_weights &&
                                (p.param == DType::bfloat16 || p.param == DType::float16);
            const DType state = precision.state_dtype ? *precision.state_dtype
                                                      : (master ? DType::float32 : p.param);
            mirrors.push_back(Mirror{.p = p, .state = state, .master = master});
            // Adagrad's sum exists from the start, in the state's type
            if constexpr (std::is_same_v<std::decay_t<decltype(o)>, AdagradOptions>) {
              mirrors.back().slots[0] = filled(state, p.size, o.initial_accumulator_value);
              mirrors.back().allocated[0] = true;
            }
          }
          for (std::size_t k = 0; k < params.size(); ++k)
            ASSERT_EQ(opt->state_dtype(k), mirrors[k].state);
          const int steps = steps_for(GetParam().options, 3);
          auto group = o;  // the group state the mirrors step with
          for (int s = 0; s < steps; ++s) {
            const Grads g = grads_for(params, s, s == 1 ? 0b10010u : 0u);
            opt->step(g.views);
            mirror_step(group, mirrors, g, precision);
            for (std::size_t k = 0; k < params.size(); ++k)
              ASSERT_TRUE(same_as_mirror(*opt, k, mirrors[k], params[k]))
                  << "step " << s << ", param " << k << " (" << name_of(params[k].param) << ")";
          }
        }
      },
      GetParam().options);
}

// With master weights, a 16-bit param's master copy follows the float32 optimizer on the
// widened values exactly (and its float32 state with it); the param is the master rounded to
// nearest, whatever the rounding setting.
TEST_P(MixedOptimizerGrid, MasterWeightsFollowTheFloat32Trajectory) {
  for (bool stochastic : {false, true}) {
    const Precision precision{.master_weights = true, .stochastic_rounding = stochastic, .seed = 1};
    std::vector<bfloat16> b = narrowed<bfloat16>(random_vector<float>(41, 1, -2.0, 2.0));
    std::vector<float16> h = narrowed<float16>(random_vector<float>(19, 2, -2.0, 2.0));
    std::vector<float> bw(b.size()), hw(h.size());
    for (std::size_t i = 0; i < b.size(); ++i) bw[i] = to_float(b[i]);
    for (std::size_t i = 0; i < h.size(); ++i) hw[i] = to_float(h[i]);
    auto opt = make(GetParam().options, precision);
    auto ref = make_optimizer(GetParam().options);
    opt->add_param(b);
    opt->add_param(h);
    ref->add_param(bw);
    ref->add_param(hw);
    for (int s = 0; s < steps_for(GetParam().options, 4); ++s) {
      const auto gb = narrowed<bfloat16>(random_vector<float>(b.size(), 10 + s));
      const auto gh = narrowed<float16>(random_vector<float>(h.size(), 20 + s));
      std::vector<float> gbw(gb.size()), ghw(gh.size());
      for (std::size_t i = 0; i < gb.size(); ++i) gbw[i] = to_float(gb[i]);
      for (std::size_t i = 0; i < gh.size(); ++i) ghw[i] = to_float(gh[i]);
      opt->step({gb, s == 2 ? Grad{} : Grad(gh)});
      ref->step({gbw, s == 2 ? Grad{} : Grad(ghw)});
      for (std::size_t k = 0; k < 2; ++k) {
        const ParamStateView v = opt->state(k), r = ref->state(k);
        ASSERT_EQ(v.state_dtype, DType::float32);
        const std::vector<float> master(v.master_copy().begin(), v.master_copy().end());
        ASSERT_TRUE(bit_equal(master, k == 0 ? bw : hw)) << "step " << s << " param " << k;
        for (int slot = 0; slot < 3; ++slot) {
          const auto a = v.buffer<float>(slot), e = r.buffer<float>(slot);
          ASSERT_TRUE(bit_equal(std::span<const float>(a), std::span<const float>(e))) << slot;
        }
        ASSERT_EQ(v.scalars, r.scalars);
        ASSERT_EQ(v.step, r.step);
      }
      for (std::size_t i = 0; i < b.size(); ++i) ASSERT_EQ(b[i].bits, to_bfloat16(bw[i]).bits);
      for (std::size_t i = 0; i < h.size(); ++i) ASSERT_EQ(h[i].bits, to_float16(hw[i]).bits);
    }
  }
}

// float32 params with 16-bit grads: the float32 optimizer on the widened grads, exactly; the
// clip folded into the step as well.
TEST_P(MixedOptimizerGrid, FloatParamsWithSixteenBitGradsAreTheWidenedGradsStep) {
  std::vector<float> a = random_vector<float>(29, 5), b = random_vector<float>(8, 6);
  std::vector<float> ra = a, rb = b;
  auto opt = make_optimizer(GetParam().options), ref = make_optimizer(GetParam().options);
  opt->add_param(a);
  opt->add_param(b);
  ref->add_param(ra);
  ref->add_param(rb);
  for (int s = 0; s < steps_for(GetParam().options, 3); ++s) {
    const auto ga = narrowed<bfloat16>(random_vector<float>(a.size(), 30 + s, -3.0, 3.0));
    const auto gb = narrowed<float16>(random_vector<float>(b.size(), 40 + s, -3.0, 3.0));
    std::vector<float> gaw(ga.size()), gbw(gb.size());
    for (std::size_t i = 0; i < ga.size(); ++i) gaw[i] = to_float(ga[i]);
    for (std::size_t i = 0; i < gb.size(); ++i) gbw[i] = to_float(gb[i]);
    if (s == 1) {
      const double norm = opt->clip_grad_norm({ga, gb}, 0.5);
      EXPECT_EQ(norm, ref->clip_grad_norm({gaw, gbw}, 0.5));
    }
    opt->step({ga, gb});
    ref->step({gaw, gbw});
    ASSERT_TRUE(bit_equal(a, ra)) << "step " << s;
    ASSERT_TRUE(bit_equal(b, rb)) << "step " << s;
  }
  EXPECT_EQ(saved(*opt), saved(*ref));  // 16-bit grads leave no trace in the state
}

INSTANTIATE_TEST_SUITE_P(Grid, MixedOptimizerGrid, testing::ValuesIn(option_grid()), grid_name);

// A param's step in a mixed optimizer is the step it has alone: batching by storage types does
// not change any bits.
TEST(MixedOptimizer, EveryKindInOneOptimizerEqualsEachAlone) {
  for (const Precision& precision : all_settings()) {
    SCOPED_TRACE(describe(precision));
    std::vector<Param> together = model_for(precision);
    auto all = make(AdamOptions{.lr = 0.01, .amsgrad = true}, precision);
    for (Param& p : together) add(*all, p);
    std::vector<std::vector<Param>> alone;
    std::vector<std::unique_ptr<Optimizer>> singles;
    for (const Param& p : together) {
      alone.push_back({p});
      singles.push_back(make(AdamOptions{.lr = 0.01, .amsgrad = true}, precision));
      add(*singles.back(), alone.back()[0]);
    }
    for (int s = 0; s < 3; ++s) {
      const Grads g = grads_for(together, s);
      all->step(g.views);
      for (std::size_t k = 0; k < together.size(); ++k) singles[k]->step({g.views[k]});
    }
    for (std::size_t k = 0; k < together.size(); ++k) {
      // (stochastic rounding keys by the param's index: compare only where nothing rounds
      // stochastically, or the param is the first)
      const bool keyed = precision.stochastic_rounding && k != 0;
      if (!keyed) {
        EXPECT_EQ(together[k].data, alone[k][0].data) << "param " << k;
      }
    }
  }
}

// ---- settings and validation --------------------------------------------------------------------
TEST(MixedOptimizer, SettingsAreCheckedAndParamsRefusedByName) {
  EXPECT_INVALID(Adam({}, {.state_dtype = DType::float16}),
                 "Precision::state_dtype must be float32, bfloat16 or int8 (or unset: the "
                 "param's type), got float16");
  EXPECT_INVALID(Adam({}, {.state_dtype = DType::float64}), "got float64");
  Adam opt({}, {.state_dtype = DType::bfloat16});
  std::vector<double> d(3);
  std::vector<float16> h(3);
  std::vector<float> f(3);
  std::vector<bfloat16> b(3);
  EXPECT_INVALID(opt.add_param(d), "param 0: no kernel for float64 params with bfloat16 state "
                                   "(float64 params keep float64 state");
  EXPECT_INVALID(opt.add_param(h), "param 0: no kernel for float16 params with bfloat16 state "
                                   "(bfloat16 state for float16 params needs "
                                   "Precision::master_weights)");
  EXPECT_EQ(opt.num_params(), 0u);
  opt.set_precision({.master_weights = true, .state_dtype = DType::bfloat16});
  EXPECT_EQ(opt.add_param(h), 0u);
  EXPECT_EQ(opt.add_param(f), 1u);
  EXPECT_EQ(opt.add_param(b), 2u);
  EXPECT_TRUE(opt.has_master(0));
  EXPECT_FALSE(opt.has_master(1));  // float32 params are their own master
  EXPECT_EQ(opt.state_dtype(1), DType::bfloat16);
  EXPECT_EQ(opt.param_dtype(2), DType::bfloat16);
  EXPECT_INVALID(opt.set_precision({}), "the optimizer has 3 params; mixed-precision settings are "
                                        "fixed once a param is added");
  EXPECT_EQ(opt.precision(), (Precision{.master_weights = true, .state_dtype = DType::bfloat16}));
  EXPECT_INVALID(Adam().set_precision({.state_dtype = DType::float16}), "got float16");
  // the defaults: state in the param's type, float32 beside a master copy
  Adam plain, master({}, {.master_weights = true});
  EXPECT_EQ(plain.add_param(b), 0u);
  EXPECT_EQ(plain.state_dtype(0), DType::bfloat16);
  EXPECT_FALSE(plain.has_master(0));
  EXPECT_EQ(master.add_param(h), 0u);
  EXPECT_EQ(master.state_dtype(0), DType::float32);
  EXPECT_EQ(master.add_param(d), 1u);
  EXPECT_EQ(master.state_dtype(1), DType::float64);
}

TEST(MixedOptimizer, GradsOfAnotherTypeAreRefusedWithNothingChanged) {
  std::vector<bfloat16> b = narrowed<bfloat16>({1.0f, 2.0f, 3.0f});
  std::vector<float> f = {1.0f, 2.0f};
  std::vector<double> d = {1.0, 2.0};
  std::vector<float16> h = narrowed<float16>({0.5f});
  Adam opt({.lr = 0.1}, {.master_weights = true});
  opt.add_param(b);
  opt.add_param(f);
  opt.add_param(d);
  opt.add_param(h);
  const std::vector<float> gb32 = {0.1f, 0.2f, 0.3f};
  const auto gb = narrowed<bfloat16>(gb32);
  const auto gb_half = narrowed<float16>(gb32);
  const auto gf = narrowed<float16>({0.5f, 0.5f});
  const auto gd = narrowed<bfloat16>({0.5f, 0.5f});
  const std::vector<double> gd64 = {0.5, 0.5};
  const auto gh = narrowed<float16>({0.25f});
  const auto gh_b = narrowed<bfloat16>({0.25f});
  const std::string before = saved(opt);
  const auto b0 = b;
  EXPECT_INVALID(opt.step({gb32, gf, gd64, gh}), "param 0: grad is float32, param is bfloat16 (a "
                                                 "grad has its param's type; float32 params also "
                                                 "take bfloat16 and float16 grads, float64 "
                                                 "params also float32, bfloat16 and float16 "
                                                 "grads)");
  EXPECT_INVALID(opt.step({gb_half, gf, gd64, gh}), "param 0: grad is float16, param is bfloat16");
  EXPECT_INVALID(opt.step({gb, gf, gd64, gh_b}), "param 3: grad is bfloat16, param is float16");
  EXPECT_INVALID(opt.clip_grad_norm({gb, gf, gd64, gh_b}, 1.0), "param 3: grad is bfloat16");
  // a 16-bit grad overlapping a param, counted in its own element size
  const std::span<const bfloat16> inside(reinterpret_cast<const bfloat16*>(f.data()) + 1, 2);
  EXPECT_INVALID(opt.step({gb, Grad(inside), gd64, gh}), "param 1: grad overlaps param 1");
  const std::span<const float16> overlap(reinterpret_cast<const float16*>(f.data()) + 2, 2);
  EXPECT_INVALID(opt.step({gb, gf, gd64, Grad(overlap)}), "param 3: grad has 2 elements");
  const std::span<const float16> over_f(reinterpret_cast<const float16*>(f.data()) + 3, 1);
  EXPECT_INVALID(opt.step({gb, gf, gd64, Grad(over_f)}), "param 3: grad overlaps param 1");
  EXPECT_EQ(saved(opt), before);
  EXPECT_TRUE(same_bits(b, b0));
  EXPECT_EQ(opt.state(0).master, nullptr);  // no master copy made by a refused step
  EXPECT_EQ(opt.step_count(0), 0);
  opt.step({gb, gf, gd, gh});  // float32 and float64 params take 16-bit grads
  EXPECT_NE(opt.state(0).master, nullptr);
  EXPECT_EQ(opt.step_count(3), 1);
}

// ---- stochastic rounding through the optimizer ----------------------------------------------------
std::size_t differing(const std::vector<bfloat16>& a, const std::vector<bfloat16>& b) {
  std::size_t d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d += a[i].bits != b[i].bits ? 1 : 0;
  return d;
}

// SGD to x = 1 + half an ulp from 0 (grad 1, lr x, maximize): each element rounds up or down
// with probability 1/2.
constexpr float kHalfway = 1.0f + 0x1p-8f;
constexpr std::size_t kN = 4096;

TEST(MixedOptimizer, StochasticRoundingIsKeyedBySeedParamIndexAndUpdateCount) {
  auto run = [](std::uint64_t seed, int steps) {
    std::vector<bfloat16> p0(kN, bfloat16{0}), p1(kN, bfloat16{0});
    const std::vector<bfloat16> g(kN, to_bfloat16(1.0f));
    Sgd opt({.lr = kHalfway, .maximize = true}, {.stochastic_rounding = true, .seed = seed});
    opt.add_param(p0);
    opt.add_param(p1);
    for (int s = 0; s < steps; ++s) {
      std::fill(p0.begin(), p0.end(), bfloat16{0});
      std::fill(p1.begin(), p1.end(), bfloat16{0});
      opt.step({g, g});
    }
    return std::pair(p0, p1);
  };
  const auto [a0, a1] = run(42, 1);
  const auto [b0, b1] = run(42, 1);
  EXPECT_TRUE(same_bits(a0, b0));  // reproducible
  EXPECT_TRUE(same_bits(a1, b1));
  for (const auto& [x, y] : {std::pair(a0, a1),                  // param 0 vs param 1
                             std::pair(a0, run(43, 1).first),    // another seed
                             std::pair(a0, run(42, 2).first)}) { // SGD's second update
    EXPECT_GT(differing(x, y), kN / 3);
    EXPECT_LT(differing(x, y), 2 * kN / 3);
  }
  for (const bfloat16& v : a0) ASSERT_TRUE(is_neighbour(v, kHalfway));
}

// An update below half a bfloat16 ulp: a bfloat16 param never moves with nearest-even, moves
// by the update on average with stochastic rounding, and a master copy accumulates it exactly.
TEST(MixedOptimizer, UpdatesBelowHalfAnUlpMoveOnlyStochasticallyOrThroughAMaster) {
  constexpr std::size_t n = 8192;
  constexpr int steps = 64;
  const std::vector<bfloat16> g(n, to_bfloat16(0x1p-10f));
  auto run = [&](const Precision& precision) {
    std::vector<bfloat16> p(n, to_bfloat16(1.0f));
    Sgd opt({.lr = 1.0}, precision);
    opt.add_param(p);
    for (int s = 0; s < steps; ++s) opt.step({g});
    double sum = 0.0;
    for (const bfloat16& v : p) sum += to_float(v);
    return std::pair(p, sum / n);
  };
  EXPECT_EQ(run({}).second, 1.0);
  const double stochastic = run({.stochastic_rounding = true, .seed = 1}).second;
  EXPECT_NEAR(stochastic, 1.0 - steps * 0x1p-10, 5.0 * std::sqrt(steps / 4.0) * 0x1p-8 / std::sqrt(n));
  const auto [p, mean] = run({.master_weights = true});
  EXPECT_EQ(mean, 1.0 - steps * 0x1p-10);  // 0.9375: exact in float32 and bfloat16
  for (const bfloat16& v : p) ASSERT_EQ(v.bits, to_bfloat16(0.9375f).bits);
}

// ---- state views -----------------------------------------------------------------------------------
TEST(MixedOptimizer, StateViewsShowSixteenBitStateAndTheMasterCopy) {
  std::vector<bfloat16> b = narrowed<bfloat16>({1.5f, -2.25f, 3.0f});
  std::vector<float> f = {1.0f, 2.0f};
  Adam opt({.lr = 0.1}, {.master_weights = true, .state_dtype = DType::bfloat16});
  opt.add_param(b);
  opt.add_param(f);
  ParamStateView v = opt.state(0);
  EXPECT_EQ(v.dtype, DType::bfloat16);
  EXPECT_EQ(v.state_dtype, DType::bfloat16);
  EXPECT_EQ(v.master, nullptr);  // made at the first update
  EXPECT_TRUE(v.master_copy().empty());
  EXPECT_TRUE(v.buffer<bfloat16>(0).empty());
  EXPECT_INVALID(v.buffer<float>(0), "requested float32, the state is bfloat16");
  opt.allocate_state(0);
  v = opt.state(0);
  ASSERT_EQ(v.master_copy().size(), 3u);
  EXPECT_EQ(v.master_copy()[1], -2.25f);  // the param's values, exactly
  EXPECT_EQ(v.buffer<bfloat16>(1).size(), 3u);
  EXPECT_EQ(opt.state(1).master, nullptr);  // float32: its own master
  EXPECT_EQ(opt.state(1).buffer<bfloat16>(0).size(), 0u);
  // the master is where the next update starts: written through the view beside the param as
  // its rounding (100.25 rounds to 100), it moves the param and keeps its precision
  v.master_copy()[0] = 100.25f;
  b[0] = to_bfloat16(100.25f);
  const auto g = narrowed<bfloat16>({0.0f, 0.0f, 0.0f});
  opt.step({g, Grad{}});
  EXPECT_EQ(to_float(b[0]), 100.0f);
  EXPECT_EQ(v.master_copy()[0], 100.25f);
  EXPECT_EQ(b[1].bits, to_bfloat16(-2.25f).bits);
  // a master written alone, the param left as it was: the param is not the master's rounding,
  // which reads as a write to the param, and the param wins
  v.master_copy()[1] = 7.0f;
  opt.step({g, Grad{}});
  EXPECT_EQ(v.master_copy()[1], -2.25f);
  EXPECT_EQ(b[1].bits, to_bfloat16(-2.25f).bits);
}

// ---- writes to a param beside its master copy ------------------------------------------------
struct LevelGuard {
  std::string before = simd_level();
  ~LevelGuard() { set_simd_level(before); }
};

// The case: a zero-grad step after a write. AdamW's moments are fresh (the first grad
// is zero too), so a step only decays: 5.0 * (1 - 0.5 * 0.5) = 3.75 exactly (the stale master
// gave 1.5 * 0.75^2). The untouched elements continue from masters no 16-bit value holds.
template <class T>
void check_zero_grad_step_after_a_write() {
  LevelGuard guard;
  for (const std::string& level : available_simd_levels()) {
    SCOPED_TRACE(level);
    set_simd_level(level);
    // one ulp above 1: times 0.75 it needs one bit more than T has
    const float odd = std::is_same_v<T, bfloat16> ? 1.0078125f : 1.0009765625f;
    std::vector<T> p = narrowed<T>({odd, 1.5f, -2.0f});
    AdamWOptions o;
    o.lr = 0.5, o.weight_decay = 0.5;
    AdamW opt(o, {.master_weights = true});
    opt.add_param(p);
    const std::vector<T> zero = narrowed<T>({0.0f, 0.0f, 0.0f});
    opt.step({zero});
    ASSERT_EQ(opt.state(0).master_copy()[0], odd * 0.75f);
    ASSERT_NE(widen<float>(p[0]), odd * 0.75f);
    p[1] = narrow<T>(5.0f);
    opt.step({zero});
    const std::vector<float> want = {odd * 0.5625f, 3.75f, -1.125f};
    const std::span<float> master = opt.state(0).master_copy();
    EXPECT_EQ(std::vector<float>(master.begin(), master.end()), want);
    EXPECT_TRUE(same_bits(p, narrowed<T>(want)));
    EXPECT_EQ(widen<float>(p[1]), 3.75f);
  }
}
TEST(MixedOptimizer, ZeroGradStepAfterAWriteStartsFromTheWrittenBfloat) {
  check_zero_grad_step_after_a_write<bfloat16>();
}
TEST(MixedOptimizer, ZeroGradStepAfterAWriteStartsFromTheWrittenHalf) {
  check_zero_grad_step_after_a_write<float16>();
}

// Through the public optimizer, every master layout (16-bit params; float32 or bfloat16 state)
// at every level with 1 and 2 threads: params written between steps (specials, the 16-bit
// limits, subnormals, ordinary values) continue exactly as float32 params with the written
// values widened, the untouched ones as float32 params that were never rounded.
template <class T>
void check_writes_follow_float32(std::optional<DType> state_dtype) {
  constexpr std::size_t n = 4099;
  const auto start = random_vector<float>(n, 41, -2.0, 2.0);
  const float tiny = std::is_same_v<T, bfloat16> ? 0x1p-126f : 0x1p-14f;
  const float biggest = static_cast<float>(max_finite<T>());
  const std::vector<float> specials = {std::numeric_limits<float>::quiet_NaN(), INFINITY, -INFINITY,
                                       -0.0f, 0.0f, biggest, -biggest, tiny, tiny / 8, -tiny / 512,
                                       5.0f, 0.2f};
  LevelGuard guard;
  for (const std::string& level : available_simd_levels()) {
    for (int threads : {1, 2}) {
      SCOPED_TRACE(level + ", " + std::to_string(threads) + " threads");
      set_simd_level(level);
      std::vector<T> p = narrowed<T>(start);
      std::vector<float> ref(n);
      for (std::size_t i = 0; i < n; ++i) ref[i] = widen<float>(p[i]);
      AdamWOptions o;
      o.lr = 0.01, o.weight_decay = 0.1, o.amsgrad = true;
      AdamW opt(o, {.master_weights = true, .state_dtype = state_dtype});
      AdamW plain(o, {.state_dtype = state_dtype});
      opt.add_param(p);
      plain.add_param(ref);
      opt.set_num_threads(threads);
      for (int step = 0; step < 4; ++step) {
        if (step > 0) {
          for (std::size_t i = static_cast<std::size_t>(step); i < n; i += 5) {
            const T x = narrow<T>(specials[(i / 5) % specials.size()] * (i % 2 ? 1.0f : 0.5f));
            if (bits_of(x) == bits_of(p[i])) continue;  // the value it holds: no change
            p[i] = x;
            ref[i] = widen<float>(x);
          }
        }
        std::vector<float> g = random_vector<float>(n, 50 + step, -1.0, 1.0);
        if (step == 1) std::fill(g.begin(), g.end(), 0.0f);
        const std::vector<T> g16 = narrowed<T>(g);
        std::vector<float> g32(n);
        for (std::size_t i = 0; i < n; ++i) g32[i] = widen<float>(g16[i]);
        opt.step({g16});
        plain.step({g32});
        const std::span<float> master = opt.state(0).master_copy();
        for (std::size_t i = 0; i < n; ++i) {
          // NaN payloads may differ (x86 and Arm pick different ones); every NaN is one NaN
          const bool same = bits_of(master[i]) == bits_of(ref[i]) ||
                            (std::isnan(master[i]) && std::isnan(ref[i]));
          ASSERT_TRUE(same) << "step " << step << " element " << i << ": master " << master[i]
                            << ", float32 " << ref[i];
          ASSERT_EQ(bits_of(p[i]), bits_of(narrow<T>(ref[i])))
              << "step " << step << " element " << i;
        }
      }
    }
  }
}
TEST(MixedOptimizer, WritesToBfloatParamsFollowFloat32Params) {
  check_writes_follow_float32<bfloat16>(std::nullopt);
  check_writes_follow_float32<bfloat16>(DType::bfloat16);
}
TEST(MixedOptimizer, WritesToHalfParamsFollowFloat32Params) {
  check_writes_follow_float32<float16>(std::nullopt);
  check_writes_follow_float32<float16>(DType::bfloat16);
}

// ---- checkpoints -------------------------------------------------------------------------------------
std::string load_error(Optimizer& opt, const std::string& bytes) {
  std::istringstream in(bytes);
  try {
    opt.load(in);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no exception";
}

void reseal(std::string& bytes) {
  write_le<std::uint64_t>(bytes, bytes.size() - 8,
                          fnv1a(std::string_view(bytes).substr(0, bytes.size() - 8)));
}

std::vector<Param> copy_params(const std::vector<Param>& params) { return params; }

// Every setting: save, load into a new optimizer over copies of the params, the same bytes, and
// both continue bit-identically (stochastic rounding's counters and the master copies came
// across).
TEST_P(MixedOptimizerGrid, CheckpointRoundTripForEverySetting) {
  for (const Precision& precision : all_settings()) {
    SCOPED_TRACE(describe(precision));
    std::vector<Param> params = model_for(precision);
    auto opt = make(GetParam().options, precision);
    for (Param& p : params) add(*opt, p);
    for (int s = 0; s < 3; ++s) opt->step(grads_for(params, s, s == 0 ? 0b100u : 0u).views);
    const std::string bytes = saved(*opt);
    std::vector<Param> copies = copy_params(params);
    auto restored = make(GetParam().options, precision);
    for (Param& p : copies) add(*restored, p);
    std::istringstream in(bytes);
    restored->load(in);
    ASSERT_EQ(saved(*restored), bytes);
    for (int s = 3; s < steps_for(GetParam().options, 5); ++s) {
      const Grads g = grads_for(params, s);
      opt->step(g.views);
      restored->step(g.views);
    }
    for (std::size_t k = 0; k < params.size(); ++k)
      ASSERT_EQ(params[k].data, copies[k].data) << "param " << k;
    ASSERT_EQ(saved(*restored), saved(*opt));
  }
}

// Loading into an optimizer whose settings differ is refused, naming both, nothing changed.
TEST(MixedCheckpoint, OtherSettingsAreRefusedWithNothingChanged) {
  const std::vector<Precision> settings = all_settings();
  std::vector<std::vector<Param>> models;
  std::vector<std::unique_ptr<Optimizer>> opts;
  std::vector<std::string> files;
  for (const Precision& precision : settings) {
    models.push_back(model_for(precision));
    opts.push_back(make(AdamOptions{}, precision));
  }
  for (std::size_t i = 0; i < settings.size(); ++i) {
    for (Param& p : models[i]) add(*opts[i], p);
    opts[i]->step(grads_for(models[i], 0).views);
    files.push_back(saved(*opts[i]));
  }
  for (std::size_t i = 0; i < settings.size(); ++i)
    for (std::size_t j = 0; j < settings.size(); ++j) {
      if (i == j) continue;
      // the target: the same params as the file where the settings allow them
      std::vector<Param> params = model_for(settings[j]);
      auto target = make(AdamOptions{}, settings[j]);
      for (Param& p : params) add(*target, p);
      const std::string before = saved(*target);
      const std::vector<Param> params_before = params;
      const std::string message = load_error(*target, files[i]);
      EXPECT_NE(message.find("fastoptim state: saved with mixed-precision settings"),
                std::string::npos)
          << describe(settings[i]) << " into " << describe(settings[j]) << ": " << message;
      EXPECT_EQ(saved(*target), before);
      for (std::size_t k = 0; k < params.size(); ++k) EXPECT_EQ(params[k].data, params_before[k].data);
    }
  // the seed is restored with the options (as the Python fronts restore it), and the loaded
  // optimizer continues exactly as the saved one
  std::vector<Param> params = models[5];
  auto target = make(AdamOptions{}, Precision{.stochastic_rounding = true, .seed = 8});
  for (Param& p : params) add(*target, p);
  EXPECT_EQ(load_error(*target, files[5]), "no exception");
  EXPECT_EQ(target->precision().seed, 7u);
  for (int s = 1; s < 3; ++s) {
    opts[5]->step(grads_for(models[5], s).views);
    target->step(grads_for(params, s).views);
  }
  for (std::size_t k = 0; k < params.size(); ++k) EXPECT_EQ(params[k].data, models[5][k].data);
}

// bfloat16 params with master weights and bfloat16 state: the documented bytes.
TEST(MixedCheckpoint, ByteLayoutOfSixteenBitParamsWithMasterCopies) {
  std::vector<bfloat16> b = narrowed<bfloat16>({1.0f, 2.0f, 3.0f});
  std::vector<float> f = {4.0f, 5.0f};
  Adam opt({.lr = 0.25}, {.master_weights = true, .state_dtype = DType::bfloat16,
                          .stochastic_rounding = true, .seed = 0x0102030405060708ull});
  opt.add_param(b);
  opt.add_param(f);
  const auto gb = narrowed<bfloat16>({0.5f, 0.5f, 0.5f});
  const std::vector<float> gf = {0.5f, 0.5f};
  opt.step({gb, gf});
  const std::string bytes = saved(opt);
  EXPECT_EQ(read_le<std::uint32_t>(bytes, 8), 3u);
  std::size_t at = 20 + 8 * 8;
  EXPECT_EQ(bytes.substr(at, 8), std::string("\1\2\1\0\0\0\0\0", 8));  // master, bf16 state, SR
  EXPECT_EQ(read_le<std::uint64_t>(bytes, at + 8), 0x0102030405060708ull);
  at += 16;
  EXPECT_EQ(read_le<std::uint64_t>(bytes, at), 2u);
  at += 8;
  // param 0: bfloat16, slots 0-1 and the master; bfloat16 slots, float32 scalar state (none)
  // and master
  EXPECT_EQ(bytes.substr(at, 8), std::string("\2\x0b\2\2\0\0\0\0", 8));
  EXPECT_EQ(read_le<std::uint64_t>(bytes, at + 8), 3u);
  EXPECT_EQ(read_le<std::int64_t>(bytes, at + 16), 1);
  at += 24;
  const ParamStateView v0 = opt.state(0);
  for (int slot = 0; slot < 2; ++slot)
    for (std::size_t i = 0; i < 3; ++i, at += 2)
      EXPECT_EQ(read_le<std::uint16_t>(bytes, at), v0.buffer<bfloat16>(slot)[i].bits);
  for (std::size_t i = 0; i < 3; ++i, at += 4)
    EXPECT_EQ(std::bit_cast<float>(read_le<std::uint32_t>(bytes, at)), v0.master_copy()[i]);
  // param 1: float32, its own master; bfloat16 slots
  EXPECT_EQ(bytes.substr(at, 8), std::string("\0\3\2\2\0\0\0\0", 8));
  at += 24;
  const ParamStateView v1 = opt.state(1);
  for (int slot = 0; slot < 2; ++slot)
    for (std::size_t i = 0; i < 2; ++i, at += 2)
      EXPECT_EQ(read_le<std::uint16_t>(bytes, at), v1.buffer<bfloat16>(slot)[i].bits);
  EXPECT_EQ(read_le<std::uint64_t>(bytes, at), fnv1a(std::string_view(bytes).substr(0, at)));
  EXPECT_EQ(bytes.size(), at + 8);

  // Edited storage types, resealed: each refused by name, nothing changed.
  std::vector<bfloat16> b2 = b;
  std::vector<float> f2 = f;
  Adam target({.lr = 0.25}, opt.precision());
  target.add_param(b2);
  target.add_param(f2);
  const std::string before = saved(target);
  const std::size_t param0 = 20 + 64 + 16 + 8, param1 = param0 + 24 + 2 * 3 * 2 + 3 * 4;
  auto edited = [&](std::size_t offset, char value) {
    std::string copy = bytes;
    copy[offset] = value;
    reseal(copy);
    return load_error(target, copy);
  };
  EXPECT_EQ(edited(param0 + 2, 0), "fastoptim state: param 0: state 'exp_avg' saved as storage "
                                   "type 0, this optimizer keeps it as bfloat16");
  EXPECT_EQ(edited(param0 + 6, 2), "fastoptim state: param 0: master copy saved as storage type "
                                   "2, this optimizer keeps it as float32");
  EXPECT_EQ(edited(param0, 3), "fastoptim state: param 0: saved as float16, the param is bfloat16");
  EXPECT_EQ(edited(param1 + 1, 0x0b), "fastoptim state: param 1: a master copy is stored, this "
                                      "optimizer keeps none for float32 params");
  EXPECT_EQ(edited(param1 + 6, 1), "fastoptim state: param 1: reserved header bytes are not zero");
  EXPECT_EQ(saved(target), before);
  EXPECT_EQ(load_error(target, bytes), "no exception");
  EXPECT_EQ(saved(target), bytes);
}

// Every truncation and every flipped byte of a file with 16-bit params, master copies and
// settings is refused, nothing changed.
TEST(MixedCheckpoint, EveryTruncationAndByteFlipIsRefused) {
  const Precision precision{.master_weights = true, .stochastic_rounding = true, .seed = 9};
  std::vector<bfloat16> b = narrowed<bfloat16>({1.0f, 2.0f});
  std::vector<float16> h = narrowed<float16>({3.0f});
  Nadam opt({.lr = 0.1}, precision);
  opt.add_param(b);
  opt.add_param(h);
  opt.step({narrowed<bfloat16>({0.5f, 0.25f}), narrowed<float16>({0.125f})});
  const std::string bytes = saved(opt);
  std::vector<bfloat16> tb = b;
  std::vector<float16> th = h;
  Nadam target({.lr = 0.1}, precision);
  target.add_param(tb);
  target.add_param(th);
  const std::string before = saved(target);
  for (std::size_t n = 0; n < bytes.size(); ++n)
    ASSERT_NE(load_error(target, bytes.substr(0, n)).find("truncated"), std::string::npos) << n;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    std::string corrupt = bytes;
    corrupt[i] = static_cast<char>(corrupt[i] ^ 0x10);
    ASSERT_NE(load_error(target, corrupt), "no exception") << "byte " << i;
  }
  EXPECT_EQ(saved(target), before);
  EXPECT_TRUE(same_bits(tb, b));
}

// A master copy not made yet (saved before the param's first update) is absent from the file;
// loading it drops the target's master, which the next update makes again from the param.
TEST(MixedCheckpoint, MasterCopyNotMadeYetRoundTrips) {
  std::vector<bfloat16> b = narrowed<bfloat16>({1.0f, 2.0f, 3.0f});
  Adam fresh({.lr = 0.1}, {.master_weights = true});
  fresh.add_param(b);
  const std::string bytes = saved(fresh);
  EXPECT_EQ(bytes[20 + 64 + 16 + 8 + 1], 0);  // nothing stored yet
  std::vector<bfloat16> c = b;
  Adam stepped({.lr = 0.1}, {.master_weights = true});
  stepped.add_param(c);
  const auto g = narrowed<bfloat16>({0.5f, -0.5f, 0.25f});
  stepped.step({g});
  stepped.state(0).master_copy()[0] = 1000.0f;  // a master that is not the param's value
  std::istringstream in(bytes);
  stepped.load(in);
  EXPECT_EQ(stepped.state(0).master, nullptr);
  EXPECT_EQ(saved(stepped), bytes);
  c = b;
  fresh.step({g});
  stepped.step({g});
  EXPECT_TRUE(same_bits(b, c));
  EXPECT_EQ(saved(fresh), saved(stepped));
}

}  // namespace
}  // namespace fastoptim::test
