// The stateful C++ front: params, owned state, one driver call per dtype, and the versioned
// binary checkpoint format documented in optimizer.hpp.
#include "fastoptim/optimizer.hpp"

#include "py_float.hpp"

#include <algorithm>
#include <cmath>
#include <bit>
#include <cstring>
#include <istream>
#include <new>
#include <ostream>
#include <stdexcept>
#include <string>
#include <utility>

#include "py_float.hpp"

namespace fastoptim {
namespace {

constexpr char kMagic[8] = {'F', 'O', 'P', 'T', 'S', 'T', 'A', 'T'};

// State slot names per rule, in ParamBuffers order; "" where the rule has no such slot.
std::array<std::string_view, 3> slot_names(Rule rule) {
  auto names = [](const auto& options) {
    return std::array<std::string_view, 3>{state_slot_name(options, 0),
                                           state_slot_name(options, 1),
                                           state_slot_name(options, 2)};
  };
  switch (rule) {
    case Rule::sgd: return names(SgdOptions{});
    case Rule::adagrad: return names(AdagradOptions{});
    case Rule::adadelta: return names(AdadeltaOptions{});
    case Rule::rmsprop: return names(RmspropOptions{});
    case Rule::adam:
    case Rule::adamw: return names(AdamOptions{});
  }
  return {"", "", ""};
}

const char* dtype_name(DType dtype) { return dtype == DType::float32 ? "float32" : "float64"; }
std::size_t dtype_size(DType dtype) { return dtype == DType::float32 ? 4 : 8; }
std::string param_name(std::size_t index) { return "param " + std::to_string(index); }

// A param's count of updates made, as stored by load() and set_step_count(): its next update
// (count + 1) must still be a valid driver step, 1..kMaxStepCount.
constexpr std::int64_t kMaxStoredStepCount = kMaxStepCount - 1;

void check_stored_step_count(std::size_t index, std::int64_t step, const char* prefix = "") {
  if (step < 0 || step > kMaxStoredStepCount)
    throw std::invalid_argument(prefix + param_name(index) + ": step count " +
                                std::to_string(step) + " is out of range (0.." +
                                std::to_string(kMaxStoredStepCount) + ")");
}

// State storage: 64-byte aligned so the kernels' vectors do not straddle cache lines.
// Never null once allocated (zero-element params get a minimal block), so null means "absent".
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t bytes)
      : data_(::operator new(std::max<std::size_t>(bytes, kAlign), std::align_val_t{kAlign})) {}
  AlignedBuffer(AlignedBuffer&& other) noexcept : data_(std::exchange(other.data_, nullptr)) {}
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    return *this;
  }
  ~AlignedBuffer() {
    if (data_ != nullptr) ::operator delete(data_, std::align_val_t{kAlign});
  }
  void* get() const { return data_; }
  explicit operator bool() const { return data_ != nullptr; }

 private:
  static constexpr std::size_t kAlign = 64;
  void* data_ = nullptr;
};

AlignedBuffer filled_buffer(DType dtype, std::size_t size, double value) {
  AlignedBuffer buffer(size * dtype_size(dtype));
  if (dtype == DType::float32)
    std::fill_n(static_cast<float*>(buffer.get()), size, static_cast<float>(value));
  else
    std::fill_n(static_cast<double*>(buffer.get()), size, value);
  return buffer;
}

// ---- little-endian streams with a running FNV-1a 64 hash -------------------------------------
constexpr std::uint64_t kFnvOffset = 14695981039346656037ull;
constexpr std::uint64_t kFnvPrime = 1099511628211ull;

std::uint64_t fnv1a(std::uint64_t hash, const unsigned char* bytes, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) hash = (hash ^ bytes[i]) * kFnvPrime;
  return hash;
}

template <class U>
U byteswap_if_big(U value) {
  if constexpr (std::endian::native == std::endian::big) {
    U out{};
    auto* src = reinterpret_cast<const unsigned char*>(&value);
    auto* dst = reinterpret_cast<unsigned char*>(&out);
    for (std::size_t i = 0; i < sizeof(U); ++i) dst[i] = src[sizeof(U) - 1 - i];
    return out;
  } else {
    return value;
  }
}

class Writer {
 public:
  explicit Writer(std::ostream& out) : out_(out) {}
  void bytes(const void* data, std::size_t count) {
    hash_ = fnv1a(hash_, static_cast<const unsigned char*>(data), count);
    out_.write(static_cast<const char*>(data), static_cast<std::streamsize>(count));
  }
  template <class U>
  void scalar(U value) {
    value = byteswap_if_big(value);
    bytes(&value, sizeof(U));
  }
  template <class T>
  void array(const T* data, std::size_t count) {
    if constexpr (std::endian::native == std::endian::little) {
      bytes(data, count * sizeof(T));
    } else {
      for (std::size_t i = 0; i < count; ++i) scalar(data[i]);
    }
  }
  std::uint64_t hash() const { return hash_; }

 private:
  std::ostream& out_;
  std::uint64_t hash_ = kFnvOffset;
};

[[noreturn]] void corrupt(const std::string& what) {
  throw std::invalid_argument("fastoptim state: " + what);
}

class Reader {
 public:
  explicit Reader(std::istream& in) : in_(in) {}
  void bytes(void* data, std::size_t count, const char* what) {
    in_.read(static_cast<char*>(data), static_cast<std::streamsize>(count));
    if (static_cast<std::size_t>(in_.gcount()) != count)
      corrupt(std::string("truncated input while reading ") + what);
    hash_ = fnv1a(hash_, static_cast<const unsigned char*>(data), count);
  }
  template <class U>
  U scalar(const char* what) {
    U value{};
    bytes(&value, sizeof(U), what);
    return byteswap_if_big(value);
  }
  template <class T>
  void array(T* data, std::size_t count, const char* what) {
    bytes(data, count * sizeof(T), what);
    if constexpr (std::endian::native == std::endian::big)
      for (std::size_t i = 0; i < count; ++i) data[i] = byteswap_if_big(data[i]);
  }
  std::uint64_t hash() const { return hash_; }

 private:
  std::istream& in_;
  std::uint64_t hash_ = kFnvOffset;
};

}  // namespace

namespace detail {
void throw_view_dtype(DType want, DType have) {
  throw std::invalid_argument(std::string("ParamStateView::buffer: requested ") +
                              dtype_name(want) + ", the param is " + dtype_name(have));
}
void throw_view_slot(int slot) {
  throw std::invalid_argument("ParamStateView::buffer: slot must be 0, 1 or 2, got " +
                              std::to_string(slot));
}
}  // namespace detail

std::string_view rule_name(Rule rule) {
  switch (rule) {
    case Rule::sgd: return "sgd";
    case Rule::adagrad: return "adagrad";
    case Rule::adadelta: return "adadelta";
    case Rule::rmsprop: return "rmsprop";
    case Rule::adam: return "adam";
    case Rule::adamw: return "adamw";
  }
  return "unknown";
}

// ---- Optimizer -------------------------------------------------------------------------------
struct Optimizer::Impl {
  struct Param {
    DType dtype;
    void* data;
    std::size_t size;
    std::int64_t step = 0;
    std::array<AlignedBuffer, 3> slots;
  };
  // Address range of a param, kept sorted by `begin` for overlap checks.
  struct Range {
    std::uintptr_t begin, end;
    std::size_t index;
  };

  std::vector<Param> params;
  std::vector<Range> ranges;
  double pending_clip = 1.0;  // clip_grad_norm()'s factor for the next step()
  bool has_pending_clip = false;

  // The param whose bytes intersect [begin, end), if any.
  const Range* overlapping(std::uintptr_t begin, std::uintptr_t end) const {
    if (begin == end) return nullptr;
    auto it = std::lower_bound(ranges.begin(), ranges.end(), end,
                               [](const Range& r, std::uintptr_t e) { return r.begin < e; });
    if (it == ranges.begin()) return nullptr;
    --it;
    return it->end > begin ? &*it : nullptr;
  }

  Param& at(std::size_t index) {
    if (index >= params.size())
      throw std::invalid_argument(param_name(index) + " does not exist (the optimizer has " +
                                  std::to_string(params.size()) + " params)");
    return params[index];
  }
};

Optimizer::Optimizer(Rule rule) : rule_(rule), impl_(std::make_unique<Impl>()) {}
Optimizer::Optimizer(Optimizer&&) noexcept = default;
Optimizer& Optimizer::operator=(Optimizer&&) noexcept = default;
Optimizer::~Optimizer() = default;

template <class T>
std::size_t Optimizer::add(std::span<T> param) {
  constexpr DType dtype = std::is_same_v<T, float> ? DType::float32 : DType::float64;
  const std::size_t index = impl_->params.size();
  if (param.data() == nullptr && !param.empty())
    throw std::invalid_argument(param_name(index) + ": data is null");
  const auto begin = reinterpret_cast<std::uintptr_t>(param.data());
  const auto end = begin + param.size_bytes();
  if (const Impl::Range* other = impl_->overlapping(begin, end))
    throw std::invalid_argument(param_name(index) + " overlaps " + param_name(other->index));

  Impl::Param entry{dtype, param.data(), param.size(), 0, {}};
  if (eager_state())  // torch.optim.Adagrad creates its state in the constructor
    for (int slot = 0; slot < 3; ++slot)
      if (uses_slot(slot))
        entry.slots[slot] = filled_buffer(dtype, param.size(), initial_value(slot));
  impl_->params.reserve(index + 1);
  impl_->ranges.reserve(impl_->ranges.size() + 1);
  impl_->params.push_back(std::move(entry));
  if (begin != end) {
    const Impl::Range range{begin, end, index};
    impl_->ranges.insert(
        std::upper_bound(impl_->ranges.begin(), impl_->ranges.end(), range,
                         [](const Impl::Range& a, const Impl::Range& b) { return a.begin < b.begin; }),
        range);
  }
  return index;
}

std::size_t Optimizer::add_param(std::span<float> param) { return add(param); }
std::size_t Optimizer::add_param(std::span<double> param) { return add(param); }

std::size_t Optimizer::num_params() const { return impl_->params.size(); }
DType Optimizer::param_dtype(std::size_t index) const { return impl_->at(index).dtype; }
std::size_t Optimizer::param_size(std::size_t index) const { return impl_->at(index).size; }
std::int64_t Optimizer::step_count(std::size_t index) const { return impl_->at(index).step; }

void Optimizer::set_num_threads(int num_threads) {
  if (num_threads < 0)
    throw std::invalid_argument("num_threads must be >= 0 (0: the global setting), got " +
                                std::to_string(num_threads));
  num_threads_ = num_threads;
}

void Optimizer::step(std::span<const Grad> grads) { step_checked(grads); }

void Optimizer::step(std::span<const std::span<const float>> grads) {
  std::vector<Grad> all(grads.begin(), grads.end());
  step_checked(all);
}

void Optimizer::step(std::span<const std::span<const double>> grads) {
  std::vector<Grad> all(grads.begin(), grads.end());
  step_checked(all);
}

// Count, dtype, size and memory of every grad (std::invalid_argument naming the param).
void Optimizer::check_grads(std::span<const Grad> grads, const char* caller) const {
  const auto& params = impl_->params;
  if (grads.size() != params.size())
    throw std::invalid_argument(std::string(caller) + " got " + std::to_string(grads.size()) +
                                " grads for " + std::to_string(params.size()) +
                                " params; pass one grad (or an empty Grad{}) per param, in "
                                "add_param() order");
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Grad& g = grads[i];
    if (!g.present()) continue;
    const Impl::Param& p = params[i];
    if (g.dtype() != p.dtype)
      throw std::invalid_argument(param_name(i) + ": grad is " + dtype_name(g.dtype()) +
                                  ", param is " + dtype_name(p.dtype));
    if (g.size() != p.size)
      throw std::invalid_argument(param_name(i) + ": grad has " + std::to_string(g.size()) +
                                  " elements, param has " + std::to_string(p.size));
    if (g.data() == nullptr && g.size() != 0)
      throw std::invalid_argument(param_name(i) + ": grad data is null");
    const auto begin = reinterpret_cast<std::uintptr_t>(g.data());
    if (const Impl::Range* other = impl_->overlapping(begin, begin + g.size() * dtype_size(p.dtype)))
      throw std::invalid_argument(param_name(i) + ": grad overlaps " + param_name(other->index));
  }

}

double Optimizer::clip_grad_norm(std::span<const Grad> grads, double max_norm, double norm_type,
                                 bool error_if_nonfinite) {
  if (!(max_norm >= 0.0))
    throw std::invalid_argument("max_norm must be >= 0, got " + detail::py_float(max_norm));
  check_grads(grads, "clip_grad_norm()");
  std::vector<ParamBuffers> by_dtype[2];
  for (std::size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].present()) continue;
    ParamBuffers b;
    b.grad = grads[i].data();
    b.size = grads[i].size();
    by_dtype[grads[i].dtype() == DType::float32 ? 0 : 1].push_back(b);
  }
  if (by_dtype[0].empty() && by_dtype[1].empty())
    throw std::invalid_argument("clip_grad_norm(): no param has a grad");
  const double total = grad_norm(by_dtype[0], by_dtype[1], norm_type, num_threads_);
  if (error_if_nonfinite && !std::isfinite(total))
    throw std::invalid_argument("The total norm of order " + detail::py_float(norm_type) +
                                " for gradients from `parameters` is non-finite, so it cannot "
                                "be clipped. To disable this error and scale the gradients by "
                                "the non-finite norm anyway, set `error_if_nonfinite=False`");
  impl_->pending_clip = clip_coefficient(max_norm, total);
  impl_->has_pending_clip = true;
  return total;
}

void Optimizer::step_checked(std::span<const Grad> grads) {
  auto& params = impl_->params;
  check_options();
  check_grads(grads, "step()");

  for (std::size_t i = 0; i < params.size(); ++i)
    if (grads[i].present() && params[i].step >= kMaxStepCount)
      throw std::invalid_argument(param_name(i) + ": step count " +
                                  std::to_string(params[i].step) + " cannot advance past " +
                                  std::to_string(kMaxStepCount));

  // Slots these options use that a param does not have yet: allocated aside, kept only if
  // the step goes through.
  struct NewSlot {
    std::size_t index;
    int slot;
    AlignedBuffer buffer;
  };
  std::vector<NewSlot> fresh;
  std::vector<ParamBuffers> buffers[2];
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (!grads[i].present()) continue;
    const Impl::Param& p = params[i];
    ParamBuffers b;
    b.param = p.data;
    b.grad = grads[i].data();
    b.size = p.size;
    bool new_momentum = false;
    for (int slot = 0; slot < 3; ++slot) {
      if (p.slots[slot]) {
        b.state[slot] = p.slots[slot].get();
      } else if (uses_slot(slot)) {
        fresh.push_back({i, slot, filled_buffer(p.dtype, p.size, initial_value(slot))});
        b.state[slot] = fresh.back().buffer.get();
        new_momentum = new_momentum || slot == 0;
      }
    }
    // SGD has no step in torch: a new momentum buffer starts as the gradient (driver step 1).
    b.step = rule_ == Rule::sgd ? (new_momentum ? 1 : 2) : p.step + 1;
    buffers[p.dtype == DType::float32 ? 0 : 1].push_back(b);
  }

  // Both batches are checked before either runs: a float64 batch the driver would reject
  // must not leave the float32 params already updated.
  GradFactors factors;
  if (impl_->has_pending_clip) factors.clip_coef = impl_->pending_clip;
  if (!buffers[0].empty()) check_run(DType::float32, buffers[0], factors);
  if (!buffers[1].empty()) check_run(DType::float64, buffers[1], factors);
  if (!buffers[0].empty()) run(DType::float32, buffers[0], num_threads_, factors);
  if (!buffers[1].empty()) run(DType::float64, buffers[1], num_threads_, factors);
  impl_->has_pending_clip = false;

  for (NewSlot& n : fresh) params[n.index].slots[n.slot] = std::move(n.buffer);
  for (std::size_t i = 0; i < params.size(); ++i)
    if (grads[i].present()) ++params[i].step;
}

// ---- state views -----------------------------------------------------------------------------
ParamStateView Optimizer::state(std::size_t index) {
  Impl::Param& p = impl_->at(index);
  ParamStateView view;
  view.dtype = p.dtype;
  view.size = p.size;
  view.step = p.step;
  view.names = slot_names(rule_);
  for (int slot = 0; slot < 3; ++slot) view.buffers[slot] = p.slots[slot].get();
  return view;
}

std::vector<ParamStateView> Optimizer::state() {
  std::vector<ParamStateView> views;
  views.reserve(impl_->params.size());
  for (std::size_t i = 0; i < impl_->params.size(); ++i) views.push_back(state(i));
  return views;
}

void Optimizer::allocate_state(std::size_t index) {
  Impl::Param& p = impl_->at(index);
  std::array<AlignedBuffer, 3> made;
  for (int slot = 0; slot < 3; ++slot)
    if (!p.slots[slot] && uses_slot(slot))
      made[slot] = filled_buffer(p.dtype, p.size, initial_value(slot));
  for (int slot = 0; slot < 3; ++slot)
    if (made[slot]) p.slots[slot] = std::move(made[slot]);
}

void Optimizer::set_step_count(std::size_t index, std::int64_t step) {
  Impl::Param& p = impl_->at(index);
  check_stored_step_count(index, step);
  p.step = step;
}

// ---- save / load -----------------------------------------------------------------------------
void Optimizer::save(std::ostream& out) const {
  Writer w(out);
  w.bytes(kMagic, sizeof(kMagic));
  w.scalar<std::uint32_t>(kStateFormatVersion);
  const unsigned char rule_bytes[4] = {static_cast<unsigned char>(rule_), 0, 0, 0};
  w.bytes(rule_bytes, sizeof(rule_bytes));
  const std::vector<double> options = options_vector();
  w.scalar<std::uint32_t>(static_cast<std::uint32_t>(options.size()));
  for (double v : options) w.scalar(std::bit_cast<std::uint64_t>(v));
  w.scalar<std::uint64_t>(impl_->params.size());
  for (const Impl::Param& p : impl_->params) {
    unsigned char head[8] = {static_cast<unsigned char>(p.dtype == DType::float32 ? 0 : 1), 0};
    for (int slot = 0; slot < 3; ++slot)
      if (p.slots[slot]) head[1] |= static_cast<unsigned char>(1u << slot);
    w.bytes(head, sizeof(head));
    w.scalar<std::uint64_t>(p.size);
    w.scalar<std::int64_t>(p.step);
    for (int slot = 0; slot < 3; ++slot) {
      if (!p.slots[slot]) continue;
      if (p.dtype == DType::float32)
        w.array(static_cast<const float*>(p.slots[slot].get()), p.size);
      else
        w.array(static_cast<const double*>(p.slots[slot].get()), p.size);
    }
  }
  w.scalar<std::uint64_t>(w.hash());
  if (!out) throw std::runtime_error("fastoptim state: writing to the stream failed");
}

void Optimizer::load(std::istream& in) {
  Reader r(in);
  char magic[8];
  r.bytes(magic, sizeof(magic), "the magic");
  if (std::memcmp(magic, kMagic, sizeof(kMagic)) != 0)
    corrupt("not a fastoptim state (bad magic)");
  const auto version = r.scalar<std::uint32_t>("the version");
  if (version != kStateFormatVersion)
    corrupt("format version " + std::to_string(version) + " is not supported (this build reads " +
            std::to_string(kStateFormatVersion) + ")");
  unsigned char rule_bytes[4];
  r.bytes(rule_bytes, sizeof(rule_bytes), "the rule");
  if (rule_bytes[0] > static_cast<unsigned char>(Rule::adamw))
    corrupt("unknown rule id " + std::to_string(rule_bytes[0]));
  const auto saved_rule = static_cast<Rule>(rule_bytes[0]);
  if (saved_rule != rule_)
    corrupt("saved by " + std::string(rule_name(saved_rule)) + ", loading into " +
            std::string(rule_name(rule_)));
  if (rule_bytes[1] != 0 || rule_bytes[2] != 0 || rule_bytes[3] != 0)
    corrupt("reserved header bytes are not zero");
  const auto option_count = r.scalar<std::uint32_t>("the option count");
  if (option_count != options_count())
    corrupt(std::to_string(option_count) + " option values, " + std::string(rule_name(rule_)) +
            " has " + std::to_string(options_count()));
  std::vector<double> options(option_count);
  for (double& v : options) v = std::bit_cast<double>(r.scalar<std::uint64_t>("the options"));

  const auto count = r.scalar<std::uint64_t>("the param count");
  const auto& params = impl_->params;
  if (count != params.size())
    corrupt("saved state has " + std::to_string(count) + " params, the optimizer has " +
            std::to_string(params.size()));
  const auto names = slot_names(rule_);
  struct Loaded {
    std::int64_t step;
    std::array<AlignedBuffer, 3> slots;
  };
  std::vector<Loaded> loaded(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Impl::Param& p = params[i];
    unsigned char head[8];
    r.bytes(head, sizeof(head), "a param header");
    if (head[0] > 1) corrupt(param_name(i) + ": unknown dtype id " + std::to_string(head[0]));
    const DType dtype = head[0] == 0 ? DType::float32 : DType::float64;
    if (dtype != p.dtype)
      corrupt(param_name(i) + ": saved as " + dtype_name(dtype) + ", the param is " +
              dtype_name(p.dtype));
    for (int slot = 0; slot < 8; ++slot)
      if ((head[1] >> slot) & 1u && (slot > 2 || names[slot].empty()))
        corrupt(param_name(i) + ": state slot " + std::to_string(slot) + " does not exist for " +
                std::string(rule_name(rule_)));
    for (int k = 2; k < 8; ++k)
      if (head[k] != 0) corrupt(param_name(i) + ": reserved header bytes are not zero");
    const auto size = r.scalar<std::uint64_t>("a param size");
    if (size != p.size)
      corrupt(param_name(i) + ": saved with " + std::to_string(size) + " elements, the param has " +
              std::to_string(p.size));
    loaded[i].step = r.scalar<std::int64_t>("a step count");
    check_stored_step_count(i, loaded[i].step, "fastoptim state: ");
    for (int slot = 0; slot < 3; ++slot) {
      if (!((head[1] >> slot) & 1u)) continue;
      AlignedBuffer buffer(p.size * dtype_size(dtype));
      if (dtype == DType::float32)
        r.array(static_cast<float*>(buffer.get()), p.size, "a state buffer");
      else
        r.array(static_cast<double*>(buffer.get()), p.size, "a state buffer");
      loaded[i].slots[slot] = std::move(buffer);
    }
  }
  const std::uint64_t computed = r.hash();
  const auto stored = r.scalar<std::uint64_t>("the checksum");
  if (stored != computed) corrupt("checksum mismatch (the data is corrupt)");

  set_options_vector(options);  // validates; the last step that can throw
  for (std::size_t i = 0; i < params.size(); ++i) {
    impl_->params[i].step = loaded[i].step;
    for (int slot = 0; slot < 3; ++slot)
      impl_->params[i].slots[slot] = std::move(loaded[i].slots[slot]);
  }
}

// ---- the rule classes ------------------------------------------------------------------------
namespace {

bool flag(const std::vector<double>& values, std::size_t index, const char* name) {
  const double v = values[index];
  if (v != 0.0 && v != 1.0)
    corrupt(std::string("option ") + name + " must be 0 or 1, got " + detail::py_float(v));
  return v == 1.0;
}

void check_rule_options(const std::string& rule, auto&& validate_fn) {
  try {
    validate_fn();
  } catch (const std::invalid_argument& e) {
    corrupt("saved " + rule + " options are invalid: " + e.what());
  }
}

// Options <-> vector of doubles, in the order of the fields of the options structs.
std::vector<double> to_vector(const SgdOptions& o) {
  return {o.lr, o.momentum, o.dampening, o.weight_decay, double(o.nesterov), double(o.maximize)};
}
void from_vector(const std::vector<double>& v, SgdOptions& o) {
  o.lr = v[0], o.momentum = v[1], o.dampening = v[2], o.weight_decay = v[3];
  o.nesterov = flag(v, 4, "nesterov"), o.maximize = flag(v, 5, "maximize");
}
std::vector<double> to_vector(const AdagradOptions& o) {
  return {o.lr, o.lr_decay, o.weight_decay, o.initial_accumulator_value, o.eps,
          double(o.maximize)};
}
void from_vector(const std::vector<double>& v, AdagradOptions& o) {
  o.lr = v[0], o.lr_decay = v[1], o.weight_decay = v[2], o.initial_accumulator_value = v[3];
  o.eps = v[4], o.maximize = flag(v, 5, "maximize");
}
std::vector<double> to_vector(const AdadeltaOptions& o) {
  return {o.lr, o.rho, o.eps, o.weight_decay, double(o.maximize)};
}
void from_vector(const std::vector<double>& v, AdadeltaOptions& o) {
  o.lr = v[0], o.rho = v[1], o.eps = v[2], o.weight_decay = v[3];
  o.maximize = flag(v, 4, "maximize");
}
std::vector<double> to_vector(const RmspropOptions& o) {
  return {o.lr,       o.alpha,           o.eps, o.weight_decay, o.momentum, double(o.centered),
          double(o.maximize)};
}
void from_vector(const std::vector<double>& v, RmspropOptions& o) {
  o.lr = v[0], o.alpha = v[1], o.eps = v[2], o.weight_decay = v[3], o.momentum = v[4];
  o.centered = flag(v, 5, "centered"), o.maximize = flag(v, 6, "maximize");
}
std::vector<double> to_vector(const AdamOptions& o) {
  return {o.lr,           o.beta1,           o.beta2,           o.eps,
          o.weight_decay, double(o.amsgrad), double(o.maximize), double(o.decoupled_weight_decay)};
}
void from_vector(const std::vector<double>& v, AdamOptions& o) {
  o.lr = v[0], o.beta1 = v[1], o.beta2 = v[2], o.eps = v[3], o.weight_decay = v[4];
  o.amsgrad = flag(v, 5, "amsgrad"), o.maximize = flag(v, 6, "maximize");
  o.decoupled_weight_decay = flag(v, 7, "decoupled_weight_decay");
}

}  // namespace

template <class OptionsT, Rule kRule>
RuleOptimizer<OptionsT, kRule>::RuleOptimizer(const Options& options)
    : Optimizer(kRule), options_(options) {
  validate(options_);
}

template <class OptionsT, Rule kRule>
void RuleOptimizer<OptionsT, kRule>::set_options(const Options& options) {
  validate(options);
  options_ = options;
}

template <class OptionsT, Rule kRule>
void RuleOptimizer<OptionsT, kRule>::check_options() const {
  validate(options_);
}

template <class OptionsT, Rule kRule>
bool RuleOptimizer<OptionsT, kRule>::uses_slot(int slot) const {
  return uses_state_slot(options_, slot);
}

template <class OptionsT, Rule kRule>
double RuleOptimizer<OptionsT, kRule>::initial_value(int slot) const {
  if constexpr (kRule == Rule::adagrad) return slot == 0 ? options_.initial_accumulator_value : 0.0;
  return 0.0;
}

template <class OptionsT, Rule kRule>
bool RuleOptimizer<OptionsT, kRule>::eager_state() const {
  return kRule == Rule::adagrad;
}

template <class OptionsT, Rule kRule>
void RuleOptimizer<OptionsT, kRule>::run(DType dtype, std::span<const ParamBuffers> buffers,
                                         int threads, const GradFactors& factors) const {
  fastoptim::step(options_, dtype, buffers, threads, factors);
}

template <class OptionsT, Rule kRule>
void RuleOptimizer<OptionsT, kRule>::check_run(DType dtype, std::span<const ParamBuffers> buffers,
                                               const GradFactors& factors) const {
  fastoptim::check_step(options_, dtype, buffers, factors);
}

template <class OptionsT, Rule kRule>
std::vector<double> RuleOptimizer<OptionsT, kRule>::options_vector() const {
  return to_vector(options_);
}

template <class OptionsT, Rule kRule>
void RuleOptimizer<OptionsT, kRule>::set_options_vector(const std::vector<double>& values) {
  Options options = options_;
  from_vector(values, options);
  check_rule_options(std::string(rule_name(kRule)), [&] { validate(options); });
  options_ = options;
}

template <class OptionsT, Rule kRule>
std::size_t RuleOptimizer<OptionsT, kRule>::options_count() const {
  return to_vector(options_).size();
}

template class RuleOptimizer<SgdOptions, Rule::sgd>;
template class RuleOptimizer<AdagradOptions, Rule::adagrad>;
template class RuleOptimizer<AdadeltaOptions, Rule::adadelta>;
template class RuleOptimizer<RmspropOptions, Rule::rmsprop>;
template class RuleOptimizer<AdamOptions, Rule::adam>;
template class RuleOptimizer<AdamWOptions, Rule::adamw>;

}  // namespace fastoptim
