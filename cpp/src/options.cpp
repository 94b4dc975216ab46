// Hyperparameter checks, worded as torch.optim words them.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

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

namespace {

[[noreturn]] void fail(const std::string& what, double value) {
  throw std::invalid_argument(what + detail::py_float(value));
}

void check_lr(double lr) {
  if (!(lr >= 0.0)) fail("Invalid learning rate: ", lr);
}
void check_eps(double eps) {
  if (!(eps >= 0.0)) fail("Invalid epsilon value: ", eps);
}
void check_weight_decay(double weight_decay) {
  if (!(weight_decay >= 0.0)) fail("Invalid weight_decay value: ", weight_decay);
}

}  // namespace

void validate(const SgdOptions& o) {
  check_lr(o.lr);
  if (!(o.momentum >= 0.0)) fail("Invalid momentum value: ", o.momentum);
  check_weight_decay(o.weight_decay);
  if (o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0))
    throw std::invalid_argument("Nesterov momentum requires a momentum and zero dampening");
}

void validate(const AdagradOptions& o) {
  check_lr(o.lr);
  if (!(o.lr_decay >= 0.0)) fail("Invalid lr_decay value: ", o.lr_decay);
  check_weight_decay(o.weight_decay);
  if (!(o.initial_accumulator_value >= 0.0))
    fail("Invalid initial_accumulator_value value: ", o.initial_accumulator_value);
  check_eps(o.eps);
}

void validate(const AdadeltaOptions& o) {
  check_lr(o.lr);
  if (!(o.rho >= 0.0 && o.rho <= 1.0)) fail("Invalid rho value: ", o.rho);
  check_eps(o.eps);
  check_weight_decay(o.weight_decay);
}

void validate(const RmspropOptions& o) {
  check_lr(o.lr);
  check_eps(o.eps);
  if (!(o.momentum >= 0.0)) fail("Invalid momentum value: ", o.momentum);
  check_weight_decay(o.weight_decay);
  if (!(o.alpha >= 0.0)) fail("Invalid alpha value: ", o.alpha);
}

void validate(const AdamOptions& o) {
  check_lr(o.lr);
  check_eps(o.eps);
  if (!(o.beta1 >= 0.0 && o.beta1 < 1.0)) fail("Invalid beta parameter at index 0: ", o.beta1);
  if (!(o.beta2 >= 0.0 && o.beta2 < 1.0)) fail("Invalid beta parameter at index 1: ", o.beta2);
  check_weight_decay(o.weight_decay);
}

}  // namespace fastoptim
