// Thin binding: Python buffers -> (pointer, size, dtype), every check before any write,
// the GIL released around the driver call.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastoptim/step.hpp"

namespace py = pybind11;
using fastoptim::DType;
using fastoptim::ParamBuffers;

namespace {

// ---- rules: options from a param-group dict (both fronts keep torch's keys) -------------

// A loaded or edited group may hold anything: name the key when a value is not a number.
[[noreturn]] void raise_option_type(const char* key, py::handle value, const char* want) {
  throw py::type_error(std::string("param group option '") + key + "' must be " + want +
                       ", got " + py::repr(value).cast<std::string>());
}
py::object option(const py::dict& group, const char* key) {
  if (!group.contains(key)) throw py::key_error(std::string("param group has no '") + key + "'");
  return group[key];
}
double to_number(const char* key, py::handle value) {
  if (PyUnicode_Check(value.ptr()) || PyBytes_Check(value.ptr()) || value.is_none())
    raise_option_type(key, value, "a real number");
  const double v = PyFloat_AsDouble(value.ptr());
  if (v == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    raise_option_type(key, value, "a real number");
  }
  return v;
}
double number(const py::dict& group, const char* key) { return to_number(key, option(group, key)); }
bool flag(const py::dict& group, const char* key) {
  const py::object value = option(group, key);
  const int truth = PyObject_IsTrue(value.ptr());
  if (truth < 0) {
    PyErr_Clear();
    raise_option_type(key, value, "a bool");
  }
  return truth == 1;
}

struct Rule {
  enum Id { kSgd, kAdagrad, kAdadelta, kRmsprop, kAdam } id;
};

Rule parse_rule(const std::string& name) {
  if (name == "sgd") return {Rule::kSgd};
  if (name == "adagrad") return {Rule::kAdagrad};
  if (name == "adadelta") return {Rule::kAdadelta};
  if (name == "rmsprop") return {Rule::kRmsprop};
  if (name == "adam" || name == "adamw") return {Rule::kAdam};
  throw py::value_error("unknown rule '" + name + "'");
}

fastoptim::SgdOptions sgd_options(const py::dict& g) {
  fastoptim::SgdOptions o;
  o.lr = number(g, "lr");
  o.momentum = number(g, "momentum");
  o.dampening = number(g, "dampening");
  o.weight_decay = number(g, "weight_decay");
  o.nesterov = flag(g, "nesterov");
  o.maximize = flag(g, "maximize");
  return o;
}
fastoptim::AdagradOptions adagrad_options(const py::dict& g) {
  fastoptim::AdagradOptions o;
  o.lr = number(g, "lr");
  o.lr_decay = number(g, "lr_decay");
  o.weight_decay = number(g, "weight_decay");
  o.initial_accumulator_value = number(g, "initial_accumulator_value");
  o.eps = number(g, "eps");
  o.maximize = flag(g, "maximize");
  return o;
}
fastoptim::AdadeltaOptions adadelta_options(const py::dict& g) {
  fastoptim::AdadeltaOptions o;
  o.lr = number(g, "lr");
  o.rho = number(g, "rho");
  o.eps = number(g, "eps");
  o.weight_decay = number(g, "weight_decay");
  o.maximize = flag(g, "maximize");
  return o;
}
fastoptim::RmspropOptions rmsprop_options(const py::dict& g) {
  fastoptim::RmspropOptions o;
  o.lr = number(g, "lr");
  o.alpha = number(g, "alpha");
  o.eps = number(g, "eps");
  o.weight_decay = number(g, "weight_decay");
  o.momentum = number(g, "momentum");
  o.centered = flag(g, "centered");
  o.maximize = flag(g, "maximize");
  return o;
}
fastoptim::AdamOptions adam_options(const py::dict& g) {
  fastoptim::AdamOptions o;
  o.lr = number(g, "lr");
  const py::object betas = option(g, "betas");
  if (!PySequence_Check(betas.ptr()) || PyUnicode_Check(betas.ptr()) || py::len(betas) != 2)
    raise_option_type("betas", betas, "a pair of real numbers");
  o.beta1 = to_number("betas", py::sequence(betas)[0]);
  o.beta2 = to_number("betas", py::sequence(betas)[1]);
  o.eps = number(g, "eps");
  o.weight_decay = number(g, "weight_decay");
  o.amsgrad = flag(g, "amsgrad");
  o.maximize = flag(g, "maximize");
  o.decoupled_weight_decay = flag(g, "decoupled_weight_decay");
  return o;
}

// Options of one group, converted and validated (ValueError with torch's wording) up front.
struct GroupOptions {
  Rule rule;
  fastoptim::SgdOptions sgd;
  fastoptim::AdagradOptions adagrad;
  fastoptim::AdadeltaOptions adadelta;
  fastoptim::RmspropOptions rmsprop;
  fastoptim::AdamOptions adam;

  GroupOptions(Rule r, const py::dict& g) : rule(r) {
    switch (rule.id) {
      case Rule::kSgd: sgd = sgd_options(g); fastoptim::validate(sgd); break;
      case Rule::kAdagrad: adagrad = adagrad_options(g); fastoptim::validate(adagrad); break;
      case Rule::kAdadelta: adadelta = adadelta_options(g); fastoptim::validate(adadelta); break;
      case Rule::kRmsprop: rmsprop = rmsprop_options(g); fastoptim::validate(rmsprop); break;
      case Rule::kAdam: adam = adam_options(g); fastoptim::validate(adam); break;
    }
  }

  template <class F>
  auto visit(F&& f) const {
    switch (rule.id) {
      case Rule::kSgd: return f(sgd);
      case Rule::kAdagrad: return f(adagrad);
      case Rule::kAdadelta: return f(adadelta);
      case Rule::kRmsprop: return f(rmsprop);
      case Rule::kAdam: break;
    }
    return f(adam);
  }

  bool uses_slot(int slot) const {
    return visit([slot](const auto& o) { return fastoptim::uses_state_slot(o, slot); });
  }
  const char* slot_name(int slot) const {
    return visit([slot](const auto& o) { return fastoptim::state_slot_name(o, slot); });
  }

  // Everything the driver checks (pointers, step counts, per-step scalars), nothing written.
  void check(DType dtype, std::span<const ParamBuffers> buffers,
             const fastoptim::GradFactors& factors) const {
    visit([&](const auto& o) { fastoptim::check_step(o, dtype, buffers, factors); });
  }
  void run(DType dtype, std::span<const ParamBuffers> buffers, int threads,
           const fastoptim::GradFactors& factors) const {
    visit([&](const auto& o) { fastoptim::step(o, dtype, buffers, threads, factors); });
  }
};

// A param's step count so far, as either front keeps it (torch: a float32/float64 tensor; the
// array front: a float32 scalar), turned into the driver's count for the update being made.
// Checked here, with the param named, before any buffer of any group is written.
template <class Name>
std::int64_t next_step(double count, Name&& param) {
  constexpr auto kLast = static_cast<double>(fastoptim::kMaxStepCount - 1);
  if (!(count >= 0.0 && count <= kLast) || count != std::floor(count)) {
    std::string shown = py::repr(py::float_(count)).cast<std::string>();
    throw py::value_error(param() + ": state 'step' is " + shown +
                          "; a step count must be a whole number in 0.." +
                          std::to_string(fastoptim::kMaxStepCount - 1));
  }
  return static_cast<std::int64_t>(count) + 1;
}

// ---- buffers ---------------------------------------------------------------------------------

struct BufferView {
  Py_buffer view{};
  bool held = false;
  BufferView() = default;
  BufferView(const BufferView&) = delete;
  BufferView& operator=(const BufferView&) = delete;
  ~BufferView() {
    if (held) PyBuffer_Release(&view);
  }
};

std::optional<DType> dtype_of(const char* format, Py_ssize_t itemsize) {
  if (format == nullptr) return std::nullopt;
  char code = format[0];
  if (code == '<' || code == '=' || code == '@' || code == '!' || code == '>') {
    // only native byte order is supported
    const bool little = [] {
      const std::uint16_t one = 1;
      return *reinterpret_cast<const std::uint8_t*>(&one) == 1;
    }();
    if ((code == '>' || code == '!') == little) return std::nullopt;
    code = format[1];
    if (format[2] != '\0') return std::nullopt;
  } else if (format[1] != '\0') {
    return std::nullopt;
  }
  if (code == 'f' && itemsize == 4) return DType::float32;
  if (code == 'd' && itemsize == 8) return DType::float64;
  return std::nullopt;
}

const char* dtype_name(DType d) { return d == DType::float32 ? "float32" : "float64"; }

std::string shape_text(const Py_buffer& v) {
  std::string s = "(";
  for (int i = 0; i < v.ndim; ++i) {
    s += std::to_string(v.shape[i]);
    if (v.ndim == 1 || i + 1 < v.ndim) s += ",";
    if (i + 1 < v.ndim) s += " ";
  }
  return s + ")";
}

bool same_shape(const Py_buffer& a, const Py_buffer& b) {
  if (a.ndim != b.ndim) return false;
  for (int i = 0; i < a.ndim; ++i)
    if (a.shape[i] != b.shape[i]) return false;
  return true;
}

[[noreturn]] void raise_type(const std::string& m) { throw py::type_error(m); }
[[noreturn]] void raise_value(const std::string& m) { throw py::value_error(m); }

// Gets a C-contiguous buffer of float32/float64, writable if asked: the object itself, never a
// copy, so that an in-place update cannot be lost.
DType acquire(BufferView& out, py::handle obj, bool writable, const std::string& what) {
  const int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
  if (PyObject_GetBuffer(obj.ptr(), &out.view, flags) != 0) {
    PyErr_Clear();
    if (!PyObject_CheckBuffer(obj.ptr()))
      raise_type(what + ": expected an array supporting the buffer protocol, got " +
                 std::string(Py_TYPE(obj.ptr())->tp_name));
    if (writable && PyObject_GetBuffer(obj.ptr(), &out.view, PyBUF_STRIDES | PyBUF_FORMAT) == 0) {
      PyBuffer_Release(&out.view);
      raise_value(what + ": array is read-only; it must be writable to be updated in place");
    }
    PyErr_Clear();
    raise_value(what + ": cannot get a strided buffer from " +
                std::string(Py_TYPE(obj.ptr())->tp_name));
  }
  out.held = true;
  const auto dtype = dtype_of(out.view.format, out.view.itemsize);
  if (!dtype)
    raise_type(what + ": unsupported dtype (buffer format '" +
               std::string(out.view.format ? out.view.format : "?") +
               "'); expected float32 or float64");
  if (!PyBuffer_IsContiguous(&out.view, 'C'))
    raise_value(what + ": array is not C-contiguous; pass a contiguous array");
  return *dtype;
}

// ---- shared memory ----------------------------------------------------------------------------

// One buffer's bytes. `owner` is kept as numbers (param index, stream) and only turned into
// text for a message: the torch front checks thousands of ranges when it builds a plan.
struct Range {
  std::uintptr_t begin, end;
  bool written;
  std::int64_t param;  // the param's index over all groups (torch's state_dict numbering)
  int stream;          // 0 param, 1 grad, 2 + k state slot k
};

// "param 3", "param 3 grad", "param 3 state 'exp_avg'", "param 3 state 'step'".
std::string range_owner(const Range& r, const GroupOptions& opts) {
  std::string s = "param " + std::to_string(r.param);
  if (r.stream == 1) return s + " grad";
  if (r.stream == 5) return s + " state 'step'";
  if (r.stream >= 2) return s + " state '" + opts.slot_name(r.stream - 2) + "'";
  return s;
}

// A written buffer must not share memory with any other buffer of the call: the result would
// depend on the order of the updates (and on the thread split).
template <class Name>
void check_overlaps(std::vector<Range>& ranges, Name&& name) {
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  std::size_t widest = 0;  // the earlier range reaching furthest
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    const Range& prev = ranges[widest];
    const Range& cur = ranges[i];
    if (cur.begin < prev.end && (cur.written || prev.written)) {
      raise_value(name(cur) + " shares memory with " + name(prev) +
                  "; every param and state buffer must be a separate tensor or array");
    }
    if (cur.end > prev.end) widest = i;
  }
}

// One batch: all buffers of one dtype of one group.
struct Batch {
  const GroupOptions* options;
  DType dtype;
  std::vector<ParamBuffers> buffers;
};

// Validates every batch of the call, then runs them all: a bad step count or option in the
// last group leaves the first one untouched.
void check_then_run(const std::vector<Batch>& batches, int num_threads,
                    const fastoptim::GradFactors& factors) {
  for (const Batch& batch : batches) batch.options->check(batch.dtype, batch.buffers, factors);
  py::gil_scoped_release release;
  for (const Batch& batch : batches)
    batch.options->run(batch.dtype, batch.buffers, num_threads, factors);
}

// The total grad norm of batches of one or two dtypes, as torch.nn.utils.clip_grad_norm_
// combines per-tensor norms: the norm of the per-dtype norms. Returns (norm, any non-finite).
// Grads by element type: [0] float32, [1] float64.
using GradsByDtype = std::array<std::vector<ParamBuffers>, 2>;

py::tuple total_norm(const GradsByDtype& grads, double norm_type, int num_threads) {
  bool nonfinite = false;
  double norm;
  {
    py::gil_scoped_release release;
    norm = fastoptim::grad_norm(grads[0], grads[1], norm_type, num_threads, &nonfinite);
  }
  return py::make_tuple(norm, nonfinite);
}

// groups: list of (group dict, names, params, grads, states, steps), where states[i] is a list
// of 3 buffers or None per slot and steps[i] the param's step count so far (SGD: 0 for a new
// momentum buffer, else 1). Everything is checked before anything is written.
void step_buffers(const std::string& rule_name, py::list groups, int num_threads,
                  double inv_scale, double clip_coef) {
  const Rule rule = parse_rule(rule_name);
  std::vector<std::unique_ptr<GroupOptions>> options;
  std::vector<std::unique_ptr<BufferView>> views;
  std::vector<Batch> batches;
  std::vector<Range> ranges;
  std::vector<std::string> range_names;  // the array front names its buffers itself

  auto hold = [&](py::handle obj, bool writable, const std::string& what, DType& dtype) {
    views.push_back(std::make_unique<BufferView>());
    dtype = acquire(*views.back(), obj, writable, what);
    return &views.back()->view;
  };
  auto add_range = [&](const Py_buffer& v, bool written, const std::string& owner) {
    const auto begin = reinterpret_cast<std::uintptr_t>(v.buf);
    if (v.len <= 0) return;
    ranges.push_back({begin, begin + static_cast<std::uintptr_t>(v.len), written,
                      static_cast<std::int64_t>(range_names.size()), 0});
    range_names.push_back(owner);
  };

  for (py::handle group_handle : groups) {
    py::tuple group = py::reinterpret_borrow<py::tuple>(group_handle);
    if (group.size() != 6) raise_value("internal: group spec must have 6 entries");
    options.push_back(std::make_unique<GroupOptions>(rule, group[0].cast<py::dict>()));
    const GroupOptions& opts = *options.back();
    py::list names = group[1], params = group[2], grads = group[3], states = group[4],
             steps = group[5];
    const std::size_t n = py::len(params);
    if (py::len(names) != n || py::len(grads) != n || py::len(states) != n || py::len(steps) != n)
      raise_value("internal: group spec lists differ in length");
    std::size_t first_batch = batches.size();
    for (std::size_t i = 0; i < n; ++i) {
      const std::string name = names[i].cast<std::string>();
      DType param_dtype, grad_dtype, state_dtype;
      const Py_buffer* p = hold(params[i], true, name, param_dtype);
      const Py_buffer* g = hold(grads[i], false, name + " grad", grad_dtype);
      if (grad_dtype != param_dtype)
        raise_type(name + ": grad dtype " + dtype_name(grad_dtype) + " does not match param dtype " +
                   dtype_name(param_dtype));
      if (!same_shape(*g, *p))
        raise_value(name + ": grad shape " + shape_text(*g) + " does not match param shape " +
                    shape_text(*p));
      ParamBuffers b;
      b.param = p->buf;
      b.grad = g->buf;
      b.size = static_cast<std::size_t>(p->len / p->itemsize);
      b.step = next_step(to_number("step", steps[i]), [&] { return name; });
      add_range(*p, true, name);
      add_range(*g, false, name + " grad");
      py::sequence slots = states[i];
      if (static_cast<int>(py::len(slots)) != 3) raise_value("internal: 3 state slots expected");
      for (int s = 0; s < 3; ++s) {
        py::object slot = slots[s];
        if (!opts.uses_slot(s)) continue;
        if (slot.is_none()) raise_value(name + ": missing state buffer " + std::to_string(s));
        const std::string what = name + " state '" + opts.slot_name(s) + "'";
        const Py_buffer* sv = hold(slot, true, what, state_dtype);
        if (state_dtype != param_dtype || !same_shape(*sv, *p))
          raise_value(what + ": state has dtype " + dtype_name(state_dtype) + " and shape " +
                      shape_text(*sv) + ", param has " + dtype_name(param_dtype) + " and " +
                      shape_text(*p));
        b.state[s] = sv->buf;
        add_range(*sv, true, what);
      }
      auto batch = std::find_if(batches.begin() + static_cast<std::ptrdiff_t>(first_batch),
                                batches.end(), [&](const Batch& x) { return x.dtype == param_dtype; });
      if (batch == batches.end()) {
        batches.push_back({&opts, param_dtype, {}});
        batch = batches.end() - 1;
      }
      batch->buffers.push_back(b);
    }
  }
  check_overlaps(ranges, [&](const Range& r) {
    return range_names[static_cast<std::size_t>(r.param)];
  });
  check_then_run(batches, num_threads, {inv_scale, clip_coef});
}

// ---- the torch front's cached plan -----------------------------------------------------------
// A table per (group, dtype, step dtype): rows of int64
//   param, grad, state0, state1, state2, element count, step counter address, param index
// that the front built from tensors it checked, and re-checks (address, size, strides) before
// every step. Each row's step counter (a float32 or float64 scalar) is read and checked for
// every row of every table, all batches are validated, and only then is anything written; the
// counters are incremented after the kernels ran.
constexpr std::size_t kColumns = 8;

struct PlanTable {
  const std::int64_t* rows;
  std::size_t count;
  DType dtype;
  bool step_f64;
};

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::float32;
  if (name == "float64") return DType::float64;
  raise_type("unsupported dtype " + name);
}

PlanTable plan_table(const py::buffer& table_obj, const std::string& dtype,
                     const std::string& step_dtype, py::buffer_info& info) {
  info = table_obj.request();
  if (info.ndim != 2 || info.shape[1] != static_cast<py::ssize_t>(kColumns) ||
      info.itemsize != 8 || info.format.find_first_of("qlQL") == std::string::npos ||
      info.strides[1] != 8 || info.strides[0] != static_cast<py::ssize_t>(8 * kColumns))
    raise_value("internal: pointer table must be a C-contiguous int64 array of shape (n, 8)");
  const bool step_f64 = step_dtype == "float64";
  if (!step_f64 && step_dtype != "float32") raise_type("unsupported step dtype " + step_dtype);
  return {static_cast<const std::int64_t*>(info.ptr), static_cast<std::size_t>(info.shape[0]),
          parse_dtype(dtype), step_f64};
}

std::size_t item_size(DType d) { return d == DType::float32 ? 4 : 8; }

// Every buffer of every table; raises if a written one shares memory with any other. Returns
// the written ranges sorted by address, (n, 2) int64 [begin, end): step_plans checks each new
// grad against them.
py::array_t<std::int64_t> check_plan_memory(const std::string& rule_name, py::dict group,
                                            py::list tables) {
  const GroupOptions opts(parse_rule(rule_name), group);
  std::vector<Range> ranges;
  std::vector<py::buffer_info> infos(py::len(tables));
  std::size_t t = 0;
  for (py::handle item : tables) {
    py::tuple spec = py::reinterpret_borrow<py::tuple>(item);
    const PlanTable table = plan_table(spec[0].cast<py::buffer>(), spec[1].cast<std::string>(),
                                       spec[2].cast<std::string>(), infos[t++]);
    const std::size_t bytes_per = item_size(table.dtype);
    for (std::size_t i = 0; i < table.count; ++i) {
      const std::int64_t* r = table.rows + kColumns * i;
      const auto bytes = static_cast<std::uintptr_t>(r[5]) * bytes_per;
      if (bytes == 0) continue;
      for (int stream = 0; stream < 5; ++stream) {
        if (r[stream] == 0) continue;
        const auto begin = static_cast<std::uintptr_t>(r[stream]);
        ranges.push_back({begin, begin + bytes, stream != 1, r[7], stream});
      }
      ranges.push_back({static_cast<std::uintptr_t>(r[6]),
                        static_cast<std::uintptr_t>(r[6]) + (table.step_f64 ? 8u : 4u), true, r[7],
                        5});
    }
  }
  check_overlaps(ranges, [&](const Range& r) { return range_owner(r, opts); });
  std::vector<std::int64_t> written;
  for (const Range& r : ranges)
    if (r.written) {
      written.push_back(static_cast<std::int64_t>(r.begin));
      written.push_back(static_cast<std::int64_t>(r.end));
    }
  py::array_t<std::int64_t> out({static_cast<py::ssize_t>(written.size() / 2), py::ssize_t{2}});
  std::copy(written.begin(), written.end(), out.mutable_data());
  return out;
}

// batches: list of (group dict, table, step dtype, dtype); written: check_plan_memory's ranges
// of the same tables (the grads are the only pointers that change between plan rebuilds).
void step_plans(const std::string& rule_name, py::list batch_specs, py::buffer written_obj,
                int num_threads, double inv_scale, double clip_coef) {
  const fastoptim::GradFactors factors{inv_scale, clip_coef};
  const Rule rule = parse_rule(rule_name);
  const py::buffer_info written_info = written_obj.request();
  if (written_info.ndim != 2 || written_info.itemsize != 8 || written_info.shape[1] != 2 ||
      written_info.strides[1] != 8 || written_info.strides[0] != 16)
    raise_value("internal: written ranges must be a C-contiguous int64 array of shape (n, 2)");
  const auto* written = static_cast<const std::int64_t*>(written_info.ptr);
  const auto written_count = static_cast<std::size_t>(written_info.shape[0]);
  auto grad_overlaps = [&](std::int64_t begin, std::int64_t end) {
    // the last written range starting before `end`; ranges are disjoint and sorted
    std::size_t lo = 0, hi = written_count;
    while (lo < hi) {
      const std::size_t mid = (lo + hi) / 2;
      if (written[2 * mid] < end) lo = mid + 1;
      else hi = mid;
    }
    return lo > 0 && written[2 * (lo - 1) + 1] > begin;
  };

  std::vector<std::unique_ptr<GroupOptions>> options;
  std::vector<py::buffer_info> infos(py::len(batch_specs));
  std::vector<PlanTable> tables;
  std::vector<Batch> batches;
  py::handle last_group;
  std::size_t t = 0;
  for (py::handle item : batch_specs) {
    py::tuple spec = py::reinterpret_borrow<py::tuple>(item);
    if (spec.size() != 4) raise_value("internal: batch spec must have 4 entries");
    const py::handle group = spec[0];
    if (!last_group || !group.is(last_group)) {
      options.push_back(std::make_unique<GroupOptions>(rule, group.cast<py::dict>()));
      last_group = group;
    }
    const PlanTable table = plan_table(spec[1].cast<py::buffer>(), spec[3].cast<std::string>(),
                                       spec[2].cast<std::string>(), infos[t++]);
    tables.push_back(table);
    Batch batch{options.back().get(), table.dtype, std::vector<ParamBuffers>(table.count)};
    const std::size_t bytes_per = item_size(table.dtype);
    for (std::size_t i = 0; i < table.count; ++i) {
      const std::int64_t* r = table.rows + kColumns * i;
      ParamBuffers& b = batch.buffers[i];
      b.param = reinterpret_cast<void*>(r[0]);
      b.grad = reinterpret_cast<const void*>(r[1]);
      for (int s = 0; s < 3; ++s) b.state[s] = reinterpret_cast<void*>(r[2 + s]);
      b.size = static_cast<std::size_t>(r[5]);
      if (r[6] == 0) raise_value("internal: null step pointer");
      const double count = table.step_f64 ? *reinterpret_cast<const double*>(r[6])
                                          : *reinterpret_cast<const float*>(r[6]);
      auto name = [r] { return "param " + std::to_string(r[7]); };
      b.step = next_step(count, name);
      const auto bytes = static_cast<std::int64_t>(b.size * bytes_per);
      if (bytes > 0 && grad_overlaps(r[1], r[1] + bytes))
        raise_value(name() + " grad shares memory with a param or state buffer the step writes; "
                    "every param and state buffer must be a separate tensor");
    }
    batches.push_back(std::move(batch));
  }
  check_then_run(batches, num_threads, factors);
  for (const PlanTable& table : tables)
    for (std::size_t i = 0; i < table.count; ++i) {
      const std::int64_t address = table.rows[kColumns * i + 6];
      if (table.step_f64) *reinterpret_cast<double*>(address) += 1.0;
      else *reinterpret_cast<float*>(address) += 1.0f;
    }
}

// The grads of plan tables (column 1, sizes in column 5): (total norm, any non-finite).
py::tuple grad_norm_plans(py::list tables_spec, double norm_type, int num_threads) {
  std::vector<py::buffer_info> infos(py::len(tables_spec));
  GradsByDtype grads;
  std::size_t t = 0;
  for (py::handle item : tables_spec) {
    py::tuple spec = py::reinterpret_borrow<py::tuple>(item);
    const PlanTable table = plan_table(spec[0].cast<py::buffer>(), spec[1].cast<std::string>(),
                                       "float32", infos[t++]);
    auto& into = grads[table.dtype == DType::float32 ? 0 : 1];
    for (std::size_t i = 0; i < table.count; ++i) {
      ParamBuffers b;
      b.grad = reinterpret_cast<const void*>(table.rows[kColumns * i + 1]);
      b.size = static_cast<std::size_t>(table.rows[kColumns * i + 5]);
      into.push_back(b);
    }
  }
  return total_norm(grads, norm_type, num_threads);
}

// The array front's grads (any buffer-protocol float32/float64 arrays, read only).
py::tuple grad_norm_buffers(py::list grad_list, double norm_type, int num_threads) {
  std::vector<std::unique_ptr<BufferView>> views;
  GradsByDtype grads;
  std::size_t index = 0;
  for (py::handle grad : grad_list) {
    views.push_back(std::make_unique<BufferView>());
    const DType dtype = acquire(*views.back(), grad, false, "grad " + std::to_string(index++));
    ParamBuffers b;
    b.grad = views.back()->view.buf;
    b.size = static_cast<std::size_t>(views.back()->view.len / views.back()->view.itemsize);
    grads[dtype == DType::float32 ? 0 : 1].push_back(b);
  }
  return total_norm(grads, norm_type, num_threads);
}

// Benchmark only: the same traffic as a rule with `state_count` state slots, through the same
// driver, from a pointer table like the torch front's plans (7 columns; the step column is
// ignored), so that its per-call cost matches the torch front's.
void roofline_pointers(py::buffer table_obj, int state_count, const std::string& dtype_name_,
                       int num_threads) {
  const py::buffer_info table = table_obj.request();
  if (table.ndim != 2 || table.shape[1] != 7 || table.itemsize != 8 || table.strides[1] != 8 ||
      table.strides[0] != 56)
    raise_value("pointer table must be a C-contiguous int64 array of shape (n, 7)");
  DType dtype;
  if (dtype_name_ == "float32") dtype = DType::float32;
  else if (dtype_name_ == "float64") dtype = DType::float64;
  else raise_type("unsupported dtype " + dtype_name_);
  const auto* rows = static_cast<const std::int64_t*>(table.ptr);
  std::vector<ParamBuffers> buffers(static_cast<std::size_t>(table.shape[0]));
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    const std::int64_t* r = rows + 7 * i;
    buffers[i].param = reinterpret_cast<void*>(r[0]);
    buffers[i].grad = reinterpret_cast<const void*>(r[1]);
    for (int s = 0; s < 3; ++s) buffers[i].state[s] = reinterpret_cast<void*>(r[2 + s]);
    buffers[i].size = static_cast<std::size_t>(r[5]);
  }
  py::gil_scoped_release release;
  fastoptim::roofline_step(state_count, dtype, buffers, num_threads);
}

// Names of the state slots these options use (None for an unused slot); validates the options.
py::list state_slots(const std::string& rule_name, py::dict group) {
  const GroupOptions opts(parse_rule(rule_name), group);
  py::list slots;
  for (int s = 0; s < 3; ++s) {
    if (opts.uses_slot(s)) slots.append(opts.slot_name(s));
    else slots.append(py::none());
  }
  return slots;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastoptim C++ core: fused SIMD/OpenMP optimizer steps over contiguous buffers";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  m.def("step_buffers", &step_buffers, py::arg("rule"), py::arg("groups"),
        py::arg("num_threads") = 0, py::arg("inv_scale") = 1.0, py::arg("clip_coef") = 1.0);
  m.def("grad_norm_plans", &grad_norm_plans, py::arg("tables"), py::arg("norm_type"),
        py::arg("num_threads"));
  m.def("grad_norm_buffers", &grad_norm_buffers, py::arg("grads"), py::arg("norm_type"),
        py::arg("num_threads"));
  m.def("clip_coefficient", &fastoptim::clip_coefficient, py::arg("max_norm"),
        py::arg("total_norm"));
  m.def("step_plans", &step_plans, py::arg("rule"), py::arg("batches"), py::arg("written"),
        py::arg("num_threads"), py::arg("inv_scale") = 1.0,
        py::arg("clip_coef") = 1.0);
  m.def("check_plan_memory", &check_plan_memory, py::arg("rule"), py::arg("group"),
        py::arg("tables"));
  m.attr("max_step_count") = fastoptim::kMaxStepCount;
  m.def("roofline_pointers", &roofline_pointers, py::arg("table"), py::arg("state_count"),
        py::arg("dtype"), py::arg("num_threads"));
  m.def("state_slots", &state_slots, py::arg("rule"), py::arg("group"));
  m.def("simd_level", &fastoptim::simd_level);
  m.def("available_simd_levels", &fastoptim::available_simd_levels);
  m.def("set_simd_level", &fastoptim::set_simd_level, py::arg("level"));
  m.def("set_num_threads", &fastoptim::set_num_threads, py::arg("num_threads"));
  m.def("get_num_threads", &fastoptim::get_num_threads);
  m.def("openmp_enabled", &fastoptim::openmp_enabled);
  m.def("openmp_runtime", &fastoptim::openmp_runtime);
  m.attr("serial_threshold") = fastoptim::kSerialThreshold;
}
