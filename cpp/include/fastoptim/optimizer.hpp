// Stateful optimizers for C++ programs: one class per rule that owns its state and updates
// caller-owned parameter buffers in place: one fused driver call per combination of storage
// types (param, grad, state, master copy).
//
//   std::vector<float> w(1000), b(10);
//   fastoptim::Adam opt({.lr = 1e-3});
//   opt.add_param(w);
//   opt.add_param(b);
//   ...                                   // compute grad_w, grad_b
//   opt.step({grad_w, grad_b});           // a default-constructed Grad{} skips a param
//   opt.options().lr = 1e-4;              // takes effect on the next step
//
// Semantics follow torch.optim (foreach=False): per-param step counts, a param whose grad is
// absent is skipped (no state change, its step count does not advance), Adagrad's `sum` is
// created when the param is added, every other state buffer on the param's first update.
//
// Mixed precision: params may be fastoptim::bfloat16 / fastoptim::float16 buffers (grads of the
// same type; float32 params also take 16-bit grads), with the optimizer's Precision settings:
//
//   std::vector<fastoptim::bfloat16> w(1000), grad_w(1000);
//   fastoptim::AdamW opt({.lr = 1e-3}, {.master_weights = true});  // float32 master + state
//   opt.add_param(w);
//   opt.step({grad_w});
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <optional>
#include <stdexcept>
#include <ranges>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include "fastoptim/options.hpp"
#include "fastoptim/step.hpp"

namespace fastoptim {

namespace detail {
class AlignedBuffer;
}

// The rule's name as its description gives it: "sgd", "adagrad", ..., "adamax".
std::string_view rule_name(Rule rule);

// One gradient for one param: a contiguous float, double, bfloat16 or float16 buffer, or none
// (torch's `p.grad is None`: the param is skipped). Only a view: the data must outlive the
// step() call. A grad has its param's type; float32 params also take bfloat16 and float16
// grads (read as they are, widened exactly).
class Grad {
 public:
  Grad() = default;
  Grad(std::nullptr_t) {}
  Grad(std::span<const float> grad) : data_(grad.data()), size_(grad.size()), present_(true) {}
  Grad(std::span<const double> grad)
      : data_(grad.data()), size_(grad.size()), dtype_(DType::float64), present_(true) {}
  Grad(std::span<const bfloat16> grad)
      : data_(grad.data()), size_(grad.size()), dtype_(DType::bfloat16), present_(true) {}
  Grad(std::span<const float16> grad)
      : data_(grad.data()), size_(grad.size()), dtype_(DType::float16), present_(true) {}
  Grad(const float* data, std::size_t size) : Grad(std::span<const float>(data, size)) {}
  Grad(const double* data, std::size_t size) : Grad(std::span<const double>(data, size)) {}
  Grad(const bfloat16* data, std::size_t size) : Grad(std::span<const bfloat16>(data, size)) {}
  Grad(const float16* data, std::size_t size) : Grad(std::span<const float16>(data, size)) {}
  // Any contiguous range of float, double, bfloat16 or float16: std::vector, std::array,
  // std::span, ...
  template <class R>
    requires std::ranges::contiguous_range<const R&> && std::ranges::sized_range<const R&> &&
             (std::same_as<std::ranges::range_value_t<const R&>, float> ||
              std::same_as<std::ranges::range_value_t<const R&>, double> ||
              std::same_as<std::ranges::range_value_t<const R&>, bfloat16> ||
              std::same_as<std::ranges::range_value_t<const R&>, float16>) &&
             (!std::same_as<std::remove_cvref_t<R>, std::span<const float>>) &&
             (!std::same_as<std::remove_cvref_t<R>, std::span<const double>>) &&
             (!std::same_as<std::remove_cvref_t<R>, std::span<const bfloat16>>) &&
             (!std::same_as<std::remove_cvref_t<R>, std::span<const float16>>)
  Grad(const R& range)
      : Grad(std::span<const std::ranges::range_value_t<const R&>>(std::ranges::data(range),
                                                                   std::ranges::size(range))) {}

  bool present() const { return present_; }
  DType dtype() const { return dtype_; }
  const void* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  const void* data_ = nullptr;
  std::size_t size_ = 0;
  DType dtype_ = DType::float32;
  bool present_ = false;
};

// Mixed-precision settings of an optimizer, the same for all its params (the Python fronts'
// param-group keys of the same names). Given to the constructor (or set_precision() before
// the first add_param()); fixed once a param is added, and part of the checkpoint.
//   master_weights: bfloat16/float16 params get a float32 master copy, owned by the optimizer
//     and created on the param's first update (or allocate_state()) from the param's values,
//     exactly. The update reads and writes the master; the param receives the master rounded
//     to nearest-even in the same pass. float32/float64 params are their own master. A write
//     to the param between steps is kept: an element whose bits differ from its master
//     rounded to nearest-even starts the next update from the param's value, widened exactly
//     (the master as saved by save() is the old one until then; loaded beside the same param
//     values, the update sees the write again).
//   state_dtype: the storage type of the state slots. std::nullopt (the default): the param's
//     type, float32 beside a master copy. float32 or bfloat16: every param's state in that
//     type, where a kernel exists (fastoptim::supports): float32 params with bfloat16 state,
//     16-bit params with float32 state, bfloat16 state beside a master copy; float64 params
//     only take the default, float16 params take bfloat16 state only beside a master.
//   stochastic_rounding, seed: every bfloat16/float16 store (a param without a master copy,
//     16-bit state) rounds stochastically (fastoptim::Rounding): unbiased, reproducible for a
//     seed, the same bits at every SIMD level and thread count. The generator's param id is
//     the param's index, its step the param's update count including this one (for SGD too,
//     which keeps no step in torch: step_count() counts its updates here).
//   state_dtype = DType::int8: blockwise dynamic 8-bit state (torchao 0.18's AdamW8bit; see
//     fastoptim::quantize): each slot as one uint8 code per element and one float32 scale per
//     block of block_size elements (ParamStateView::scales; the last block may be partial),
//     the signed map, or the unsigned one for slots the rule declares non-negative. For
//     float32, bfloat16 and float16 params; a param of fewer than min_8bit_size elements keeps
//     float32 state (bitsandbytes' convention). block_size: a power of two from 32 to 65536.
struct Precision {
  bool master_weights = false;
  std::optional<DType> state_dtype{};
  bool stochastic_rounding = false;
  std::uint64_t seed = 0;
  std::size_t block_size = 256;
  std::size_t min_8bit_size = 4096;
  bool operator==(const Precision&) const = default;
};

// A view of one param's optimizer state, for programs that checkpoint themselves. `buffers`
// point into the optimizer's own storage, in the slot order of step.hpp's ParamBuffers (e.g.
// Adam: exp_avg, exp_avg_sq, max_exp_avg_sq); nullptr where a slot is not allocated. Each slot
// holds `size` elements of `state_dtype`. Writing through them is allowed. `master` is the
// param's float32 master copy (Precision::master_weights), nullptr if the param has none or it
// is not created yet; writing it sets the value the next update starts from where the param is
// that value rounded to nearest-even (write both: elsewhere the param counts as written and
// wins, see Precision). The pointers stay
// valid until load() or the optimizer's destruction; `step` is a copy, and a view does not show
// buffers allocated after it was taken. `scalars` are copies of the rule's per-param scalar
// state (NAdam: mu_product, kept in float32 as torch keeps it); set_scalar_state() changes them.
struct ParamStateView {
  DType dtype = DType::float32;        // the param's storage type
  DType state_dtype = DType::float32;  // the state slots' storage type
  std::size_t size = 0;     // elements of the param and of every allocated buffer
  std::int64_t step = 0;    // updates this param has had
  std::array<std::string_view, 3> names{};  // torch's state_dict key per slot, "" if unused
  std::array<void*, 3> buffers{};
  void* master = nullptr;
  std::array<std::string_view, 2> scalar_names{};  // "" where the rule has no such scalar
  std::array<double, 2> scalars{};

  // int8 state: each slot's float32 scales, ceil(size / block_size) of them (nullptr where the
  // slot is not allocated or the state is not int8); its codes are buffer<std::uint8_t>().
  std::array<float*, 3> scales{};
  std::size_t block_size = 0;
  bool non_negative[3] = {};  // int8 state: the slot uses the unsigned map

  // The buffer of `slot` as T (float, double, bfloat16, float16; std::uint8_t: the codes of
  // int8 state); empty if not allocated. std::invalid_argument if T is not state_dtype or slot
  // is not 0..2.
  template <class T>
  std::span<T> buffer(int slot) const;
  // The values of `slot` as float32, whatever its storage type (int8 state: the codes decoded,
  // map[code] * the block's scale); empty if not allocated.
  std::vector<float> values(int slot) const;
  // The float32 master copy; empty if there is none (yet).
  std::span<float> master_copy() const {
    return master == nullptr ? std::span<float>() : std::span<float>(static_cast<float*>(master), size);
  }
};

// The part shared by the rule classes: params, state, step(), save()/load().
// Move-only: the params belong to the caller, the state to exactly one optimizer (a moved-from
// optimizer can only be assigned to or destroyed). Not synchronised: one step() at a time.
class Optimizer {
 public:
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  Optimizer(Optimizer&&) noexcept;
  Optimizer& operator=(Optimizer&&) noexcept;
  virtual ~Optimizer();

  Rule rule() const { return rule_; }

  // The mixed-precision settings (see Precision). set_precision() checks them
  // (std::invalid_argument: a state_dtype other than float32 or bfloat16) and is refused once a
  // param has been added.
  const Precision& precision() const { return precision_; }
  void set_precision(const Precision& precision);

  // Registers a caller-owned contiguous buffer; returns its index (0, 1, ... in call order),
  // the position of its grad in step(). The buffer must stay valid while the optimizer uses it.
  // std::invalid_argument if it overlaps a param already added, or if this build has no kernel
  // for its storage under the Precision settings (e.g. float64 params with bfloat16 state).
  std::size_t add_param(std::span<float> param);
  std::size_t add_param(std::span<double> param);
  std::size_t add_param(std::span<bfloat16> param);
  std::size_t add_param(std::span<float16> param);
  std::size_t add_param(float* data, std::size_t size) { return add_param(std::span(data, size)); }
  std::size_t add_param(double* data, std::size_t size) { return add_param(std::span(data, size)); }
  std::size_t add_param(bfloat16* data, std::size_t size) { return add_param(std::span(data, size)); }
  std::size_t add_param(float16* data, std::size_t size) { return add_param(std::span(data, size)); }

  std::size_t num_params() const;
  DType param_dtype(std::size_t index) const;
  DType state_dtype(std::size_t index) const;  // the storage type of its state slots
  bool has_master(std::size_t index) const;    // whether it is updated through a master copy
  std::size_t param_size(std::size_t index) const;
  std::int64_t step_count(std::size_t index) const;  // updates this param has had

  // One update of every param that has a grad (one grad per param, in add_param() order).
  // Everything is checked first (options, grad count, each grad's dtype and size, no grad
  // overlapping a param, step counts, the per-step scalars of every dtype's batch:
  // fastoptim::check_step): on std::invalid_argument no param and no state has changed.
  // A param whose step count is kMaxStepCount cannot be updated again.
  // All params of the same storage types (param, grad, state, master) are updated by one
  // driver call (fastoptim::step), threads balanced over their total element count.
  void step(std::span<const Grad> grads);
  void step(std::initializer_list<Grad> grads) { step(std::span(grads.begin(), grads.size())); }
  void step(std::span<const std::span<const float>> grads);
  void step(std::span<const std::span<const double>> grads);

  // torch.nn.utils.clip_grad_norm_ folded into the next step(): returns the total norm of
  // `grads` (one per param, as step() takes them; absent ones skipped) of order norm_type
  // (inf for the largest magnitude), bit-identical for any thread count and SIMD level, and
  // makes the next step() read every grad multiplied by min(1, max_norm / (norm + 1e-6)).
  // The grads are not written (torch rewrites them). bfloat16/float16 grads count with their
  // exact float32 values (accumulated in double like the others; torch would round each
  // tensor's norm to the grad's type first). std::invalid_argument, nothing changed:
  // max_norm < 0 or NaN, a bad norm_type, a grad that step() would reject, no grad at all, or
  // a non-finite norm with error_if_nonfinite.
  double clip_grad_norm(std::span<const Grad> grads, double max_norm, double norm_type = 2.0,
                        bool error_if_nonfinite = false);
  double clip_grad_norm(std::initializer_list<Grad> grads, double max_norm,
                        double norm_type = 2.0, bool error_if_nonfinite = false) {
    return clip_grad_norm(std::span(grads.begin(), grads.size()), max_norm, norm_type,
                          error_if_nonfinite);
  }

  // A named element transform of the rule (its description's `transforms`; Schedule-Free's
  // "train" and "eval", as schedulefree's optimizer.train() and .eval()): when the options'
  // mode flag is not the transform's target, every param that has its state is transformed
  // in place (through its master copy if it has one) and the flag is set; else nothing
  // happens. std::invalid_argument for a name the rule does not have (nothing changed).
  void transform(std::string_view name);
  // The rule's transform names, in its description's order (empty for most rules).
  std::vector<std::string_view> transforms() const;

  // Threads for this optimizer's steps; 0 (the default) means fastoptim::get_num_threads().
  void set_num_threads(int num_threads);
  int num_threads() const { return num_threads_; }

  // ---- checkpoints -------------------------------------------------------------------------
  // Writes the options and the whole state in the binary format below; load() reads it back
  // into an optimizer of the same rule with the same params (count, dtypes, sizes), replacing
  // its options and state as torch's load_state_dict does. load() reads and checks everything
  // first: on any mismatch or corruption it throws std::invalid_argument and nothing changes.
  // load() consumes exactly the saved bytes, so a checkpoint can sit inside a larger file.
  // save() throws std::runtime_error if the stream reports a write failure. Besides
  // std::invalid_argument, load() lets through only std::bad_alloc and the stream's own
  // std::ios_base::failure (if the caller enabled stream exceptions). A saved step count must
  // be in 0..kMaxStepCount - 1 (so that the next step is valid), as for set_step_count().
  //
  // Format version 4, all integers and floats little-endian, floats IEEE-754; storage types
  // are DType values (0 float32, 1 float64, 2 bfloat16, 3 float16, 4 int8):
  //   char[8]  magic "FOPTSTAT"
  //   u32      format version (4)
  //   u8       rule (enum Rule)
  //   u8[3]    zero
  //   u32      K, number of option values, then K x f64 options in the order of the rule's
  //            `fields` (fastoptim/rules/<rule>.hpp), bools as 0.0/1.0 (K = fields.size)
  //   u8       Precision::master_weights (0/1)
  //   u8       Precision::state_dtype: 255 for the default (std::nullopt), else its storage type
  //   u8       Precision::stochastic_rounding (0/1)
  //   u8[5]    zero
  //   u64      Precision::seed
  //   u64      Precision::block_size, then u64 Precision::min_8bit_size (version 4 only)
  //   u64      N, number of params, then per param:
  //     u8       param storage type
  //     u8       stream mask (bit k < 3 set: state slot k is stored; bit 3: the master copy)
  //     u8[3]    storage type of state slot 0, 1, 2 (0 if the slot is not stored)
  //     u8       storage type of the scalar state (0 if the rule keeps none)
  //     u8       storage type of the master copy (0 if not stored; always float32)
  //     u8       zero
  //     u64      element count
  //     i64      step count
  //     for each stored slot k, ascending: element count values of its storage type (16-bit
  //     types as their bits, u16; int8: element count u8 codes, then ceil(element count /
  //     block_size) f32 scales), then the master copy if stored
  //     S x f64  the rule's scalar state values (S: the rule's scalar slots, NAdam 1)
  //   u64      FNV-1a 64 hash of every byte before it
  // load() needs the same storage settings (master_weights, state_dtype, stochastic_rounding)
  // and, per param, the same storage types as this optimizer (a param with a master copy may
  // have none stored: not created yet); it restores the options and the seed.
  // save() writes version 4 only for int8 state (Precision::state_dtype = DType::int8), else
  // version 3: version 4 without block_size and min_8bit_size (and without int8 state).
  // Version 2 is version 3 without the Precision block (the default settings), per-param byte
  // 6 zero and float32/float64 params only; version 1 (fastoptim 0.1, rules sgd..adamw only,
  // none with scalar state) is version 2 with the per-slot and scalar storage bytes zero and
  // every slot in the param's type. load() reads all four.
  void save(std::ostream& out) const;
  void load(std::istream& in);
  static constexpr std::uint32_t kStateFormatVersion = 4;

  // The struct-of-spans alternative: views of each param's state, and what a program that
  // restores its own checkpoint needs besides writing into them.
  ParamStateView state(std::size_t index);
  std::vector<ParamStateView> state();
  // Allocates every slot the current options use that this param does not have yet (zeros;
  // Adagrad's sum: initial_accumulator_value), and its master copy if it has one and it does
  // not exist yet (the param's values), for the caller to fill. SGD: the momentum buffer then
  // exists, so the next step blends into it instead of starting from the grad.
  void allocate_state(std::size_t index);
  // std::invalid_argument unless 0 <= step < kMaxStepCount (the next update must be valid).
  void set_step_count(std::size_t index, std::int64_t step);
  // Sets scalar state `slot` of a param (NAdam: 0 = mu_product), rounded to float32 as torch
  // keeps it. std::invalid_argument if the rule has no such scalar or the value is not finite.
  void set_scalar_state(std::size_t index, int slot, double value);

 protected:
  explicit Optimizer(Rule rule, const Precision& precision = {});

  // Hooks implemented by each rule class.
  virtual void check_options() const = 0;                        // validate(options)
  virtual bool uses_slot(int slot) const = 0;                    // with the current options
  virtual double initial_value(int /*slot*/) const { return 0.0; }
  virtual bool slot_from_param(int /*slot*/) const { return false; }  // a copy of the param
  virtual bool slot_non_negative(int /*slot*/) const { return false; }  // int8: unsigned map
  // Group state (fastoptim::advance_group): the step's refusal (a message, or nullptr), and
  // the advance once the step went through.
  virtual const char* refused() const { return nullptr; }
  virtual void advance_group() {}
  // The rule's transforms: count, name, whether the mode flag is not at its target yet (and
  // setting it), the element math over a batch.
  virtual int transform_count() const { return 0; }
  virtual const char* transform_name(int) const { return ""; }
  virtual bool transform_pending(int) const { return false; }
  virtual void set_transform_mode(int) {}
  virtual void run_transform(int, const StreamTypes&, std::span<const ParamBuffers>, int) const {}
  virtual bool eager_state() const { return false; }             // Adagrad: state at add_param
  virtual void run(const StreamTypes& types, std::span<const ParamBuffers> buffers, int threads,
                   const GradFactors& factors) const = 0;
  virtual void check_run(const StreamTypes& types, std::span<const ParamBuffers> buffers,
                         const GradFactors& factors) const = 0;  // check_step
  virtual std::vector<double> options_vector() const = 0;        // for save()
  virtual void set_options_vector(const std::vector<double>& values) = 0;  // validated by load()
  virtual std::size_t options_count() const = 0;
  virtual int scalar_count() const = 0;                          // per-param scalar state
  virtual double scalar_initial(int slot) const = 0;
  virtual const char* scalar_name(int slot) const = 0;
  virtual const char* slot_name(int slot) const = 0;

  // For set_options_vector(): a loaded bool must be 0 or 1, and loaded options must be valid
  // (std::invalid_argument "fastoptim state: ..." otherwise).
  static bool loaded_flag(double value, const char* name);
  [[noreturn]] static void loaded_options_invalid(Rule rule, const std::exception& error);

 private:
  struct Impl;
  template <class T>
  std::size_t add(std::span<T> param);
  void step_checked(std::span<const Grad> grads);
  // A new state buffer for `slot` of a param (its storage, data and master copy)
  detail::AlignedBuffer new_slot(DType state_dtype, DType dtype, const void* data,
                                 const void* master, std::size_t size, int slot) const;
  void check_grads(std::span<const Grad> grads, const char* caller) const;

  Rule rule_;
  Precision precision_;
  int num_threads_ = 0;
  std::unique_ptr<Impl> impl_;
};

// ---- the rule classes ------------------------------------------------------------------------
// One class per rule description (fastoptim/rules/<rule>.hpp), constructed from its options
// struct (torch's defaults) and validating it (std::invalid_argument with torch's wording).
// options() returns a reference: change lr (or anything) between steps; step() validates again
// before it writes. set_options() validates at once. The optional Precision (mixed-precision
// settings) is checked too. The names (Adam, Nadam, ...) are declared with each rule's
// description.
template <class R>
class RuleOptimizer final : public Optimizer {
 public:
  using Options = typename R::Options;
  explicit RuleOptimizer(const Options& options = Options(), const Precision& precision = {})
      : Optimizer(rules::id<R>, precision), options_(options) {
    validate(options_);
  }
  const Options& options() const { return options_; }
  Options& options() { return options_; }
  void set_options(const Options& options) {
    validate(options);
    options_ = options;
  }

 private:
  void check_options() const override { validate(options_); }
  bool uses_slot(int slot) const override { return uses_state_slot(options_, slot); }
  double initial_value(int slot) const override {
    if (slot < 0 || static_cast<std::size_t>(slot) >= R::slots.size) return 0.0;
    const auto& s = R::slots[static_cast<std::size_t>(slot)];
    return s.initial_from == nullptr ? 0.0 : options_.*s.initial_from;
  }
  bool slot_from_param(int slot) const override {
    return slot >= 0 && static_cast<std::size_t>(slot) < R::slots.size &&
           R::slots[static_cast<std::size_t>(slot)].from_param;
  }
  bool slot_non_negative(int slot) const override {
    return slot >= 0 && static_cast<std::size_t>(slot) < R::slots.size &&
           R::slots[static_cast<std::size_t>(slot)].non_negative;
  }
  const char* refused() const override {
    if constexpr (requires { R::refused(options_); }) return R::refused(options_);
    return nullptr;
  }
  void advance_group() override { fastoptim::advance_group(options_); }
  int transform_count() const override { return static_cast<int>(rules::transform_count<R>()); }
  const char* transform_name(int index) const override {
    if constexpr (rules::transform_count<R>() > 0)
      return R::transforms[static_cast<std::size_t>(index)].name;
    return "";
  }
  bool transform_pending(int index) const override {
    if constexpr (rules::transform_count<R>() > 0) {
      const auto& t = R::transforms[static_cast<std::size_t>(index)];
      return options_.*t.mode != t.to;
    }
    return false;
  }
  void set_transform_mode(int index) override {
    if constexpr (rules::transform_count<R>() > 0) {
      const auto& t = R::transforms[static_cast<std::size_t>(index)];
      options_.*t.mode = t.to;
    }
  }
  void run_transform(int index, const StreamTypes& types, std::span<const ParamBuffers> buffers,
                     int threads) const override {
    fastoptim::transform(options_, index, types, buffers, threads);
  }
  bool eager_state() const override { return R::eager_state; }
  void run(const StreamTypes& types, std::span<const ParamBuffers> buffers, int threads,
           const GradFactors& factors) const override {
    fastoptim::step(options_, types, buffers, threads, factors);
  }
  void check_run(const StreamTypes& types, std::span<const ParamBuffers> buffers,
                 const GradFactors& factors) const override {
    fastoptim::check_step(options_, types, buffers, factors);
  }
  std::vector<double> options_vector() const override {
    std::vector<double> values;
    for (const auto& f : R::fields)
      values.push_back(f.number != nullptr ? options_.*f.number : (options_.*f.flag ? 1.0 : 0.0));
    return values;
  }
  void set_options_vector(const std::vector<double>& values) override {
    Options options = options_;
    std::size_t i = 0;
    for (const auto& f : R::fields) {
      if (f.number != nullptr) options.*f.number = values[i];
      else options.*f.flag = loaded_flag(values[i], f.key);
      ++i;
    }
    try {
      validate(options);
    } catch (const std::invalid_argument& e) {
      loaded_options_invalid(rule(), e);
    }
    options_ = options;
  }
  std::size_t options_count() const override { return R::fields.size; }
  int scalar_count() const override { return static_cast<int>(R::scalar_slots.size); }
  double scalar_initial(int slot) const override {
    return R::scalar_slots[static_cast<std::size_t>(slot)].initial;
  }
  const char* scalar_name(int slot) const override {
    return R::scalar_slots[static_cast<std::size_t>(slot)].name;
  }
  const char* slot_name(int slot) const override { return state_slot_name(options_, slot); }

  Options options_;
};

// ---- inline definitions ----------------------------------------------------------------------
namespace detail {
[[noreturn]] void throw_view_dtype(DType want, DType have);
[[noreturn]] void throw_view_slot(int slot);
}  // namespace detail

template <class T>
std::span<T> ParamStateView::buffer(int slot) const {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> ||
                    std::is_same_v<T, bfloat16> || std::is_same_v<T, float16> ||
                    std::is_same_v<T, std::uint8_t>,
                "ParamStateView::buffer<T>: T must be float, double, bfloat16, float16 or "
                "std::uint8_t");
  constexpr DType want = std::is_same_v<T, float>      ? DType::float32
                         : std::is_same_v<T, double>   ? DType::float64
                         : std::is_same_v<T, bfloat16> ? DType::bfloat16
                         : std::is_same_v<T, float16>  ? DType::float16
                                                       : DType::int8;
  if (slot < 0 || slot > 2) detail::throw_view_slot(slot);
  if (state_dtype != want) detail::throw_view_dtype(want, state_dtype);
  if (buffers[static_cast<std::size_t>(slot)] == nullptr) return {};
  return {static_cast<T*>(buffers[static_cast<std::size_t>(slot)]), size};
}

}  // namespace fastoptim
