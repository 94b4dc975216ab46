// Not part of the library: a kernel object that breaks the per-ISA symbol rule, so that the
// symbol_check_detects_leak test proves the check can fail.
#include "kernels/kernel_table.hpp"

namespace fastoptim::kernels::scalar {
extern const KernelTable kTable;
const KernelTable kTable = {"scalar", {}};
}  // namespace fastoptim::kernels::scalar

// A template instantiated at namespace scope: a weak global symbol outside the ISA namespace,
// what an inline helper compiled with wide-ISA flags looks like to the linker.
template <class T>
T leaked_twice(T x) {
  return x + x;
}
template float leaked_twice<float>(float);
