#include <immintrin.h>
#include "kernels/isa_prelude.hpp"

#define FASTOPTIM_ISA_NAME "sse2"
namespace fastoptim::kernels::sse2 {
#include "kernels/vec_scalar.inl"
#include "kernels/vec_sse2.inl"
#include "kernels/vec_ops.inl"
#include "kernels/kernel.inl"
}  // namespace fastoptim::kernels::sse2
