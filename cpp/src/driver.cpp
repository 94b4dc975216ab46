// The one driver: validates a call, computes each rule's per-step scalars in double, splits the
// total element count of all buffers over the threads, and runs the dispatched kernel.
#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if defined(FASTOPTIM_OPENMP)
#include <omp.h>
#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#include <pthread.h>
#define FASTOPTIM_FORK_GUARD 1
#endif
#endif

#include "fastoptim/step.hpp"
#include "kernels/dispatch.hpp"
#include "kernels/dynamic_map.hpp"
#include "py_float.hpp"

namespace fastoptim {
namespace {

std::atomic<int> g_num_threads{0};  // 0: whatever OpenMP says

// libgomp cannot start threads in a process forked after a parallel region ran in its parent:
// the child's first parallel region never returns (DataLoader workers, multiprocessing with
// fork). The region may be anyone's that shares the runtime (torch's libgomp is the one its
// wheel ships, and fastoptim loaded after torch binds to it), so the handler is registered when
// the library loads, not before fastoptim's own first region: every forked child steps on the
// calling thread, slower, never stuck.
std::atomic<bool> g_forked{false};
#if defined(FASTOPTIM_FORK_GUARD)
extern "C" void fastoptim_mark_forked_child() { g_forked.store(true); }
// This TU is the baseline driver; the ISA translation units keep no static initializers.
[[maybe_unused]] const int g_fork_handler_registered =
    pthread_atfork(nullptr, nullptr, fastoptim_mark_forked_child);
#endif

// Chunk boundaries fall on multiples of this many elements, so that threads do not share
// cache lines and each chunk runs whole vectors.
constexpr std::size_t kChunkAlign = 64;

template <class T>
const char* type_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

const char* storage_name(DType t) {
  switch (t) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::bfloat16: return "bfloat16";
    case DType::float16: return "float16";
    case DType::int8: return "int8";
  }
  return "an unknown type";
}

// An option a per-step scalar is computed from.
struct Source {
  const char* name;
  double value;
};

// A per-step scalar, computed in double, in the compute type C. torch converts each Python
// scalar to the tensor's dtype with an overflow check (c10's Scalar::to<T>: a finite value
// beyond T's range raises, inf and nan pass); so do we, and also reject a scalar that the
// double arithmetic itself overflowed from finite options (1 - lr * weight_decay), which
// would otherwise turn every param into inf or nan without a word. The range test comes
// before the cast: converting an out-of-range double to float is undefined behaviour.
template <class T>
bool fits(double value) {
  constexpr double kMax = static_cast<double>(std::numeric_limits<T>::max());
  return value >= -kMax && value <= kMax;  // false for inf and nan
}

// The IEEE conversion of `value` to T, without the undefined behaviour C++ gives a finite
// double beyond float's range: that saturates to +-inf as the hardware would.
template <class T>
T saturate(double value) {
  if (fits<T>(value) || !std::isfinite(value)) return static_cast<T>(value);
  return value > 0 ? std::numeric_limits<T>::infinity() : -std::numeric_limits<T>::infinity();
}

// What a rule's scalars<C>() computes with (rules/rule.hpp): conversions to C with torch's
// overflow check, pow, and the rule's scalar state (read, and the values after this step).
class ScalarContext {
 public:
  ScalarContext(const double* scalar_state, DType scalar_dtype) : dtype_(scalar_dtype) {
    for (int k = 0; k < rules::kMaxScalarSlots; ++k) next[k] = scalar_state[k];
  }

  template <class C>
  C narrow(double value, std::initializer_list<Source> sources,
           const char* expression = nullptr) const {
    if (fits<C>(value)) return static_cast<C>(value);
    for (const Source& source : sources)
      if (!std::isfinite(source.value)) return saturate<C>(value);  // torch passes these on
    std::string message;
    for (const Source& source : sources) {
      if (!message.empty()) message += " and ";
      message += std::string(source.name) + "=" + detail::py_float(source.value);
    }
    message += sources.size() == 1 ? " overflows " : " overflow ";
    message += type_name<C>();
    if (expression != nullptr) message += std::string(" in ") + expression;
    throw std::invalid_argument(message);
  }

  // A scalar the kernel does not read with these options: not checked, as torch never
  // converts it.
  template <class C>
  C unused(double value) const {
    return saturate<C>(value);
  }

  double pow(double base, double exponent) const { return std::pow(base, exponent); }
  double sqrt(double x) const { return std::sqrt(x); }
  double log(double x) const { return std::log(x); }
  double exp(double x) const { return std::exp(x); }

  // scalar_state[k] *= factor, as torch multiplies a 0-d tensor of the scalar's type by a
  // Python float (the factor converted to that type first); returns the new value.
  double scale_scalar(int k, double factor) {
    if (dtype_ == DType::float32)
      next[k] = static_cast<float>(static_cast<float>(next[k]) * saturate<float>(factor));
    else
      next[k] = next[k] * factor;
    return next[k];
  }

  double next[rules::kMaxScalarSlots];

 private:
  DType dtype_;
};

std::string buffer_name(std::size_t index) { return "buffer " + std::to_string(index); }

template <class R>
bool uses_slot(const typename R::Options& o, int slot) {
  if (slot < 0 || static_cast<std::size_t>(slot) >= R::slots.size) return false;
  const auto& s = R::slots[static_cast<std::size_t>(slot)];
  return s.used == nullptr || s.used(o);
}

double read_scalar(const ParamBuffers& b, int k) {
  return b.scalar_dtype == DType::float32 ? static_cast<const float*>(b.scalar_state)[k]
                                          : static_cast<const double*>(b.scalar_state)[k];
}

template <class R>
void validate_buffers(const typename R::Options& o, const StreamTypes& types,
                      std::span<const ParamBuffers> buffers) {
  check_step_counts(buffers);
  bool used[rules::kMaxSlots];  // (once: each is a call through the rule's description)
  for (int slot = 0; slot < rules::kMaxSlots; ++slot) used[slot] = uses_slot<R>(o, slot);
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    const ParamBuffers& b = buffers[i];
    if constexpr (R::scalar_slots.size > 0) {
      if (b.scalar_state == nullptr)
        throw std::invalid_argument(buffer_name(i) + ": scalar state " + R::scalar_slots[0].name +
                                    " is null");
      if (b.scalar_dtype != DType::float32 && b.scalar_dtype != DType::float64)
        throw std::invalid_argument(buffer_name(i) + ": unsupported scalar state dtype");
      // edited in place, a NaN here would show as an overflow blamed on the options
      for (std::size_t k = 0; k < R::scalar_slots.size; ++k)
        if (!std::isfinite(read_scalar(b, static_cast<int>(k))))
          throw std::invalid_argument(buffer_name(i) + ": state '" + R::scalar_slots[k].name +
                                      "' is " + detail::py_float(read_scalar(b, static_cast<int>(k))) +
                                      "; it must be a finite number");
    }
    if (b.size == 0) continue;
    if (b.param == nullptr) throw std::invalid_argument(buffer_name(i) + ": param is null");
    if (b.grad == nullptr) throw std::invalid_argument(buffer_name(i) + ": grad is null");
    if (types.master && b.master == nullptr)
      throw std::invalid_argument(buffer_name(i) + ": master is null");
    if (types.rounding.stochastic && b.rounding_step < 0)
      throw std::invalid_argument(buffer_name(i) + ": rounding_step must be >= 0");
    for (int slot = 0; slot < rules::kMaxSlots; ++slot) {
      if (used[slot] && b.state[slot] == nullptr)
        throw std::invalid_argument(buffer_name(i) + ": state " + R::slots[slot].name +
                                    " is null");
      if (types.state == DType::int8 && used[slot] && b.scales[slot] == nullptr)
        throw std::invalid_argument(buffer_name(i) + ": scales of state " +
                                    R::slots[slot].name + " are null");
    }
  }
}

// splitmix64's finalizer: a bijective 64-bit mix
std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A call's layout as the driver runs it: the rule's kernel for the compute type, and each
// stream's storage type.
struct LayoutRun {
  kernels::Kernel kernel;
  int param, grad, state;  // storage ids
  bool master;
  bool slot_used[rules::kMaxSlots];
  std::size_t param_size, grad_size, state_size;
  // int8 state: elements per block, and each slot's map (signed, or unsigned for a slot its
  // rule declares non-negative)
  std::size_t block = 0;
  const float* map[rules::kMaxSlots] = {};
};

constexpr std::size_t storage_size(int id) {
  return id == kernels::kF64 ? 8 : id == kernels::kF32 ? 4 : id == kernels::kI8 ? 1 : 2;
}

// torchao 0.18's maps (kernels/dynamic_map.hpp) as float32
struct DynamicMaps {
  float map[2][256];
};
constexpr DynamicMaps make_maps() {
  DynamicMaps m{};
  for (int k = 0; k < 2; ++k)
    for (int c = 0; c < 256; ++c) m.map[k][c] = std::bit_cast<float>(kernels::kDynamicMapBits[k][c]);
  return m;
}
constexpr DynamicMaps kMaps = make_maps();

// torchao's code of y for a map: a binary search with y >= map[c + step], then up one code
// exactly when y - map[c] >= (map[c + 1] - map[c]) * 0.5 in float32 (a tie goes up); NaN: 0.
std::uint32_t torchao_code(const float* map, float y) {
  if (std::isnan(y)) return 0;
  std::uint32_t c = y >= map[128] ? 128u : 0u;
  for (std::uint32_t step = 64; step >= 1; step /= 2)
    if (y >= map[c + step]) c += step;
  const std::uint32_t up = c == 255 ? 255 : c + 1;
  return y - map[c] < (map[up] - map[c]) * 0.5f ? c : up;
}

// The bucket table blockwise.inl reads the codes from (its layout is described there): built
// from torchao_code, checking what makes one read per value exact: below 2^-24 the code is the
// code of 0, and no bucket holds two points where the code changes. The code of a float32 y is
// monotone in y (the search's comparisons are, and the rounding is within one interval), so a
// bisection finds the one point in a bucket.
struct CodeBuckets {
  std::vector<std::uint32_t> table[2];  // per map: [sign][bucket]
};
const CodeBuckets& code_bucket_tables() {
  static const CodeBuckets tables = [] {
    constexpr std::uint32_t kBuckets = kernels::kCodeBucketsPerSign;
    CodeBuckets t;
    for (int m = 0; m < 2; ++m) {
      const float* map = kMaps.map[m];
      t.table[m].resize(2 * kBuckets);
      for (std::uint32_t sign = 0; sign < 2; ++sign) {
        auto code_at = [&](std::uint32_t magnitude_bits) {
          const float a = std::bit_cast<float>(magnitude_bits);
          return torchao_code(map, sign ? -a : a);
        };
        for (std::uint32_t b = 0; b < kBuckets; ++b) {
          const std::uint32_t first = 0x33800000u + (b << 16);
          const std::uint32_t c0 = code_at(first), c1 = code_at(first + 0xffffu);
          if (b == 0 && code_at(0) != c0)
            throw std::logic_error("int8 map: the code below 2^-24 is not the code of 0");
          const std::uint32_t moves = sign ? c0 - c1 : c1 - c0;
          if (moves > 1) throw std::logic_error("int8 map: two decision points in one bucket");
          std::uint32_t at = 0x10000u;  // the first low 16 bits where the code has moved
          if (moves == 1) {
            std::uint32_t lo = 0, hi = 0xffffu;  // code_at(first + lo) == c0 != code_at(first + hi)
            while (hi - lo > 1) {
              const std::uint32_t mid = lo + (hi - lo) / 2;
              (code_at(first + mid) == c0 ? lo : hi) = mid;
            }
            at = hi;
          }
          const std::uint32_t base = sign ? (c0 - 1) & 0xffu : c0;
          t.table[m][sign * kBuckets + b] = base << 24 | at;
        }
      }
    }
    return t;
  }();
  return tables;
}
const std::uint32_t* code_buckets(const float* map) {
  return code_bucket_tables().table[map == kMaps.map[0] ? 0 : 1].data();
}

// Elements per tile of a call with int8 state: the dequantized state of every slot of a tile
// (3 slots x 8 KB) stays in L1 between the kernel and the requantization.
constexpr std::size_t kTileElements = 2048;

// Elements [first, first + count) of one buffer. A range never crosses a multiple of 2^32
// elements (run_range splits there), so the stochastic-rounding keys fold in the index's high
// half once.
void run_piece_streams(const LayoutRun& l, const void* scalars, const void* factors,
                       const ParamBuffers& b, std::size_t first, std::size_t count,
                       const Rounding& rounding, void* const* tile_state) {
  auto at = [first](const void* p, std::size_t size) -> char* {
    return p ? const_cast<char*>(static_cast<const char*>(p)) + first * size : nullptr;
  };
  kernels::Streams s{at(b.param, l.param_size),
                     at(b.grad, l.grad_size),
                     {},
                     l.master ? at(b.master, sizeof(float)) : nullptr,
                     static_cast<std::int8_t>(l.param),
                     static_cast<std::int8_t>(l.grad),
                     static_cast<std::int8_t>(l.state),
                     rounding.stochastic,
                     static_cast<std::uint32_t>(first),
                     {}};
  for (int k = 0; k < rules::kMaxSlots; ++k)
    s.state[k] = !l.slot_used[k]      ? nullptr
                 : tile_state != nullptr ? tile_state[k]
                                         : at(b.state[k], l.state_size);
  if (tile_state != nullptr) s.state_type = static_cast<std::int8_t>(kernels::kF32);
  if (rounding.stochastic) {
    const auto step = static_cast<std::uint64_t>(b.rounding_step > 0 ? b.rounding_step : b.step);
    const std::uint64_t base = mix64(mix64(mix64(rounding.seed) ^ step) ^ b.id);
    for (std::uint64_t pair = 0; pair < 2; ++pair)
      s.keys[pair] = static_cast<std::uint32_t>(
          mix64(base ^ (pair | (std::uint64_t{first} >> 32 << 8))) >> 32);
  }
  l.kernel(scalars, factors, s, count);
}

// int8 state: tile by tile (whole blocks: the piece starts on a block boundary of its buffer,
// run_all), each used slot dequantized into a float32 tile, the rule's kernel run on it as
// float32 state, and the tile requantized. A block is always quantized whole, by one thread,
// from the same values: the codes do not depend on the thread count.
void run_piece(const LayoutRun& l, const void* scalars, const void* factors,
               const ParamBuffers& b, std::size_t first, std::size_t count,
               const Rounding& rounding) {
  if (l.block == 0) {
    run_piece_streams(l, scalars, factors, b, first, count, rounding, nullptr);
    return;
  }
  const kernels::KernelTable& table = kernels::active_table();
  const std::size_t tile = std::max(l.block, kTileElements / l.block * l.block);
  std::vector<float> scratch(tile * rules::kMaxSlots);
  void* tile_state[rules::kMaxSlots] = {};
  for (int k = 0; k < rules::kMaxSlots; ++k) tile_state[k] = scratch.data() + k * tile;
  for (std::size_t at = first; at < first + count; at += tile) {
    const std::size_t n = std::min(tile, first + count - at);
    for (int k = 0; k < rules::kMaxSlots; ++k)
      if (l.slot_used[k])
        table.dequantize(static_cast<const std::uint8_t*>(b.state[k]) + at,
                         b.scales[k] + at / l.block, n, l.block, l.map[k],
                         static_cast<float*>(tile_state[k]));
    run_piece_streams(l, scalars, factors, b, at, n, rounding, tile_state);
    for (int k = 0; k < rules::kMaxSlots; ++k)
      if (l.slot_used[k])
        table.quantize(static_cast<const float*>(tile_state[k]), n, l.block, code_buckets(l.map[k]),
                       static_cast<std::uint8_t*>(b.state[k]) + at, b.scales[k] + at / l.block);
  }
}

int resolve_threads(int requested, std::size_t total) {
  int threads = requested > 0 ? requested : get_num_threads();
  if (total < kSerialThreshold || g_forked.load(std::memory_order_relaxed)) return 1;
  const std::size_t most = (total + kChunkAlign - 1) / kChunkAlign;
  return static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads), most));
}

// The options with the group state of this step (rules/rule.hpp: advance): a rule that keeps
// none computes its scalars from the options as they are.
struct PowContext {
  double pow(double base, double exponent) const { return std::pow(base, exponent); }
};
template <class R>
typename R::Options advanced(typename R::Options options) {
  if constexpr (requires { R::advance(options, PowContext{}); }) R::advance(options, PowContext{});
  return options;
}

// One buffer's per-step scalars, and its scalar state after the step.
template <class R, class C>
struct StepScalars {
  typename R::template Scalars<C> kernel;
  double next_scalar_state[rules::kMaxScalarSlots];
};

// Per-buffer scalars; tensors of a group usually share a step (and scalar state), so computed
// once per change. Throws (nothing written yet) when a scalar overflows C.
template <class R, class C>
std::vector<StepScalars<R, C>> make_all_scalars(const typename R::Options& group,
                                                std::span<const ParamBuffers> buffers) {
  const typename R::Options options = advanced<R>(group);
  std::vector<StepScalars<R, C>> out;
  out.reserve(buffers.size());
  double previous[rules::kMaxScalarSlots] = {};
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    const ParamBuffers& b = buffers[i];
    rules::StepInput in{static_cast<double>(b.step), {0.0, 0.0}};
    for (std::size_t k = 0; k < R::scalar_slots.size; ++k) in.scalar_state[k] = read_scalar(b, k);
    bool same = i > 0 && b.step == buffers[i - 1].step &&
                (R::scalar_slots.size == 0 || b.scalar_dtype == buffers[i - 1].scalar_dtype);
    for (std::size_t k = 0; k < R::scalar_slots.size; ++k)
      same = same && std::memcmp(&in.scalar_state[k], &previous[k], sizeof(double)) == 0;
    for (std::size_t k = 0; k < R::scalar_slots.size; ++k) previous[k] = in.scalar_state[k];
    if (same) {
      out.push_back(out.back());
      continue;
    }
    ScalarContext ctx(in.scalar_state, b.scalar_dtype);
    StepScalars<R, C> s{R::template scalars<C>(options, in, ctx), {}};
    for (int k = 0; k < rules::kMaxScalarSlots; ++k) s.next_scalar_state[k] = ctx.next[k];
    out.push_back(s);
  }
  return out;
}

// Runs the layout's kernels over elements [lo, hi) of the concatenation of all buffers.
template <class Scalars>
void run_range(const LayoutRun& layout, const std::vector<Scalars>& scalars, const void* factors,
               std::span<const ParamBuffers> buffers, const std::vector<std::size_t>& starts,
               const Rounding& rounding, std::size_t lo, std::size_t hi) {
  if (lo >= hi) return;
  std::size_t b = static_cast<std::size_t>(
      std::upper_bound(starts.begin(), starts.end(), lo) - starts.begin() - 1);
  for (; b < buffers.size() && starts[b] < hi; ++b) {
    const std::size_t first = std::max(lo, starts[b]) - starts[b];
    const std::size_t last = std::min(hi, starts[b] + buffers[b].size) - starts[b];
    for (std::size_t at = first; at < last;) {
      constexpr std::uint64_t kSpan = std::uint64_t{1} << 32;
      const std::size_t end = static_cast<std::size_t>(
          std::min<std::uint64_t>(last, (std::uint64_t{at} / kSpan + 1) * kSpan));
      run_piece(layout, &scalars[b].kernel, factors, buffers[b], at, end - at, rounding);
      at = end;
    }
  }
}

void check_factors(const GradFactors& f) {
  if (!(std::isfinite(f.inv_scale) && f.inv_scale >= 0.0))
    throw std::invalid_argument("grad inv_scale must be finite and >= 0, got " +
                                detail::py_float(f.inv_scale));
  // NaN passes: torch clips by a NaN factor when the norm is NaN (error_if_nonfinite=False)
  if (!(std::isnan(f.clip_coef) || (std::isfinite(f.clip_coef) && f.clip_coef >= 0.0)))
    throw std::invalid_argument("grad clip_coef must be finite and >= 0, got " +
                                detail::py_float(f.clip_coef));
}

// Runs the layout's kernel over every buffer, threads splitting the total element count.
template <class Scalars>
void run_all(const LayoutRun& layout, const std::vector<Scalars>& scalars, const void* factors,
             std::span<const ParamBuffers> buffers, const Rounding& rounding, int num_threads) {
  std::vector<std::size_t> starts(buffers.size() + 1, 0);
  for (std::size_t i = 0; i < buffers.size(); ++i) starts[i + 1] = starts[i] + buffers[i].size;
  const std::size_t total = starts.back();
  const int threads = resolve_threads(num_threads, total);

#if defined(FASTOPTIM_OPENMP)
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const auto t = static_cast<std::size_t>(omp_get_thread_num());
      const auto n = static_cast<std::size_t>(omp_get_num_threads());
      auto boundary = [&](std::size_t k) {
        if (k == n) return total;
        const std::size_t at = (total / n * k + total % n * k / n) / kChunkAlign * kChunkAlign;
        if (layout.block == 0) return at;
        // int8 state: down to a block boundary of the buffer it falls in, so that no block is
        // split between threads
        const auto b = static_cast<std::size_t>(
            std::upper_bound(starts.begin(), starts.end(), at) - starts.begin() - 1);
        if (b >= buffers.size()) return at;
        return starts[b] + (at - starts[b]) / layout.block * layout.block;
      };
      run_range(layout, scalars, factors, buffers, starts, rounding, boundary(t),
                boundary(t + 1));
    }
  } else
#endif
  {
    (void)threads;
    run_range(layout, scalars, factors, buffers, starts, rounding, 0, total);
  }
}

// The whole call for one rule and compute type C: scalars (checked), then, if `write`, the
// kernels over every buffer and the new scalar state.
template <class R, class C>
void apply(const typename R::Options& options, LayoutRun layout, const Rounding& rounding,
           std::span<const ParamBuffers> buffers, int num_threads, const GradFactors& f,
           bool write) {
  auto scalars = make_all_scalars<R, C>(options, buffers);
  if (!write) return;
  const kernels::GradFactors<C> factors{saturate<C>(f.inv_scale), saturate<C>(f.clip_coef),
                                        f.inv_scale != 1.0, f.clip_coef != 1.0};
  layout.kernel = kernels::active_table()
                      .kernels[static_cast<std::size_t>(rules::id<R>)][std::is_same_v<C, double>];
  run_all(layout, scalars, &factors, buffers, rounding, num_threads);
  for (std::size_t i = 0; i < buffers.size(); ++i)
    for (std::size_t k = 0; k < R::scalar_slots.size; ++k) {
      const double v = scalars[i].next_scalar_state[k];
      if (buffers[i].scalar_dtype == DType::float32)
        static_cast<float*>(buffers[i].scalar_state)[k] = static_cast<float>(v);
      else
        static_cast<double*>(buffers[i].scalar_state)[k] = v;
    }
}

int find_layout(const StreamTypes& types) {
  return kernels::find_layout(static_cast<int>(types.param), static_cast<int>(types.grad),
                              static_cast<int>(types.state),
                              types.master ? static_cast<int>(DType::float32) : -1);
}

// The layout of a call, or std::invalid_argument naming the types.
template <class R>
LayoutRun layout_of(const typename R::Options& options, const StreamTypes& types) {
  if (find_layout(types) < 0)
    throw std::invalid_argument(std::string("no kernel for params of ") +
                                storage_name(types.param) + ", grads of " +
                                storage_name(types.grad) + " and state of " +
                                storage_name(types.state) +
                                (types.master ? " with a float32 master copy" : ""));
  LayoutRun layout{};
  layout.param = static_cast<int>(types.param);
  layout.grad = static_cast<int>(types.grad);
  layout.state = static_cast<int>(types.state);
  layout.master = types.master;
  for (int k = 0; k < rules::kMaxSlots; ++k) layout.slot_used[k] = uses_slot<R>(options, k);
  layout.param_size = storage_size(layout.param);
  layout.grad_size = storage_size(layout.grad);
  layout.state_size = storage_size(layout.state);
  if (types.state == DType::int8) {
    check_block_size(types.block_size);
    for (std::size_t k = 0; k < R::slots.size; ++k)
      if (R::slots[k].from_param)
        throw std::invalid_argument(std::string(R::name) + ": int8 state is for moments; state " +
                                    R::slots[k].name +
                                    " is a copy of the param (use float32 or bfloat16 state)");
    layout.block = types.block_size;
    for (std::size_t k = 0; k < R::slots.size; ++k)
      layout.map[k] = kMaps.map[R::slots[k].non_negative ? 1 : 0];
  }
  return layout;
}

// Validates everything; then, if `write`, updates every buffer.
template <class R>
void call(const void* options_ptr, const StreamTypes& types, std::span<const ParamBuffers> buffers,
          int num_threads, const GradFactors& factors, bool write) {
  const auto& options = *static_cast<const typename R::Options*>(options_ptr);
  check_factors(factors);
  validate(options);
  validate_buffers<R>(options, types, buffers);
  const LayoutRun layout = layout_of<R>(options, types);
  if (types.param == DType::float64)
    apply<R, double>(options, layout, types.rounding, buffers, num_threads, factors, write);
  else
    apply<R, float>(options, layout, types.rounding, buffers, num_threads, factors, write);
}

// A rule's element transform `index` over every buffer (param, master, the used state slots;
// no grad, no step count): validated, then run.
template <class R, class C>
void apply_transform(const typename R::Options& options, int index, LayoutRun layout,
                     Rounding rounding, std::span<const ParamBuffers> buffers, int num_threads) {
  struct Scalars {
    typename R::template TransformScalars<C> kernel;
  };
  const double no_scalar_state[rules::kMaxScalarSlots] = {};
  ScalarContext ctx(no_scalar_state, DType::float64);
  const Scalars scalars{R::template transform_scalars<C>(index, options, ctx)};
  layout.kernel = kernels::active_table()
                      .transforms[static_cast<std::size_t>(rules::id<R>)][std::is_same_v<C, double>];
  // its own random bits: a step's (seed, step, param) keys are not reused
  rounding.seed = mix64(rounding.seed ^ (0x7472616e73666f72ull + static_cast<unsigned>(index)));
  const kernels::GradFactors<C> factors{C(1), C(1), false, false};
  run_all(layout, std::vector<Scalars>(buffers.size(), scalars), &factors, buffers, rounding,
          num_threads);
}

template <class R>
void transform_call(const void* options_ptr, int index, const StreamTypes& types,
                    std::span<const ParamBuffers> buffers, int num_threads) {
  if constexpr (rules::transform_count<R>() == 0) {
    (void)options_ptr, (void)types, (void)buffers, (void)num_threads;
    throw std::invalid_argument(std::string(R::name) + " has no transform " +
                                std::to_string(index));
  } else {
    const auto& options = *static_cast<const typename R::Options*>(options_ptr);
    if (index < 0 || static_cast<std::size_t>(index) >= R::transforms.size)
      throw std::invalid_argument(std::string(R::name) + " has no transform " +
                                  std::to_string(index));
    validate(options);
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      const ParamBuffers& b = buffers[i];
      if (b.size == 0) continue;
      if (b.param == nullptr) throw std::invalid_argument(buffer_name(i) + ": param is null");
      if (types.master && b.master == nullptr)
        throw std::invalid_argument(buffer_name(i) + ": master is null");
      for (int slot = 0; slot < rules::kMaxSlots; ++slot)
        if (uses_slot<R>(options, slot) && b.state[slot] == nullptr)
          throw std::invalid_argument(buffer_name(i) + ": state " + R::slots[slot].name +
                                      " is null");
    }
    LayoutRun layout = layout_of<R>(options, types);
    if (types.param == DType::float64)
      apply_transform<R, double>(options, index, layout, types.rounding, buffers, num_threads);
    else
      apply_transform<R, float>(options, index, layout, types.rounding, buffers, num_threads);
  }
}

// Every registered rule's entry points, by Rule id.
struct RuleEntry {
  void (*call)(const void*, const StreamTypes&, std::span<const ParamBuffers>, int,
               const GradFactors&, bool);
  void (*transform)(const void*, int, const StreamTypes&, std::span<const ParamBuffers>, int);
  void (*advance)(void*);
  bool (*uses_slot)(const void*, int);
  const char* (*slot_name)(int);
};

template <class R>
constexpr RuleEntry entry_of() {
  return {&call<R>,
          &transform_call<R>,
          [](void* o) {
            auto& options = *static_cast<typename R::Options*>(o);
            options = advanced<R>(options);
          },
          [](const void* o, int slot) {
            return uses_slot<R>(*static_cast<const typename R::Options*>(o), slot);
          },
          [](int slot) -> const char* {
            return slot >= 0 && static_cast<std::size_t>(slot) < R::slots.size
                       ? R::slots[static_cast<std::size_t>(slot)].name
                       : "";
          }};
}

const RuleEntry& entry(Rule rule) {
  static constexpr auto table = [] {
    std::array<RuleEntry, rules::All::size> entries{};
    std::size_t i = 0;
    rules::for_each_rule([&](auto r) { entries[i++] = entry_of<decltype(r)>(); });
    return entries;
  }();
  const auto index = static_cast<std::size_t>(rule);
  if (index >= table.size()) throw std::invalid_argument("unknown rule");
  return table[index];
}

}  // namespace

bool detail::uses_state_slot(Rule rule, const void* options, int slot) {
  return entry(rule).uses_slot(options, slot);
}
const char* detail::state_slot_name(Rule rule, int slot) { return entry(rule).slot_name(slot); }
void detail::step(Rule rule, const void* options, const StreamTypes& types,
                  std::span<const ParamBuffers> buffers, int num_threads,
                  const GradFactors& factors) {
  entry(rule).call(options, types, buffers, num_threads, factors, true);
}
void detail::check_step(Rule rule, const void* options, const StreamTypes& types,
                        std::span<const ParamBuffers> buffers, const GradFactors& factors) {
  entry(rule).call(options, types, buffers, 0, factors, false);
}

void detail::transform(Rule rule, const void* options, int index, const StreamTypes& types,
                       std::span<const ParamBuffers> buffers, int num_threads) {
  entry(rule).transform(options, index, types, buffers, num_threads);
}
void detail::advance(Rule rule, void* options) { entry(rule).advance(options); }

bool supports(const StreamTypes& types) { return find_layout(types) >= 0; }

void check_block_size(std::size_t block_size) {
  if (block_size < 32 || block_size > 65536 || (block_size & (block_size - 1)) != 0)
    throw std::invalid_argument("block_size must be a power of two from 32 to 65536, got " +
                                std::to_string(block_size));
}

const float* dynamic_map(bool signed_map) { return kMaps.map[signed_map ? 0 : 1]; }

void quantize(const float* values, std::size_t count, std::size_t block_size, bool signed_map,
              std::uint8_t* codes, float* scales) {
  check_block_size(block_size);
  if (count == 0) return;
  if (values == nullptr || codes == nullptr || scales == nullptr)
    throw std::invalid_argument("quantize: null buffer");
  kernels::active_table().quantize(values, count, block_size,
                                   code_buckets(dynamic_map(signed_map)), codes, scales);
}

void dequantize(const std::uint8_t* codes, const float* scales, std::size_t count,
                std::size_t block_size, bool signed_map, float* values) {
  check_block_size(block_size);
  if (count == 0) return;
  if (values == nullptr || codes == nullptr || scales == nullptr)
    throw std::invalid_argument("dequantize: null buffer");
  kernels::active_table().dequantize(codes, scales, count, block_size, dynamic_map(signed_map),
                                     values);
}

std::vector<StreamTypes> layouts() {
  std::vector<StreamTypes> out;
  for (const kernels::Layout& l : kernels::kLayouts)
    out.emplace_back(static_cast<DType>(l.param), static_cast<DType>(l.grad),
                     static_cast<DType>(l.state), l.master >= 0);
  return out;
}

void check_step_counts(std::span<const ParamBuffers> buffers) {
  for (std::size_t i = 0; i < buffers.size(); ++i)
    if (buffers[i].step < 1 || buffers[i].step > kMaxStepCount)
      throw std::invalid_argument(buffer_name(i) + ": step must be in 1.." +
                                  std::to_string(kMaxStepCount) + ", got " +
                                  std::to_string(buffers[i].step));
}

// ---- the grad norm ---------------------------------------------------------------------------
namespace {

// Elements per block of the norm pass. Block boundaries depend only on the element counts, and
// the block partials are added in order: the thread count only decides who computes a block.
constexpr std::size_t kNormBlock = 1 << 14;
constexpr int kNormLanes = 8;  // accumulators per block, element k of a block into lane k % 8

enum class NormKind { kOne, kTwo, kInf, kPow };

#if defined(_MSC_VER)
#define FASTOPTIM_NORM_INLINE __forceinline
#else
#define FASTOPTIM_NORM_INLINE inline __attribute__((always_inline))
#endif

struct NormPartial {
  double value;  // sum of |g|^p, or the largest |g|
};

// NaN-propagating max: a NaN element makes the norm NaN, as torch's does.
FASTOPTIM_NORM_INLINE double nan_max(double a, double b) { return a <= b ? b : (a > b ? a : a + b); }

// (|g| / divisor)^p of elements [0, n) of one buffer into acc (the largest |g| for kInf);
// element k goes to lane (lane0 + k) % 8. With divisor 1 (the division is then exact) orders 1
// and 2 run the dispatched kernel: the same eight lanes, added in the same order, at any level.
// Otherwise the middle runs whole groups of 8 with a fixed lane per position, which the
// compiler vectorizes without reordering any lane's additions.
template <NormKind K, class T>
void accumulate(const T* g, std::size_t n, std::size_t lane0, double p, double divisor,
                double* acc) {
  auto add = [&](std::size_t lane, double x) {
    if constexpr (K == NormKind::kInf) {
      acc[lane] = nan_max(acc[lane], std::fabs(x));
    } else {
      const double a = std::fabs(x) / divisor;
      if constexpr (K == NormKind::kPow) acc[lane] += std::pow(a, p);
      else if constexpr (K == NormKind::kTwo) acc[lane] += a * a;
      else acc[lane] += a;
    }
  };
  std::size_t i = 0;
  for (; i < n && (lane0 + i) % kNormLanes != 0; ++i) add((lane0 + i) % kNormLanes, g[i]);
  const std::size_t whole = (n - i) / kNormLanes * kNormLanes;
  if (K != NormKind::kInf && K != NormKind::kPow && divisor == 1.0) {
    kernels::active_table().norms[K == NormKind::kTwo][sizeof(T) == 8](g + i, whole, acc);
    i += whole;
  } else {
    for (; i + kNormLanes <= n; i += kNormLanes)
      for (int j = 0; j < kNormLanes; ++j) add(j, static_cast<double>(g[i + j]));
  }
  for (; i < n; ++i) add((lane0 + i) % kNormLanes, g[i]);
}

template <NormKind K, class T>
NormPartial norm_block(std::span<const ParamBuffers> buffers, const std::vector<std::size_t>& starts,
                       std::size_t lo, std::size_t hi, double p, double divisor) {
  double acc[kNormLanes] = {};
  std::size_t b = static_cast<std::size_t>(
      std::upper_bound(starts.begin(), starts.end(), lo) - starts.begin() - 1);
  for (; b < buffers.size() && starts[b] < hi; ++b) {
    const std::size_t first = std::max(lo, starts[b]) - starts[b];
    const std::size_t last = std::min(hi, starts[b] + buffers[b].size) - starts[b];
    if (first < last)
      accumulate<K>(static_cast<const T*>(buffers[b].grad) + first, last - first,
                    (starts[b] + first - lo) % kNormLanes, p, divisor, acc);
  }
  if constexpr (K == NormKind::kInf) {
    double value = 0.0;
    for (double a : acc) value = nan_max(value, a);
    return {value};
  } else {
    return {((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))};
  }
}

// Whether any element is inf or NaN: asked only when the norm came out non-finite, which a
// finite float64 grad can also give (its squares overflow), so the flag is exact.
template <class T>
bool any_nonfinite(std::span<const ParamBuffers> buffers) {
  for (const ParamBuffers& b : buffers)
    for (std::size_t i = 0; i < b.size; ++i)
      if (!std::isfinite(static_cast<const T*>(b.grad)[i])) return true;
  return false;
}

// The blocks' sum of (|g| / divisor)^p (the largest |g| for kInf), added in block order.
template <NormKind K, class T>
double block_sum(std::span<const ParamBuffers> buffers, double p, double divisor,
                 int num_threads) {
  std::vector<std::size_t> starts(buffers.size() + 1, 0);
  for (std::size_t i = 0; i < buffers.size(); ++i) starts[i + 1] = starts[i] + buffers[i].size;
  const std::size_t total = starts.back();
  const std::size_t blocks = (total + kNormBlock - 1) / kNormBlock;
  std::vector<NormPartial> partials(blocks);
  auto run_block = [&](std::size_t k) {
    partials[k] = norm_block<K, T>(buffers, starts, k * kNormBlock,
                                   std::min(total, (k + 1) * kNormBlock), p, divisor);
  };
  const int threads = resolve_threads(num_threads, total);
#if defined(FASTOPTIM_OPENMP)
  if (threads > 1 && blocks > 1) {
    const auto count = static_cast<std::ptrdiff_t>(blocks);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (std::ptrdiff_t k = 0; k < count; ++k) run_block(static_cast<std::size_t>(k));
  } else
#endif
  {
    (void)threads;
    for (std::size_t k = 0; k < blocks; ++k) run_block(k);
  }
  double sum = 0.0;
  for (const NormPartial& part : partials)
    sum = K == NormKind::kInf ? nan_max(sum, part.value) : sum + part.value;
  return sum;
}

// The p-norm relative to the largest magnitude m: m * (sum (|g| / m)^p)^(1/p). Every term is
// at most 1 and the largest is exactly 1, so the sum lies in [1, n] and the norm is finite for
// any finite order of finite grads (unless the norm itself exceeds double), where |g|^p
// overflows or underflows double (orders past a few hundred; squares of float64 grads past
// 1e154 or below 1e-154). m is a max, and the sum the same blocks and lanes: the result is
// still the same bits for any thread count and SIMD level.
template <NormKind K, class T>
double scaled_norm(std::span<const ParamBuffers> buffers, double p, double m, int num_threads) {
  const double sum = block_sum<K, T>(buffers, p, m, num_threads);
  if constexpr (K == NormKind::kTwo) return m * std::sqrt(sum);
  else if constexpr (K == NormKind::kPow) return m * std::pow(sum, 1.0 / p);
  else return m * sum;
}

template <NormKind K, class T>
double norm_of(std::span<const ParamBuffers> buffers, double p, int num_threads,
               bool* nonfinite) {
  if constexpr (K == NormKind::kPow) {
    // always relative to the largest magnitude: |g|^p leaves double's range for modest orders
    const double m = block_sum<NormKind::kInf, T>(buffers, p, 1.0, num_threads);
    if (nonfinite != nullptr) *nonfinite = !std::isfinite(m);
    if (std::isfinite(m) && m > 0.0) return scaled_norm<K, T>(buffers, p, m, num_threads);
    // inf or NaN elements (or all zero): the plain sum, inf or NaN (or 0) as before
    return std::pow(block_sum<K, T>(buffers, p, 1.0, num_threads), 1.0 / p);
  } else {
    const double sum = block_sum<K, T>(buffers, p, 1.0, num_threads);
    if constexpr (K == NormKind::kInf) {
      if (nonfinite != nullptr) *nonfinite = !std::isfinite(sum) && any_nonfinite<T>(buffers);
      return sum;
    } else {
      // Orders 1 and 2 keep the plain sum (torch's, and the fast kernel) unless it overflowed
      // from finite grads, or, for squares, fell below double's normal range (where it loses
      // digits, or is 0 for grads that are not): then the sum relative to the largest |g|.
      const bool overflowed = !std::isfinite(sum) && !any_nonfinite<T>(buffers);
      if (nonfinite != nullptr) *nonfinite = !std::isfinite(sum) && !overflowed;
      if (overflowed || (K == NormKind::kTwo && sum < std::numeric_limits<double>::min())) {
        const double m = block_sum<NormKind::kInf, T>(buffers, p, 1.0, num_threads);
        if (m > 0.0) return scaled_norm<K, T>(buffers, p, m, num_threads);
      }
      if constexpr (K == NormKind::kTwo) return std::sqrt(sum);
      else return sum;
    }
  }
}

template <class T>
double norm_of(NormKind kind, std::span<const ParamBuffers> buffers, double p, int threads,
               bool* nonfinite) {
  switch (kind) {
    case NormKind::kOne: return norm_of<NormKind::kOne, T>(buffers, p, threads, nonfinite);
    case NormKind::kTwo: return norm_of<NormKind::kTwo, T>(buffers, p, threads, nonfinite);
    case NormKind::kInf: return norm_of<NormKind::kInf, T>(buffers, p, threads, nonfinite);
    case NormKind::kPow: break;
  }
  return norm_of<NormKind::kPow, T>(buffers, p, threads, nonfinite);
}

}  // namespace

double grad_norm(DType dtype, std::span<const ParamBuffers> buffers, double norm_type,
                 int num_threads, bool* nonfinite) {
  NormKind kind;
  if (norm_type == 1.0) kind = NormKind::kOne;
  else if (norm_type == 2.0) kind = NormKind::kTwo;
  else if (norm_type == std::numeric_limits<double>::infinity()) kind = NormKind::kInf;
  else if (std::isfinite(norm_type) && norm_type > 0.0) kind = NormKind::kPow;
  else
    throw std::invalid_argument("norm_type must be a positive number or inf, got " +
                                detail::py_float(norm_type));
  for (std::size_t i = 0; i < buffers.size(); ++i)
    if (buffers[i].size != 0 && buffers[i].grad == nullptr)
      throw std::invalid_argument(buffer_name(i) + ": grad is null");
  if (dtype == DType::float32) return norm_of<float>(kind, buffers, norm_type, num_threads, nonfinite);
  if (dtype == DType::float64)
    return norm_of<double>(kind, buffers, norm_type, num_threads, nonfinite);
  throw std::invalid_argument("unsupported dtype");
}

double grad_norm(std::span<const ParamBuffers> float32_grads,
                 std::span<const ParamBuffers> float64_grads, double norm_type, int num_threads,
                 bool* nonfinite) {
  if (float32_grads.empty() && float64_grads.empty())
    throw std::invalid_argument("grad_norm: no grads");
  bool bad32 = false, bad64 = false;
  if (float64_grads.empty())
    return grad_norm(DType::float32, float32_grads, norm_type, num_threads, nonfinite);
  if (float32_grads.empty())
    return grad_norm(DType::float64, float64_grads, norm_type, num_threads, nonfinite);
  double norms[2] = {grad_norm(DType::float32, float32_grads, norm_type, num_threads, &bad32),
                     grad_norm(DType::float64, float64_grads, norm_type, num_threads, &bad64)};
  if (nonfinite != nullptr) *nonfinite = bad32 || bad64;
  ParamBuffers pair;
  pair.grad = norms;
  pair.size = 2;
  return grad_norm(DType::float64, std::span(&pair, 1), norm_type, 1);
}

double clip_coefficient(double max_norm, double total_norm) {
  const double coef = max_norm / (total_norm + 1e-6);
  return std::isnan(coef) || coef < 1.0 ? coef : 1.0;  // torch's clamp(max=1) keeps NaN
}

void set_num_threads(int num_threads) {
  if (num_threads < 1)
    throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(num_threads));
  g_num_threads.store(num_threads);
}

int get_num_threads() {
  if (g_forked.load()) return 1;
  const int n = g_num_threads.load();
  if (n > 0) return n;
#if defined(FASTOPTIM_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

bool openmp_enabled() {
#if defined(FASTOPTIM_OPENMP)
  return true;
#else
  return false;
#endif
}

// The library that provides the OpenMP runtime this process uses (libgomp, libomp, libiomp5).
std::string openmp_runtime() {
#if defined(FASTOPTIM_OPENMP)
#if defined(__linux__) || defined(__APPLE__)
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&omp_get_max_threads), &info) != 0 &&
      info.dli_fname != nullptr)
    return info.dli_fname;
#endif
  return "OpenMP " + std::to_string(_OPENMP);
#else
  return "none (built without OpenMP)";
#endif
}

}  // namespace fastoptim
