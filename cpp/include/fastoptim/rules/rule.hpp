// What a rule description (rules/<name>.hpp) is made of. A rule is one struct holding
//   name, torch_name  its C++ name, and its class name on both Python fronts (torch.optim's,
//                     where torch has the rule)
//   reference         the implementation it is exact to, as module.Class: "torch.optim.Adam"
//                     (run with foreach=False), or the official implementation of a rule torch
//                     lacks ("lion_pytorch.Lion"), whose op-by-op float64 reference the tests
//                     keep (tests/references.py)
//   Options           its hyperparameters (the reference's names and defaults), `using Rule = <rule>`
//   fields            every option as torch's param groups key it, in the checkpoint's order
//                     (optional_number: None or a number, kNone in Options);
//                     group state (Schedule-Free's step count k, weight_sum, train_mode) is a
//                     field too, marked `state_*`: kept per group, written by the step, not
//                     a constructor argument
//   checks            the range checks, in the order (and wording) torch.optim checks them
//   slots             per-element state buffers: torch's state key, when the options use it,
//                     its initial value (an option's, zero, or a copy of the param)
//   scalar_slots      per-param scalar state (NAdam's mu_product): name, initial value
//   args              torch's constructor signature after `params` (the Python fronts' names,
//                     order and keyword-only marker; options not in `fields` are accepted and
//                     ignored)
//   has_step          whether torch keeps a `step` count per param
//   complex_as_real   (optional, default true) whether a complex param steps as its real view,
//                     as torch.optim steps complex params; false where the reference's math is
//                     not elementwise over real and imaginary parts (Lion's sgn: z / |z|)
//   eager_state       whether torch creates the state in the constructor (Adagrad)
//   Scalars<C>        the per-step scalars, in the compute type C
//   scalars<C>(o, in, ctx)  computes them in double from the options, the step count and the
//                     scalar state, converting each to C through ctx (which rejects a finite
//                     option whose scalar overflows C, naming the options, as torch does;
//                     ctx.pow, ctx.sqrt, ctx.log, ctx.exp: the C library's, as Python's math)
//   update<V>(s, io)  the element math, once, against a compute vector V: io loads and stores
//                     each stream in its own storage type
// and optionally (Schedule-Free's):
//   advance(o, ctx)   the group's once-per-step update of its group state, in double, before
//                     the per-step scalars are computed from it (run once per group and step,
//                     whether or not its params have grads)
//   refused(o)        the message of the exception a step raises in this group state (a
//                     Schedule-Free step in eval mode), or nullptr
//   transforms        named element transforms of the param and its state run outside the step
//                     (train, eval): each runs when the group's mode flag is not its target
//                     yet and sets it; TransformScalars<C>, transform_scalars<C>(index, o,
//                     ctx) and transform<V>(s, io) are their scalars and element math, once
// Everything else (kernel tables, validation, the binding's option parsing, the slot names
// Python uses, the checkpoint's field list, the C++ optimizer class) is derived from it.
//
// Plain data and templates only, no standard library: the per-ISA kernel objects include the
// rule headers (cpp/src/kernels/README.md).
#pragma once

#include <stddef.h>
#include <stdint.h>

#if defined(_MSC_VER)
#define FASTOPTIM_INLINE __forceinline
#else
#define FASTOPTIM_INLINE inline __attribute__((always_inline))
#endif

namespace fastoptim::rules {

// An optional option's None (AdEMAMix's t_alpha): a NaN, which no checked option may hold.
inline constexpr double kNone = __builtin_nan("");
constexpr bool is_none(double value) { return value != value; }

// An option as a param group holds it: group[key], or group[key][index] for an element of a
// tuple (betas).
template <class O>
struct Field {
  const char* key;
  int index;          // -1: the value itself
  double O::*number;  // exactly one of number and flag
  bool O::*flag;
  bool group_state = false;  // written by the step or a transform; no constructor argument
  bool integer = false;      // a count: a param group holds it as an int
  bool optional = false;     // a number or None (kNone)
};
template <class O>
constexpr Field<O> number(const char* key, double O::*member, int index = -1) {
  return {key, index, member, nullptr};
}
template <class O>
constexpr Field<O> optional_number(const char* key, double O::*member) {
  return {key, -1, member, nullptr, false, false, true};
}
template <class O>
constexpr Field<O> flag(const char* key, bool O::*member) {
  return {key, -1, nullptr, member};
}
template <class O>
constexpr Field<O> count(const char* key, double O::*member) {  // a whole number, an int
  return {key, -1, member, nullptr, false, true};
}
template <class O>
constexpr Field<O> state_number(const char* key, double O::*member) {
  return {key, -1, member, nullptr, true, false};
}
template <class O>
constexpr Field<O> state_count(const char* key, double O::*member) {
  return {key, -1, member, nullptr, true, true};
}
template <class O>
constexpr Field<O> state_flag(const char* key, bool O::*member) {
  return {key, -1, nullptr, member, true, false};
}

// A range check with torch's wording: "<what>: <value>".
enum class Range : uint8_t {
  non_negative,   // 0 <= x
  unit_closed,    // 0 <= x <= 1
  unit_half_open,       // 0 <= x < 1
  unit_open,            // 0 < x < 1
  whole,                // 0 <= x, a whole number (a count)
  non_negative_or_none  // 0 <= x, or None (an optional_number field)
};
template <class O>
struct Check {
  double O::*member;
  Range range;
  const char* what;  // "Invalid learning rate"
};
template <class O>
constexpr Check<O> check(double O::*member, Range range, const char* what) {
  return {member, range, what};
}

// A per-element state buffer: torch's state key, the options that use it (null: always), and
// the option holding its initial value (null: zero), or a copy of the param (Schedule-Free's z).
template <class O>
struct Slot {
  const char* name;
  bool (*used)(const O&) = nullptr;
  double O::*initial_from = nullptr;
  bool from_param = false;
  // never negative (a sum or average of squares, a max of magnitudes): int8 state stores it with
  // the unsigned dynamic map, which spends all 256 codes on [0, 1]; the others use the signed map
  bool non_negative = false;
};

// A named element transform (Schedule-Free's train, eval): runs over every param that has its
// state when the group's `mode` flag is not `to`, then sets it to `to`.
template <class O>
struct Transform {
  const char* name;
  bool O::*mode;
  bool to;
};

// A per-param scalar state, kept in the step counter's type (torch: a 0-d float32 tensor).
struct ScalarSlot {
  const char* name;
  double initial;
};

// The reference's checkpoint layout, for a reference that does not keep one entry per slot
// (bitsandbytes stacks AdEMAMix's m1 and m2 as `state1`, nests its buffers under a key of its
// own and counts steps in an int): each entry holds the next `slots` slots, in slot order,
// stacked along a new leading dimension when there are several. Both fronts' state_dict write
// it, and their load_state_dict read it as well as their own.
struct CheckpointEntry {
  const char* name;
  int slots;
};
template <size_t N>
struct CheckpointLayout {
  CheckpointEntry entries[N];
  const char* nest = nullptr;  // the entries nested under this key of the param's state
  bool int_step = false;       // the step count a Python int
};

// One argument of torch's constructor after `params`. An option field is named by its key
// (its default is the Options default); the others are accepted and ignored, with the
// default `ignored` (None or False) as torch has it.
enum class Ignored : uint8_t { no, none, false_, true_ };
struct Arg {
  const char* name;
  bool keyword_only = false;
  Ignored ignored = Ignored::no;
};
constexpr Arg kw(const char* name) { return {name, true, Ignored::no}; }
constexpr Arg ignored_none(const char* name, bool keyword_only) {
  return {name, keyword_only, Ignored::none};
}
constexpr Arg ignored_false(const char* name, bool keyword_only) {
  return {name, keyword_only, Ignored::false_};
}
constexpr Arg ignored_true(const char* name, bool keyword_only) {
  return {name, keyword_only, Ignored::true_};
}

// What the per-step scalars are computed from, besides the options.
struct StepInput {
  double step;             // this update's count: 1 on a param's first update
  double scalar_state[2];  // the scalar slots' values before the update
};

// The most state a rule may keep, and what the kernels' stream records hold.
inline constexpr int kMaxSlots = 3;
inline constexpr int kMaxScalarSlots = 2;

// torch's lerp(start, end, w) as its CPU kernel computes it: fma(w, end - start, start) when
// |w| < 0.5, else fma(w - 1, end - start, end), with w - 1 computed in C.
template <class C>
struct Lerp {
  C weight;
  C weight_minus_one;
  bool from_start;
};
template <class C>
constexpr Lerp<C> make_lerp(C w) {
  return {w, static_cast<C>(w - C(1)), (w < C(0) ? -w : w) < C(0.5)};
}
template <class V, class C>
FASTOPTIM_INLINE V lerp(V start, V end, const Lerp<C>& l) {
  const V diff = end - start;
  if (l.from_start) return fma(V::set1(l.weight), diff, start);
  return fma(V::set1(l.weight_minus_one), diff, end);
}

template <class R>
constexpr size_t transform_count() {
  if constexpr (requires { R::transforms; }) return R::transforms.size;
  return 0;
}

template <class R>
constexpr bool complex_as_real() {
  if constexpr (requires { R::complex_as_real; }) return R::complex_as_real;
  return true;
}

template <class A, class B>
inline constexpr bool kSame = false;
template <class A>
inline constexpr bool kSame<A, A> = true;

// A constant array that may be empty (C++ has no zero-length arrays).
template <class T, size_t N>
struct List {
  T items[N == 0 ? 1 : N];
  static constexpr size_t size = N;
  constexpr const T* begin() const { return items; }
  constexpr const T* end() const { return items + N; }
  constexpr const T& operator[](size_t i) const { return items[i]; }
};
template <class T, class... A>
constexpr List<T, sizeof...(A)> list(A... items) {
  return {{T(items)...}};
}

}  // namespace fastoptim::rules
