// Hyperparameter checks, worded as torch.optim words them.
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>

#include "fastoptim/options.hpp"
#include "py_float.hpp"

namespace fastoptim {

// Python's float repr: the shortest digit string that round-trips (tried with %.*e, which
// rounds correctly, and read back with strtod, which reports subnormals through errno instead
// of throwing), printed positionally when the decimal exponent is in -4..15, else as
// d[.ddd]e±XX. Digits are picked out of the printf text, so a locale's decimal comma does not
// leak into the message.
std::string detail::py_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char text[40];
  for (int precision = 0; precision <= 16; ++precision) {
    std::snprintf(text, sizeof(text), "%.*e", precision, value);
    if (std::strtod(text, nullptr) == value) break;
  }
  std::string digits;
  const char* p = text;
  for (; *p != '\0' && *p != 'e'; ++p)
    if (*p >= '0' && *p <= '9') digits += *p;
  const int exponent = *p == 'e' ? std::atoi(p + 1) : 0;
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  const int point = exponent + 1;  // value = 0.digits * 10^point
  const int count = static_cast<int>(digits.size());
  std::string out = std::signbit(value) ? "-" : "";
  if (digits == "0") return out + "0.0";
  // Appends only: GCC 12 warns (-Wrestrict, a false positive) on "0." + std::string(...).
  if (point > -4 && point <= 16) {
    if (point <= 0) {
      out.append("0.").append(static_cast<std::size_t>(-point), '0').append(digits);
    } else if (point >= count) {
      out.append(digits).append(static_cast<std::size_t>(point - count), '0').append(".0");
    } else {
      out.append(digits, 0, static_cast<std::size_t>(point)).append(1, '.');
      out.append(digits, static_cast<std::size_t>(point));
    }
    return out;
  }
  out.append(digits, 0, 1);
  if (count > 1) out.append(1, '.').append(digits, 1);
  const int shown = point - 1;
  out += shown < 0 ? "e-" : "e+";
  const int magnitude = shown < 0 ? -shown : shown;
  if (magnitude < 10) out += '0';
  out += std::to_string(magnitude);
  return out;
}

InvalidOption::InvalidOption(std::string key, int index, double value, std::string problem)
    : std::invalid_argument(problem + (key.empty() ? "" : ": " + detail::py_float(value))),
      key_(std::move(key)),
      index_(index),
      value_(value),
      problem_(std::move(problem)) {}

namespace {

bool in_range(double v, rules::Range range) {
  switch (range) {
    case rules::Range::non_negative: return v >= 0.0;
    case rules::Range::unit_closed: return v >= 0.0 && v <= 1.0;
    case rules::Range::unit_half_open: return v >= 0.0 && v < 1.0;
    case rules::Range::non_negative_or_none: return rules::is_none(v) || v >= 0.0;
    case rules::Range::unit_open: return v > 0.0 && v < 1.0;
    case rules::Range::whole: return v >= 0.0 && v == std::floor(v);
  }
  return false;
}

// The param-group key (and pair index) of an option member, from the rule's fields.
template <class R, class Member>
const auto& field_of(Member member) {
  for (const auto& f : R::fields)
    if (f.number == member) return f;
  throw std::logic_error("rule description: a check names a member that is not a field");
}

template <class R>
void validate_rule(const void* options) {
  const auto& o = *static_cast<const typename R::Options*>(options);
  for (const auto& c : R::checks) {
    const double v = o.*c.member;
    if (!in_range(v, c.range)) {
      const auto& f = field_of<R>(c.member);
      throw InvalidOption(f.key, f.index, v, c.what);
    }
  }
  if (const char* problem = R::invalid(o)) throw InvalidOption("", -1, 0.0, problem);
}

}  // namespace

void detail::validate(Rule rule, const void* options) {
  using Fn = void (*)(const void*);
  static constexpr auto table = [] {
    std::array<Fn, rules::All::size> fns{};
    std::size_t i = 0;
    rules::for_each_rule([&](auto r) { fns[i++] = &validate_rule<decltype(r)>; });
    return fns;
  }();
  const auto index = static_cast<std::size_t>(rule);
  if (index >= table.size()) throw std::invalid_argument("unknown rule");
  table[index](options);
}

}  // namespace fastoptim
