// What each of the roofline's per-ISA objects exports: one table of loops. Plain data only,
// like kernels/kernel_table.hpp: the ISA objects include it, so it must emit no symbols.
#pragma once

#include <stddef.h>

namespace fastoptim::kernels {

// A stream's storage type (fastoptim::DType's values).
enum RooflineType : int { kRooflineFloat32, kRooflineFloat64, kRooflineBFloat16, kRooflineFloat16 };

inline constexpr int kRooflineMaxWritten = 4;  // the param and up to three state streams

// One tensor's streams, each at its first element: the grad is read; the param and the states
// (`written_count` of them, the param first) are read and written back.
struct RooflineStreams {
  const void* grad;
  void* written[kRooflineMaxWritten];
  int grad_type;
  int written_types[kRooflineMaxWritten];
  int written_count;
};

// x += grad for elements [first, last) of every written stream, each stored in its own type.
using RooflinePass = void (*)(const RooflineStreams& streams, size_t first, size_t last);

struct RooflineTable {
  const char* level;  // the kernels' level name: the product's dispatcher picks it
  RooflinePass same_type[4];  // every stream of one type, indexed by RooflineType
  RooflinePass mixed_float32;  // float32 arithmetic: float32, bfloat16 and float16 streams
  RooflinePass mixed_float64;  // float64 arithmetic: float64 param and states, a float32 grad
  // x = m / (sqrt(x) / c + eps) over elements [0, n), n a multiple of the level's lanes
  void (*adamw_arithmetic)(float* x, const float* m, size_t n);
};

}  // namespace fastoptim::kernels
