// fastoptim._roofline: the benchmark's same-traffic roofline (fastoptim.bench), not part of the
// product. A rule with k state slots reads param, grad and k state buffers and writes param and
// the k state buffers back; this does exactly that traffic (x += grad for every written stream)
// and nothing else, so the time of a rule's step over this time is how close it runs to memory
// bandwidth. Each stream has its own storage type, so a mixed layout (bfloat16 param and grad,
// float32 state) moves the bytes it really moves.
//
// The loops (cpp/roofline/) are compiled once per SIMD level on the kernels' vector headers, as
// the kernels are, and run at the level the product's dispatcher has chosen
// (fastoptim.simd_level(): the CPU, FASTOPTIM_SIMD, set_simd_level). This file is the baseline
// driver: it checks the call, splits the elements over threads as the core's driver does and
// calls the level's loop. Written against Python's C API, not pybind11: it compiles in a
// fraction of the time (the build's wall time is what a new user waits for).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "roofline_table.hpp"

namespace fastoptim::kernels {
// the levels this build compiled (FASTOPTIM_SIMD_LEVELS may leave some out)
namespace scalar { extern const RooflineTable kRooflineTable; }
#if defined(FASTOPTIM_KERNEL_SSE2)
namespace sse2 { extern const RooflineTable kRooflineTable; }
#endif
#if defined(FASTOPTIM_KERNEL_AVX2)
namespace avx2 { extern const RooflineTable kRooflineTable; }
#endif
#if defined(FASTOPTIM_KERNEL_AVX512)
namespace avx512 { extern const RooflineTable kRooflineTable; }
#endif
#if defined(FASTOPTIM_KERNEL_NEON)
namespace neon { extern const RooflineTable kRooflineTable; }
#endif
}  // namespace fastoptim::kernels

namespace {

using namespace fastoptim::kernels;

// An error for Python: thrown inside, set as the Python exception at the module's entry points.
struct Failure {
  PyObject* type;
  std::string what;
};
[[noreturn]] void value_error(const std::string& what) { throw Failure{PyExc_ValueError, what}; }
[[noreturn]] void type_error(const std::string& what) { throw Failure{PyExc_TypeError, what}; }
// A Python error already set (by a C API call)
struct PythonError {};

const RooflineTable* const kTables[] = {
    &scalar::kRooflineTable,
#if defined(FASTOPTIM_KERNEL_SSE2)
    &sse2::kRooflineTable,
#endif
#if defined(FASTOPTIM_KERNEL_AVX2)
    &avx2::kRooflineTable,
#endif
#if defined(FASTOPTIM_KERNEL_AVX512)
    &avx512::kRooflineTable,
#endif
#if defined(FASTOPTIM_KERNEL_NEON)
    &neon::kRooflineTable,
#endif
};

// Thread chunks start on multiples of this many elements, as the core's driver splits them.
constexpr std::size_t kChunkAlign = 64;
constexpr int kMaxStates = kRooflineMaxWritten - 1;

// indexed by RooflineType
constexpr const char* kTypeNames[] = {"float32", "float64", "bfloat16", "float16"};
constexpr std::size_t kTypeBytes[] = {4, 8, 2, 2};

// The loops of the level the product's kernels run at now.
const RooflineTable& active_table() {
  PyObject* core = PyImport_ImportModule("fastoptim._core");
  if (core == nullptr) throw PythonError{};
  PyObject* name = PyObject_CallMethod(core, "simd_level", nullptr);
  Py_DECREF(core);
  if (name == nullptr) throw PythonError{};
  const char* chars = PyUnicode_AsUTF8(name);
  const std::string level = chars ? chars : "";
  Py_DECREF(name);
  if (chars == nullptr) throw PythonError{};
  for (const RooflineTable* t : kTables)
    if (level == t->level) return *t;
  value_error("roofline: no loops for SIMD level '" + level + "'");
}

struct Layout {
  int types[2 + kMaxStates];  // param, grad, state 0..2
  int states;
  bool float64;  // float64 arithmetic, else float32
};

Layout make_layout(const std::vector<std::string>& dtypes) {
  if (dtypes.size() < 2 || dtypes.size() > 2 + kMaxStates)
    value_error("roofline: dtypes names param, grad and 0..3 state streams, got " +
                std::to_string(dtypes.size()) + " names");
  Layout l{};
  l.states = static_cast<int>(dtypes.size()) - 2;
  for (std::size_t i = 0; i < dtypes.size(); ++i) {
    const auto* name = std::find(std::begin(kTypeNames), std::end(kTypeNames), dtypes[i]);
    if (name == std::end(kTypeNames))
      type_error("roofline: unsupported dtype '" + dtypes[i] +
                 "'; expected float32, float64, bfloat16 or float16");
    l.types[i] = static_cast<int>(name - std::begin(kTypeNames));
  }
  // The arithmetic of fastoptim's kernels: float64 for float64 params (whose grad may be
  // float32), float32 for every mix of float32 and 16-bit streams.
  l.float64 = l.types[0] == kRooflineFloat64;
  for (std::size_t i = 0; i < dtypes.size(); ++i) {
    const bool grad = i == 1;
    const bool fits = l.float64 ? l.types[i] == kRooflineFloat64 ||
                                      (grad && l.types[i] == kRooflineFloat32)
                                : l.types[i] != kRooflineFloat64;
    if (!fits) {
      std::string names;
      for (const std::string& d : dtypes) names += (names.empty() ? "" : ", ") + d;
      value_error(
          "roofline: float64 streams go with a float64 param only, whose state is float64 and "
          "grad float64 or float32; got " + names + " (param, grad, states)");
    }
  }
  return l;
}

std::size_t bytes_of(const Layout& l, int stream) { return kTypeBytes[l.types[stream]]; }

// One row of the pointer table: a tensor's streams and its element count.
struct Row {
  RooflineStreams streams;
  std::size_t size;
};

// A Python buffer, released when it goes out of scope.
struct Buffer {
  Py_buffer view{};
  explicit Buffer(PyObject* obj) {
    if (PyObject_GetBuffer(obj, &view, PyBUF_STRIDES | PyBUF_FORMAT) != 0) throw PythonError{};
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { PyBuffer_Release(&view); }
};

std::vector<Row> read_table(PyObject* table_obj, const Layout& l) {
  const Buffer buffer(table_obj);
  const Py_buffer& t = buffer.view;
  const std::string format = t.format ? t.format : "B";
  const char kind = format.empty() ? '?' : format.back();
  if (t.ndim != 2 || t.shape[1] != 7 || t.itemsize != 8 || (kind != 'q' && kind != 'l') ||
      (t.shape[0] > 1 && t.strides[0] != 56) || t.strides[1] != 8)
    value_error("roofline: the pointer table must be a C-contiguous int64 array of shape (n, 7)");
  const auto* cells = static_cast<const std::int64_t*>(t.buf);
  std::vector<Row> rows(static_cast<std::size_t>(t.shape[0]));
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const std::int64_t* r = cells + 7 * i;  // param, grad, state 0..2, size, (unused)
    if (r[5] < 0) value_error("roofline: row " + std::to_string(i) + " has size < 0");
    Row& row = rows[i];
    row.size = static_cast<std::size_t>(r[5]);
    RooflineStreams& s = row.streams;
    s.grad = reinterpret_cast<const void*>(r[1]);
    s.grad_type = l.types[1];
    s.written_count = 1 + l.states;
    for (int w = 0; w < s.written_count; ++w) {
      s.written[w] = reinterpret_cast<void*>(r[w == 0 ? 0 : 1 + w]);
      s.written_types[w] = l.types[w == 0 ? 0 : 1 + w];
    }
    if (row.size == 0) continue;
    auto check = [&](const void* p, std::size_t bytes, const char* what) {
      if (p == nullptr)
        value_error("roofline: row " + std::to_string(i) + ": " + what + " is null");
      if (reinterpret_cast<std::uintptr_t>(p) % bytes != 0)
        value_error("roofline: row " + std::to_string(i) + ": " + what +
                    " is not aligned to its element size");
    };
    check(s.grad, bytes_of(l, 1), "grad");
    static constexpr const char* kWritten[] = {"param", "state 0", "state 1", "state 2"};
    for (int w = 0; w < s.written_count; ++w)
      check(s.written[w], bytes_of(l, w == 0 ? 0 : 1 + w), kWritten[w]);
  }
  return rows;
}

// Elements [lo, hi) of the concatenation of all rows.
void run_range(RooflinePass pass, const std::vector<Row>& rows,
               const std::vector<std::size_t>& starts, std::size_t lo, std::size_t hi) {
  std::size_t r = static_cast<std::size_t>(
      std::upper_bound(starts.begin(), starts.end(), lo) - starts.begin() - 1);
  for (; r < rows.size() && starts[r] < hi; ++r) {
    const std::size_t first = std::max(lo, starts[r]) - starts[r];
    const std::size_t last = std::min(hi, starts[r] + rows[r].size) - starts[r];
    if (first < last) pass(rows[r].streams, first, last);
  }
}

void step(PyObject* table, const std::vector<std::string>& dtypes, int num_threads,
          long long serial_threshold) {
  if (num_threads < 0) value_error("roofline: num_threads must be >= 0 (0: OpenMP's default)");
  const Layout layout = make_layout(dtypes);
  const std::vector<Row> rows = read_table(table, layout);
  const RooflineTable& loops = active_table();
  const bool same_type = std::all_of(layout.types, layout.types + 2 + layout.states,
                                     [&](int t) { return t == layout.types[0]; });
  const RooflinePass pass = same_type        ? loops.same_type[layout.types[0]]
                            : layout.float64 ? loops.mixed_float64
                                             : loops.mixed_float32;
  std::vector<std::size_t> starts(rows.size() + 1, 0);
  for (std::size_t i = 0; i < rows.size(); ++i) starts[i + 1] = starts[i] + rows[i].size;
  const std::size_t total = starts.back();

  Py_BEGIN_ALLOW_THREADS
#if defined(_OPENMP)
  int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  const std::size_t most = (total + kChunkAlign - 1) / kChunkAlign;
  if (serial_threshold > 0 && total < static_cast<std::size_t>(serial_threshold)) threads = 1;
  threads = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads), most));
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const auto t = static_cast<std::size_t>(omp_get_thread_num());
      const auto n = static_cast<std::size_t>(omp_get_num_threads());
      // the core's split: near-equal shares, every boundary but the last a multiple of 64
      auto boundary = [&](std::size_t k) {
        return k == n ? total : (total / n * k + total % n * k / n) / kChunkAlign * kChunkAlign;
      };
      run_range(pass, rows, starts, boundary(t), boundary(t + 1));
    }
  } else {
    run_range(pass, rows, starts, 0, total);
  }
#else
  (void)serial_threshold;
  run_range(pass, rows, starts, 0, total);
#endif
  Py_END_ALLOW_THREADS
}

std::size_t bytes_per_element(const std::vector<std::string>& dtypes) {
  const Layout l = make_layout(dtypes);
  std::size_t bytes = bytes_of(l, 1);
  for (int w = 0; w <= l.states; ++w) bytes += 2 * bytes_of(l, w == 0 ? 0 : 1 + w);
  return bytes;  // grad read; param and states read and written
}

// Elements per second of adamw_arithmetic on each thread's own L1-resident arrays of n floats,
// summed over num_threads threads, over at least `seconds` of running.
double arithmetic_rate(int num_threads, std::size_t n, double seconds) {
  if (num_threads < 1) value_error("roofline: num_threads must be >= 1");
  if (n == 0 || n % 64 != 0) value_error("roofline: n must be a positive multiple of 64");
#if !defined(_OPENMP)
  if (num_threads > 1) value_error("roofline: built without OpenMP: one thread only");
#endif
  const auto pass = active_table().adamw_arithmetic;
  std::vector<double> rates(static_cast<std::size_t>(num_threads));
  Py_BEGIN_ALLOW_THREADS
  auto run = [&](std::size_t t) {
    std::vector<float> x(n, 0.5f), m(n, 0.01f);
    pass(x.data(), m.data(), n);  // warm
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    std::size_t passes = 0;
    double elapsed = 0;
    do {
      for (int k = 0; k < 64; ++k) pass(x.data(), m.data(), n);
      passes += 64;
      elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    } while (elapsed < seconds);
    rates[t] = static_cast<double>(passes * n) / elapsed;
  };
#if defined(_OPENMP)
#pragma omp parallel num_threads(num_threads)
  run(static_cast<std::size_t>(omp_get_thread_num()));
#else
  run(0);
#endif
  Py_END_ALLOW_THREADS
  double total = 0;
  for (double r : rates) total += r;
  return total;
}

// dtypes: a list or tuple of str
std::vector<std::string> dtype_names(PyObject* obj) {
  if (PyUnicode_Check(obj) || !(PyList_Check(obj) || PyTuple_Check(obj)))
    type_error("roofline: dtypes must be a list or tuple of str");
  std::vector<std::string> names;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(obj); ++i) {
    const char* name = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(obj, i));
    if (name == nullptr) throw PythonError{};
    names.emplace_back(name);
  }
  return names;
}

// Runs `body` (which returns a new reference), turning a Failure or a C++ error into the
// Python exception.
template <class F>
PyObject* call(F&& body) {
  try {
    return body();
  } catch (const Failure& f) {
    PyErr_SetString(f.type, f.what.c_str());
  } catch (const PythonError&) {
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  }
  return nullptr;
}

PyObject* py_step(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"table", "dtypes", "num_threads", "serial_threshold", nullptr};
  PyObject *table = nullptr, *dtypes = nullptr;
  int num_threads = 0;
  long long serial_threshold = 16384;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOi|L:step", const_cast<char**>(keywords),
                                   &table, &dtypes, &num_threads, &serial_threshold))
    return nullptr;
  return call([&] {
    step(table, dtype_names(dtypes), num_threads, serial_threshold);
    Py_RETURN_NONE;
  });
}

PyObject* py_bytes_per_element(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"dtypes", nullptr};
  PyObject* dtypes = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:bytes_per_element",
                                   const_cast<char**>(keywords), &dtypes))
    return nullptr;
  return call([&] { return PyLong_FromSize_t(bytes_per_element(dtype_names(dtypes))); });
}

PyObject* py_arithmetic_rate(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"num_threads", "n", "seconds", nullptr};
  int num_threads = 0;
  Py_ssize_t n = 4096;
  double seconds = 0.2;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i|nd:arithmetic_rate",
                                   const_cast<char**>(keywords), &num_threads, &n, &seconds))
    return nullptr;
  return call([&] {
    if (n < 0) value_error("roofline: n must be a positive multiple of 64");
    return PyFloat_FromDouble(arithmetic_rate(num_threads, static_cast<std::size_t>(n), seconds));
  });
}

PyObject* py_simd_level(PyObject*, PyObject*) {
  return call([] { return PyUnicode_FromString(active_table().level); });
}

PyMethodDef kMethods[] = {
    {"step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_step)),
     METH_VARARGS | METH_KEYWORDS,
     "step($module, table, dtypes, num_threads, serial_threshold=16384)\n--\n\n"
     "One roofline step over an (n, 7) int64 pointer table (param, grad, state 0..2, element "
     "count, unused). dtypes names the storage type of param, grad and each state stream "
     "(2 + k names for k state slots): float32 arithmetic for float32 and 16-bit streams, "
     "float64 for a float64 param (float64 state, float64 or float32 grad). Threads: "
     "num_threads (0: OpenMP's default), one thread below serial_threshold elements in all. "
     "Runs at fastoptim.simd_level()."},
    {"bytes_per_element",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_bytes_per_element)),
     METH_VARARGS | METH_KEYWORDS,
     "bytes_per_element($module, dtypes)\n--\n\n"
     "Bytes one step moves per element: grad read, param and state streams read and written."},
    {"arithmetic_rate",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_arithmetic_rate)),
     METH_VARARGS | METH_KEYWORDS,
     "arithmetic_rate($module, num_threads, n=4096, seconds=0.2)\n--\n\n"
     "Elements per second of AdamW's exact arithmetic alone (one square root and two "
     "divisions per element, torch's order) over L1-resident float32 arrays of n elements "
     "per thread, summed over num_threads threads: an upper bound on any exact AdamW step's "
     "rate, whatever the bytes it moves. Runs at fastoptim.simd_level()."},
    {"simd_level", py_simd_level, METH_NOARGS,
     "simd_level($module)\n--\n\nThe SIMD level the next step runs at: the product's, "
     "fastoptim.simd_level()."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {
    PyModuleDef_HEAD_INIT, "_roofline",
    "fastoptim.bench's same-traffic roofline: x += grad over param and state streams", -1,
    kMethods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__roofline() {
  PyObject* m = PyModule_Create(&kModule);
  if (m == nullptr) return nullptr;
  PyObject* dtypes = Py_BuildValue("(ssss)", "float32", "float64", "bfloat16", "float16");
  if (dtypes == nullptr || PyModule_AddObject(m, "dtypes", dtypes) != 0) {
    Py_XDECREF(dtypes);
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
