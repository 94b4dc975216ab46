// Hyperparameter checks, worded as torch.optim words them.
#include <sstream>
#include <stdexcept>
#include <string>

#include "fastoptim/options.hpp"

namespace fastoptim {
namespace {

// Python's repr of a float, as torch's f-strings print it (0.0, -1.0, 1e-08, inf, nan).
std::string py_float(double value) {
  if (value != value) return "nan";
  if (value == 1.0 / 0.0) return "inf";
  if (value == -1.0 / 0.0) return "-inf";
  std::ostringstream out;
  out.precision(17);
  out << value;
  std::string text = out.str();
  // shortest representation that round-trips, like repr()
  for (int precision = 1; precision <= 17; ++precision) {
    std::ostringstream candidate;
    candidate.precision(precision);
    candidate << value;
    if (std::stod(candidate.str()) == value) {
      text = candidate.str();
      break;
    }
  }
  if (text.find_first_of(".en") == std::string::npos) text += ".0";
  return text;
}

[[noreturn]] void fail(const std::string& what, double value) {
  throw std::invalid_argument(what + py_float(value));
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
