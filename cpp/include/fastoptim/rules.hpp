// The registry: every rule description, in Rule id order. Adding a rule is writing
// rules/<name>.hpp and adding it here (an #include, a place in All, its id in enum Rule); the
// kernel tables, the driver's entry points, the binding, the Python fronts and the C++
// optimizer classes all come from this list.
#pragma once

#include "fastoptim/rules/adadelta.hpp"
#include "fastoptim/rules/ademamix.hpp"
#include "fastoptim/rules/adagrad.hpp"
#include "fastoptim/rules/adam.hpp"
#include "fastoptim/rules/adamax.hpp"
#include "fastoptim/rules/lion.hpp"
#include "fastoptim/rules/nadam.hpp"
#include "fastoptim/rules/radam.hpp"
#include "fastoptim/rules/rmsprop.hpp"
#include "fastoptim/rules/rule.hpp"
#include "fastoptim/rules/schedule_free.hpp"
#include "fastoptim/rules/sgd.hpp"

namespace fastoptim {

// Rule ids, stored in checkpoints: never renumbered; a rule's id is its place in All below.
enum class Rule : uint8_t {
  sgd = 0,
  adagrad = 1,
  adadelta = 2,
  rmsprop = 3,
  adam = 4,
  adamw = 5,
  nadam = 6,
  radam = 7,
  adamax = 8,
  lion = 9,
  ademamix = 10,
  adamw_schedulefree = 11,
  sgd_schedulefree = 12,
};

namespace rules {

template <class... R>
struct RuleList {
  static constexpr size_t size = sizeof...(R);
};
using All = RuleList<Sgd, Adagrad, Adadelta, Rmsprop, Adam, AdamW, Nadam, Radam, Adamax, Lion,
                      AdEMAMix, AdamWScheduleFree, SGDScheduleFree>;

// Calls f(R{}) for each rule description R of the list.
template <class F, class... R>
constexpr void for_each_rule(RuleList<R...>, F&& f) {
  (f(R{}), ...);
}
template <class F>
constexpr void for_each_rule(F&& f) {
  for_each_rule(All{}, static_cast<F&&>(f));
}

template <class R, class... L>
constexpr size_t index_in(RuleList<L...>) {
  size_t i = 0, found = sizeof...(L);
  ((kSame<R, L> ? (found = i++) : i++), ...);
  return found;
}
// A rule's id is its place in All.
template <class R>
inline constexpr Rule id = static_cast<Rule>(index_in<R>(All{}));
static_assert(id<Adam> == Rule::adam && id<AdamW> == Rule::adamw && id<Adamax> == Rule::adamax);

}  // namespace rules
}  // namespace fastoptim
