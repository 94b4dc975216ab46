#include <arm_neon.h>
#include "kernels/isa_prelude.hpp"

#define FASTOPTIM_ISA_NAME "neon"
namespace fastoptim::kernels::neon {
#include "kernels/vec_scalar.inl"
#include "kernels/vec_neon.inl"
#include "kernels/vec_ops.inl"
#include "kernels/kernel.inl"
}  // namespace fastoptim::kernels::neon
