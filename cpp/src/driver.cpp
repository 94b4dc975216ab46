// The one driver: validates a call, computes each rule's per-step scalars in double, splits the
// total element count of all buffers over the threads, and runs the dispatched kernel.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(FASTOPTIM_OPENMP)
#include <omp.h>
#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#include <pthread.h>
#define FASTOPTIM_FORK_GUARD 1
#endif
#endif
#include <mutex>

#include "fastoptim/step.hpp"
#include "kernels/dispatch.hpp"
#include "kernels/scalars.hpp"
#include "py_float.hpp"

namespace fastoptim {
namespace {

using kernels::Kernel;
using kernels::Streams;

std::atomic<int> g_num_threads{0};  // 0: whatever OpenMP says

// libgomp cannot start threads in a process forked after a parallel region ran in its parent:
// the child's first parallel region never returns (DataLoader workers, multiprocessing with
// fork). So once a region has run, a fork handler marks the child, whose steps then run on the
// calling thread: slower, never stuck.
std::atomic<bool> g_forked_after_parallel{false};
#if defined(FASTOPTIM_FORK_GUARD)
extern "C" void fastoptim_mark_forked_child() { g_forked_after_parallel.store(true); }
std::once_flag g_fork_handler_once;
void before_first_parallel_region() {
  std::call_once(g_fork_handler_once,
                 [] { pthread_atfork(nullptr, nullptr, fastoptim_mark_forked_child); });
}
#else
void before_first_parallel_region() {}
#endif

// Chunk boundaries fall on multiples of this many elements, so that threads do not share
// cache lines and each chunk runs whole vectors.
constexpr std::size_t kChunkAlign = 64;

template <class T>
const char* type_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

// An option a per-step scalar is computed from.
struct Source {
  const char* name;
  double value;
};

// A per-step scalar, computed in double, in the element type T. torch converts each Python
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

template <class T>
T narrow(double value, std::initializer_list<Source> sources, const char* expression = nullptr) {
  if (fits<T>(value)) return static_cast<T>(value);
  for (const Source& source : sources)
    if (!std::isfinite(source.value)) return saturate<T>(value);  // torch passes these on
  std::string message;
  for (const Source& source : sources) {
    if (!message.empty()) message += " and ";
    message += std::string(source.name) + "=" + detail::py_float(source.value);
  }
  message += sources.size() == 1 ? " overflows " : " overflow ";
  message += type_name<T>();
  if (expression != nullptr) message += std::string(" in ") + expression;
  throw std::invalid_argument(message);
}

// A scalar the kernel does not read with these options: not checked, as torch never
// converts it.
template <class T>
T unused(double value) {
  return saturate<T>(value);
}

template <class T>
kernels::Lerp<T> make_lerp(T w) {
  return {w, static_cast<T>(T(1) - w), (w < T(0) ? -w : w) < T(0.5)};
}

template <class T>
kernels::SgdScalars<T> make_scalars(const SgdOptions& o, std::int64_t step) {
  const bool decay = o.weight_decay != 0.0, momentum = o.momentum != 0.0, first = step == 1;
  return {narrow<T>(-o.lr, {{"lr", o.lr}}),
          decay ? narrow<T>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                : unused<T>(o.weight_decay),
          momentum ? narrow<T>(o.momentum, {{"momentum", o.momentum}}) : unused<T>(o.momentum),
          momentum && !first ? narrow<T>(1.0 - o.dampening, {{"dampening", o.dampening}})
                             : unused<T>(1.0 - o.dampening),
          o.maximize,
          decay,
          momentum,
          o.nesterov,
          first,
          {}};
}

template <class T>
kernels::AdagradScalars<T> make_scalars(const AdagradOptions& o, std::int64_t step) {
  const double clr = o.lr / (1.0 + static_cast<double>(step - 1) * o.lr_decay);
  const bool decay = o.weight_decay != 0.0;
  return {narrow<T>(-clr, {{"lr", o.lr}, {"lr_decay", o.lr_decay}},
                    "lr / (1 + (step - 1) * lr_decay)"),
          decay ? narrow<T>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                : unused<T>(o.weight_decay),
          narrow<T>(o.eps, {{"eps", o.eps}}), o.maximize, decay, {}};
}

template <class T>
kernels::AdadeltaScalars<T> make_scalars(const AdadeltaOptions& o, std::int64_t) {
  const bool decay = o.weight_decay != 0.0;
  return {narrow<T>(-o.lr, {{"lr", o.lr}}),
          narrow<T>(o.rho, {{"rho", o.rho}}),
          narrow<T>(1.0 - o.rho, {{"rho", o.rho}}),
          narrow<T>(o.eps, {{"eps", o.eps}}),
          decay ? narrow<T>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                : unused<T>(o.weight_decay),
          o.maximize,
          decay,
          {}};
}

template <class T>
kernels::RmspropScalars<T> make_scalars(const RmspropOptions& o, std::int64_t) {
  const bool decay = o.weight_decay != 0.0, momentum = o.momentum > 0.0;
  const T one_minus_alpha = narrow<T>(1.0 - o.alpha, {{"alpha", o.alpha}});
  return {narrow<T>(-o.lr, {{"lr", o.lr}}),
          narrow<T>(o.alpha, {{"alpha", o.alpha}}),
          one_minus_alpha,
          narrow<T>(o.eps, {{"eps", o.eps}}),
          decay ? narrow<T>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                : unused<T>(o.weight_decay),
          momentum ? narrow<T>(o.momentum, {{"momentum", o.momentum}}) : unused<T>(o.momentum),
          make_lerp<T>(one_minus_alpha),
          o.maximize,
          decay,
          momentum,
          o.centered,
          {}};
}

template <class T>
kernels::AdamScalars<T> make_scalars(const AdamOptions& o, std::int64_t step) {
  // As torch: Python floats, beta ** step with a float step, bias_correction2 ** 0.5.
  const double s = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, s);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, s);
  const double step_size = o.lr / bias_correction1;
  const bool decay = o.weight_decay != 0.0;
  const bool coupled = decay && !o.decoupled_weight_decay;
  const bool decoupled = decay && o.decoupled_weight_decay;
  const double decay_factor = 1.0 - o.lr * o.weight_decay;
  return {narrow<T>(-step_size, {{"lr", o.lr}, {"beta1", o.beta1}},
                    "lr / (1 - beta1 ** step)"),
          narrow<T>(o.beta2, {{"beta2", o.beta2}}),
          narrow<T>(1.0 - o.beta2, {{"beta2", o.beta2}}),
          narrow<T>(std::pow(bias_correction2, 0.5), {{"beta2", o.beta2}}),
          narrow<T>(o.eps, {{"eps", o.eps}}),
          coupled ? narrow<T>(o.weight_decay, {{"weight_decay", o.weight_decay}})
                  : unused<T>(o.weight_decay),
          decoupled ? narrow<T>(decay_factor, {{"lr", o.lr}, {"weight_decay", o.weight_decay}},
                                "1 - lr * weight_decay")
                    : unused<T>(decay_factor),
          make_lerp<T>(narrow<T>(1.0 - o.beta1, {{"beta1", o.beta1}})),
          o.maximize,
          coupled,
          decoupled,
          o.amsgrad,
          {}};
}

template <class T>
kernels::RooflineScalars make_scalars(int state_count, std::int64_t) {
  return {state_count};
}

std::string buffer_name(std::size_t index) { return "buffer " + std::to_string(index); }

bool uses_slot(int state_count, int slot) { return slot < state_count; }
const char* slot_name(int, int) { return "state"; }
template <class Options>
bool uses_slot(const Options& o, int slot) { return uses_state_slot(o, slot); }
template <class Options>
const char* slot_name(const Options& o, int slot) { return state_slot_name(o, slot); }

void validate(int state_count) {
  if (state_count < 0 || state_count > 3)
    throw std::invalid_argument("roofline state_count must be 0..3, got " +
                                std::to_string(state_count));
}

template <class Options>
void validate_buffers(const Options& o, std::span<const ParamBuffers> buffers) {
  check_step_counts(buffers);
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    const ParamBuffers& b = buffers[i];
    if (b.size == 0) continue;
    if (b.param == nullptr) throw std::invalid_argument(buffer_name(i) + ": param is null");
    if (b.grad == nullptr) throw std::invalid_argument(buffer_name(i) + ": grad is null");
    for (int slot = 0; slot < 3; ++slot)
      if (uses_slot(o, slot) && b.state[slot] == nullptr)
        throw std::invalid_argument(buffer_name(i) + ": state " + slot_name(o, slot) +
                                    " is null");
  }
}

Streams offset(const ParamBuffers& b, std::size_t first, std::size_t element_size) {
  const std::size_t bytes = first * element_size;
  auto shift = [bytes](void* p) { return p ? static_cast<char*>(p) + bytes : nullptr; };
  return {shift(b.param), static_cast<const char*>(b.grad) + bytes,
          {shift(b.state[0]), shift(b.state[1]), shift(b.state[2])}};
}

int resolve_threads(int requested, std::size_t total) {
  int threads = requested > 0 ? requested : get_num_threads();
  if (total < kSerialThreshold || g_forked_after_parallel.load(std::memory_order_relaxed)) return 1;
  const std::size_t most = (total + kChunkAlign - 1) / kChunkAlign;
  return static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads), most));
}

// Runs `kernel` over elements [lo, hi) of the concatenation of all buffers.
template <class Scalars>
void run_range(Kernel kernel, const std::vector<Scalars>& scalars,
               std::span<const ParamBuffers> buffers, const std::vector<std::size_t>& starts,
               std::size_t element_size, std::size_t lo, std::size_t hi) {
  if (lo >= hi) return;
  std::size_t b = static_cast<std::size_t>(
      std::upper_bound(starts.begin(), starts.end(), lo) - starts.begin() - 1);
  for (; b < buffers.size() && starts[b] < hi; ++b) {
    const std::size_t first = std::max(lo, starts[b]) - starts[b];
    const std::size_t last = std::min(hi, starts[b] + buffers[b].size) - starts[b];
    if (first < last)
      kernel(&scalars[b], offset(buffers[b], first, element_size), last - first);
  }
}

// Per-tensor scalars, one per buffer; tensors of a group usually share a step, so computed
// once per change. Throws (nothing written yet) when a scalar overflows T.
template <class T, class Options>
auto make_all_scalars(const Options& options, std::span<const ParamBuffers> buffers) {
  using Scalars = decltype(make_scalars<T>(options, 1));
  std::vector<Scalars> scalars;
  scalars.reserve(buffers.size());
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    if (i > 0 && buffers[i].step == buffers[i - 1].step)
      scalars.push_back(scalars.back());
    else
      scalars.push_back(make_scalars<T>(options, buffers[i].step));
  }
  return scalars;
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

template <class T, class Scalars>
void set_factors(std::vector<Scalars>& scalars, const GradFactors& f) {
  if constexpr (requires(Scalars s) { s.grad; }) {
    const kernels::GradFactors<T> factors{saturate<T>(f.inv_scale), saturate<T>(f.clip_coef),
                                          f.inv_scale != 1.0, f.clip_coef != 1.0};
    for (Scalars& s : scalars) s.grad = factors;
  }
}

template <class T, class Options>
void apply(kernels::RuleId rule, const Options& options, std::span<const ParamBuffers> buffers,
           int num_threads, const GradFactors& factors) {
  const Kernel kernel = kernels::active_table().kernels[rule][sizeof(T) == 8 ? 1 : 0];
  auto scalars = make_all_scalars<T>(options, buffers);
  set_factors<T>(scalars, factors);
  std::vector<std::size_t> starts(buffers.size() + 1, 0);
  for (std::size_t i = 0; i < buffers.size(); ++i) starts[i + 1] = starts[i] + buffers[i].size;
  const std::size_t total = starts.back();
  const int threads = resolve_threads(num_threads, total);

#if defined(FASTOPTIM_OPENMP)
  if (threads > 1) {
    before_first_parallel_region();
#pragma omp parallel num_threads(threads)
    {
      const auto t = static_cast<std::size_t>(omp_get_thread_num());
      const auto n = static_cast<std::size_t>(omp_get_num_threads());
      auto boundary = [&](std::size_t k) {
        return k == n ? total : (total / n * k + total % n * k / n) / kChunkAlign * kChunkAlign;
      };
      run_range(kernel, scalars, buffers, starts, sizeof(T), boundary(t), boundary(t + 1));
    }
    return;
  }
#endif
  (void)threads;
  run_range(kernel, scalars, buffers, starts, sizeof(T), 0, total);
}

template <class Options>
void check_call(const Options& options, DType dtype, std::span<const ParamBuffers> buffers,
                const GradFactors& factors = {}) {
  check_factors(factors);
  validate(options);
  validate_buffers(options, buffers);
  if (dtype == DType::float32)
    (void)make_all_scalars<float>(options, buffers);
  else if (dtype == DType::float64)
    (void)make_all_scalars<double>(options, buffers);
  else
    throw std::invalid_argument("unsupported dtype");
}

template <class Options>
void checked_apply(kernels::RuleId rule, const Options& options, DType dtype,
                   std::span<const ParamBuffers> buffers, int num_threads,
                   const GradFactors& factors = {}) {
  check_factors(factors);
  validate(options);
  validate_buffers(options, buffers);
  if (dtype == DType::float32)
    apply<float>(rule, options, buffers, num_threads, factors);
  else if (dtype == DType::float64)
    apply<double>(rule, options, buffers, num_threads, factors);
  else
    throw std::invalid_argument("unsupported dtype");
}

}  // namespace

bool uses_state_slot(const SgdOptions& o, int slot) { return slot == 0 && o.momentum != 0.0; }
bool uses_state_slot(const AdagradOptions&, int slot) { return slot == 0; }
bool uses_state_slot(const AdadeltaOptions&, int slot) { return slot == 0 || slot == 1; }
bool uses_state_slot(const RmspropOptions& o, int slot) {
  return slot == 0 || (slot == 1 && o.momentum > 0.0) || (slot == 2 && o.centered);
}
bool uses_state_slot(const AdamOptions& o, int slot) {
  return slot == 0 || slot == 1 || (slot == 2 && o.amsgrad);
}

const char* state_slot_name(const SgdOptions&, int slot) {
  return slot == 0 ? "momentum_buffer" : "";
}
const char* state_slot_name(const AdagradOptions&, int slot) { return slot == 0 ? "sum" : ""; }
const char* state_slot_name(const AdadeltaOptions&, int slot) {
  return slot == 0 ? "square_avg" : slot == 1 ? "acc_delta" : "";
}
const char* state_slot_name(const RmspropOptions&, int slot) {
  return slot == 0 ? "square_avg" : slot == 1 ? "momentum_buffer" : slot == 2 ? "grad_avg" : "";
}
const char* state_slot_name(const AdamOptions&, int slot) {
  return slot == 0 ? "exp_avg" : slot == 1 ? "exp_avg_sq" : slot == 2 ? "max_exp_avg_sq" : "";
}

void check_step_counts(std::span<const ParamBuffers> buffers) {
  for (std::size_t i = 0; i < buffers.size(); ++i)
    if (buffers[i].step < 1 || buffers[i].step > kMaxStepCount)
      throw std::invalid_argument(buffer_name(i) + ": step must be in 1.." +
                                  std::to_string(kMaxStepCount) + ", got " +
                                  std::to_string(buffers[i].step));
}

void check_step(const SgdOptions& o, DType d, std::span<const ParamBuffers> b,
                const GradFactors& f) {
  check_call(o, d, b, f);
}
void check_step(const AdagradOptions& o, DType d, std::span<const ParamBuffers> b,
                const GradFactors& f) {
  check_call(o, d, b, f);
}
void check_step(const AdadeltaOptions& o, DType d, std::span<const ParamBuffers> b,
                const GradFactors& f) {
  check_call(o, d, b, f);
}
void check_step(const RmspropOptions& o, DType d, std::span<const ParamBuffers> b,
                const GradFactors& f) {
  check_call(o, d, b, f);
}
void check_step(const AdamOptions& o, DType d, std::span<const ParamBuffers> b,
                const GradFactors& f) {
  check_call(o, d, b, f);
}

void step(const SgdOptions& o, DType d, std::span<const ParamBuffers> b, int n,
          const GradFactors& f) {
  checked_apply(kernels::kSgd, o, d, b, n, f);
}
void step(const AdagradOptions& o, DType d, std::span<const ParamBuffers> b, int n,
          const GradFactors& f) {
  checked_apply(kernels::kAdagrad, o, d, b, n, f);
}
void step(const AdadeltaOptions& o, DType d, std::span<const ParamBuffers> b, int n,
          const GradFactors& f) {
  checked_apply(kernels::kAdadelta, o, d, b, n, f);
}
void step(const RmspropOptions& o, DType d, std::span<const ParamBuffers> b, int n,
          const GradFactors& f) {
  checked_apply(kernels::kRmsprop, o, d, b, n, f);
}
void step(const AdamOptions& o, DType d, std::span<const ParamBuffers> b, int n,
          const GradFactors& f) {
  checked_apply(kernels::kAdam, o, d, b, n, f);
}
void roofline_step(int state_count, DType d, std::span<const ParamBuffers> b, int n) {
  checked_apply(kernels::kRoofline, state_count, d, b, n);
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

template <NormKind K>
FASTOPTIM_NORM_INLINE double norm_term(double x) {
  if constexpr (K == NormKind::kTwo) return x * x;
  else return std::fabs(x);
}

// NaN-propagating max: a NaN element makes the norm NaN, as torch's does.
FASTOPTIM_NORM_INLINE double nan_max(double a, double b) { return a <= b ? b : (a > b ? a : a + b); }

// |g|^p of elements [0, n) of one buffer into acc; element k goes to lane (lane0 + k) % 8. The
// middle runs whole groups of 8 with a fixed lane per position, which the compiler vectorizes
// without reordering any lane's additions.
template <NormKind K, class T>
void accumulate(const T* g, std::size_t n, std::size_t lane0, double p, double* acc) {
  auto add = [&](std::size_t lane, double x) {
    if constexpr (K == NormKind::kInf) acc[lane] = nan_max(acc[lane], std::fabs(x));
    else if constexpr (K == NormKind::kPow) acc[lane] += std::pow(std::fabs(x), p);
    else acc[lane] += norm_term<K>(x);
  };
  std::size_t i = 0;
  for (; i < n && (lane0 + i) % kNormLanes != 0; ++i) add((lane0 + i) % kNormLanes, g[i]);
  const std::size_t whole = (n - i) / kNormLanes * kNormLanes;
  if constexpr (K == NormKind::kOne || K == NormKind::kTwo) {
    // the dispatched kernel: the same eight lanes, added in the same order, at any level
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
                       std::size_t lo, std::size_t hi, double p) {
  double acc[kNormLanes] = {};
  std::size_t b = static_cast<std::size_t>(
      std::upper_bound(starts.begin(), starts.end(), lo) - starts.begin() - 1);
  for (; b < buffers.size() && starts[b] < hi; ++b) {
    const std::size_t first = std::max(lo, starts[b]) - starts[b];
    const std::size_t last = std::min(hi, starts[b] + buffers[b].size) - starts[b];
    if (first < last)
      accumulate<K>(static_cast<const T*>(buffers[b].grad) + first, last - first,
                    (starts[b] + first - lo) % kNormLanes, p, acc);
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

template <NormKind K, class T>
double norm_of(std::span<const ParamBuffers> buffers, double p, int num_threads,
               bool* nonfinite) {
  std::vector<std::size_t> starts(buffers.size() + 1, 0);
  for (std::size_t i = 0; i < buffers.size(); ++i) starts[i + 1] = starts[i] + buffers[i].size;
  const std::size_t total = starts.back();
  const std::size_t blocks = (total + kNormBlock - 1) / kNormBlock;
  std::vector<NormPartial> partials(blocks);
  auto run_block = [&](std::size_t k) {
    partials[k] = norm_block<K, T>(buffers, starts, k * kNormBlock,
                                   std::min(total, (k + 1) * kNormBlock), p);
  };
  const int threads = resolve_threads(num_threads, total);
#if defined(FASTOPTIM_OPENMP)
  if (threads > 1 && blocks > 1) {
    before_first_parallel_region();
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
  if (nonfinite != nullptr) *nonfinite = !std::isfinite(sum) && any_nonfinite<T>(buffers);
  if constexpr (K == NormKind::kTwo) return std::sqrt(sum);
  else if constexpr (K == NormKind::kPow) return std::pow(sum, 1.0 / p);
  else return sum;
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
  if (g_forked_after_parallel.load()) return 1;
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
