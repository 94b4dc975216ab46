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
                              dtype_name(want) + ", the param is " + dtype_name(have));
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

// ---- Optimizer -------------------------------------------------------------------------------
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

  Impl::Param entry{dtype, param.data(), param.size(), 0, {}, {}};
  for (int k = 0; k < scalar_count(); ++k) entry.scalars[k] = static_cast<float>(scalar_initial(k));
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
    b.scalar_state = const_cast<float*>(p.scalars.data());  // written by the driver on success
    b.scalar_dtype = DType::float32;
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
  for (int slot = 0; slot < 3; ++slot) {
    view.names[slot] = slot_name(slot);
    view.buffers[slot] = p.slots[slot].get();
  }
  for (int k = 0; k < scalar_count(); ++k) {
    view.scalar_names[k] = scalar_name(k);
    view.scalars[k] = p.scalars[k];
  }
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
