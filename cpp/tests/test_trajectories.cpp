// The C++ API against torch.optim: the trajectories in tests/data/reference_trajectories.json
// (written by tests/data/make_reference.py with torch, read by the Python tests too), at the
// exactness bar of the project: float64 rtol 1e-10, float32 rtol 1e-5 / atol 1e-6.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "json_lite.hpp"
#include "support.hpp"

namespace fastoptim::test {
namespace {

// The file in the source tree, or another (a regenerated one) named by the environment
// variable FASTOPTIM_REFERENCE_FILE.
std::string reference_path() {
  const char* path = std::getenv("FASTOPTIM_REFERENCE_FILE");
  return path != nullptr && *path != '\0' ? path : FASTOPTIM_REFERENCE_FILE;
}

const json::Value& reference() {
  static const json::Value document = [] {
    std::ifstream in(reference_path(), std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + reference_path());
    std::stringstream text;
    text << in.rdbuf();
    return json::parse(text.str());
  }();
  return document;
}

// The reference's constructor keywords -> the rule's options struct, through the rule's `fields` (the
// keys its param groups and checkpoints use); an unknown keyword fails the test, so a new
// option in the file cannot be silently ignored.
template <class R>
typename R::Options options_of(const json::Value& kwargs, std::set<std::string>& used) {
  typename R::Options o;
  for (const auto& field : R::fields) {
    if (!kwargs.has(field.key)) continue;
    const json::Value& value = field.index < 0
                                   ? kwargs[field.key]
                                   : kwargs[field.key][static_cast<std::size_t>(field.index)];
    if (field.optional && value.is_null()) o.*field.number = rules::kNone;  // None
    else if (field.number != nullptr) o.*field.number = value.num();
    else o.*field.flag = value.boolean;
    used.insert(field.key);
  }
  return o;
}

AnyOptions options_from(const std::string& rule, const json::Value& kwargs) {
  std::set<std::string> used;
  AnyOptions result;
  bool found = false;
  rules::for_each_rule([&](auto r) {
    using R = decltype(r);
    if (rule == R::name) result = options_of<R>(kwargs, used), found = true;
  });
  if (!found) ADD_FAILURE() << "unknown rule " << rule;
  for (const auto& [key, value] : kwargs.object)
    EXPECT_TRUE(used.count(key)) << rule << ": option " << key << " is not mapped";
  return result;
}

template <class T>
testing::AssertionResult close_to_torch(std::span<const T> actual, const std::vector<T>& expected) {
  const double rtol = std::is_same_v<T, double> ? 1e-10 : 1e-5;
  const double atol = std::is_same_v<T, double> ? 1e-14 : 1e-6;
  if (actual.size() != expected.size())
    return testing::AssertionFailure() << "size " << actual.size() << " vs " << expected.size();
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const double a = actual[i], e = expected[i];
    if (!(std::abs(a - e) <= atol + rtol * std::abs(e)))
      return testing::AssertionFailure() << "element " << i << ": " << a << " vs torch " << e;
  }
  return testing::AssertionSuccess();
}

template <class T>
void run_case(const json::Value& c) {
  const std::string rule = c["rule"].str();
  auto opt = make_optimizer(options_from(rule, c["options"]));
  EXPECT_EQ(rule_name(opt->rule()), rule);
  std::vector<std::vector<T>> params;
  for (const json::Value& p : c["params"].array) params.push_back(p.numbers<T>());
  for (auto& p : params) opt->add_param(std::span<T>(p));

  const auto& steps = c["steps"].array;
  ASSERT_FALSE(steps.empty());
  for (std::size_t s = 0; s < steps.size(); ++s) {
    const json::Value& step = steps[s];
    lr_of(*opt) = step["lr"].num();
    std::vector<std::vector<T>> grads;
    std::vector<Grad> views;
    for (const json::Value& g : step["grads"].array) {
      grads.push_back(g.is_null() ? std::vector<T>() : g.numbers<T>());
      views.push_back(g.is_null() ? Grad() : Grad(std::span<const T>(grads.back())));
    }
    opt->step(views);
    for (std::size_t k = 0; k < params.size(); ++k)
      ASSERT_TRUE(close_to_torch(std::span<const T>(params[k]), step["params"][k].numbers<T>()))
          << "param " << k << " after step " << s;
  }

  const auto& final_state = c["final_state"].array;
  ASSERT_EQ(final_state.size(), params.size());
  for (std::size_t k = 0; k < params.size(); ++k) {
    const ParamStateView view = opt->state(k);
    const json::Value& torch_state = final_state[k];
    std::set<std::string> torch_buffers;
    for (const auto& [key, value] : torch_state.object) {
      if (key == "step") {
        EXPECT_EQ(view.step, static_cast<std::int64_t>(value.num())) << "param " << k;
        continue;
      }
      int scalar = -1;
      for (int i = 0; i < 2; ++i)
        if (view.scalar_names[static_cast<std::size_t>(i)] == key) scalar = i;
      if (scalar >= 0) {
        // NAdam's mu_product: torch's float32 value, written exactly; ours is the same
        // float32 product, so equal, for float64 params too.
        EXPECT_EQ(view.scalars[static_cast<std::size_t>(scalar)], value.num())
            << "param " << k << " " << key;
        continue;
      }
      torch_buffers.insert(key);
      int slot = -1;
      for (int i = 0; i < 3; ++i)
        if (view.names[i] == key) slot = i;
      ASSERT_GE(slot, 0) << "torch state key " << key << " has no slot";
      EXPECT_TRUE(close_to_torch(std::span<const T>(view.buffer<T>(slot)), value.template numbers<T>()))
          << "param " << k << " state " << key;
    }
    std::set<std::string> ours;  // the same buffers exist as in torch, no more
    for (int i = 0; i < 3; ++i)
      if (view.buffers[i] != nullptr) ours.insert(std::string(view.names[i]));
    EXPECT_EQ(ours, torch_buffers) << "param " << k;
  }
}

TEST(TorchTrajectories, FileIsTheDocumentedFormat) {
  const json::Value& doc = reference();
  EXPECT_EQ(doc["format"].str(), "fastoptim-reference-trajectories");
  EXPECT_EQ(doc["version"].num(), 1.0);
  std::set<std::string> covered;
  for (const json::Value& c : doc["cases"].array) covered.insert(c["rule"].str() + "/" + c["dtype"].str());
  for (std::size_t r = 0; r < rules::All::size; ++r)  // every registered rule, both dtypes
    for (const char* dtype : {"float32", "float64"})
      EXPECT_TRUE(covered.count(std::string(rule_name(static_cast<Rule>(r))) + "/" + dtype))
          << rule_name(static_cast<Rule>(r)) << " " << dtype;
}

class TorchTrajectories : public testing::TestWithParam<std::string> {};

TEST_P(TorchTrajectories, MatchesTorchAtEveryStep) {
  int cases = 0;
  for (const json::Value& c : reference()["cases"].array) {
    if (c["rule"].str() != GetParam()) continue;
    SCOPED_TRACE(c["name"].str());
    ++cases;
    if (c["dtype"].str() == "float32") run_case<float>(c);
    else run_case<double>(c);
  }
  EXPECT_GE(cases, 2);
}

std::vector<std::string> registered_rules() {
  std::vector<std::string> names;
  rules::for_each_rule([&](auto r) { names.push_back(decltype(r)::name); });
  return names;
}

// Every registered rule is compared with its reference (a rule without cases fails above).
INSTANTIATE_TEST_SUITE_P(Rules, TorchTrajectories, testing::ValuesIn(registered_rules()));

}  // namespace
}  // namespace fastoptim::test
