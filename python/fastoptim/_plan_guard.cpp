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
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(_WIN32)
#include <windows.h>
#else
#include <dlfcn.h>
#endif

namespace py = pybind11;

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
// torch._C._aoti's unsafe_alloc_void_ptr(s)_from_tensor(s): a handle for one tensor, or a list
// of them (kept for the life of the process: never released at interpreter exit)
PyObject* g_new_handle = nullptr;
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

// library: the path of the libtorch_cpu the process loaded (never loads another copy).
bool load_torch_shim(const std::string& library, py::object new_handle,
                     py::object new_handles) {
#if defined(_WIN32)
  void* lib = GetModuleHandleA(library.c_str());
#else
  void* lib = dlopen(library.c_str(), RTLD_LAZY | RTLD_NOLOAD);
#endif
  if (lib == nullptr) return false;
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
  if (!ok) return false;
  g_shim = s;
  g_new_handle = new_handle.release().ptr();
  g_new_handles = new_handles.release().ptr();
  g_loaded = true;
  return true;
}

Handle handle_of(py::handle capsule) {
  void* h = PyCapsule_GetPointer(capsule.ptr(), nullptr);
  if (h == nullptr) throw py::error_already_set();
  return h;
}

// Handles for a list of tensors (owned by the caller from here on).
std::vector<Handle> new_handles(const py::list& tensors) {
  const py::list capsules = py::reinterpret_borrow<py::object>(g_new_handles)(tensors);
  std::vector<Handle> out;
  for (py::handle c : capsules) out.push_back(handle_of(c));
  return out;
}

// What a tensor was when the plan was built: address, dtype, sizes and strides.
struct Record {
  Handle handle = nullptr;
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

// Whether the storage behind `h` holds every element its sizes and strides address. Asked
// once per tensor: a storage cannot shrink without moving (torch reallocates it, or frees it
// to address 0), so a tensor found unchanged later still has that memory.
bool has_memory(Handle h, const Record& r) {
  const std::size_t dim = r.shape.size() / 2;
  std::int64_t extent = 1, offset = 0, storage = 0;
  for (std::size_t d = 0; d < dim; ++d) {
    if (r.shape[d] == 0) return true;
    extent += (r.shape[d] - 1) * r.shape[dim + d];
  }
  if (g_shim.storage_offset(h, &offset) || g_shim.storage_size(h, &storage)) return false;
  const std::size_t item = g_shim.element_size(r.dtype);
  return r.ptr != nullptr && (offset + extent) * static_cast<std::int64_t>(item) <= storage;
}

class PlanGuard {
 public:
  // watched: every tensor the tables point to but the grads (params included); params: the
  // group's params; grads: the grad (or None) of each param; tables / rows: the plan's
  // pointer tables and, per table, the live-grad position of each row (column 1 holds that
  // grad's address); fixed_grads: the grads are read through staging copies, so a new grad
  // tensor needs a new plan.
  PlanGuard(py::list watched, py::list params, py::list grads, py::list tables, py::list rows,
            bool fixed_grads)
      : params_(std::move(params)), grads_(py::len(grads)), fixed_grads_(fixed_grads) {
    if (!g_loaded) throw py::value_error("internal: torch's C shim is not loaded");
    try {
      take(watched, grads, tables, rows);
    } catch (...) {  // no destructor runs for a constructor that throws: release here
      release_all();
      throw;
    }
  }
  PlanGuard(const PlanGuard&) = delete;
  PlanGuard& operator=(const PlanGuard&) = delete;
  ~PlanGuard() { release_all(); }

 private:
  void release_all() {
    for (const Record& r : watched_) g_shim.release(r.handle);
    for (const Record& r : grad_records_) g_shim.release(r.handle);
    watched_.clear();
    grad_records_.clear();
  }

  void take(const py::list& watched, const py::list& grads, const py::list& tables,
            const py::list& rows) {
    for (Handle h : new_handles(watched)) {
      watched_.emplace_back();
      watched_.back().handle = h;  // owned from here on: released with the guard
    }
    for (Record& r : watched_)
      if (!read(r.handle, r)) throw py::value_error("internal: a watched tensor is unreadable");
    std::size_t live = 0;
    for (std::size_t i = 0; i < grads_.size(); ++i) {
      grads_[i] = grads[i];
      live_index_.push_back(live);
      if (!grads_[i].is_none()) ++live;
    }
    grad_rows_.resize(live);
    std::size_t t = 0;
    for (py::handle table_obj : tables) {
      auto table = py::reinterpret_borrow<py::array_t<std::int64_t>>(table_obj);
      tables_.push_back(table);
      std::size_t row = 0;
      for (py::handle position : py::reinterpret_borrow<py::list>(rows[t]))
        grad_rows_.at(position.cast<std::size_t>()).push_back({t, row++});
      ++t;
    }
    for (Handle h : new_handles(live_grads())) {
      grad_records_.emplace_back();
      grad_records_.back().handle = h;
    }
    for (Record& r : grad_records_)
      if (!read(r.handle, r)) throw py::value_error("internal: a grad is unreadable");
  }

 public:
  // Whether the plan still serves a step with these params and their grads; a new grad tensor
  // of the same dtype, sizes and strides is taken (its address written into the tables).
  bool serves(const py::handle& params) {
    const bool ok = check(params);
    now_.clear();  // the grads read: held by the params (and grads_), not by this check
    return ok;
  }

 private:
  bool check(const py::handle& params) {
    if (!PyList_Check(params.ptr())) return false;
    const std::size_t n = static_cast<std::size_t>(PyList_GET_SIZE(params.ptr()));
    if (n != static_cast<std::size_t>(PyList_GET_SIZE(params_.ptr()))) return false;
    for (std::size_t i = 0; i < n; ++i)
      if (PyList_GET_ITEM(params.ptr(), i) != PyList_GET_ITEM(params_.ptr(), i)) return false;
    for (const Record& r : watched_)
      if (!unchanged(r.handle, r)) return false;
    static PyObject* const grad_name = PyUnicode_InternFromString("grad");
    now_.clear();
    changed_.clear();
    for (std::size_t i = 0; i < n; ++i) {
      PyObject* g = PyObject_GetAttr(PyList_GET_ITEM(params.ptr(), i), grad_name);
      if (g == nullptr) throw py::error_already_set();
      now_.push_back(py::reinterpret_steal<py::object>(g));
      PyObject* before = grads_[i].ptr();
      if ((g == Py_None) != (before == Py_None)) return false;
      if (g != before) changed_.push_back(i);
    }
    if (!changed_.empty() && !take_grads()) return false;
    for (const Record& r : grad_records_)
      if (!unchanged(r.handle, r)) return false;
    return true;
  }

  py::list live_grads() const {
    py::list out;
    for (py::handle g : grads_)
      if (!g.is_none()) out.append(g);
    return out;
  }

  // New grad tensors (now_[changed_]) in place of the old: taken when each has the old one's
  // dtype, sizes and strides (the tables' element order and sizes); their addresses go into
  // the tables. One call makes every new handle.
  bool take_grads() {
    if (fixed_grads_) return false;
    py::list tensors;
    for (std::size_t i : changed_) tensors.append(now_[i]);
    std::vector<Handle> handles;
    try {
      handles = new_handles(tensors);
    } catch (const py::error_already_set&) {  // not plain tensors: the front rebuilds (and
      return false;                           // reports them)
    }
    std::vector<Record> taken(handles.size());
    bool ok = true;
    for (std::size_t k = 0; k < handles.size(); ++k) {
      taken[k].handle = handles[k];
      const Record& old = grad_records_[live_index_[changed_[k]]];
      ok = ok && read(handles[k], taken[k]) && taken[k].dtype == old.dtype &&
           taken[k].shape == old.shape && has_memory(handles[k], taken[k]);
    }
    if (!ok) {
      for (const Record& r : taken) g_shim.release(r.handle);
      return false;
    }
    for (std::size_t k = 0; k < changed_.size(); ++k) {
      const std::size_t i = changed_[k], live = live_index_[i];
      g_shim.release(grad_records_[live].handle);
      grad_records_[live] = std::move(taken[k]);
      grads_[i] = now_[i];
      const auto address =
          static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(grad_records_[live].ptr));
      for (const auto& [t, row] : grad_rows_[live])
        tables_[t].mutable_at(static_cast<py::ssize_t>(row), 1) = address;
    }
    return true;
  }

  py::list params_;
  std::vector<py::object> grads_;
  bool fixed_grads_;
  std::vector<Record> watched_;
  std::vector<Record> grad_records_;  // per live grad
  std::vector<py::array_t<std::int64_t>> tables_;
  std::vector<std::vector<std::pair<std::size_t, std::size_t>>> grad_rows_;
  std::vector<std::size_t> live_index_;  // per param: its position among the live grads
  std::vector<py::object> now_;         // per param: its grad at this check
  std::vector<std::size_t> changed_;    // params whose grad is another tensor than before
};

}  // namespace

void register_plan_guard(py::module_& m) {
  m.def("load_torch_shim", &load_torch_shim, py::arg("library"), py::arg("new_handle"),
        py::arg("new_handles"));
  m.def("torch_shim_loaded", [] { return g_loaded; });
  py::class_<PlanGuard>(m, "PlanGuard")
      .def(py::init<py::list, py::list, py::list, py::list, py::list, bool>(),
           py::arg("watched"), py::arg("params"), py::arg("grads"), py::arg("tables"),
           py::arg("rows"), py::arg("fixed_grads"))
      .def("serves", &PlanGuard::serves, py::arg("params"));
}
