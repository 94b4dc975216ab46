// The one driver: apply an update rule to a list of contiguous buffers in one fused pass.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "fastoptim/options.hpp"
#include "fastoptim/types.hpp"

namespace fastoptim {

// Storage types of the streams a kernel reads and writes (bfloat16 and float16: 2-byte
// fastoptim::bfloat16 / fastoptim::float16 elements, fastoptim/types.hpp). int8: state only,
// blockwise dynamic 8-bit quantization (Dettmers et al. 2022; torchao 0.18's AdamW8bit): each
// state slot is one uint8 code per element (ParamBuffers::state) and one float32 scale per block
// of StreamTypes::block_size elements (ParamBuffers::scales; the last block may be partial),
// code c of a block with scale s standing for dynamic_map(signed)[c] * s, the map signed or
// unsigned as the rule's slot declares (Slot::non_negative). See quantize()/dequantize().
enum class DType : std::uint8_t { float32, float64, bfloat16, float16, int8 };

// The DType of a storage type: float, double, fastoptim::bfloat16, fastoptim::float16.
template <class T>
constexpr DType dtype_of() {
  static_assert(rules::kSame<T, float> || rules::kSame<T, double> ||
                rules::kSame<T, bfloat16> || rules::kSame<T, float16>);
  if constexpr (rules::kSame<T, float>) return DType::float32;
  else if constexpr (rules::kSame<T, double>) return DType::float64;
  else if constexpr (rules::kSame<T, bfloat16>) return DType::bfloat16;
  else return DType::float16;
}

// How a call stores values into 16-bit streams: rounded to nearest, ties to even (torch's
// conversions), or stochastically: up or down with probabilities that make the stored value
// unbiased, from a counter-based generator of (seed, step, param id, stream, element index),
// so a run is reproducible for a seed and bit-identical across SIMD levels and thread counts.
// A value between the largest finite 16-bit value and the next power of two rounds up to inf
// with the probability of its distance (float16: x in (65504, 65536)), where nearest-even keeps
// 65504 below 65520. A float32 master copy is always written exactly, and the param beside it
// rounded to nearest (never stochastically: the next call tells a param the caller wrote by
// its bits differing from that rounding, ParamBuffers::master).
struct Rounding {
  bool stochastic = false;
  std::uint64_t seed = 0;
};

// The storage type of each stream of a call: params, grads, state slots; whether each param
// has a float32 master copy (ParamBuffers::master), and how 16-bit stores round. A call runs
// if the combination is one of layouts() (cpp/src/kernels/layouts.hpp), else
// std::invalid_argument names the types. The combinations, all 16-bit math in float32:
//   param  grad         state            master
//   f32    f32          f32              -
//   f64    f64          f64              -
//   bf16   bf16         bf16 or f32      -        (torch's fused default: state as the param)
//   f16    f16          f16 or f32       -
//   bf16   bf16         f32 or bf16      f32      (optimizer offload: one pass, param written)
//   f16    f16          f32 or bf16      f32
//   f32    f32/bf16/f16 f32 or bf16      -        (16-bit grads read as they are)
//   f64    f32/bf16/f16 f64              -        (narrower grads widened as they are read)
//   f32    f32/bf16/f16 int8             -        (8-bit blockwise state)
//   bf16   bf16         int8             - or f32
//   f16    f16          int8             - or f32
struct StreamTypes {
  DType param, grad, state;
  bool master = false;
  Rounding rounding{};
  // int8 state: elements per quantization block, a power of two from 32 to 65536 (torchao's
  // and bitsandbytes' default 256). Unused for other state types.
  std::size_t block_size = 256;
  StreamTypes(DType all) : param(all), grad(all), state(all) {}  // NOLINT: a DType is all three
  StreamTypes(DType p, DType g, DType s, bool with_master = false, Rounding r = {})
      : param(p), grad(g), state(s), master(with_master), rounding(r) {}
};

// Whether a call takes these stream types (every rule takes the same ones): one of layouts().
bool supports(const StreamTypes& types);

// Every combination of stream types a call takes (rounding: nearest; each also takes
// stochastic rounding), in a fixed order.
std::vector<StreamTypes> layouts();

// One parameter tensor and its optimizer state: `size` elements per stream, each stream contiguous
// in its storage type (the call's StreamTypes).
// State slots are the rule's `slots`, in its description's order (fastoptim/rules/<rule>.hpp;
// a slot the options do not use may be null): Adam's are state[0] = exp_avg, state[1] =
// exp_avg_sq, state[2] = max_exp_avg_sq (amsgrad). Every rule's, with when each is used: the
// descriptions, or `fastoptim._core.rules()` and `_core.state_slots` from Python.
// `step` is this tensor's step count including the update being made (1 on its first update),
// 1..kMaxStepCount. For SGD, step == 1 means the momentum buffer is new: it is set to the
// gradient, as torch does.
// `scalar_state` points to the rule's per-param scalars (NAdam: mu_product), one value of
// `scalar_dtype` per scalar slot: read, and written with the new values after the update (torch
// keeps them as 0-d float32 tensors, float64 under a float64 default dtype).
// `master` is the param's float32 master copy when the call's StreamTypes has one. The update
// starts from the master, except where the caller wrote the param since the last update: an
// element whose param bits differ from its master rounded to nearest-even (how the update
// stores it) was written, and starts from the param widened exactly (rewriting the value it
// holds changes nothing). The master is written exactly, the param as its rounding. `id` and
// `rounding_step` name the param and the step in stochastic
// rounding's generator: id is the param's index (torch's state_dict numbering), rounding_step
// 0 means `step` (SGD, which keeps no step count, passes one of its own).
struct ParamBuffers {
  void* param = nullptr;
  const void* grad = nullptr;
  void* state[3] = {nullptr, nullptr, nullptr};
  std::size_t size = 0;
  std::int64_t step = 1;
  void* scalar_state = nullptr;
  DType scalar_dtype = DType::float32;
  void* master = nullptr;
  std::uint64_t id = 0;
  std::int64_t rounding_step = 0;
  // int8 state: the float32 scales of state slot k, ceil(size / block_size) of them
  float* scales[3] = {nullptr, nullptr, nullptr};
};

// The largest step count: per-step scalars take the step as a double (beta ** step, as torch),
// exact up to 2^53 - 1, and a count this small can be incremented without int64 overflow.
inline constexpr std::int64_t kMaxStepCount = (std::int64_t{1} << 53) - 1;

// std::invalid_argument naming the first bad buffer ("buffer 3: step must be in
// 1..9007199254740991, got 0") unless every step is in 1..kMaxStepCount.
void check_step_counts(std::span<const ParamBuffers> buffers);

// Factors every grad is multiplied by as the step reads it (the grads themselves are not
// written), in torch's order: GradScaler's unscale (grad * inv_scale), then clip_grad_norm_'s
// clip (grad * clip_coef); each is converted to the element type, as torch's in-place
// multiplies convert their scalar. 1.0 means not applied. Both must be finite and >= 0.
struct GradFactors {
  double inv_scale = 1.0;
  double clip_coef = 1.0;
};

// The total norm of the grads of `buffers` (their `grad` and `size`; param and state unused),
// as torch.nn.utils.clip_grad_norm_ defines it: (sum over every element of |g|^p)^(1/p), the
// largest |g| for norm_type = inf. Accumulated in double, in fixed blocks whose partial sums
// are added in order, so the result is bit-identical for any thread count and SIMD level.
// norm_type: a finite number > 0, or inf. `nonfinite` (if given) is set when any grad element
// is inf or NaN. std::invalid_argument for a bad norm_type or a null grad.
double grad_norm(DType dtype, std::span<const ParamBuffers> buffers, double norm_type,
                 int num_threads = 0, bool* nonfinite = nullptr);

// The total norm over float32 and float64 grads together, as torch combines them: the norm of
// the two per-dtype norms. std::invalid_argument if both are empty.
double grad_norm(std::span<const ParamBuffers> float32_grads,
                 std::span<const ParamBuffers> float64_grads, double norm_type,
                 int num_threads = 0, bool* nonfinite = nullptr);

// max_norm / (total_norm + 1e-6), at most 1: the factor clip_grad_norm_ multiplies grads by.
double clip_coefficient(double max_norm, double total_norm);

// Which state slots of ParamBuffers a rule reads and writes with these options (its
// description's slots), and torch's state_dict key for each slot ("" if the rule has no such
// slot). Defined for every rule's options (options.hpp).
namespace detail {
bool uses_state_slot(Rule rule, const void* options, int slot);
const char* state_slot_name(Rule rule, int slot);
void step(Rule rule, const void* options, const StreamTypes& types,
          std::span<const ParamBuffers> buffers, int num_threads, const GradFactors& grad_factors);
void check_step(Rule rule, const void* options, const StreamTypes& types,
                std::span<const ParamBuffers> buffers, const GradFactors& grad_factors);
void transform(Rule rule, const void* options, int index, const StreamTypes& types,
               std::span<const ParamBuffers> buffers, int num_threads);
void advance(Rule rule, void* options);
}  // namespace detail

template <class Options>
bool uses_state_slot(const Options& options, int slot) {
  return detail::uses_state_slot(rules::id<typename Options::Rule>, &options, slot);
}
template <class Options>
const char* state_slot_name(const Options&, int slot) {
  return detail::state_slot_name(rules::id<typename Options::Rule>, slot);
}

// Each call validates everything (std::invalid_argument) before writing anything, then updates
// every buffer in place. num_threads <= 0 means get_num_threads().
// Validation covers the options (validate()), each buffer's pointers and step count, and the
// per-step scalars the kernel will use: a scalar computed from finite options that is not
// finite in the element type (weight_decay = 1e300 in float32; 1 - lr * weight_decay beyond
// the double range) is rejected naming the options ("weight_decay=1e+300 overflows float32"),
// as torch rejects a Python float that overflows the tensor's dtype. Non-finite options that
// torch accepts (lr = inf) are passed through. Defined for every rule's options.
template <class Options>
void step(const Options& options, const StreamTypes& types, std::span<const ParamBuffers> buffers,
          int num_threads = 0, const GradFactors& grad_factors = {}) {
  detail::step(rules::id<typename Options::Rule>, &options, types, buffers, num_threads,
               grad_factors);
}

// Everything step() checks, and nothing written: validate every batch of a multi-batch update
// (several dtypes, several groups) before running any of them. Same exceptions as step().
template <class Options>
void check_step(const Options& options, const StreamTypes& types,
                std::span<const ParamBuffers> buffers, const GradFactors& grad_factors = {}) {
  detail::check_step(rules::id<typename Options::Rule>, &options, types, buffers, grad_factors);
}

// Group state (rules/rule.hpp: a rule's `state_*` fields and `advance`, Schedule-Free's k,
// weight_sum, lr_max, scheduled_lr): step() and check_step() take the options with the group
// state as it was before the step, and compute the step's scalars from a copy advanced by one
// step; advance_group() advances the caller's copy, once per group and step (whether or not
// any of its params had a grad), after the step went through. No-op for a rule without group
// state.
template <class Options>
void advance_group(Options& options) {
  detail::advance(rules::id<typename Options::Rule>, &options);
}

// A rule's element transform `index` (its description's `transforms`: Schedule-Free's 0 =
// train, 1 = eval) over every buffer: the param (and its master copy) and the state slots the
// options use; grads, step counts and scalar state are not read. Validates first, as step()
// does. Setting the group's mode flag is the caller's (the transform's `mode` and `to`), as is
// skipping a transform whose flag is already at its target.
template <class Options>
void transform(const Options& options, int index, const StreamTypes& types,
               std::span<const ParamBuffers> buffers, int num_threads = 0) {
  detail::transform(rules::id<typename Options::Rule>, &options, index, types, buffers,
                    num_threads);
}

// Blockwise dynamic 8-bit quantization, as int8 state stores it (torchao 0.18's
// quantize_8bit_with_qmap and scale_tensor): per block of `block_size` elements (the last one
// may be partial), scale = max(|x|) clipped below at 1e-12 (NaN if any element is NaN), and each
// element's code is the nearest entry of the map to x / scale (float32 division), found by
// binary search with `>=` and then rounded up exactly when x / scale - map[c] >=
// (map[c + 1] - map[c]) * 0.5 in float32: a tie goes to the higher code. NaN (and the elements
// of a block with a NaN or inf) get code 0. Bit-identical at every SIMD level.
// `signed_map`: the signed map (moments that may be negative) or the unsigned one.
void quantize(const float* values, std::size_t count, std::size_t block_size, bool signed_map,
              std::uint8_t* codes, float* scales);
// The float32 value of each code: map[code] * scale of its block.
void dequantize(const std::uint8_t* codes, const float* scales, std::size_t count,
                std::size_t block_size, bool signed_map, float* values);
// The 256 float32 values of the signed or unsigned dynamic map, ascending.
const float* dynamic_map(bool signed_map);
// std::invalid_argument unless block_size is a power of two from 32 to 65536.
void check_block_size(std::size_t block_size);

// SIMD level in use ("scalar", "sse2", "avx2", "avx512", "neon"), the levels this CPU and build
// can run (lowest first), and a way to force one (tests, benchmarks). FASTOPTIM_SIMD=<level>
// caps the level chosen at first use.
std::string simd_level();
std::vector<std::string> available_simd_levels();
void set_simd_level(const std::string& level);  // std::invalid_argument if not available

// Threads used by step(); defaults to omp_get_max_threads() (1 without OpenMP).
void set_num_threads(int num_threads);
int get_num_threads();
bool openmp_enabled();
std::string openmp_runtime();

// Below this many elements in one call a step runs on one thread: fork/join costs more.
// Measured (2-core AVX-512 EPYC, libgomp, Adam float32): two threads break even near 4096
// elements and win by ~25% at 16384; cheaper rules (SGD) break even later.
inline constexpr std::size_t kSerialThreshold = 16384;

}  // namespace fastoptim
