// The stateful C++ front: the param registry, owned state, one driver call per dtype. The
// checkpoint format is in checkpoint.cpp.
#include "fastoptim/optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

#include "optimizer_impl.hpp"
#include "py_float.hpp"

namespace fastoptim {

namespace detail {
void throw_view_dtype(DType want, DType have) {
  throw std::invalid_argument(std::string("ParamStateView::buffer: requested ") +
                              dtype_name(want) + ", the state is " + dtype_name(have));
}
void throw_view_slot(int slot) {
  throw std::invalid_argument("ParamStateView::buffer: slot must be 0, 1 or 2, got " +
                              std::to_string(slot));
}
}  // namespace detail

std::string_view rule_name(Rule rule) {
  std::string_view name = "unknown";
  std::size_t i = 0;
  rules::for_each_rule([&](auto r) {
    if (static_cast<std::size_t>(rule) == i++) name = decltype(r)::name;
  });
  return name;
}

bool Optimizer::loaded_flag(double value, const char* name) {
  if (value != 0.0 && value != 1.0)
    corrupt(std::string("option ") + name + " must be 0 or 1, got " + detail::py_float(value));
  return value == 1.0;
}

void Optimizer::loaded_options_invalid(Rule rule, const std::exception& error) {
  corrupt("saved " + std::string(rule_name(rule)) + " options are invalid: " + error.what());
}

// ---- mixed precision -------------------------------------------------------------------------
namespace {

void check_precision(const Precision& precision) {
  if (precision.state_dtype && *precision.state_dtype != DType::float32 &&
      *precision.state_dtype != DType::bfloat16 && *precision.state_dtype != DType::int8)
    throw std::invalid_argument(std::string("Precision::state_dtype must be float32, bfloat16 "
                                            "or int8 (or unset: the param's type), got ") +
                                dtype_name(*precision.state_dtype));
  check_block_size(precision.block_size);
}

struct Storage {
  DType state;
  bool master;
};

// The state storage type and master copy of a param of `dtype` under `precision`, as the
// Python fronts resolve a group's settings; std::invalid_argument naming the param if this
// build has no kernel for it.
Storage storage_for(std::size_t index, DType dtype, const Precision& precision,
                    std::size_t size) {
  const bool master = precision.master_weights && is_half(dtype);
  DType state = precision.state_dtype ? *precision.state_dtype
                                      : (master ? DType::float32 : dtype);
  // int8 state: small params keep float32 state (not float64 params: refused below)
  if (state == DType::int8 && dtype != DType::float64 && size < precision.min_8bit_size)
    state = DType::float32;
  if (!supports(StreamTypes(dtype, dtype, state, master))) {
    std::string hint;
    if (dtype == DType::float64)
      hint = " (float64 params keep float64 state: leave Precision::state_dtype unset)";
    else if (dtype == DType::float16 && state == DType::bfloat16 && !master)
      hint = " (bfloat16 state for float16 params needs Precision::master_weights)";
    throw std::invalid_argument(param_name(index) + ": no kernel for " + dtype_name(dtype) +
                                " params with " + dtype_name(state) + " state" +
                                (master ? " and a float32 master copy" : "") + hint);
  }
  return {state, master};
}

}  // namespace

// ---- Optimizer -------------------------------------------------------------------------------
Optimizer::Optimizer(Rule rule, const Precision& precision)
    : rule_(rule), precision_(precision), impl_(std::make_unique<Impl>()) {
  check_precision(precision_);
}
Optimizer::Optimizer(Optimizer&&) noexcept = default;
Optimizer& Optimizer::operator=(Optimizer&&) noexcept = default;
Optimizer::~Optimizer() = default;

void Optimizer::set_precision(const Precision& precision) {
  check_precision(precision);
  if (!impl_->params.empty())
    throw std::invalid_argument("set_precision(): the optimizer has " +
                                std::to_string(impl_->params.size()) +
                                " params; mixed-precision settings are fixed once a param is added");
  precision_ = precision;
}

template <class T>
std::size_t Optimizer::add(std::span<T> param) {
  constexpr DType dtype = dtype_of<T>();
  const std::size_t index = impl_->params.size();
  if (param.data() == nullptr && !param.empty())
    throw std::invalid_argument(param_name(index) + ": data is null");
  const auto begin = reinterpret_cast<std::uintptr_t>(param.data());
  const auto end = begin + param.size_bytes();
  if (const Impl::Range* other = impl_->overlapping(begin, end))
    throw std::invalid_argument(param_name(index) + " overlaps " + param_name(other->index));
  const Storage storage = storage_for(index, dtype, precision_, param.size());

  Impl::Param entry{dtype, param.data(), param.size(), storage.state, storage.master, 0, {}, {}, {}};
  for (int k = 0; k < scalar_count(); ++k) entry.scalars[k] = static_cast<float>(scalar_initial(k));
  if (eager_state())  // torch.optim.Adagrad creates its state in the constructor
    for (int slot = 0; slot < 3; ++slot)
      if (uses_slot(slot)) entry.slots[slot] = new_slot(storage.state, dtype, param.data(), nullptr, param.size(), slot);
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
std::size_t Optimizer::add_param(std::span<bfloat16> param) { return add(param); }
std::size_t Optimizer::add_param(std::span<float16> param) { return add(param); }

std::size_t Optimizer::num_params() const { return impl_->params.size(); }
DType Optimizer::param_dtype(std::size_t index) const { return impl_->at(index).dtype; }
DType Optimizer::state_dtype(std::size_t index) const { return impl_->at(index).state_dtype; }
bool Optimizer::has_master(std::size_t index) const { return impl_->at(index).has_master; }
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
    if (g.dtype() != p.dtype &&
        !supports(StreamTypes(p.dtype, g.dtype(), p.state_dtype, p.has_master)))
      throw std::invalid_argument(param_name(i) + ": grad is " + dtype_name(g.dtype()) +
                                  ", param is " + dtype_name(p.dtype) +
                                  " (a grad has its param's type; float32 params also take "
                                  "bfloat16 and float16 grads, float64 params also float32, "
                                  "bfloat16 and float16 grads)");
    if (g.size() != p.size)
      throw std::invalid_argument(param_name(i) + ": grad has " + std::to_string(g.size()) +
                                  " elements, param has " + std::to_string(p.size));
    if (g.data() == nullptr && g.size() != 0)
      throw std::invalid_argument(param_name(i) + ": grad data is null");
    const auto begin = reinterpret_cast<std::uintptr_t>(g.data());
    if (const Impl::Range* other =
            impl_->overlapping(begin, begin + g.size() * dtype_size(g.dtype())))
      throw std::invalid_argument(param_name(i) + ": grad overlaps " + param_name(other->index));
  }

}

double Optimizer::clip_grad_norm(std::span<const Grad> grads, double max_norm, double norm_type,
                                 bool error_if_nonfinite) {
  if (!(max_norm >= 0.0))
    throw std::invalid_argument("max_norm must be >= 0, got " + detail::py_float(max_norm));
  check_grads(grads, "clip_grad_norm()");
  std::vector<ParamBuffers> by_dtype[2];
  std::vector<std::vector<float>> widened;  // 16-bit grads as float32 (exact)
  for (std::size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].present()) continue;
    ParamBuffers b;
    b.grad = grads[i].data();
    b.size = grads[i].size();
    if (is_half(grads[i].dtype())) {
      std::vector<float>& w = widened.emplace_back(b.size);
      for (std::size_t k = 0; k < b.size; ++k)
        w[k] = grads[i].dtype() == DType::bfloat16
                   ? to_float(static_cast<const bfloat16*>(b.grad)[k])
                   : to_float(static_cast<const float16*>(b.grad)[k]);
      b.grad = w.data();
    }
    by_dtype[grads[i].dtype() == DType::float64 ? 1 : 0].push_back(b);
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

// A new state buffer for `slot`: the rule's initial value, or a copy of the param (through
// its master copy when it has one: the value the rule steps).
AlignedBuffer Optimizer::new_slot(DType state_dtype, DType dtype, const void* data,
                                  const void* master, std::size_t size, int slot) const {
  if (state_dtype == DType::int8) {  // the float32 values, quantized
    const AlignedBuffer values = new_slot(DType::float32, dtype, data, master, size, slot);
    AlignedBuffer buffer(quantized_bytes(size, precision_.block_size));
    quantize(static_cast<const float*>(values.get()), size, precision_.block_size,
             !slot_non_negative(slot), static_cast<std::uint8_t*>(buffer.get()),
             scales_in(buffer.get(), size));
    return buffer;
  }
  if (!slot_from_param(slot)) return filled_buffer(state_dtype, size, initial_value(slot));
  if (master != nullptr) return param_copy(state_dtype, DType::float32, master, size);
  return param_copy(state_dtype, dtype, data, size);
}

void Optimizer::step_checked(std::span<const Grad> grads) {
  auto& params = impl_->params;
  check_options();
  if (const char* message = refused()) throw std::logic_error(message);
  check_grads(grads, "step()");

  for (std::size_t i = 0; i < params.size(); ++i)
    if (grads[i].present() && params[i].step >= kMaxStepCount)
      throw std::invalid_argument(param_name(i) + ": step count " +
                                  std::to_string(params[i].step) + " cannot advance past " +
                                  std::to_string(kMaxStepCount));

  // Slots these options use that a param does not have yet, and master copies not created
  // yet: made aside, kept only if the step goes through.
  struct NewSlot {
    std::size_t index;
    int slot;  // 3: the master copy
    AlignedBuffer buffer;
  };
  std::vector<NewSlot> fresh;
  // One driver call per combination of storage types, in order of first appearance.
  struct Batch {
    StreamTypes types;
    std::vector<ParamBuffers> buffers;
  };
  std::vector<Batch> batches;
  const Rounding rounding{precision_.stochastic_rounding, precision_.seed};
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
        fresh.push_back(
            {i, slot, new_slot(p.state_dtype, p.dtype, p.data, p.master.get(), p.size, slot)});
        b.state[slot] = fresh.back().buffer.get();
        new_momentum = new_momentum || slot == 0;
      }
    }
    if (p.has_master) {
      if (!p.master) fresh.push_back({i, 3, master_from(p.dtype, p.data, p.size)});
      b.master = p.master ? p.master.get() : fresh.back().buffer.get();
    }
    // SGD has no step in torch: a new momentum buffer starts as the gradient (driver step 1).
    b.step = rule_ == Rule::sgd ? (new_momentum ? 1 : 2) : p.step + 1;
    // stochastic rounding's generator: the param's index and its count of updates
    b.id = i;
    b.rounding_step = p.step + 1;
    b.scalar_state = const_cast<float*>(p.scalars.data());  // written by the driver on success
    b.scalar_dtype = DType::float32;
    if (p.state_dtype == DType::int8)
      for (int slot = 0; slot < 3; ++slot)
        if (b.state[slot] != nullptr) b.scales[slot] = scales_in(b.state[slot], p.size);
    StreamTypes types(p.dtype, grads[i].dtype(), p.state_dtype, p.has_master, rounding);
    types.block_size = precision_.block_size;
    auto same = [&](const Batch& batch) {
      return batch.types.param == types.param && batch.types.grad == types.grad &&
             batch.types.state == types.state && batch.types.master == types.master;
    };
    auto batch = std::find_if(batches.begin(), batches.end(), same);
    if (batch == batches.end()) batch = batches.insert(batches.end(), Batch{types, {}});
    batch->buffers.push_back(b);
  }

  // Every batch is checked before any runs: a batch the driver would reject must not leave
  // the others already updated.
  GradFactors factors;
  if (impl_->has_pending_clip) factors.clip_coef = impl_->pending_clip;
  for (const Batch& batch : batches) check_run(batch.types, batch.buffers, factors);
  for (const Batch& batch : batches) run(batch.types, batch.buffers, num_threads_, factors);
  impl_->has_pending_clip = false;
  advance_group();

  for (NewSlot& n : fresh) {
    if (n.slot == 3) params[n.index].master = std::move(n.buffer);
    else params[n.index].slots[n.slot] = std::move(n.buffer);
  }
  for (std::size_t i = 0; i < params.size(); ++i)
    if (grads[i].present()) ++params[i].step;
}

// ---- transforms ------------------------------------------------------------------------------
std::vector<std::string_view> Optimizer::transforms() const {
  std::vector<std::string_view> names;
  for (int k = 0; k < transform_count(); ++k) names.emplace_back(transform_name(k));
  return names;
}

void Optimizer::transform(std::string_view name) {
  int index = 0;
  while (index < transform_count() && name != transform_name(index)) ++index;
  if (index == transform_count())
    throw std::invalid_argument(std::string(rule_name(rule_)) + " has no transform '" +
                                std::string(name) + "'");
  check_options();
  if (!transform_pending(index)) return;
  struct Batch {
    StreamTypes types;
    std::vector<ParamBuffers> buffers;
  };
  std::vector<Batch> batches;
  const Rounding rounding{precision_.stochastic_rounding, precision_.seed};
  for (std::size_t i = 0; i < impl_->params.size(); ++i) {
    const Impl::Param& p = impl_->params[i];
    ParamBuffers b;
    b.param = p.data;
    b.size = p.size;
    b.id = i;
    b.rounding_step = p.step + 1;
    bool started = true;  // schedulefree transforms the params whose state exists
    for (int slot = 0; slot < 3; ++slot) {
      b.state[slot] = p.slots[slot].get();
      started = started && (!uses_slot(slot) || p.slots[slot]);
    }
    if (!started || (p.has_master && !p.master)) continue;
    b.master = p.master.get();
    if (p.state_dtype == DType::int8)
      for (int slot = 0; slot < 3; ++slot)
        if (b.state[slot] != nullptr) b.scales[slot] = scales_in(b.state[slot], p.size);
    StreamTypes types(p.dtype, p.dtype, p.state_dtype, p.has_master, rounding);
    types.block_size = precision_.block_size;
    auto batch = std::find_if(batches.begin(), batches.end(), [&](const Batch& x) {
      return x.types.param == types.param && x.types.state == types.state &&
             x.types.master == types.master;
    });
    if (batch == batches.end()) batch = batches.insert(batches.end(), Batch{types, {}});
    batch->buffers.push_back(b);
  }
  for (const Batch& batch : batches) run_transform(index, batch.types, batch.buffers, num_threads_);
  set_transform_mode(index);
}

// ---- state views -----------------------------------------------------------------------------
ParamStateView Optimizer::state(std::size_t index) {
  Impl::Param& p = impl_->at(index);
  ParamStateView view;
  view.dtype = p.dtype;
  view.state_dtype = p.state_dtype;
  view.master = p.master.get();
  view.size = p.size;
  view.step = p.step;
  for (int slot = 0; slot < 3; ++slot) {
    view.names[slot] = slot_name(slot);
    view.buffers[slot] = p.slots[slot].get();
    view.non_negative[slot] = slot_non_negative(slot);
    if (p.state_dtype == DType::int8 && p.slots[slot])
      view.scales[slot] = scales_in(p.slots[slot].get(), p.size);
  }
  if (p.state_dtype == DType::int8) view.block_size = precision_.block_size;
  for (int k = 0; k < scalar_count(); ++k) {
    view.scalar_names[k] = scalar_name(k);
    view.scalars[k] = p.scalars[k];
  }
  return view;
}

std::vector<float> ParamStateView::values(int slot) const {
  if (slot < 0 || slot > 2) detail::throw_view_slot(slot);
  const void* data = buffers[static_cast<std::size_t>(slot)];
  if (data == nullptr) return {};
  std::vector<float> out(size);
  switch (state_dtype) {
    case DType::int8:
      dequantize(static_cast<const std::uint8_t*>(data), scales[static_cast<std::size_t>(slot)],
                 size, block_size, !non_negative[slot], out.data());
      break;
    case DType::float32: std::copy_n(static_cast<const float*>(data), size, out.begin()); break;
    case DType::float64:
      for (std::size_t i = 0; i < size; ++i)
        out[i] = static_cast<float>(static_cast<const double*>(data)[i]);
      break;
    case DType::bfloat16:
      for (std::size_t i = 0; i < size; ++i) out[i] = to_float(static_cast<const bfloat16*>(data)[i]);
      break;
    case DType::float16:
      for (std::size_t i = 0; i < size; ++i) out[i] = to_float(static_cast<const float16*>(data)[i]);
      break;
  }
  return out;
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
      made[slot] = new_slot(p.state_dtype, p.dtype, p.data, p.master.get(), p.size, slot);
  AlignedBuffer master;
  if (p.has_master && !p.master) master = master_from(p.dtype, p.data, p.size);
  for (int slot = 0; slot < 3; ++slot)
    if (made[slot]) p.slots[slot] = std::move(made[slot]);
  if (master) p.master = std::move(master);
}

void Optimizer::set_step_count(std::size_t index, std::int64_t step) {
  Impl::Param& p = impl_->at(index);
  check_stored_step_count(index, step);
  p.step = step;
}

void Optimizer::set_scalar_state(std::size_t index, int slot, double value) {
  Impl::Param& p = impl_->at(index);
  if (slot < 0 || slot >= scalar_count())
    throw std::invalid_argument(std::string(rule_name(rule_)) + " has no scalar state " +
                                std::to_string(slot));
  if (!std::isfinite(value) || std::fabs(value) > 3.4028234663852886e38)
    throw std::invalid_argument(param_name(index) + ": " + scalar_name(slot) +
                                " must be a finite float32 value, got " +
                                detail::py_float(value));
  p.scalars[slot] = static_cast<float>(value);
}

}  // namespace fastoptim
