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
#include <span>
#include <type_traits>
#include <variant>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fastoptim/options.hpp"
#include "fastoptim/step.hpp"

namespace py = pybind11;
using fastoptim::DType;
using fastoptim::ParamBuffers;
using fastoptim::StreamTypes;

namespace {

// ---- rules: options from a param-group dict (both fronts keep torch's keys) -------------

// A loaded or edited group may hold anything: name the key when a value is not a number.
[[noreturn]] void raise_option_type(const char* key, py::handle value, const char* want) {
  throw py::type_error(std::string("param group option '") + key + "' must be " + want +
                       ", got " + py::repr(value).cast<std::string>());
}
// The key as an interned str, made once per key (the keys are the descriptions' static
// strings): a step reads every option of every group, and a new str per read is most of it.
PyObject* key_object(const char* key) {
  static std::unordered_map<const char*, PyObject*> keys;
  PyObject*& k = keys[key];
  if (k == nullptr) {
    k = PyUnicode_InternFromString(key);
    if (k == nullptr) throw py::error_already_set();
  }
  return k;
}
py::object option(const py::dict& group, const char* key) {
  PyObject* value = PyDict_GetItemWithError(group.ptr(), key_object(key));
  if (value == nullptr) {
    if (PyErr_Occurred()) throw py::error_already_set();
    throw py::key_error(std::string("param group has no '") + key + "'");
  }
  return py::reinterpret_borrow<py::object>(value);
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

// ---- rules: every registered description, options from a param-group dict ------------------

// One rule's options, parsed from a group by the rule's fields and validated (ValueError with
// torch's wording, built from the value the user gave).
template <class R>
typename R::Options parse_options(const py::dict& group) {
  typename R::Options o;
  for (const auto& f : R::fields) {
    const py::object value = option(group, f.key);
    if (f.flag != nullptr) {
      o.*f.flag = flag(group, f.key);
    } else if (f.optional && value.is_none()) {
      o.*f.number = fastoptim::rules::kNone;
    } else if (f.index < 0) {
      o.*f.number = to_number(f.key, value);
      // kNone is how the options hold None: a NaN given fails the field's range check here
      if (f.optional && std::isnan(o.*f.number))
        for (const auto& c : R::checks)
          if (c.member == f.number)
            throw py::value_error(std::string(c.what) + ": " + py::str(value).cast<std::string>());
    } else {
      std::size_t size = 0;  // the tuple's length: the fields sharing its key (betas: 2 or 3)
      for (const auto& other : R::fields) size += std::string_view(other.key) == f.key;
      if (!PySequence_Check(value.ptr()) || PyUnicode_Check(value.ptr()) ||
          py::len(value) != size)
        raise_option_type(f.key, value,
                          size == 2 ? "a pair of real numbers"
                                    : ("a tuple of " + std::to_string(size) + " real numbers").c_str());
      o.*f.number = to_number(f.key, py::sequence(value)[static_cast<std::size_t>(f.index)]);
    }
  }
  try {
    fastoptim::validate(o);
  } catch (const fastoptim::InvalidOption& e) {
    if (e.key().empty()) throw py::value_error(e.what());
    // torch formats the value it was given (lr=-1 reads "-1", betas[1]=1 reads "1")
    py::object value = group[e.key().c_str()];
    if (e.index() >= 0) value = py::sequence(value)[static_cast<std::size_t>(e.index())];
    throw py::value_error(e.problem() + ": " + py::str(value).cast<std::string>());
  }
  return o;
}

template <class... R>
using OptionsVariant = std::variant<typename R::Options...>;
template <class... R>
OptionsVariant<R...> options_variant(fastoptim::rules::RuleList<R...>);
using AnyOptions = decltype(options_variant(fastoptim::rules::All{}));

// The rule a name ("adam") or id denotes.
std::size_t rule_index(const std::string& name) {
  std::size_t found = fastoptim::rules::All::size, i = 0;
  fastoptim::rules::for_each_rule([&](auto r) {
    if (name == decltype(r)::name) found = i;
    ++i;
  });
  if (found == fastoptim::rules::All::size) throw py::value_error("unknown rule '" + name + "'");
  return found;
}

// Calls f(R{}) for the rule with this index.
template <class F>
void with_rule(std::size_t index, F&& f) {
  std::size_t i = 0;
  fastoptim::rules::for_each_rule([&](auto r) {
    if (i++ == index) f(r);
  });
}

// Options of one group, converted and validated up front.
struct GroupOptions {
  AnyOptions options;

  GroupOptions(std::size_t rule, const py::dict& g) {
    with_rule(rule, [&](auto r) {
      options.emplace<typename decltype(r)::Options>(parse_options<decltype(r)>(g));
    });
  }

  template <class F>
  decltype(auto) visit(F&& f) const {
    return std::visit(f, options);
  }

  bool uses_slot(int slot) const {
    return visit([slot](const auto& o) { return fastoptim::uses_state_slot(o, slot); });
  }
  const char* slot_name(int slot) const {
    return visit([slot](const auto& o) { return fastoptim::state_slot_name(o, slot); });
  }
  std::size_t scalar_count() const {
    return visit([](const auto& o) {
      return std::remove_cvref_t<decltype(o)>::Rule::scalar_slots.size;
    });
  }
  const char* scalar_name(int k) const {
    return visit([k](const auto& o) {
      return std::remove_cvref_t<decltype(o)>::Rule::scalar_slots[static_cast<std::size_t>(k)].name;
    });
  }

  // A step in this group state raises (Schedule-Free in eval mode): the message, or nullptr.
  const char* refused() const {
    return visit([](const auto& o) -> const char* {
      using R = typename std::remove_cvref_t<decltype(o)>::Rule;
      if constexpr (requires { R::refused(o); }) return R::refused(o);
      return nullptr;
    });
  }
  // The group state after this step (fastoptim::advance_group), written into the group dict
  // as the reference keeps it (a count as an int).
  void advance_into(py::dict group) {
    std::visit([&](auto& o) { fastoptim::advance_group(o); }, options);
    write_group_state(group);
  }
  void write_group_state(py::dict group) const {
    visit([&](const auto& o) {
      using R = typename std::remove_cvref_t<decltype(o)>::Rule;
      for (const auto& f : R::fields) {
        if (!f.group_state) continue;
        if (f.flag != nullptr) group[f.key] = py::bool_(o.*f.flag);
        else if (f.integer) group[f.key] = py::int_(static_cast<long long>(o.*f.number));
        else group[f.key] = py::float_(o.*f.number);
      }
    });
  }
  // Transform `index`: whether the group's mode flag is not at its target yet; setting it.
  bool transform_pending(int index) const {
    return visit([&](const auto& o) {
      using R = typename std::remove_cvref_t<decltype(o)>::Rule;
      if constexpr (fastoptim::rules::transform_count<R>() > 0) {
        const auto& t = R::transforms[static_cast<std::size_t>(index)];
        return o.*t.mode != t.to;
      }
      return false;
    });
  }
  void finish_transform(int index, py::dict group) {
    std::visit([&](auto& o) {
      using R = typename std::remove_cvref_t<decltype(o)>::Rule;
      if constexpr (fastoptim::rules::transform_count<R>() > 0) {
        const auto& t = R::transforms[static_cast<std::size_t>(index)];
        o.*t.mode = t.to;
      }
    }, options);
    write_group_state(group);
  }
  void transform(int index, const StreamTypes& types, std::span<const ParamBuffers> buffers,
                 int threads) const {
    visit([&](const auto& o) { fastoptim::transform(o, index, types, buffers, threads); });
  }

  // Everything the driver checks (pointers, step counts, per-step scalars), nothing written.
  void check(const StreamTypes& types, std::span<const ParamBuffers> buffers,
             const fastoptim::GradFactors& factors) const {
    visit([&](const auto& o) { fastoptim::check_step(o, types, buffers, factors); });
  }
  void run(const StreamTypes& types, std::span<const ParamBuffers> buffers, int threads,
           const fastoptim::GradFactors& factors) const {
    visit([&](const auto& o) { fastoptim::step(o, types, buffers, threads, factors); });
  }
};

// What the Python fronts know about a rule, all from its description: names, torch's
// constructor signature (each argument's name, default, keyword-only), state slots (name, the
// option holding the initial value or None), scalar slots (name, initial value).
template <class R>
py::dict describe(R) {
  using O = typename R::Options;
  const O defaults{};
  auto default_of = [&](const char* key) -> py::object {
    py::list pair;
    for (const auto& f : R::fields) {
      if (std::string(f.key) != key) continue;
      if (f.flag != nullptr) return py::bool_(defaults.*f.flag);
      if (f.optional && fastoptim::rules::is_none(defaults.*f.number)) return py::none();
      if (f.integer) return py::int_(static_cast<long long>(defaults.*f.number));
      if (f.index < 0) return py::float_(defaults.*f.number);
      pair.append(py::float_(defaults.*f.number));
    }
    if (py::len(pair) == 0)
      throw std::logic_error(std::string("rule description: argument ") + key + " is no field");
    return py::tuple(pair);
  };
  py::list args;
  bool keyword_only = false;
  for (const auto& a : R::args) {
    keyword_only = keyword_only || a.keyword_only;
    using fastoptim::rules::Ignored;
    py::object value = a.ignored == Ignored::none     ? py::object(py::none())
                       : a.ignored == Ignored::false_ ? py::object(py::bool_(false))
                       : a.ignored == Ignored::true_  ? py::object(py::bool_(true))
                                                      : default_of(a.name);
    args.append(py::make_tuple(a.name, value, keyword_only,
                               a.ignored != fastoptim::rules::Ignored::no));
  }
  py::list slots;
  for (const auto& slot : R::slots) {
    py::object initial = py::none();
    if (slot.initial_from != nullptr)
      for (const auto& f : R::fields)
        if (f.number == slot.initial_from) initial = py::str(f.key);
    slots.append(py::make_tuple(slot.name, initial));
  }
  py::list non_negative;  // slots int8 state stores with the unsigned map
  for (const auto& slot : R::slots)
    if (slot.non_negative) non_negative.append(slot.name);
  py::list param_copies;  // slots that start as a copy of the param
  for (const auto& slot : R::slots)
    if (slot.from_param) param_copies.append(slot.name);
  py::list scalars;
  for (const auto& s : R::scalar_slots) scalars.append(py::make_tuple(s.name, s.initial));
  py::list group_state;  // param-group keys the step (or a transform) writes
  for (const auto& f : R::fields)
    if (f.group_state) group_state.append(f.key);
  py::list transforms;  // (name, the group's mode key, its value after the transform)
  if constexpr (fastoptim::rules::transform_count<R>() > 0)
    for (const auto& t : R::transforms)
      for (const auto& f : R::fields)
        if (f.flag == t.mode) transforms.append(py::make_tuple(t.name, f.key, t.to));
  py::object checkpoint = py::none();  // the reference's layout: (entries, nest, int step)
  if constexpr (requires { R::checkpoint; }) {
    py::list entries;
    for (const auto& e : R::checkpoint.entries) entries.append(py::make_tuple(e.name, e.slots));
    checkpoint = py::make_tuple(entries, R::checkpoint.nest ? py::object(py::str(R::checkpoint.nest))
                                                            : py::object(py::none()),
                                R::checkpoint.int_step);
  }
  py::dict option_defaults;  // every option key, as a param group holds it
  for (const auto& f : R::fields) option_defaults[f.key] = default_of(f.key);
  py::dict d;
  d["name"] = R::name;
  d["torch_name"] = R::torch_name;
  d["reference"] = R::reference;
  d["id"] = static_cast<int>(fastoptim::rules::id<R>);
  d["args"] = args;
  d["defaults"] = option_defaults;
  d["slots"] = slots;
  d["scalar_slots"] = scalars;
  d["param_copies"] = param_copies;
  d["non_negative"] = non_negative;
  d["group_state"] = group_state;
  d["transforms"] = transforms;
  d["has_step"] = R::has_step;
  d["eager_state"] = R::eager_state;
  d["complex_as_real"] = fastoptim::rules::complex_as_real<R>();
  d["checkpoint"] = checkpoint;
  return d;
}

py::list rules_info() {
  py::list out;
  fastoptim::rules::for_each_rule([&](auto r) { out.append(describe(r)); });
  return out;
}

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

// A rule's scalar state (NAdam's mu_product) as a step reads it: finite, or the step names the
// param and the entry. The load checks it too, but the state is the user's to edit in place
// (opt.state[p]['mu_product'].fill_(nan)); the driver would otherwise see an overflow in the
// per-step scalars and blame the options it was computed from.
template <class Name>
void check_scalar_state(const GroupOptions& opts, const void* data, DType dtype, Name&& param) {
  for (std::size_t k = 0; k < opts.scalar_count(); ++k) {
    const double value = dtype == DType::float64 ? static_cast<const double*>(data)[k]
                                                 : static_cast<const float*>(data)[k];
    if (!std::isfinite(value))
      throw py::value_error(param() + ": state '" + opts.scalar_name(static_cast<int>(k)) +
                            "' is " + py::repr(py::float_(value)).cast<std::string>() +
                            "; it must be a finite number");
  }
}

// ---- buffers ---------------------------------------------------------------------------------

struct BufferView {
  Py_buffer view{};
  bool held = false;
  py::object bits;  // a bfloat16 array's uint16 view, whose buffer this is
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
  if (code == 'e' && itemsize == 2) return DType::float16;
  if (code == 'B' && itemsize == 1) return DType::int8;  // the codes of int8 state
  return std::nullopt;
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::bfloat16: return "bfloat16";
    case DType::float16: return "float16";
    case DType::int8: return "int8";
  }
  return "unknown";
}

// Grad norms run over float32 and float64 grads.
std::size_t norm_index(DType d, const std::string& what) {
  if (d == DType::float32) return 0;
  if (d == DType::float64) return 1;
  throw py::type_error(what + ": the fused grad norm takes float32 and float64 grads, got " +
                       dtype_name(d));
}

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
// An ml_dtypes.bfloat16 array (NumPy's bfloat16: JAX's, TensorFlow's) has no buffer format;
// its uint16 view is the same memory.
bool is_bfloat16_array(py::handle obj) {
  if (!py::hasattr(obj, "dtype") || !py::hasattr(obj, "view")) return false;
  const py::object dtype = obj.attr("dtype");
  return py::str(dtype).cast<std::string>() == "bfloat16" && py::hasattr(dtype, "itemsize") &&
         dtype.attr("itemsize").cast<int>() == 2;
}

DType acquire(BufferView& out, py::handle obj, bool writable, const std::string& what) {
  const int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
  if (PyObject_GetBuffer(obj.ptr(), &out.view, flags) == 0) {
    out.held = true;
  } else if (PyErr_Clear(), is_bfloat16_array(obj)) {
    out.bits = obj.attr("view")("uint16");
    if (PyObject_GetBuffer(out.bits.ptr(), &out.view, flags) != 0) {
      PyErr_Clear();
      raise_value(what + (writable ? ": bfloat16 array is read-only or not a strided array; it "
                                     "must be writable to be updated in place"
                                   : ": cannot get a strided buffer from the bfloat16 array"));
    }
    out.held = true;
    if (!PyBuffer_IsContiguous(&out.view, 'C'))
      raise_value(what + ": array is not C-contiguous; pass a contiguous array");
    return DType::bfloat16;
  } else {
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
               "'); expected float32, float64, float16 or bfloat16 (ml_dtypes), or uint8 codes "
               "of int8 state");
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
  int stream;  // 0 param, 1 grad, 2 + k state slot k, 5 step, 6 scalar state, 7 master,
               // 8 rounding counter, 9 + k the scales of int8 state slot k
};

// "param 3", "param 3 grad", "param 3 state 'exp_avg'", "param 3 state 'step'".
std::string range_owner(const Range& r, const GroupOptions& opts) {
  std::string s = "param " + std::to_string(r.param);
  if (r.stream == 1) return s + " grad";
  if (r.stream == 5) return s + " state 'step'";
  if (r.stream == 6) return s + " state '" + opts.scalar_name(0) + "'";
  if (r.stream == 7) return s + " state 'master_param'";
  if (r.stream == 8) return s + " rounding counter";
  if (r.stream >= 9) return s + " state '" + opts.slot_name(r.stream - 9) + "_scales'";
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

// One batch: all buffers of one group with the same stream types.
struct Batch {
  const GroupOptions* options;
  StreamTypes types;
  std::vector<ParamBuffers> buffers;
};

bool same_types(const StreamTypes& a, const StreamTypes& b) {
  return a.param == b.param && a.grad == b.grad && a.state == b.state && a.master == b.master &&
         a.rounding.stochastic == b.rounding.stochastic && a.rounding.seed == b.rounding.seed &&
         a.block_size == b.block_size;
}

std::size_t item_size(DType d) {
  return d == DType::float64 ? 8 : d == DType::float32 ? 4 : d == DType::int8 ? 1 : 2;
}

// int8 state: the scales of `count` elements in blocks of `block` (the last may be partial)
std::size_t scale_count(std::size_t count, std::size_t block) {
  return block == 0 ? 0 : (count + block - 1) / block;
}

// A group's block_size key (int8 state), checked.
std::size_t block_size_of(const py::dict& group) {
  if (!group.contains("block_size")) return 256;
  const py::object value = group["block_size"];
  if (py::isinstance<py::bool_>(value) || !py::isinstance<py::int_>(value))
    raise_type("block_size must be an integer, got " + py::repr(value).cast<std::string>());
  int overflow = 0;
  const long long size = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  try {
    fastoptim::check_block_size(overflow != 0 || size < 0 ? 0 : static_cast<std::size_t>(size));
  } catch (const std::invalid_argument& e) {
    // the core's words, with the value as given (a negative or huge one is no size_t)
    const std::string what = e.what();
    throw py::value_error(what.substr(0, what.rfind(", got ")) + ", got " +
                          py::repr(value).cast<std::string>());
  }
  return static_cast<std::size_t>(size);
}

// A param's stream types as a TypeError naming the param unless the build has a kernel.
template <class Name>
void check_types(const StreamTypes& t, Name&& name) {
  if (fastoptim::supports(t)) return;
  const bool float_param = t.param == DType::float32 || t.param == DType::float64;
  if (item_size(t.grad) > item_size(t.param))
    raise_type(name() + ": grad dtype " + dtype_name(t.grad) + " is wider than the param dtype " +
               dtype_name(t.param) + "; a grad may be no wider than its param");
  if (t.master && float_param)
    raise_type(name() + ": a master copy is for bfloat16/float16 params; the param is " +
               dtype_name(t.param));
  if (t.state == DType::int8)
    raise_type(name() + ": int8 state is for float32, bfloat16 and float16 params (float32 "
               "math); the param is " + dtype_name(t.param));
  raise_type(name() + ": fastoptim has no kernel for params of " + dtype_name(t.param) +
             ", grads of " + dtype_name(t.grad) + " and state of " + dtype_name(t.state) +
             (t.master ? " with a float32 master copy" : "") +
             "; supported: float32/float64 throughout; bfloat16/float16 params with their own "
             "grads and state of their type or float32 (or bfloat16 beside a master copy); "
             "float32 params with float32/bfloat16/float16 grads and float32/bfloat16 state; "
             "float64 params with float64/float32/bfloat16/float16 grads and float64 state");
}

// Validates every batch of the call, then runs them all: a bad step count or option in the
// last group leaves the first one untouched. (One batch: its run validates all before writing.)
void check_then_run(const std::vector<Batch>& batches, int num_threads,
                    const fastoptim::GradFactors& factors) {
  if (batches.size() > 1)
    for (const Batch& batch : batches) batch.options->check(batch.types, batch.buffers, factors);
  py::gil_scoped_release release;
  for (const Batch& batch : batches)
    batch.options->run(batch.types, batch.buffers, num_threads, factors);
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

// groups: list of (group dict, names, params, grads, states, steps, scalars, masters,
// rounding_steps, (stochastic, seed), ids), where ids[i] is the param's index (stochastic
// rounding's param number) and states[i] is a list of 3 buffers or None per
// slot, steps[i] the param's step count so far (SGD: 0 for a new momentum buffer, else 1),
// scalars[i] a writable float32/float64 buffer holding the rule's scalar state (NAdam's
// mu_product) or None for rules without one, masters[i] the param's float32 master copy or
// None, rounding_steps[i] stochastic rounding's count so far when it is not steps[i] (SGD) or
// None. Stream types come from the buffers: each param's grad, used state slots and master
// decide its layout. Everything is checked before anything is written.
void step_buffers(const std::string& rule_name, py::list groups, int num_threads,
                  double inv_scale, double clip_coef) {
  const std::size_t rule = rule_index(rule_name);
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
    if (group.size() != 11) raise_value("internal: group spec must have 11 entries");
    options.push_back(std::make_unique<GroupOptions>(rule, group[0].cast<py::dict>()));
    const GroupOptions& opts = *options.back();
    py::list names = group[1], params = group[2], grads = group[3], states = group[4],
             steps = group[5], scalars = group[6], masters = group[7],
             rounding_steps = group[8], ids = group[10];
    const py::tuple rounding_spec = group[9];
    const fastoptim::Rounding rounding{rounding_spec[0].cast<bool>(),
                                       rounding_spec[1].cast<std::uint64_t>()};
    const std::size_t block_size = block_size_of(group[0].cast<py::dict>());
    const std::size_t n = py::len(params);
    if (py::len(names) != n || py::len(grads) != n || py::len(states) != n ||
        py::len(steps) != n || py::len(scalars) != n || py::len(masters) != n ||
        py::len(rounding_steps) != n || py::len(ids) != n)
      raise_value("internal: group spec lists differ in length");
    std::size_t first_batch = batches.size();
    for (std::size_t i = 0; i < n; ++i) {
      const std::string name = names[i].cast<std::string>();
      DType param_dtype, grad_dtype, state_dtype;
      const Py_buffer* p = hold(params[i], true, name, param_dtype);
      const Py_buffer* g = hold(grads[i], false, name + " grad", grad_dtype);
      if (!same_shape(*g, *p))
        raise_value(name + ": grad shape " + shape_text(*g) + " does not match param shape " +
                    shape_text(*p));
      ParamBuffers b;
      b.param = p->buf;
      b.grad = g->buf;
      b.size = static_cast<std::size_t>(p->len / p->itemsize);
      b.step = next_step(to_number("step", steps[i]), [&] { return name; });
      b.id = ids[i].cast<std::uint64_t>();
      if (!rounding_steps[i].is_none())
        b.rounding_step =
            next_step(to_number("step", rounding_steps[i]), [&] { return name; });
      add_range(*p, true, name);
      add_range(*g, false, name + " grad");
      py::sequence slots = states[i];
      if (static_cast<int>(py::len(slots)) != 3) raise_value("internal: 3 state slots expected");
      std::optional<DType> slots_dtype;
      for (int s = 0; s < 3; ++s) {
        py::object slot = slots[s];
        if (!opts.uses_slot(s)) continue;
        if (slot.is_none()) raise_value(name + ": missing state buffer " + std::to_string(s));
        const std::string what = name + " state '" + opts.slot_name(s) + "'";
        if (py::isinstance<py::tuple>(slot)) {  // int8 state: (codes, scales)
          const py::tuple pair = slot;
          if (pair.size() != 2) raise_value("internal: int8 state is (codes, scales)");
          const Py_buffer* cv = hold(pair[0], true, what, state_dtype);
          if (state_dtype != DType::int8)
            raise_type(what + ": the codes of int8 state are uint8, got " +
                       dtype_name(state_dtype));
          if (!same_shape(*cv, *p))
            raise_value(what + ": codes have shape " + shape_text(*cv) + ", param has " +
                        shape_text(*p));
          DType scale_dtype;
          const std::string scales_what = name + " state '" + opts.slot_name(s) + "_scales'";
          const Py_buffer* kv = hold(pair[1], true, scales_what, scale_dtype);
          const std::size_t want = scale_count(b.size, block_size);
          if (scale_dtype != DType::float32 ||
              static_cast<std::size_t>(kv->len / kv->itemsize) != want)
            raise_value(scales_what + ": int8 state keeps one float32 scale per block of " +
                        std::to_string(block_size) + " elements, " + std::to_string(want) +
                        " for " + std::to_string(b.size) + " elements; got " +
                        std::to_string(kv->len / kv->itemsize) + " of " +
                        dtype_name(scale_dtype));
          if (slots_dtype && *slots_dtype != state_dtype)
            raise_type(what + ": state has dtype int8, the param's other state " +
                       dtype_name(*slots_dtype));
          slots_dtype = state_dtype;
          b.state[s] = cv->buf;
          b.scales[s] = static_cast<float*>(kv->buf);
          add_range(*cv, true, what);
          add_range(*kv, true, scales_what);
          continue;
        }
        const Py_buffer* sv = hold(slot, true, what, state_dtype);
        if (state_dtype == DType::int8)
          raise_type(what + ": uint8 state is int8 codes; pass (codes, scales)");
        if (!same_shape(*sv, *p))
          raise_value(what + ": state has shape " + shape_text(*sv) + ", param has " +
                      shape_text(*p));
        if (slots_dtype && *slots_dtype != state_dtype)
          raise_type(what + ": state has dtype " + dtype_name(state_dtype) +
                     ", the param's other state " + dtype_name(*slots_dtype));
        slots_dtype = state_dtype;
        b.state[s] = sv->buf;
        add_range(*sv, true, what);
      }
      StreamTypes types(param_dtype, grad_dtype, slots_dtype.value_or(param_dtype),
                        !masters[i].is_none(), rounding);
      if (types.state == DType::int8) types.block_size = block_size;
      if (types.master) {
        const std::string what = name + " state 'master_param'";
        DType master_dtype;
        const Py_buffer* mv = hold(masters[i], true, what, master_dtype);
        if (master_dtype != DType::float32 || !same_shape(*mv, *p))
          raise_value(what + ": a master copy is float32 and shaped like its param; got " +
                      dtype_name(master_dtype) + " " + shape_text(*mv) + " for a param of " +
                      shape_text(*p));
        b.master = mv->buf;
        add_range(*mv, true, what);
      }
      if (!slots_dtype) {  // a stateless step (SGD without momentum): state follows the param
        if (types.master) types.state = DType::float32;
      }
      check_types(types, [&] { return name; });
      if (opts.scalar_count() > 0) {
        const std::string what = name + " state '" + opts.scalar_name(0) + "'";
        DType scalar_dtype;
        const Py_buffer* sv = hold(scalars[i], true, what, scalar_dtype);
        if (sv->len / sv->itemsize != static_cast<Py_ssize_t>(opts.scalar_count()))
          raise_value(what + ": expected " + std::to_string(opts.scalar_count()) +
                      " value(s), got " + std::to_string(sv->len / sv->itemsize));
        b.scalar_state = sv->buf;
        b.scalar_dtype = scalar_dtype;
        check_scalar_state(opts, b.scalar_state, b.scalar_dtype, [&] { return name; });
        add_range(*sv, true, what);
      }
      auto batch = std::find_if(batches.begin() + static_cast<std::ptrdiff_t>(first_batch),
                                batches.end(),
                                [&](const Batch& x) { return same_types(x.types, types); });
      if (batch == batches.end()) {
        batches.push_back({&opts, types, {}});
        batch = batches.end() - 1;
      }
      batch->buffers.push_back(b);
    }
  }
  check_overlaps(ranges, [&](const Range& r) {
    return range_names[static_cast<std::size_t>(r.param)];
  });
  check_then_run(batches, num_threads, {inv_scale, clip_coef});
  std::size_t g = 0;
  for (py::handle group_handle : groups)
    options[g++]->advance_into(py::reinterpret_borrow<py::tuple>(group_handle)[0].cast<py::dict>());
}

// ---- the torch front's cached plan -----------------------------------------------------------
// A table per (group, stream types): rows of int64
//   param, grad, state0, state1, state2, element count, step counter address, param index,
//   scalar state address (0 if the rule keeps none), flags (bit 0: the step counter is float64,
//   bit 1: the scalar state is float64, bit 2: the rounding counter is float64; else float32),
//   master copy address (0: none), stochastic rounding's counter address (0: the step counter;
//   SGD keeps one of its own), and for int8 state the float32 scales of state0-2 (0: none)
// and the table's types: (param dtype, grad dtype, state dtype, master, stochastic, seed,
// block size)
// that the front built from tensors it checked, and re-checks (address, size, strides) before
// every step. Each row's step counter is read and checked for every row of every table, all
// batches are validated, and only then is anything written; the counters are incremented
// after the kernels ran (the driver writes the scalar state).
constexpr std::size_t kColumns = 15;
constexpr std::int64_t kStepF64 = 1, kScalarF64 = 2, kRoundingF64 = 4;

struct PlanTable {
  const std::int64_t* rows;
  std::size_t count;
  StreamTypes types;
};

DType parse_dtype(const std::string& name) {
  for (DType d : {DType::float32, DType::float64, DType::bfloat16, DType::float16, DType::int8})
    if (name == dtype_name(d)) return d;
  raise_type("unsupported dtype " + name);
}

StreamTypes parse_types(const py::tuple& t) {
  if (t.size() != 6 && t.size() != 7) raise_value("internal: table types must have 6 or 7 entries");
  StreamTypes types(parse_dtype(t[0].cast<std::string>()), parse_dtype(t[1].cast<std::string>()),
                    parse_dtype(t[2].cast<std::string>()), t[3].cast<bool>(),
                    {t[4].cast<bool>(), t[5].cast<std::uint64_t>()});
  if (t.size() == 7) types.block_size = t[6].cast<std::size_t>();
  if (types.state == DType::int8) fastoptim::check_block_size(types.block_size);
  return types;
}

PlanTable plan_table(const py::buffer& table_obj, const py::tuple& types, py::buffer_info& info) {
  info = table_obj.request();
  if (info.ndim != 2 || info.shape[1] != static_cast<py::ssize_t>(kColumns) ||
      info.itemsize != 8 || info.format.find_first_of("qlQL") == std::string::npos ||
      info.strides[1] != 8 || info.strides[0] != static_cast<py::ssize_t>(8 * kColumns))
    raise_value("internal: pointer table must be a C-contiguous int64 array of shape (n, 15)");
  PlanTable table{static_cast<const std::int64_t*>(info.ptr),
                  static_cast<std::size_t>(info.shape[0]), parse_types(types)};
  check_types(table.types, [] { return std::string("a plan table"); });
  return table;
}

// Bytes per element of each stream of a row: param, grad, state 0-2, master.
std::array<std::size_t, 6> stream_sizes(const StreamTypes& t) {
  const std::size_t state = item_size(t.state);
  return {item_size(t.param), item_size(t.grad), state, state, state, std::size_t{4}};
}

// Every buffer of every table; raises if a written one shares memory with any other. Returns
// the written ranges sorted by address, (n, 2) int64 [begin, end): step_plans checks each new
// grad against them. tables: list of (table, types).
py::array_t<std::int64_t> check_plan_memory(const std::string& rule_name, py::dict group,
                                            py::list tables) {
  const GroupOptions opts(rule_index(rule_name), group);
  std::vector<Range> ranges;
  std::vector<py::buffer_info> infos(py::len(tables));
  std::size_t t = 0;
  for (py::handle item : tables) {
    py::tuple spec = py::reinterpret_borrow<py::tuple>(item);
    const PlanTable table =
        plan_table(spec[0].cast<py::buffer>(), spec[1].cast<py::tuple>(), infos[t++]);
    const auto sizes = stream_sizes(table.types);
    for (std::size_t i = 0; i < table.count; ++i) {
      const std::int64_t* r = table.rows + kColumns * i;
      const auto count = static_cast<std::uintptr_t>(r[5]);
      if (count == 0) continue;
      for (int stream = 0; stream < 6; ++stream) {
        const std::int64_t address = r[stream == 5 ? 10 : stream];
        if (address == 0) continue;
        const auto begin = static_cast<std::uintptr_t>(address);
        ranges.push_back({begin, begin + count * sizes[static_cast<std::size_t>(stream)],
                          stream != 1, r[7], stream == 5 ? 7 : stream});
      }
      for (int k = 0; k < 3; ++k)
        if (r[12 + k] != 0)
          ranges.push_back({static_cast<std::uintptr_t>(r[12 + k]),
                            static_cast<std::uintptr_t>(r[12 + k]) +
                                4 * scale_count(count, table.types.block_size),
                            true, r[7], 9 + k});
      if (r[11] != 0)
        ranges.push_back({static_cast<std::uintptr_t>(r[11]),
                          static_cast<std::uintptr_t>(r[11]) + (r[9] & kRoundingF64 ? 8u : 4u),
                          true, r[7], 8});
      ranges.push_back({static_cast<std::uintptr_t>(r[6]),
                        static_cast<std::uintptr_t>(r[6]) + (r[9] & kStepF64 ? 8u : 4u), true,
                        r[7], 5});
      if (r[8] != 0)
        ranges.push_back({static_cast<std::uintptr_t>(r[8]),
                          static_cast<std::uintptr_t>(r[8]) +
                              opts.scalar_count() * (r[9] & kScalarF64 ? 8u : 4u),
                          true, r[7], 6});
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

// batches: list of (group dict, table, types); written: check_plan_memory's ranges of the same
// tables (the grads are the only pointers that change between plan rebuilds).
// groups: every param group, for a rule with group state (rules/rule.hpp: advance), each
// advanced once after the step ran, whether or not it had batches.
void step_plans(const std::string& rule_name, py::list batch_specs, py::buffer written_obj,
                int num_threads, double inv_scale, double clip_coef, py::list groups) {
  const fastoptim::GradFactors factors{inv_scale, clip_coef};
  const std::size_t rule = rule_index(rule_name);
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
    if (spec.size() != 3) raise_value("internal: batch spec must have 3 entries");
    const py::handle group = spec[0];
    if (!last_group || !group.is(last_group)) {
      options.push_back(std::make_unique<GroupOptions>(rule, group.cast<py::dict>()));
      last_group = group;
    }
    const GroupOptions& opts = *options.back();
    const PlanTable table =
        plan_table(spec[1].cast<py::buffer>(), spec[2].cast<py::tuple>(), infos[t++]);
    tables.push_back(table);
    Batch batch{&opts, table.types, std::vector<ParamBuffers>(table.count)};
    const std::size_t grad_bytes = item_size(table.types.grad);
    for (std::size_t i = 0; i < table.count; ++i) {
      const std::int64_t* r = table.rows + kColumns * i;
      ParamBuffers& b = batch.buffers[i];
      b.param = reinterpret_cast<void*>(r[0]);
      b.grad = reinterpret_cast<const void*>(r[1]);
      for (int s = 0; s < 3; ++s) b.state[s] = reinterpret_cast<void*>(r[2 + s]);
      for (int s = 0; s < 3; ++s) b.scales[s] = reinterpret_cast<float*>(r[12 + s]);
      b.size = static_cast<std::size_t>(r[5]);
      b.scalar_state = reinterpret_cast<void*>(r[8]);
      b.scalar_dtype = r[9] & kScalarF64 ? DType::float64 : DType::float32;
      b.master = reinterpret_cast<void*>(r[10]);
      b.id = static_cast<std::uint64_t>(r[7]);
      auto name = [r] { return "param " + std::to_string(r[7]); };
      if (r[6] == 0) raise_value("internal: null step pointer");
      if (opts.scalar_count() > 0 && r[8] == 0) raise_value("internal: null scalar state pointer");
      if (r[8] != 0) check_scalar_state(opts, b.scalar_state, b.scalar_dtype, name);
      const double count = r[9] & kStepF64 ? *reinterpret_cast<const double*>(r[6])
                                           : *reinterpret_cast<const float*>(r[6]);
      b.step = next_step(count, name);
      if (r[11] != 0)
        b.rounding_step = next_step(r[9] & kRoundingF64 ? *reinterpret_cast<const double*>(r[11])
                                                        : *reinterpret_cast<const float*>(r[11]),
                                    name);
      const auto bytes = static_cast<std::int64_t>(b.size * grad_bytes);
      if (bytes > 0 && grad_overlaps(r[1], r[1] + bytes))
        raise_value(name() + " grad shares memory with a param or state buffer the step writes; "
                    "every param and state buffer must be a separate tensor");
    }
    batches.push_back(std::move(batch));
  }
  std::vector<std::unique_ptr<GroupOptions>> group_options;  // parsed before anything runs
  for (py::handle group : groups)
    group_options.push_back(std::make_unique<GroupOptions>(rule, group.cast<py::dict>()));
  check_then_run(batches, num_threads, factors);
  std::size_t g = 0;
  for (py::handle group : groups) group_options[g++]->advance_into(group.cast<py::dict>());
  for (const PlanTable& table : tables)
    for (std::size_t i = 0; i < table.count; ++i) {
      const std::int64_t* r = table.rows + kColumns * i;
      if (r[9] & kStepF64) *reinterpret_cast<double*>(r[6]) += 1.0;
      else *reinterpret_cast<float*>(r[6]) += 1.0f;
      if (r[11] == 0) continue;
      if (r[9] & kRoundingF64) *reinterpret_cast<double*>(r[11]) += 1.0;
      else *reinterpret_cast<float*>(r[11]) += 1.0f;
    }
}

// A rule's transform `index` (Schedule-Free's train/eval) over every group whose mode flag is
// not at the transform's target yet, then the flags set. groups: every param group; batches:
// (group, table, types) with plan-table rows (param, state slots, element count, param index,
// master: columns 0, 2-4, 5, 7, 10; the grad column unused) of the params whose state exists.
// Every batch is checked before any runs.
void transform_plans(const std::string& rule_name, int index, py::list groups,
                     py::list batch_specs, int num_threads) {
  const std::size_t rule = rule_index(rule_name);
  std::vector<std::unique_ptr<GroupOptions>> options;
  std::vector<py::handle> group_handles;
  for (py::handle group : groups) {
    options.push_back(std::make_unique<GroupOptions>(rule, group.cast<py::dict>()));
    group_handles.push_back(group);
  }
  std::size_t count = 0;
  with_rule(rule, [&](auto r) { count = fastoptim::rules::transform_count<decltype(r)>(); });
  if (index < 0 || static_cast<std::size_t>(index) >= count)
    raise_value(rule_name + " has no transform " + std::to_string(index));
  std::vector<py::buffer_info> infos(py::len(batch_specs));
  std::vector<Batch> batches;
  std::size_t t = 0;
  for (py::handle item : batch_specs) {
    py::tuple spec = py::reinterpret_borrow<py::tuple>(item);
    const auto at = std::find_if(group_handles.begin(), group_handles.end(),
                                 [&](py::handle g) { return g.is(spec[0]); });
    if (at == group_handles.end()) raise_value("internal: a batch of no listed group");
    const GroupOptions& opts = *options[static_cast<std::size_t>(at - group_handles.begin())];
    if (!opts.transform_pending(index)) continue;
    const PlanTable table =
        plan_table(spec[1].cast<py::buffer>(), spec[2].cast<py::tuple>(), infos[t++]);
    Batch batch{&opts, table.types, std::vector<ParamBuffers>(table.count)};
    for (std::size_t i = 0; i < table.count; ++i) {
      const std::int64_t* r = table.rows + kColumns * i;
      ParamBuffers& b = batch.buffers[i];
      b.param = reinterpret_cast<void*>(r[0]);
      for (int s = 0; s < 3; ++s) b.state[s] = reinterpret_cast<void*>(r[2 + s]);
      for (int s = 0; s < 3; ++s) b.scales[s] = reinterpret_cast<float*>(r[12 + s]);
      b.size = static_cast<std::size_t>(r[5]);
      b.id = static_cast<std::uint64_t>(r[7]);
      b.master = reinterpret_cast<void*>(r[10]);
    }
    batches.push_back(std::move(batch));
  }
  {
    py::gil_scoped_release release;
    for (const Batch& batch : batches)
      batch.options->transform(index, batch.types, batch.buffers, num_threads);
  }
  for (std::size_t g = 0; g < options.size(); ++g)
    if (options[g]->transform_pending(index))
      options[g]->finish_transform(index, group_handles[g].cast<py::dict>());
}

// The grads of plan tables (column 1, sizes in column 5): (total norm, any non-finite).
py::tuple grad_norm_plans(py::list tables_spec, double norm_type, int num_threads) {
  std::vector<py::buffer_info> infos(py::len(tables_spec));
  GradsByDtype grads;
  std::size_t t = 0;
  for (py::handle item : tables_spec) {
    py::tuple spec = py::reinterpret_borrow<py::tuple>(item);
    const PlanTable table =
        plan_table(spec[0].cast<py::buffer>(), spec[1].cast<py::tuple>(), infos[t++]);
    auto& into = grads[norm_index(table.types.grad, "grad_norm")];
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
    const std::string what = "grad " + std::to_string(index++);
    const DType dtype = acquire(*views.back(), grad, false, what);
    ParamBuffers b;
    b.grad = views.back()->view.buf;
    b.size = static_cast<std::size_t>(views.back()->view.len / views.back()->view.itemsize);
    grads[norm_index(dtype, what)].push_back(b);
  }
  return total_norm(grads, norm_type, num_threads);
}

// Names of the state slots these options use (None for an unused slot); validates the options.
py::list state_slots(const std::string& rule_name, py::dict group) {
  const GroupOptions opts(rule_index(rule_name), group);
  py::list slots;
  for (int s = 0; s < 3; ++s) {
    if (opts.uses_slot(s)) slots.append(opts.slot_name(s));
    else slots.append(py::none());
  }
  return slots;
}

// Blockwise 8-bit (de)quantization of int8 state (fastoptim::quantize/dequantize): values
// (float32, read), codes (uint8, written), scales (float32, written), one per block; and back.
// The sizes are checked before anything is written.
void check_quantized(const Py_buffer& codes, const Py_buffer& scales, std::size_t count,
                     std::size_t block_size, DType codes_dtype, DType scales_dtype) {
  const std::size_t want = scale_count(count, block_size);
  if (codes_dtype != DType::int8 || static_cast<std::size_t>(codes.len) != count)
    raise_value("codes: expected " + std::to_string(count) + " uint8 codes, got " +
                std::to_string(codes.len / codes.itemsize) + " of " + dtype_name(codes_dtype));
  if (scales_dtype != DType::float32 ||
      static_cast<std::size_t>(scales.len / scales.itemsize) != want)
    raise_value("scales: expected " + std::to_string(want) + " float32 scales (blocks of " +
                std::to_string(block_size) + "), got " +
                std::to_string(scales.len / scales.itemsize) + " of " + dtype_name(scales_dtype));
}

void quantize_buffers(py::handle values, py::handle codes, py::handle scales,
                      std::size_t block_size, bool signed_map) {
  fastoptim::check_block_size(block_size);
  BufferView v, c, k;
  const DType vd = acquire(v, values, false, "values");
  if (vd != DType::float32) raise_value("values: expected float32, got " + std::string(dtype_name(vd)));
  const DType cd = acquire(c, codes, true, "codes");
  const DType kd = acquire(k, scales, true, "scales");
  const auto count = static_cast<std::size_t>(v.view.len / 4);
  check_quantized(c.view, k.view, count, block_size, cd, kd);
  py::gil_scoped_release release;
  fastoptim::quantize(static_cast<const float*>(v.view.buf), count, block_size, signed_map,
                      static_cast<std::uint8_t*>(c.view.buf), static_cast<float*>(k.view.buf));
}

void dequantize_buffers(py::handle codes, py::handle scales, py::handle values,
                        std::size_t block_size, bool signed_map) {
  fastoptim::check_block_size(block_size);
  BufferView v, c, k;
  const DType cd = acquire(c, codes, false, "codes");
  const DType kd = acquire(k, scales, false, "scales");
  const DType vd = acquire(v, values, true, "values");
  if (vd != DType::float32) raise_value("values: expected float32, got " + std::string(dtype_name(vd)));
  const auto count = static_cast<std::size_t>(v.view.len / 4);
  check_quantized(c.view, k.view, count, block_size, cd, kd);
  py::gil_scoped_release release;
  fastoptim::dequantize(static_cast<const std::uint8_t*>(c.view.buf),
                        static_cast<const float*>(k.view.buf), count, block_size, signed_map,
                        static_cast<float*>(v.view.buf));
}

}  // namespace

bool register_plan_guard(PyObject* module);  // _plan_guard.cpp (false: a Python error)

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
        py::arg("clip_coef") = 1.0, py::arg("groups") = py::list());
  m.def("transform_plans", &transform_plans, py::arg("rule"), py::arg("index"),
        py::arg("groups"), py::arg("batches"), py::arg("num_threads"));
  m.def(
      "step_refused",
      [](const std::string& rule, py::dict group) -> py::object {
        const char* message = GroupOptions(rule_index(rule), group).refused();
        return message ? py::object(py::str(message)) : py::object(py::none());
      },
      py::arg("rule"), py::arg("group"));
  m.def(
      "check_types",
      [](const std::string& where, const py::tuple& types) {
        check_types(parse_types(types), [&] { return where; });
      },
      py::arg("where"), py::arg("types"));
  m.def("check_plan_memory", &check_plan_memory, py::arg("rule"), py::arg("group"),
        py::arg("tables"));
  m.attr("max_step_count") = fastoptim::kMaxStepCount;
  m.def("rules", &rules_info);
  m.def("layouts", [] {
    py::list out;
    for (const StreamTypes& t : fastoptim::layouts())
      out.append(py::dict(py::arg("param") = dtype_name(t.param),
                          py::arg("grad") = dtype_name(t.grad),
                          py::arg("state") = dtype_name(t.state), py::arg("master") = t.master));
    return out;
  });
  m.def("state_slots", &state_slots, py::arg("rule"), py::arg("group"));
  m.def("simd_level", &fastoptim::simd_level);
  m.def("available_simd_levels", &fastoptim::available_simd_levels);
  m.def("set_simd_level", &fastoptim::set_simd_level, py::arg("level"));
  m.def("set_num_threads", &fastoptim::set_num_threads, py::arg("num_threads"));
  m.def("get_num_threads", &fastoptim::get_num_threads);
  m.def("openmp_enabled", &fastoptim::openmp_enabled);
  m.def("openmp_runtime", &fastoptim::openmp_runtime);
  m.attr("serial_threshold") = fastoptim::kSerialThreshold;
  m.def("quantize", &quantize_buffers, py::arg("values"), py::arg("codes"), py::arg("scales"),
        py::arg("block_size"), py::arg("signed"));
  m.def("dequantize", &dequantize_buffers, py::arg("codes"), py::arg("scales"),
        py::arg("values"), py::arg("block_size"), py::arg("signed"));
  m.def("dynamic_map", [](bool signed_map) {
    py::list out;
    const float* map = fastoptim::dynamic_map(signed_map);
    for (int c = 0; c < 256; ++c) out.append(map[c]);
    return out;
  }, py::arg("signed"));
  m.def("check_block_size", [](py::object value) {
    py::dict group;
    group["block_size"] = value;
    return block_size_of(group);
  }, py::arg("block_size"));
  if (!register_plan_guard(m.ptr())) throw py::error_already_set();
}
