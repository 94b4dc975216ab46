// The torch front's per-step plan check, in C++: before every step the front must know that
// every tensor its cached pointer tables point to (params, state buffers, master copies, step
// counters, grads) still has the memory it had (nothing read or written outside a tensor's
// current memory, whatever the user did in between: resize_, .data swaps, set_, a storage
// resized or freed). Reading address, shape and strides through torch's Python methods costs
// ~80 ns per tensor and call; here they are read through torch's stable C ABI, AOTInductor's
// shim (torch/csrc/inductor/aoti_torch/c/shim.h: extern "C" functions of libtorch_cpu over
// an opaque handle, an at::Tensor that shares the tensor's TensorImpl and so sees every
// change to it), at a few ns per tensor. fastoptim neither includes nor links torch: the
// functions are looked up at run time in the libtorch_cpu the process has loaded, and the
// front falls back to its Python check where they are missing (older torch).
// Written against Python's C API, not pybind11: this unit compiles in well under a second
// instead of six (the build's wall time is what a new user waits for).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <new>
#include <utility>
#include <vector>

#if defined(_WIN32)
#include <windows.h>
#else
#include <dlfcn.h>
#endif

namespace {

using Handle = void*;
using Error = std::int32_t;  // AOTITorchError: 0 is success

struct Shim {
  Error (*data_ptr)(Handle, void**) = nullptr;
  Error (*dim)(Handle, std::int64_t*) = nullptr;
  Error (*sizes)(Handle, std::int64_t**) = nullptr;
  Error (*strides)(Handle, std::int64_t**) = nullptr;
  Error (*dtype)(Handle, std::int32_t*) = nullptr;
  Error (*storage_offset)(Handle, std::int64_t*) = nullptr;
  Error (*storage_size)(Handle, std::int64_t*) = nullptr;
  std::size_t (*element_size)(std::int32_t) = nullptr;
  Error (*release)(Handle) = nullptr;
};

Shim g_shim;
bool g_loaded = false;
// torch._C._aoti's unsafe_alloc_void_ptrs_from_tensors: handles for a list of tensors (kept
// for the life of the process: never released at interpreter exit)
PyObject* g_new_handles = nullptr;

template <class F>
bool find(void* library, const char* name, F& out) {
#if defined(_WIN32)
  out = reinterpret_cast<F>(GetProcAddress(static_cast<HMODULE>(library), name));
#else
  out = reinterpret_cast<F>(dlsym(library, name));
#endif
  return out != nullptr;
}

// load_torch_shim(library, new_handles): library is the path of the libtorch_cpu the process
// loaded (never loads another copy).
PyObject* load_torch_shim(PyObject*, PyObject* args) {
  const char* library = nullptr;
  PyObject* new_handles = nullptr;
  if (!PyArg_ParseTuple(args, "sO:load_torch_shim", &library, &new_handles)) return nullptr;
#if defined(_WIN32)
  void* lib = GetModuleHandleA(library);
#else
  void* lib = dlopen(library, RTLD_LAZY | RTLD_NOLOAD);
#endif
  if (lib == nullptr) Py_RETURN_FALSE;
  Shim s;
  const bool ok = find(lib, "aoti_torch_get_data_ptr", s.data_ptr) &&
                  find(lib, "aoti_torch_get_dim", s.dim) &&
                  find(lib, "aoti_torch_get_sizes", s.sizes) &&
                  find(lib, "aoti_torch_get_strides", s.strides) &&
                  find(lib, "aoti_torch_get_dtype", s.dtype) &&
                  find(lib, "aoti_torch_get_storage_offset", s.storage_offset) &&
                  find(lib, "aoti_torch_get_storage_size", s.storage_size) &&
                  find(lib, "aoti_torch_dtype_element_size", s.element_size) &&
                  find(lib, "aoti_torch_delete_tensor_object", s.release);
  if (!ok) Py_RETURN_FALSE;
  g_shim = s;
  Py_INCREF(new_handles);
  Py_XSETREF(g_new_handles, new_handles);
  g_loaded = true;
  Py_RETURN_TRUE;
}

PyObject* torch_shim_loaded(PyObject*, PyObject*) { return PyBool_FromLong(g_loaded); }

// Handles for a list of tensors, appended to `out` (owned by the caller from here on); false
// with a Python error set if torch refuses one (not a plain tensor).
bool new_handles(PyObject* tensors, std::vector<Handle>& out) {
  PyObject* capsules = PyObject_CallOneArg(g_new_handles, tensors);
  if (capsules == nullptr) return false;
  PyObject* items = PySequence_Fast(capsules, "internal: handles must be a sequence");
  Py_DECREF(capsules);
  if (items == nullptr) return false;
  bool ok = true;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
  for (Py_ssize_t i = 0; i < n; ++i) {
    void* h = PyCapsule_GetPointer(PySequence_Fast_GET_ITEM(items, i), nullptr);
    if (h == nullptr) {  // (the handles taken so far are the caller's to release)
      ok = false;
      break;
    }
    out.push_back(h);
  }
  Py_DECREF(items);
  return ok;
}

// A tensor of this exact type (torch.Tensor) is read through the at::Tensor its Python object
// holds, right after the object header (torch/csrc/autograd/python_variable.h: THPVariable is
// PyObject_HEAD then at::Tensor cdata; the layout every C++ extension compiles against), instead
// of a new handle per tensor and step (a Python call, a heap at::Tensor and a capsule each: a
// third of the check for new grads). Used only after enable_direct_tensors found that layout
// in the running torch; such a handle lives as long as the object, which the guard holds.
PyTypeObject* g_direct_type = nullptr;

Handle direct_handle(PyObject* tensor) {
  return reinterpret_cast<char*>(tensor) + sizeof(PyObject);
}

// enable_direct_tensors(tensors): for probes of one type (torch.Tensor), whether each object's
// at::Tensor after its header is the tensor a handle from torch sees (same TensorImpl, same
// address); if so, that type is read directly from then on.
PyObject* enable_direct_tensors(PyObject*, PyObject* tensors) {
  if (!g_loaded || !PyList_Check(tensors) || PyList_GET_SIZE(tensors) == 0) Py_RETURN_FALSE;
  std::vector<Handle> handles;
  const bool made = new_handles(tensors, handles);
  PyTypeObject* type = Py_TYPE(PyList_GET_ITEM(tensors, 0));
  bool same = made && handles.size() == static_cast<std::size_t>(PyList_GET_SIZE(tensors));
  for (std::size_t i = 0; same && i < handles.size(); ++i) {
    PyObject* t = PyList_GET_ITEM(tensors, static_cast<Py_ssize_t>(i));
    const Handle direct = direct_handle(t);
    void *a = nullptr, *b = nullptr;
    std::int64_t da = -1, db = -2;
    same = Py_TYPE(t) == type &&
           *static_cast<void* const*>(direct) == *static_cast<void* const*>(handles[i]) &&
           !g_shim.data_ptr(direct, &a) && !g_shim.data_ptr(handles[i], &b) && a == b &&
           !g_shim.dim(direct, &da) && !g_shim.dim(handles[i], &db) && da == db;
  }
  for (Handle h : handles) g_shim.release(h);
  if (!made) PyErr_Clear();
  g_direct_type = same ? type : nullptr;
  return PyBool_FromLong(same);
}

// What a tensor was when the plan was built: address, dtype, sizes and strides.
struct Record {
  Handle handle = nullptr;
  bool owned = true;  // a handle of its own (released with the record), not a direct one
  void* ptr = nullptr;
  std::int32_t dtype = 0;
  std::vector<std::int64_t> shape;  // sizes, then strides
};

// The tensor behind `h` as it is now, or false if the shim cannot tell (a tensor without
// storage: sparse, a freed storage whose elements are not allocated).
bool read(Handle h, Record& out) {
  std::int64_t dim = 0, *sizes = nullptr, *strides = nullptr;
  if (g_shim.data_ptr(h, &out.ptr) || g_shim.dim(h, &dim) || g_shim.sizes(h, &sizes) ||
      g_shim.strides(h, &strides) || g_shim.dtype(h, &out.dtype))
    return false;
  out.shape.assign(sizes, sizes + dim);
  out.shape.insert(out.shape.end(), strides, strides + dim);
  return true;
}

// Whether `h` is still `r`: same address, dtype, sizes and strides (a freed storage reads as
// address 0, a reallocated one as another address).
bool unchanged(Handle h, const Record& r) {
  void* ptr = nullptr;
  std::int32_t dtype = 0;
  std::int64_t dim = 0, *sizes = nullptr, *strides = nullptr;
  if (g_shim.data_ptr(h, &ptr) || ptr != r.ptr || g_shim.dtype(h, &dtype) || dtype != r.dtype ||
      g_shim.dim(h, &dim) || static_cast<std::size_t>(2 * dim) != r.shape.size())
    return false;
  if (dim == 0) return true;
  if (g_shim.sizes(h, &sizes) || g_shim.strides(h, &strides)) return false;
  bool same = true;  // (a plain loop: a few dims, where memcmp's call costs more)
  for (std::int64_t d = 0; d < dim; ++d)
    same &= sizes[d] == r.shape[static_cast<std::size_t>(d)] &&
            strides[d] == r.shape[static_cast<std::size_t>(dim + d)];
  return same;
}

// Whether every record's tensor is unchanged. The check's cost is the cache misses on each
// tensor's TensorImpl (thousands of them, scattered over the heap): the TensorImpl a few
// records ahead is prefetched. A handle is an at::Tensor*, whose one member is its
// TensorImpl* (the shim's ABI); a prefetch is only a hint, it reads nothing.
bool all_unchanged(const std::vector<Record>& records) {
  constexpr std::size_t kAhead = 6;
  const std::size_t n = records.size();
  for (std::size_t i = 0; i < n; ++i) {
#if defined(__GNUC__)
    if (i + kAhead < n) {
      const char* impl = *static_cast<char* const*>(records[i + kAhead].handle);
      __builtin_prefetch(impl);
      __builtin_prefetch(impl + 64);
      __builtin_prefetch(impl + 128);
    }
#endif
    if (!unchanged(records[i].handle, records[i])) return false;
  }
  return true;
}

// Whether the storage behind `h` holds every element its sizes and strides address. Asked
// once per tensor: a storage cannot shrink without moving (torch reallocates it, or frees it
// to address 0), so a tensor found unchanged later still has that memory.
bool has_memory(Handle h, const Record& r, void* ptr) {
  const std::size_t dim = r.shape.size() / 2;
  std::int64_t extent = 1, offset = 0, storage = 0;
  for (std::size_t d = 0; d < dim; ++d) {
    if (r.shape[d] == 0) return true;
    extent += (r.shape[d] - 1) * r.shape[dim + d];
  }
  if (g_shim.storage_offset(h, &offset) || g_shim.storage_size(h, &storage)) return false;
  const std::size_t item = g_shim.element_size(r.dtype);
  return ptr != nullptr && (offset + extent) * static_cast<std::int64_t>(item) <= storage;
}

// Whether the tensor behind `h` has `r`'s dtype, sizes and strides, and memory for every
// element they address; its address in `ptr`. (No allocation: new grads are taken every step.)
bool same_layout(Handle h, const Record& r, void*& ptr) {
  std::int32_t dtype = 0;
  std::int64_t dim = 0, *sizes = nullptr, *strides = nullptr;
  if (g_shim.data_ptr(h, &ptr) || g_shim.dtype(h, &dtype) || dtype != r.dtype ||
      g_shim.dim(h, &dim) || static_cast<std::size_t>(2 * dim) != r.shape.size())
    return false;
  if (dim > 0) {
    if (g_shim.sizes(h, &sizes) || g_shim.strides(h, &strides)) return false;
    for (std::int64_t d = 0; d < dim; ++d)
      if (sizes[d] != r.shape[static_cast<std::size_t>(d)] ||
          strides[d] != r.shape[static_cast<std::size_t>(dim + d)])
        return false;
  }
  return has_memory(h, r, ptr);
}

// p.grad. For a param whose type finds `grad` where torch.Tensor does (TensorBase's getset
// descriptor) through the generic attribute lookup, that descriptor's getter is called
// directly: the same call p.grad makes, without the lookup through the type's MRO (a fifth
// of the check's time for one-element params). The last such type is remembered with its
// version tag, which changes when the type or a base is modified.
PyObject* grad_of(PyObject* p) {
  static PyObject* const name = PyUnicode_InternFromString("grad");
  static PyObject* descr = nullptr;  // TensorBase.__dict__["grad"], found on first use
  static PyTypeObject* known = nullptr;
  static unsigned int known_version = 0;
  PyTypeObject* type = Py_TYPE(p);
  if (type == known && type->tp_version_tag == known_version &&
      PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG))
    return Py_TYPE(descr)->tp_descr_get(descr, p, reinterpret_cast<PyObject*>(type));
  if (descr == nullptr) {
    PyObject* module_name = PyUnicode_FromString("torch._C");
    PyObject* torch_c = module_name ? PyImport_GetModule(module_name) : nullptr;
    Py_XDECREF(module_name);
    PyObject* base = torch_c ? PyObject_GetAttrString(torch_c, "TensorBase") : nullptr;
    Py_XDECREF(torch_c);
    PyObject* found = base && PyType_Check(base)
                          ? PyDict_GetItemString(reinterpret_cast<PyTypeObject*>(base)->tp_dict,
                                                 "grad")
                          : nullptr;
    Py_XDECREF(base);
    PyErr_Clear();
    if (found == nullptr || !PyObject_TypeCheck(found, &PyGetSetDescr_Type))
      return PyObject_GetAttr(p, name);
    Py_INCREF(found);
    descr = found;  // kept for the life of the process
  }
  if (type->tp_getattro == PyObject_GenericGetAttr && _PyType_Lookup(type, name) == descr &&
      PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)) {
    known = type;  // (compared by address only: its version tag is unique to it)
    known_version = type->tp_version_tag;
  }
  return PyObject_GetAttr(p, name);
}

PyObject* value_error(const char* what) {
  PyErr_SetString(PyExc_ValueError, what);
  return nullptr;
}

// A plan's pointer table, an (n, 15) int64 array the guard writes new grad addresses into
// (column 1); held through the buffer protocol for the guard's life.
struct Table {
  Py_buffer view{};
  bool held = false;
  std::int64_t& grad_address(std::size_t row) const {
    return *reinterpret_cast<std::int64_t*>(static_cast<char*>(view.buf) +
                                            static_cast<Py_ssize_t>(row) * view.strides[0] +
                                            view.strides[1]);
  }
};

class PlanGuard {
 public:
  PlanGuard() = default;
  PlanGuard(const PlanGuard&) = delete;
  PlanGuard& operator=(const PlanGuard&) = delete;
  ~PlanGuard() {
    for (const Record& r : watched_) g_shim.release(r.handle);
    for (const Record& r : grad_records_)
      if (r.handle != nullptr && r.owned) g_shim.release(r.handle);
    for (Table& t : tables_)
      if (t.held) PyBuffer_Release(&t.view);
    for (PyObject* g : grads_) Py_XDECREF(g);
    Py_XDECREF(params_);
  }

  // After a step, the grads' handles and references go: torch's optimizers keep no grad alive
  // past a step (zero_grad(set_to_none=True) frees them before backward makes new ones, and a
  // grad held here would double the grads' peak memory). The next check takes whichever grads
  // the params have then; their records keep dtype, sizes and strides to compare with. Grads
  // read through staging copies are kept: a new grad tensor rebuilds that plan anyway.
  void forget_grads() {
    if (fixed_grads_) return;
    for (Record& r : grad_records_) {
      if (r.handle != nullptr && r.owned) g_shim.release(r.handle);
      r.handle = nullptr;
    }
    for (PyObject*& g : grads_)
      if (g != Py_None) Py_CLEAR(g);  // null: a grad was there, not known which
  }

  // watched: every tensor the tables point to but the grads (params included); params: the
  // group's params; grads: the grad (or None) of each param; tables / rows: the plan's
  // pointer tables and, per table, the live-grad position of each row (column 1 holds that
  // grad's address); fixed_grads: the grads are read through staging copies, so a new grad
  // tensor needs a new plan. False with a Python error set.
  bool take(PyObject* watched, PyObject* params, PyObject* grads, PyObject* tables,
            PyObject* rows, bool fixed_grads) {
    Py_INCREF(params);
    params_ = params;
    fixed_grads_ = fixed_grads;
    std::vector<Handle> handles;
    const bool taken = new_handles(watched, handles);
    for (Handle h : handles) {
      watched_.emplace_back();
      watched_.back().handle = h;  // owned from here on: released with the guard
    }
    if (!taken) return false;
    for (Record& r : watched_)
      if (!read(r.handle, r)) return value_error("internal: a watched tensor is unreadable");
    std::size_t live = 0;
    const Py_ssize_t n = PyList_GET_SIZE(grads);
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* g = PyList_GET_ITEM(grads, i);
      Py_INCREF(g);
      grads_.push_back(g);
      live_index_.push_back(live);
      if (g != Py_None) ++live;
    }
    grad_rows_.resize(live);
    if (PyList_GET_SIZE(rows) != PyList_GET_SIZE(tables))
      return value_error("internal: one row list per table");
    tables_.resize(static_cast<std::size_t>(PyList_GET_SIZE(tables)));
    for (std::size_t t = 0; t < tables_.size(); ++t) {
      Table& table = tables_[t];
      if (PyObject_GetBuffer(PyList_GET_ITEM(tables, t), &table.view,
                             PyBUF_WRITABLE | PyBUF_STRIDES | PyBUF_FORMAT) != 0)
        return false;
      table.held = true;
      const char* format = table.view.format ? table.view.format : "B";
      const char code = format[0] == '<' || format[0] == '=' || format[0] == '@' ? format[1]
                                                                               : format[0];
      if (table.view.ndim != 2 || table.view.shape[1] != 15 || table.view.itemsize != 8 ||
          (code != 'q' && code != 'l'))
        return value_error("internal: pointer table must be an int64 array of shape (n, 15)");
      PyObject* positions = PyList_GET_ITEM(rows, t);
      if (!PyList_Check(positions)) return value_error("internal: rows must be lists");
      for (Py_ssize_t row = 0; row < PyList_GET_SIZE(positions); ++row) {
        const std::size_t position = PyLong_AsSize_t(PyList_GET_ITEM(positions, row));
        if (PyErr_Occurred()) return false;
        if (position >= live || row >= table.view.shape[0])
          return value_error("internal: a table row's grad position is out of range");
        grad_rows_[position].push_back({t, static_cast<std::size_t>(row)});
      }
    }
    PyObject* live_list = live_grads();
    if (live_list == nullptr) return false;
    handles.clear();
    const bool grads_taken = new_handles(live_list, handles);
    Py_DECREF(live_list);
    for (Handle h : handles) {
      grad_records_.emplace_back();
      grad_records_.back().handle = h;
    }
    if (!grads_taken) return false;
    for (Record& r : grad_records_)
      if (!read(r.handle, r)) return value_error("internal: a grad is unreadable");
    return true;
  }

  // Whether the plan still serves a step with these params and their grads; a new grad tensor
  // of the same dtype, sizes and strides is taken (its address written into the tables).
  // 1, 0, or -1 with a Python error set.
  int serves(PyObject* params) {
    const int ok = check(params);
    for (PyObject* g : now_) Py_DECREF(g);  // held by the params (and grads_), not this check
    now_.clear();
    return ok;
  }

 private:
  int check(PyObject* params) {
    if (!PyList_Check(params)) return 0;
    const Py_ssize_t n = PyList_GET_SIZE(params);
    if (n != PyList_GET_SIZE(params_)) return 0;
    for (Py_ssize_t i = 0; i < n; ++i)
      if (PyList_GET_ITEM(params, i) != PyList_GET_ITEM(params_, i)) return 0;
    if (!all_unchanged(watched_)) return 0;
    changed_.clear();
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* g = grad_of(PyList_GET_ITEM(params, i));
      if (g == nullptr) return -1;
      now_.push_back(g);
      PyObject* before = grads_[static_cast<std::size_t>(i)];
      if ((g == Py_None) != (before == Py_None)) return 0;
      if (g != before) changed_.push_back(static_cast<std::size_t>(i));
    }
    if (changed_.empty()) return all_unchanged(grad_records_) ? 1 : 0;
    if (!take_grads()) return 0;
    // the grads just taken were checked there; the others are checked as the watched ones
    std::size_t next = 0;
    for (std::size_t live = 0; live < grad_records_.size(); ++live) {
      while (next < changed_.size() && live_index_[changed_[next]] < live) ++next;
      if (next < changed_.size() && live_index_[changed_[next]] == live) continue;
      if (!unchanged(grad_records_[live].handle, grad_records_[live])) return 0;
    }
    return 1;
  }

  PyObject* live_grads() const {
    PyObject* out = PyList_New(0);
    if (out == nullptr) return nullptr;
    for (PyObject* g : grads_)
      if (g != Py_None && PyList_Append(out, g) != 0) {
        Py_DECREF(out);
        return nullptr;
      }
    return out;
  }

  // New grad tensors (now_[changed_]) in place of the old: taken when each has the old one's
  // dtype, sizes and strides (the tables' element order and sizes); their addresses go into
  // the tables. One call makes every new handle.
  bool take_grads() {
    if (fixed_grads_) return false;
    bool direct = g_direct_type != nullptr;
    for (std::size_t k = 0; direct && k < changed_.size(); ++k)
      direct = Py_TYPE(now_[changed_[k]]) == g_direct_type;
    handles_.clear();
    if (direct)
      for (std::size_t i : changed_) handles_.push_back(direct_handle(now_[i]));
    else if (!new_owned_handles()) return false;
    addresses_.resize(handles_.size());
    bool ok = true;
    for (std::size_t k = 0; ok && k < handles_.size(); ++k)
      ok = same_layout(handles_[k], grad_records_[live_index_[changed_[k]]], addresses_[k]);
    if (!ok) {
      if (!direct)
        for (Handle h : handles_) g_shim.release(h);
      return false;
    }
    for (std::size_t k = 0; k < changed_.size(); ++k) {
      const std::size_t i = changed_[k], live = live_index_[i];
      Record& record = grad_records_[live];  // dtype, sizes and strides as they were
      if (record.handle != nullptr && record.owned) g_shim.release(record.handle);
      record.handle = handles_[k];
      record.owned = !direct;  // a direct one lives as long as grads_[i], held from here on
      record.ptr = addresses_[k];
      Py_INCREF(now_[i]);
      Py_XSETREF(grads_[i], now_[i]);
      const auto address = static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(record.ptr));
      for (const auto& [t, row] : grad_rows_[live]) tables_[t].grad_address(row) = address;
    }
    return true;
  }

  // Handles of the new grads (now_[changed_]) from torch, into handles_; false if torch
  // refuses one (not a plain tensor: the front rebuilds, and reports it).
  bool new_owned_handles() {
    PyObject* tensors = PyList_New(static_cast<Py_ssize_t>(changed_.size()));
    if (tensors == nullptr) {
      PyErr_Clear();
      return false;
    }
    for (std::size_t k = 0; k < changed_.size(); ++k) {
      PyObject* g = now_[changed_[k]];
      Py_INCREF(g);
      PyList_SET_ITEM(tensors, static_cast<Py_ssize_t>(k), g);
    }
    handles_.clear();
    const bool made = new_handles(tensors, handles_);
    Py_DECREF(tensors);
    if (made) return true;
    PyErr_Clear();
    for (Handle h : handles_) g_shim.release(h);
    return false;
  }

  PyObject* params_ = nullptr;
  // owned references, Py_None for a param without a grad, null for one forgotten
  std::vector<PyObject*> grads_;
  bool fixed_grads_ = false;
  std::vector<Record> watched_;
  std::vector<Record> grad_records_;  // per live grad
  std::vector<Table> tables_;
  std::vector<std::vector<std::pair<std::size_t, std::size_t>>> grad_rows_;
  std::vector<std::size_t> live_index_;  // per param: its position among the live grads
  std::vector<PyObject*> now_;          // per param: its grad at this check (owned)
  std::vector<std::size_t> changed_;    // params whose grad is another tensor than before
  std::vector<Handle> handles_;         // take_grads' scratch: the new grads' handles
  std::vector<void*> addresses_;        // and their addresses
};

struct GuardObject {
  PyObject_HEAD
  PlanGuard* guard;
};

PyObject* guard_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"watched", "params", "grads", "tables", "rows",
                                   "fixed_grads", nullptr};
  PyObject *watched, *params, *grads, *tables, *rows;
  int fixed_grads = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!O!O!O!p:PlanGuard",
                                   const_cast<char**>(keywords), &PyList_Type, &watched,
                                   &PyList_Type, &params, &PyList_Type, &grads, &PyList_Type,
                                   &tables, &PyList_Type, &rows, &fixed_grads))
    return nullptr;
  if (!g_loaded) return value_error("internal: torch's C shim is not loaded");
  auto* self = reinterpret_cast<GuardObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->guard = new (std::nothrow) PlanGuard();
  if (self->guard == nullptr) {
    Py_DECREF(self);
    return PyErr_NoMemory();
  }
  bool ok = false;
  try {
    ok = self->guard->take(watched, params, grads, tables, rows, fixed_grads != 0);
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  }
  if (!ok) {
    Py_DECREF(self);  // the guard releases what it took
    return nullptr;
  }
  return reinterpret_cast<PyObject*>(self);
}

void guard_dealloc(PyObject* obj) {
  auto* self = reinterpret_cast<GuardObject*>(obj);
  delete self->guard;
  PyTypeObject* type = Py_TYPE(obj);
  type->tp_free(obj);
  Py_DECREF(type);
}

PyObject* guard_serves(PyObject* obj, PyObject* params) {
  int ok = -1;
  try {
    ok = reinterpret_cast<GuardObject*>(obj)->guard->serves(params);
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  }
  if (ok < 0) return nullptr;
  return PyBool_FromLong(ok);
}

PyObject* guard_forget_grads(PyObject* obj, PyObject*) {
  reinterpret_cast<GuardObject*>(obj)->guard->forget_grads();
  Py_RETURN_NONE;
}

PyMethodDef guard_methods[] = {
    {"serves", guard_serves, METH_O,
     "serves(params): whether the plan still serves a step with these params and their grads"},
    {"forget_grads", guard_forget_grads, METH_NOARGS,
     "forget_grads(): release the grads after a step (the next check takes them anew)"},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot guard_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(guard_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(guard_dealloc)},
    {Py_tp_methods, guard_methods},
    {Py_tp_doc, const_cast<char*>("The torch front's per-step plan check (see _plan_guard.cpp)")},
    {0, nullptr}};

PyType_Spec guard_spec = {"fastoptim._core.PlanGuard", sizeof(GuardObject), 0,
                          Py_TPFLAGS_DEFAULT, guard_slots};

PyMethodDef module_functions[] = {
    {"load_torch_shim", load_torch_shim, METH_VARARGS,
     "load_torch_shim(library, new_handles): look up torch's C shim"},
    {"torch_shim_loaded", torch_shim_loaded, METH_NOARGS, "whether the shim is loaded"},
    {"enable_direct_tensors", enable_direct_tensors, METH_O,
     "enable_direct_tensors(tensors): read tensors of their type through their own at::Tensor"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// Adds PlanGuard, load_torch_shim and torch_shim_loaded to the module; false with a Python
// error set.
bool register_plan_guard(PyObject* module) {
  if (PyModule_AddFunctions(module, module_functions) != 0) return false;
  PyObject* type = PyType_FromSpec(&guard_spec);
  if (type == nullptr) return false;
  if (PyModule_AddObject(module, "PlanGuard", type) != 0) {
    Py_DECREF(type);
    return false;
  }
  return true;
}
