#include "kernels/isa_prelude.hpp"
#include "roofline_table.hpp"

#define FASTOPTIM_ISA_NAME "scalar"
namespace fastoptim::kernels::scalar {
#include "kernels/vec_scalar.inl"
#include "kernels/vec_none.inl"
#include "kernels/vec_ops.inl"
#include "roofline.inl"
}  // namespace fastoptim::kernels::scalar
