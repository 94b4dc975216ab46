// Everything of the C++ library except the opt-in Eigen adapter (<fastoptim/eigen.hpp>).
#pragma once

#include "fastoptim/options.hpp"    // per-rule options structs with torch's defaults
#include "fastoptim/step.hpp"       // the driver: one fused step over a list of buffers
#include "fastoptim/types.hpp"      // 16-bit storage types: bfloat16, float16
// stateful optimizers: one class per rule of the registry (fastoptim/rules.hpp: Sgd, Adam, ...)
#include "fastoptim/optimizer.hpp"
