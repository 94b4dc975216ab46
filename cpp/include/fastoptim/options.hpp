// Hyperparameters of every rule: names and defaults are those of torch.optim 2.13. Each
// options struct is part of its rule's description (fastoptim/rules/<rule>.hpp).
#pragma once

#include <stdexcept>
#include <string>

#include "fastoptim/rules.hpp"

namespace fastoptim {

// The options structs (SgdOptions, AdamOptions, ..., AdamaxOptions) are declared with their
// rules (fastoptim/rules/<rule>.hpp).

// A hyperparameter out of range, as a value: which option (torch's param-group key, and the
// element of a pair such as betas, else -1), its value, and torch's words for the problem.
// what() is the whole message as torch words it ("Invalid beta parameter at index 1: 1.0");
// the Python binding rebuilds it from the value the user gave (torch prints 1, not 1.0).
// `key` is empty for a rule about several options (SGD's Nesterov condition).
class InvalidOption : public std::invalid_argument {
 public:
  InvalidOption(std::string key, int index, double value, std::string problem);
  const std::string& key() const { return key_; }
  int index() const { return index_; }
  double value() const { return value_; }
  const std::string& problem() const { return problem_; }

 private:
  std::string key_;
  int index_;
  double value_;
  std::string problem_;
};

namespace detail {
void validate(Rule rule, const void* options);
}

// Throws InvalidOption (a std::invalid_argument) with torch's wording when a hyperparameter
// is out of range, checking in torch's order (the rule description's `checks`).
template <class Options>
void validate(const Options& options) {
  detail::validate(rules::id<typename Options::Rule>, &options);
}

}  // namespace fastoptim
