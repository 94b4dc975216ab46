#pragma once

#include "kernels/kernel_table.hpp"

namespace fastoptim::kernels {

// The table chosen for this CPU (and FASTOPTIM_SIMD), detected on first call.
const KernelTable& active_table();

}  // namespace fastoptim::kernels
