// Python's repr() of a float, for messages worded as torch words them.
#pragma once

#include <string>

namespace fastoptim::detail {

// The shortest decimal that reads back as `value`, laid out as Python prints it: "0.001",
// "1e-05", "-1e-310", "1e+300", "100.0", "inf", "nan". Never throws anything but
// std::bad_alloc (subnormals included: std::stod would throw std::out_of_range on them).
std::string py_float(double value);

}  // namespace fastoptim::detail
