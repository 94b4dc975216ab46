#include <immintrin.h>
#include "kernels/isa_prelude.hpp"
#include "roofline_table.hpp"

#define FASTOPTIM_ISA_NAME "avx2"
namespace fastoptim::kernels::avx2 {
#include "kernels/vec_scalar.inl"
#include "kernels/vec_avx2.inl"
#include "kernels/vec_ops.inl"
#include "roofline.inl"
}  // namespace fastoptim::kernels::avx2
