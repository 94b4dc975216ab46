// Mixed precision in the driver: every registered layout (param, grad, state, master storage
// types) for every rule and option combination against the float32 step on the widened values
// with each stored value rounded once (nearest-even), or with stochastic rounding to one of the
// two neighbours; every SIMD level and 1, 2, 3 threads bit-identical. Stochastic rounding's
// statistics (unbiased, in the subnormal and near-overflow ranges too), its generator's inputs,
// NaN/inf/-0, and refused calls.
#include <tuple>

#include "mixed_support.hpp"

namespace fastoptim::test {
namespace {

struct LevelGuard {
  std::string before = simd_level();
  ~LevelGuard() { set_simd_level(before); }
};

template <class P, class G, class S, bool M>
struct Lay {
  using param = P;
  using grad = G;
  using state = S;
  static constexpr bool master = M;
  static StreamTypes types(Rounding r = {}) {
    return StreamTypes(dtype_of<P>(), dtype_of<G>(), dtype_of<S>(), M, r);
  }
  static std::string name() {
    return std::string(name_of(dtype_of<P>())) + "/" + name_of(dtype_of<G>()) + "/" +
           name_of(dtype_of<S>()) + (M ? "+master" : "");
  }
};

// Every layout step.hpp documents (cpp/src/kernels/layouts.hpp registers them).
using AllLayouts = std::tuple<
    Lay<float, float, float, false>, Lay<double, double, double, false>,
    Lay<bfloat16, bfloat16, bfloat16, false>, Lay<float16, float16, float16, false>,
    Lay<bfloat16, bfloat16, float, false>, Lay<float16, float16, float, false>,
    Lay<bfloat16, bfloat16, float, true>, Lay<float16, float16, float, true>,
    Lay<bfloat16, bfloat16, bfloat16, true>, Lay<float16, float16, bfloat16, true>,
    Lay<float, float, bfloat16, false>, Lay<float, bfloat16, float, false>,
    Lay<float, float16, float, false>, Lay<float, bfloat16, bfloat16, false>,
    Lay<float, float16, bfloat16, false>, Lay<double, float, double, false>,
    Lay<double, bfloat16, double, false>, Lay<double, float16, double, false>>;

template <class F>
void for_each_layout(F&& f) {
  std::apply([&](auto... l) { (f(l), ...); }, AllLayouts{});
}

TEST(MixedLayouts, SupportsIsExactlyTheDocumentedSet) {
  const DType all[] = {DType::float32, DType::float64, DType::bfloat16, DType::float16};
  int registered = 0;
  for (DType p : all)
    for (DType g : all)
      for (DType s : all)
        for (bool m : {false, true}) {
          bool listed = false;
          for_each_layout([&](auto l) {
            const StreamTypes t = decltype(l)::types();
            listed = listed || (t.param == p && t.grad == g && t.state == s && t.master == m);
          });
          EXPECT_EQ(supports(StreamTypes(p, g, s, m)), listed)
              << name_of(p) << "/" << name_of(g) << "/" << name_of(s) << (m ? "+master" : "");
          registered += listed ? 1 : 0;
        }
  EXPECT_EQ(registered, static_cast<int>(std::tuple_size_v<AllLayouts>));
  // the rounding mode never changes what is supported
  EXPECT_TRUE(supports(StreamTypes(DType::bfloat16, DType::bfloat16, DType::bfloat16, false,
                                   Rounding{true, 5})));
}

// Sizes of one call: odd ones, every vector tail; with the last one a total above
// kSerialThreshold, so that 2 and 3 threads split the call (at chunk boundaries inside it).
const std::vector<std::size_t> kSizes = {1, 7, 33, 4099};
const std::vector<std::size_t> kThreadedSizes = {1, 7, 33, 4099, 12289};
static_assert(1 + 7 + 33 + 4099 + 12289 > kSerialThreshold);

template <class O>
double initial_state(const O& o, int slot) {
  if constexpr (std::is_same_v<O, AdagradOptions>) return slot == 0 ? o.initial_accumulator_value : 0.0;
  else return 0.0;
}

// The streams of one call's buffers, in their storage types.
template <class L>
struct Streams {
  using P = typename L::param;
  using S = typename L::state;
  std::vector<std::vector<P>> param;
  std::vector<std::vector<float>> master;
  std::vector<std::array<std::vector<S>, 3>> state;
  std::vector<float> scalar;  // NAdam's mu_product, one per buffer
};

// 16-bit values a user may write into a param between steps: NaN (the stores' own and one with
// a sign and payload), +-inf, +-0, the largest finite values, the smallest and largest
// subnormals, the smallest normal, 5.0 (the value), -1, 0.2.
template <class T>
std::vector<T> written_values() {
  std::vector<T> out;
  if constexpr (kHalf<T>) {  // only 16-bit params (beside a master copy) are written
    const std::vector<std::uint16_t> bits =
        std::is_same_v<T, bfloat16>
            ? std::vector<std::uint16_t>{0x7fc0, 0xffc1, 0x7f80, 0xff80, 0x0000, 0x8000, 0x7f7f,
                                         0xff7f, 0x0001, 0x807f, 0x0080, 0x40a0, 0xbf80, 0x3e4d}
            : std::vector<std::uint16_t>{0x7e00, 0xfe01, 0x7c00, 0xfc00, 0x0000, 0x8000, 0x7bff,
                                         0xfbff, 0x0001, 0x83ff, 0x0400, 0x4500, 0xbc00, 0x3266};
    for (std::uint16_t b : bits) out.push_back(T{b});
  }
  return out;
}

// x with every float32 NaN made one NaN: a NaN's payload and sign (written params bring NaN,
// inf and 0 into the math, e.g. inf * 0) follow the operand order the compiler picks per
// instantiation; 16-bit stores already keep one NaN, and no other value is touched.
template <class T>
T one_nan(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return std::isnan(x) ? std::numeric_limits<float>::quiet_NaN() : x;
  } else {
    return x;
  }
}
template <class T>
std::vector<T> one_nan(std::vector<T> x) {
  for (T& v : x) v = one_nan(v);
  return x;
}

// One instance per layout (the options stay a variant: one per (layout, rule) pair made this
// file the slowest of the suite to compile, minutes under the sanitizers). write_params (layouts
// with a master copy): before every step but the first, a third of each buffer's params (another
// third each time) is overwritten with written_values(), as a user writes a param between steps;
// the reference steps those elements from the written value widened, the others from the master.
template <class L>
void check_layout(const AnyOptions& any, const std::string& rule, bool stochastic,
                  const std::vector<std::size_t>& sizes, const std::vector<int>& thread_counts,
                  int steps = 3, bool write_params = false) {
  auto uses_slot = [&](int s) {
    return std::visit([&](const auto& o) { return uses_state_slot(o, s); }, any);
  };
  auto initial = [&](int s) {
    return std::visit([&](const auto& o) { return initial_state(o, s); }, any);
  };
  auto step_with = [&](const StreamTypes& t, std::span<const ParamBuffers> b, int threads,
                       const GradFactors& f) {
    std::visit([&](const auto& o) { fastoptim::step(o, t, b, threads, f); }, any);
  };
  using P = typename L::param;
  using G = typename L::grad;
  using S = typename L::state;
  using C = std::conditional_t<std::is_same_v<P, double>, double, float>;
  const std::size_t buffers = sizes.size();
  steps = steps_for(any, steps);
  const Rounding rounding{stochastic, 0x5eed + static_cast<std::uint64_t>(stochastic)};
  const StreamTypes types = L::types(rounding);
  const std::string where = L::name() + " " + rule + (stochastic ? " stochastic" : " nearest");

  Streams<L> cur;
  for (std::size_t k = 0; k < buffers; ++k) {
    const auto start = random_vector<C>(sizes[k], 3 + k, -2.0, 2.0);
    std::vector<P> p(sizes[k]);
    for (std::size_t i = 0; i < p.size(); ++i) p[i] = narrow<P>(start[i]);
    if constexpr (L::master) {
      std::vector<float> m(p.size());
      for (std::size_t i = 0; i < p.size(); ++i) m[i] = widen<float>(p[i]);
      cur.master.push_back(m);
    }
    cur.param.push_back(p);
    std::array<std::vector<S>, 3> st;
    for (int s = 0; s < 3; ++s)
      if (uses_slot(s)) st[s].assign(sizes[k], narrow<S>(static_cast<C>(initial(s))));
    cur.state.push_back(st);
    cur.scalar.push_back(1.0f);
  }

  auto buffers_of = [&](Streams<L>& x, const std::vector<std::vector<G>>& grads, int step) {
    std::vector<ParamBuffers> out(buffers);
    for (std::size_t k = 0; k < buffers; ++k) {
      ParamBuffers& b = out[k];
      b.param = x.param[k].data();
      b.grad = grads[k].data();
      for (int s = 0; s < 3; ++s) b.state[s] = x.state[k][s].empty() ? nullptr : x.state[k][s].data();
      if constexpr (L::master) b.master = x.master[k].data();
      b.size = sizes[k];
      b.step = step;
      b.scalar_state = &x.scalar[k];
      b.id = k;
    }
    return out;
  };

  LevelGuard guard;
  for (int step = 1; step <= steps; ++step) {
    // which params the user wrote: a write of the bits a param already holds is no change
    std::vector<std::vector<bool>> written(buffers);
    for (std::size_t k = 0; k < buffers; ++k) {
      written[k].assign(sizes[k], false);
      if (!write_params || step == 1) continue;
      const std::vector<P> values = written_values<P>();
      for (std::size_t i = 0; i < sizes[k]; ++i) {
        if ((i + static_cast<std::size_t>(step)) % 3 != 0) continue;
        const P x = values[(i / 3 + k + static_cast<std::size_t>(step)) % values.size()];
        written[k][i] = bits_of(x) != bits_of(cur.param[k][i]);
        cur.param[k][i] = x;
      }
    }
    // a zero-grad step right after the first write (the case)
    const bool zero_grads = write_params && step == 2;
    std::vector<std::vector<G>> grads;
    for (std::size_t k = 0; k < buffers; ++k) {
      const auto g = random_vector<C>(sizes[k], 100 * step + k, -1.0, 1.0);
      std::vector<G> gk(g.size());
      for (std::size_t i = 0; i < g.size(); ++i) gk[i] = narrow<G>(zero_grads ? C{0} : g[i]);
      grads.push_back(gk);
    }
    const GradFactors factors =
        step == std::min(steps, 2) ? GradFactors{0.5, 0.75} : GradFactors{};

    // the reference: the compute type's step on the widened values, at the scalar level
    std::vector<std::vector<C>> pc(buffers), gc(buffers);
    std::vector<std::array<std::vector<C>, 3>> sc(buffers);
    std::vector<float> scalar_ref = cur.scalar;
    std::vector<ParamBuffers> ref(buffers);
    for (std::size_t k = 0; k < buffers; ++k) {
      pc[k].resize(sizes[k]);
      gc[k].resize(sizes[k]);
      for (std::size_t i = 0; i < sizes[k]; ++i) {
        if constexpr (L::master) pc[k][i] = written[k][i] ? widen<C>(cur.param[k][i]) : cur.master[k][i];
        else pc[k][i] = widen<C>(cur.param[k][i]);
        gc[k][i] = widen<C>(grads[k][i]);
      }
      for (int s = 0; s < 3; ++s) {
        sc[k][s].resize(cur.state[k][s].size());
        for (std::size_t i = 0; i < sc[k][s].size(); ++i) sc[k][s][i] = widen<C>(cur.state[k][s][i]);
      }
      ref[k].param = pc[k].data();
      ref[k].grad = gc[k].data();
      for (int s = 0; s < 3; ++s) ref[k].state[s] = sc[k][s].empty() ? nullptr : sc[k][s].data();
      ref[k].size = sizes[k];
      ref[k].step = step;
      ref[k].scalar_state = &scalar_ref[k];
    }
    set_simd_level("scalar");
    step_with(dtype_of<C>(), ref, 1, factors);

    // expected: each stored value rounded once to nearest; stochastically, the scalar level's
    // one-thread result, each value one of the reference's two neighbours
    Streams<L> expected;
    if (!stochastic) {
      expected = cur;
      for (std::size_t k = 0; k < buffers; ++k) {
        for (std::size_t i = 0; i < sizes[k]; ++i) {
          expected.param[k][i] = narrow<P>(pc[k][i]);
          if constexpr (L::master) expected.master[k][i] = pc[k][i];
        }
        for (int s = 0; s < 3; ++s)
          for (std::size_t i = 0; i < sc[k][s].size(); ++i)
            expected.state[k][s][i] = narrow<S>(sc[k][s][i]);
      }
      expected.scalar = scalar_ref;
    } else {
      expected = cur;
      auto b = buffers_of(expected, grads, step);
      step_with(types, b, 1, factors);
      for (std::size_t k = 0; k < buffers; ++k) {
        for (std::size_t i = 0; i < sizes[k]; ++i) {
          if constexpr (L::master) {
            ASSERT_EQ(bits_of(one_nan(expected.master[k][i])), bits_of(one_nan(pc[k][i])))
                << where << " master";
            ASSERT_EQ(bits_of(expected.param[k][i]), bits_of(narrow<P>(pc[k][i])))
                << where << ": the param beside a master rounds to nearest, element " << i;
          } else if constexpr (kHalf<P>) {
            ASSERT_TRUE(is_neighbour(expected.param[k][i], pc[k][i]))
                << where << " step " << step << " buffer " << k << " param " << i << ": "
                << widen<double>(expected.param[k][i]) << " for " << pc[k][i];
          } else {
            ASSERT_EQ(bits_of(expected.param[k][i]), bits_of(narrow<P>(pc[k][i]))) << where;
          }
        }
        for (int s = 0; s < 3; ++s)
          for (std::size_t i = 0; i < sc[k][s].size(); ++i) {
            if constexpr (kHalf<S>) {
              ASSERT_TRUE(is_neighbour(expected.state[k][s][i], sc[k][s][i]))
                  << where << " step " << step << " buffer " << k << " slot " << s << " element "
                  << i << ": " << widen<double>(expected.state[k][s][i]) << " for " << sc[k][s][i];
            } else {
              ASSERT_EQ(bits_of(one_nan(expected.state[k][s][i])),
                        bits_of(one_nan(narrow<S>(sc[k][s][i]))))
                  << where;
            }
          }
        ASSERT_EQ(expected.scalar[k], scalar_ref[k]) << where;
      }
    }

    for (const std::string& level : available_simd_levels()) {
      set_simd_level(level);
      for (int threads : thread_counts) {
        Streams<L> run = cur;
        auto b = buffers_of(run, grads, step);
        step_with(types, b, threads, factors);
        for (std::size_t k = 0; k < buffers; ++k) {
          const std::string at = where + " at " + level + ", " + std::to_string(threads) +
                                 " threads, step " + std::to_string(step) + ", buffer " +
                                 std::to_string(k);
          ASSERT_TRUE(same_bits(run.param[k], expected.param[k])) << at << ": param";
          if constexpr (L::master) {
            ASSERT_TRUE(same_bits(one_nan(run.master[k]), one_nan(expected.master[k])))
                << at << ": master";
          }
          for (int s = 0; s < 3; ++s)
            ASSERT_TRUE(same_bits(one_nan(run.state[k][s]), one_nan(expected.state[k][s])))
                << at << ": slot " << s;
          ASSERT_EQ(run.scalar[k], expected.scalar[k]) << at << ": scalar state";
        }
      }
    }
    cur = std::move(expected);
  }
}

// Layouts with a 16-bit store (the ones stochastic rounding changes), and a master copy
// beside float32 state (its param stays nearest-even).
template <class L>
constexpr bool kRounds = kHalf<typename L::state> || (kHalf<typename L::param> && !L::master) ||
                         (L::master && std::is_same_v<typename L::state, float> &&
                          std::is_same_v<typename L::param, bfloat16>);

class MixedLayoutsGrid : public testing::TestWithParam<NamedOptions> {};

// Every rule and option combination: each layout at every level (one thread; the thread
// counts below).
TEST_P(MixedLayoutsGrid, EveryLayoutIsTheComputeStepRoundedOnceAtEveryLevel) {
  for_each_layout([&](auto l) {
    if (HasFatalFailure()) return;
    check_layout<decltype(l)>(GetParam().options, GetParam().name, false, kSizes, {1});
  });
}

// Stochastic rounding: each 16-bit store one of the float32 result's two neighbours (the param
// beside a master copy: nearest), the same bits at every level.
TEST_P(MixedLayoutsGrid, EveryLayoutRoundsStochasticallyToANeighbourAtEveryLevel) {
  for_each_layout([&](auto l) {
    if constexpr (kRounds<decltype(l)>) {
      if (HasFatalFailure()) return;
      check_layout<decltype(l)>(GetParam().options, GetParam().name, true, kSizes, {1});
    }
  });
}

// 2 and 3 threads at every level, both roundings, every layout, one step of two rules that
// use all three state slots (with grad factors): the chunks a call is split into give the
// same bits (the stochastic rounding keys count elements from each buffer's start). One step:
// fork/join on an oversubscribed machine costs more than the steps.
TEST(MixedLayouts, EveryLayoutIsTheSameForTwoAndThreeThreadsAtEveryLevel) {
  const AnyOptions rules[] = {AdamOptions{.lr = 0.01, .weight_decay = 0.1, .amsgrad = true},
                              RmspropOptions{.lr = 0.01, .momentum = 0.9, .centered = true}};
  for (const AnyOptions& options : rules)
    for (bool stochastic : {false, true})
      for_each_layout([&](auto l) {
        if (HasFatalFailure()) return;
        check_layout<decltype(l)>(options, "threads", stochastic, kThreadedSizes, {2, 3}, 1);
      });
}

// Writes to a param beside a master copy (a copy, a loaded model, a clamp, an EMA swap): every
// rule and option combination, each master layout at every level with 1 and 2 threads, the
// elements written (NaN, inf, -0, the 16-bit limits, subnormals among them) stepped from the
// written value widened and the others from their master, by zero and by real grads.
TEST_P(MixedLayoutsGrid, WritesToAParamBetweenStepsAreItsNewMasterAtEveryLevel) {
  for_each_layout([&](auto l) {
    using L = decltype(l);
    if constexpr (L::master) {
      for (bool stochastic : {false, true}) {
        if (HasFatalFailure() || (stochastic && !kRounds<L>)) return;
        check_layout<L>(GetParam().options, GetParam().name + " writes", stochastic,
                        kThreadedSizes, {1, 2}, 4, true);
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Grid, MixedLayoutsGrid, testing::ValuesIn(option_grid()), grid_name);

// ---- stochastic rounding's statistics ----------------------------------------------------------

// n elements of 16-bit type T each set to float32 x by one SGD step (param 0, grad 1, lr |x|,
// maximize for x > 0: fma(-1, -|x|, 0) = x, one rounding) and stored with `rounding`.
template <class T>
std::vector<T> sgd_store(float x, std::size_t n, const Rounding& rounding, int threads = 1,
                         std::int64_t step = 1, std::uint64_t id = 0,
                         std::int64_t rounding_step = 0) {
  std::vector<T> p(n, narrow<T>(0.0f)), g(n, narrow<T>(1.0f));
  const SgdOptions o{.lr = std::fabs(static_cast<double>(x)), .maximize = x > 0};
  ParamBuffers b;
  b.param = p.data();
  b.grad = g.data();
  b.size = n;
  b.step = step;
  b.id = id;
  b.rounding_step = rounding_step;
  fastoptim::step(o, StreamTypes(dtype_of<T>(), dtype_of<T>(), dtype_of<T>(), false, rounding),
                  std::span(&b, 1), threads);
  return p;
}

// Unbiased: the mean of many stochastically rounded copies of x is x within a few standard
// errors, each copy is one of x's two neighbours, and each rounds up with probability
// (|x| - down) / (up - down).
template <class T>
void check_unbiased(float x) {
  constexpr std::size_t n = 1 << 16;
  const std::vector<T> r = sgd_store<T>(x, n, Rounding{true, 1234});
  const Neighbours nb = neighbours<T>(std::fabs(static_cast<double>(x)));
  ASSERT_LT(nb.down, nb.up) << x << " must not be representable";
  const double q = (std::fabs(static_cast<double>(x)) - nb.down) / (nb.up - nb.down);
  std::size_t ups = 0;
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(is_neighbour(r[i], x)) << std::hexfloat << x << ": element " << i << " is "
                                       << widen<double>(r[i]);
    const double v = std::fabs(widen<double>(r[i]));
    ups += v == nb.up ? 1 : 0;
    sum += v;
  }
  const double se = std::sqrt(q * (1.0 - q) / n);
  EXPECT_NEAR(static_cast<double>(ups) / n, q, 5.0 * se + 1e-12)
      << std::hexfloat << x << " rounds up with probability " << q;
  EXPECT_NEAR(sum / n, std::fabs(static_cast<double>(x)), 5.0 * se * (nb.up - nb.down) + 1e-300)
      << std::hexfloat << x;
  // nearest-even instead: every copy the same, the nearer neighbour
  const std::vector<T> nearest = sgd_store<T>(x, 64, Rounding{});
  for (const T& v : nearest) ASSERT_EQ(bits_of(v), bits_of(narrow<T>(x))) << x;
}

TEST(StochasticRounding, BfloatIsUnbiased) {
  for (float x : {1.0f + 0.3f * 0x1p-7f, 3.14159265f, -2.7182818f, 0.1f, -1e-3f, 1e-30f,
                  0x1.0ap-130f /* float32 subnormal: bfloat16 subnormal spacing */,
                  -3.0e38f /* near the largest finite bfloat16 */})
    check_unbiased<bfloat16>(x);
}

TEST(StochasticRounding, HalfIsUnbiasedIncludingSubnormalsAndNearItsLargestValue) {
  for (float x : {1.0f + 0.3f * 0x1p-10f, 0.1f, -1234.567f, 3.3e-6f /* subnormal */,
                  -4.0e-5f /* subnormal, near the smallest normal */,
                  1.0e-7f /* between the two smallest subnormals */,
                  3.0e-8f /* below the smallest subnormal: 0 or 2^-24 */, 65490.5f, -65500.0f,
                  6.0e-5f /* just below 2^-14 */})
    check_unbiased<float16>(x);
}

// Between the largest finite float16 (65504) and 65520 nearest-even gives 65504; the upper
// neighbour is 2^16, so stochastic rounding gives 65504 or inf (with probability
// (|x| - 65504) / 32), as rounding up overflows. bfloat16 likewise beyond 0x7f7f.
TEST(StochasticRounding, BeyondTheLargestFiniteValueRoundsToItOrInf) {
  constexpr std::size_t n = 1 << 14;
  const std::vector<float16> h = sgd_store<float16>(65512.0f, n, Rounding{true, 9});
  std::size_t inf = 0;
  for (const float16& v : h) {
    ASSERT_TRUE(v.bits == 0x7bff || v.bits == 0x7c00) << std::hex << v.bits;
    inf += v.bits == 0x7c00 ? 1 : 0;
  }
  EXPECT_NEAR(static_cast<double>(inf) / n, 0.25, 5.0 * std::sqrt(0.25 * 0.75 / n));
  EXPECT_EQ(sgd_store<float16>(65512.0f, 1, Rounding{})[0].bits, 0x7bff);
  const float big = std::nextafter(std::numeric_limits<float>::max(), 0.0f);
  const std::vector<bfloat16> b = sgd_store<bfloat16>(-big, n, Rounding{true, 9});
  for (const bfloat16& v : b) ASSERT_TRUE(v.bits == 0xff7f || v.bits == 0xff80) << std::hex << v.bits;
}

// The float32 state of float32 params stored as bfloat16: SGD's new momentum buffer is the
// grad, any float32 value; stored stochastically, unbiased.
TEST(StochasticRounding, BfloatStateOfFloatParamsIsUnbiased) {
  constexpr std::size_t n = 1 << 16;
  for (float x : {0.1f, -5.4321f, 1e-38f}) {
    std::vector<float> p(n, 0.0f), g(n, x);
    std::vector<bfloat16> buf(n);
    ParamBuffers b;
    b.param = p.data();
    b.grad = g.data();
    b.state[0] = buf.data();
    b.size = n;
    b.step = 1;  // a new buffer: set to the grad
    fastoptim::step(SgdOptions{.lr = 0.1, .momentum = 0.9},
                    StreamTypes(DType::float32, DType::float32, DType::bfloat16, false,
                                Rounding{true, 77}),
                    std::span(&b, 1), 2);
    const Neighbours nb = neighbours<bfloat16>(std::fabs(x));
    const double q = (std::fabs(static_cast<double>(x)) - nb.down) / (nb.up - nb.down);
    double sum = 0.0;
    for (const bfloat16& v : buf) {
      ASSERT_TRUE(is_neighbour(v, x)) << x;
      sum += std::fabs(widen<double>(v));
    }
    EXPECT_NEAR(sum / n, std::fabs(x), 5.0 * std::sqrt(q * (1.0 - q) / n) * (nb.up - nb.down)) << x;
  }
}

// ---- the generator: reproducible, and a function of (seed, step, id, stream, index) only -------
std::size_t count_differences(const std::vector<bfloat16>& a, const std::vector<bfloat16>& b) {
  std::size_t d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d += a[i].bits != b[i].bits ? 1 : 0;
  return d;
}

// x = 1 + half a bfloat16 ulp: each copy rounds up with probability 1/2, so two independent
// streams of bits differ in about half the elements.
constexpr float kHalfway = 1.0f + 0x1p-8f;
constexpr std::size_t kN = 20000;  // above kSerialThreshold: threads split it

TEST(StochasticRounding, ReproducibleForASeedAndDifferentForAnother) {
  const auto a = sgd_store<bfloat16>(kHalfway, kN, Rounding{true, 42});
  EXPECT_EQ(count_differences(a, sgd_store<bfloat16>(kHalfway, kN, Rounding{true, 42})), 0u);
  for (std::uint64_t seed : {43ull, 0ull, 1ull << 32, ~0ull}) {
    const std::size_t d = count_differences(a, sgd_store<bfloat16>(kHalfway, kN, Rounding{true, seed}));
    EXPECT_GT(d, kN / 3) << "seed " << seed;
    EXPECT_LT(d, 2 * kN / 3) << "seed " << seed;
  }
}

TEST(StochasticRounding, SameBitsAtEveryLevelAndThreadCount) {
  LevelGuard guard;
  set_simd_level("scalar");
  const auto b = sgd_store<bfloat16>(kHalfway, kN + 13, Rounding{true, 5}, 1);
  const auto h = sgd_store<float16>(1.0f + 0x1p-11f, kN + 13, Rounding{true, 5}, 1);
  for (const std::string& level : available_simd_levels()) {
    set_simd_level(level);
    for (int threads : {1, 2, 3}) {
      EXPECT_TRUE(same_bits(sgd_store<bfloat16>(kHalfway, kN + 13, Rounding{true, 5}, threads), b))
          << level << " " << threads;
      EXPECT_TRUE(same_bits(sgd_store<float16>(1.0f + 0x1p-11f, kN + 13, Rounding{true, 5}, threads), h))
          << level << " " << threads;
    }
  }
}

TEST(StochasticRounding, ParamIdsAndStepsGiveDifferentBits) {
  const Rounding r{true, 3};
  const auto base = sgd_store<bfloat16>(kHalfway, kN, r, 1, /*step*/ 4, /*id*/ 0);
  for (auto other : {sgd_store<bfloat16>(kHalfway, kN, r, 1, 4, 1),           // another param
                     sgd_store<bfloat16>(kHalfway, kN, r, 1, 5, 0),           // another step
                     sgd_store<bfloat16>(kHalfway, kN, r, 1, 1, 0, 5)}) {     // rounding_step 5
    EXPECT_GT(count_differences(base, other), kN / 3);
    EXPECT_LT(count_differences(base, other), 2 * kN / 3);
  }
  // rounding_step stands in for the step (SGD's own counter); 0 means the step
  EXPECT_TRUE(same_bits(sgd_store<bfloat16>(kHalfway, kN, r, 1, 1, 0, 4), base));
  EXPECT_TRUE(same_bits(sgd_store<bfloat16>(kHalfway, kN, r, 1, 2, 0, 4), base));
  // two buffers of one call with the same contents and ids 0 and 1: different bits; the same id
  // twice: the same bits (the id, not the buffer's place, keys the generator)
  for (std::uint64_t second_id : {1ull, 0ull}) {
    std::vector<bfloat16> p0(kN, bfloat16{0}), p1(kN, bfloat16{0}), g(kN, to_bfloat16(1.0f));
    ParamBuffers b[2];
    b[0].param = p0.data();
    b[1].param = p1.data();
    for (int k = 0; k < 2; ++k) {
      b[k].grad = g.data();
      b[k].size = kN;
    }
    b[1].id = second_id;
    fastoptim::step(SgdOptions{.lr = kHalfway, .maximize = true},
                    StreamTypes(DType::bfloat16, DType::bfloat16, DType::bfloat16, false, r),
                    std::span(b, 2), 2);
    if (second_id == 0) EXPECT_TRUE(same_bits(p0, p1));
    else EXPECT_GT(count_differences(p0, p1), kN / 3);
  }
}

// RMSprop, centered, alpha 0.6, from zero state with grads 1: square_avg and grad_avg are both
// 0.4f before they are stored; as different streams they round with different bits.
TEST(StochasticRounding, StreamsGiveDifferentBits) {
  std::vector<float> p(kN, 0.0f), g(kN, 1.0f);
  std::vector<bfloat16> square_avg(kN, bfloat16{0}), grad_avg(kN, bfloat16{0});
  ParamBuffers b;
  b.param = p.data();
  b.grad = g.data();
  b.state[0] = square_avg.data();
  b.state[2] = grad_avg.data();
  b.size = kN;
  const RmspropOptions o{.lr = 0.01, .alpha = 0.6, .centered = true};
  const StreamTypes nearest(DType::float32, DType::float32, DType::bfloat16);
  fastoptim::step(o, nearest, std::span(&b, 1));
  ASSERT_TRUE(same_bits(square_avg, grad_avg));  // the same values before rounding
  std::fill(p.begin(), p.end(), 0.0f);
  std::fill(square_avg.begin(), square_avg.end(), bfloat16{0});
  std::fill(grad_avg.begin(), grad_avg.end(), bfloat16{0});
  StreamTypes stochastic = nearest;
  stochastic.rounding = Rounding{true, 11};
  fastoptim::step(o, stochastic, std::span(&b, 1));
  const std::size_t d = count_differences(square_avg, grad_avg);
  EXPECT_GT(d, kN / 5);  // 0.4 is 204.8 bfloat16 ulps: up with probability 0.8, disagreement 2 * 0.8 * 0.2
  EXPECT_LT(d, 2 * kN / 3);
}

// ---- special values ----------------------------------------------------------------------------
template <class T>
void check_special_values() {
  const std::uint16_t nan = std::is_same_v<T, bfloat16> ? 0x7fc0 : 0x7e00;
  const std::uint16_t inf = std::is_same_v<T, bfloat16> ? 0x7f80 : 0x7c00;
  const std::uint16_t payload_nan = std::is_same_v<T, bfloat16> ? 0xffc1 : 0xfe01;
  const std::uint16_t neg_zero = 0x8000;
  for (bool stochastic : {false, true}) {
    SCOPED_TRACE(stochastic ? "stochastic" : "nearest");
    // param 0 + grad (lr 1, maximize): the grad itself, NaN / inf / -inf
    std::vector<T> p(67, T{0}), g(67, T{0});
    for (std::size_t i = 0; i < g.size(); ++i)
      g[i] = T{i % 3 == 0 ? payload_nan : i % 3 == 1 ? inf : static_cast<std::uint16_t>(inf | 0x8000)};
    ParamBuffers b;
    b.param = p.data();
    b.grad = g.data();
    b.size = p.size();
    const StreamTypes types(dtype_of<T>(), dtype_of<T>(), dtype_of<T>(), false,
                            Rounding{stochastic, 1});
    fastoptim::step(SgdOptions{.lr = 1.0, .maximize = true}, types, std::span(&b, 1));
    for (std::size_t i = 0; i < p.size(); ++i)
      ASSERT_EQ(p[i].bits, i % 3 == 0 ? nan : i % 3 == 1 ? inf : (inf | 0x8000)) << i;
    // -0 + (-1) * +0 = -0 (and -0 stays -0 through the stochastic rounding)
    std::fill(p.begin(), p.end(), T{neg_zero});
    std::fill(g.begin(), g.end(), T{0});
    fastoptim::step(SgdOptions{.lr = 1.0}, types, std::span(&b, 1));
    for (std::size_t i = 0; i < p.size(); ++i) ASSERT_EQ(p[i].bits, neg_zero) << i;
  }
}

TEST(StochasticRounding, NanInfAndNegativeZeroPassThroughBfloat) { check_special_values<bfloat16>(); }
TEST(StochasticRounding, NanInfAndNegativeZeroPassThroughHalf) { check_special_values<float16>(); }

// An update below half a bfloat16 ulp: nearest-even never moves the param; stochastic rounding
// moves it by the update on average (each step unbiased, so their sum is too).
TEST(StochasticRounding, UpdatesBelowHalfAnUlpMoveParamsOnlyStochastically) {
  constexpr std::size_t n = 1 << 15;
  constexpr int steps = 8;
  const float update = 0x1p-10f;  // bfloat16's ulp below 1 is 2^-8
  for (bool stochastic : {false, true}) {
    std::vector<bfloat16> p(n, to_bfloat16(1.0f)), g(n, to_bfloat16(update));
    ParamBuffers b;
    b.param = p.data();
    b.grad = g.data();
    b.size = n;
    for (int s = 1; s <= steps; ++s) {
      b.rounding_step = s;
      fastoptim::step(SgdOptions{.lr = 1.0},
                      StreamTypes(DType::bfloat16, DType::bfloat16, DType::bfloat16, false,
                                  Rounding{stochastic, 8}),
                      std::span(&b, 1));
    }
    double sum = 0.0;
    for (const bfloat16& v : p) sum += to_float(v);
    if (!stochastic) {
      EXPECT_EQ(sum / n, 1.0);
    } else {
      // per step and element a variance of at most ulp^2 / 4
      const double se = std::sqrt(steps / 4.0) * 0x1p-8 / std::sqrt(static_cast<double>(n));
      EXPECT_NEAR(sum / n, 1.0 - steps * static_cast<double>(update), 5.0 * se);
    }
  }
}

// ---- refused calls -------------------------------------------------------------------------------
TEST(MixedRefusals, UnsupportedStreamTypesNameTheTypesAndWriteNothing) {
  std::vector<float> p(5, 1.0f), g(5, 0.5f), m(5, 0.0f);
  ParamBuffers b;
  b.param = p.data();
  b.grad = g.data();
  b.state[0] = m.data();
  b.state[1] = m.data();
  b.size = 5;
  const AdamOptions adam{};
  EXPECT_INVALID(fastoptim::step(adam, StreamTypes(DType::float64, DType::float32, DType::float32),
                                 std::span(&b, 1)),
                 "no kernel for params of float64, grads of float32 and state of float32");
  EXPECT_INVALID(fastoptim::step(adam, StreamTypes(DType::float16, DType::float16, DType::bfloat16),
                                 std::span(&b, 1)),
                 "no kernel for params of float16, grads of float16 and state of bfloat16");
  b.master = m.data();
  EXPECT_INVALID(fastoptim::step(adam, StreamTypes(DType::float32, DType::float32, DType::float32, true),
                                 std::span(&b, 1)),
                 "no kernel for params of float32, grads of float32 and state of float32 with a "
                 "float32 master copy");
  EXPECT_INVALID(fastoptim::check_step(adam, StreamTypes(DType::bfloat16, DType::float32, DType::float32),
                                       std::span(&b, 1)),
                 "no kernel for params of bfloat16, grads of float32 and state of float32");
  EXPECT_EQ(p, std::vector<float>(5, 1.0f));
  EXPECT_EQ(m, std::vector<float>(5, 0.0f));
}

TEST(MixedRefusals, NullMasterIsRefusedBeforeAnythingIsWritten) {
  std::vector<bfloat16> p0(9, to_bfloat16(1.0f)), p1(9, to_bfloat16(1.0f)), g(9, to_bfloat16(0.5f));
  std::vector<float> master0(9, 1.0f), s0(9, 0.0f), s1(9, 0.0f), s2(9, 0.0f), s3(9, 0.0f);
  ParamBuffers b[2];
  b[0].param = p0.data();
  b[0].master = master0.data();
  b[0].state[0] = s0.data();
  b[0].state[1] = s1.data();
  b[1].param = p1.data();  // no master
  b[1].state[0] = s2.data();
  b[1].state[1] = s3.data();
  for (ParamBuffers& x : b) {
    x.grad = g.data();
    x.size = 9;
  }
  const StreamTypes types(DType::bfloat16, DType::bfloat16, DType::float32, true);
  EXPECT_INVALID(fastoptim::step(AdamOptions{}, types, std::span(b, 2)), "buffer 1: master is null");
  EXPECT_INVALID(fastoptim::check_step(AdamOptions{}, types, std::span(b, 2)), "buffer 1: master is null");
  EXPECT_TRUE(same_bits(p0, std::vector<bfloat16>(9, to_bfloat16(1.0f))));
  EXPECT_EQ(master0, std::vector<float>(9, 1.0f));
  EXPECT_EQ(s0, std::vector<float>(9, 0.0f));
  // an empty buffer needs no master
  b[1].size = 0;
  fastoptim::step(AdamOptions{}, types, std::span(b, 2));
  EXPECT_NE(master0, std::vector<float>(9, 1.0f));
}

}  // namespace
}  // namespace fastoptim::test
