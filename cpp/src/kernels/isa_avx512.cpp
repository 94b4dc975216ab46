#include <immintrin.h>
#include "kernels/isa_prelude.hpp"

#define FASTOPTIM_ISA_NAME "avx512"
namespace fastoptim::kernels::avx512 {
#include "kernels/vec_scalar.inl"
#include "kernels/vec_avx512.inl"
#include "kernels/vec_ops.inl"
#include "kernels/kernel.inl"
}  // namespace fastoptim::kernels::avx512
