// fastoptim._roofline: the benchmark's same-traffic roofline (fastoptim.bench), not part of the
// product. A rule with k state slots reads param, grad and k state buffers and writes param and
// the k state buffers back; this does exactly that traffic (x += grad for every written stream)
// and nothing else, so the time of a rule's step over this time is how close it runs to memory
// bandwidth. Each stream has its own storage type, so a mixed layout (bfloat16 param and grad,
// float32 state) moves the bytes it really moves.
//
// Vectorised without -march=native: on x86-64 glibc with GCC every inner loop is target_clones
// (AVX-512F, AVX2, baseline SSE2), picked by an ifunc resolver at load; elsewhere plain loops at
// the baseline ISA. Measured on the 2-core Zen 4 VM: when every stream has one type (float32 or
// float64, what the core takes today) the single fused pass moves float32 Adam's traffic as fast
// as the core's AVX-512 kernels, ~40 GB/s on one thread, and so does its SSE2 clone (the memory
// is the limit there); the 16-bit conversions need the clones (bfloat16 param and grad with
// float32 state: 26 GB/s at SSE2, 44 at AVX2 or AVX-512; float16, whose bit arithmetic has no
// F16C here, 11 and 20).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace py = pybind11;

// ifunc (what target_clones dispatches through) needs glibc: not musl, macOS or Windows. Clang
// has the attribute too, but is not what the Linux wheels are built with: plain loops there.
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__)
#define ROOFLINE_HAS_CLONES 1
#define ROOFLINE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ROOFLINE_CLONES
#endif
#if defined(_MSC_VER)
#define ROOFLINE_INLINE __forceinline
#else
#define ROOFLINE_INLINE inline __attribute__((always_inline))
#endif

namespace {

// Elements per block when the streams' types differ: a grad block stored in another type than
// the arithmetic one is widened once into an L1-resident buffer and added to every written
// stream from there, so that no loop is compiled per combination of types.
constexpr std::size_t kBlock = 1024;
// Thread chunks start on multiples of this many elements, as the core's driver splits them.
constexpr std::size_t kChunkAlign = 64;
constexpr int kMaxStates = 3;

// ---- storage types: how a stored element widens to its arithmetic type and narrows back -------

template <class T>
struct Plain {
  using Raw = T;
  using Wide = T;
  static T widen(T x) { return x; }
  static T narrow(T x) { return x; }
};

struct BFloat16 {
  using Raw = std::uint16_t;
  using Wide = float;
  static float widen(std::uint16_t x) { return std::bit_cast<float>(std::uint32_t{x} << 16); }
  static std::uint16_t narrow(float f) {  // round to nearest even; a NaN stays a (quiet) NaN
    const std::uint32_t b = std::bit_cast<std::uint32_t>(f);
    const std::uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    return static_cast<std::uint16_t>((b & 0x7fffffffu) > 0x7f800000u ? (b >> 16) | 0x40u
                                                                       : rounded);
  }
};

// a ? x : y, as bit masks: both sides computed, so a float operation on the unused side is no
// branch the vectoriser must keep (it may not speculate one that could trap)
inline std::uint32_t select(bool a, std::uint32_t x, std::uint32_t y) {
  const std::uint32_t mask = 0u - static_cast<std::uint32_t>(a);
  return (x & mask) | (y & ~mask);
}

// IEEE half without F16C or _Float16 (neither is in every clone, nor in MSVC): branch-free bit
// arithmetic, so that the loops vectorise at every level.
struct Float16 {
  using Raw = std::uint16_t;
  using Wide = float;
  static float widen(std::uint16_t h) {
    const std::uint32_t em = h & 0x7fffu;
    // exponent and mantissa moved into a float's and scaled by 2^112: exact for normal and
    // subnormal halves alike; infinity and NaN keep an all-ones exponent
    const std::uint32_t finite = std::bit_cast<std::uint32_t>(
        std::bit_cast<float>(em << 13) * std::bit_cast<float>(0x77800000u));
    const std::uint32_t bits = select(em >= 0x7c00u, 0x7f800000u | (em << 13), finite);
    return std::bit_cast<float>(bits | (std::uint32_t{h} & 0x8000u) << 16);
  }
  static std::uint16_t narrow(float f) {  // round to nearest even (after F. Giesen's fast3_rtne)
    const std::uint32_t all = std::bit_cast<std::uint32_t>(f);
    const std::uint32_t sign = all & 0x80000000u;
    const std::uint32_t b = all ^ sign;
    const std::uint32_t overflow = select(b > 0x7f800000u, 0x7e00u, 0x7c00u);  // NaN : infinity
    // below 2^-14: the float add rounds the subnormal half into the low mantissa bits
    constexpr std::uint32_t kDenormMagic = ((127 - 15) + (23 - 10) + 1) << 23;
    const std::uint32_t subnormal =
        std::bit_cast<std::uint32_t>(std::bit_cast<float>(b) + std::bit_cast<float>(kDenormMagic)) -
        kDenormMagic;
    const std::uint32_t normal =
        (b + (static_cast<std::uint32_t>(15 - 127) << 23) + 0xfffu + ((b >> 13) & 1u)) >> 13;
    const std::uint32_t h =
        select(b >= (143u << 23), overflow, select(b < (113u << 23), subnormal, normal));
    return static_cast<std::uint16_t>(h | sign >> 16);
  }
};

// ---- the inner loops, each one clone per ISA -------------------------------------------

// One storage type for every stream: a single pass over all of them, as a rule's kernel makes.
template <class T, int K>
ROOFLINE_INLINE void fused_loop(T* __restrict p, const T* __restrict g, T* __restrict s0,
                                T* __restrict s1, T* __restrict s2, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const T x = g[i];
    p[i] += x;
    if constexpr (K > 0) s0[i] += x;
    if constexpr (K > 1) s1[i] += x;
    if constexpr (K > 2) s2[i] += x;
  }
}
template <class T, int K>
ROOFLINE_CLONES void fused_block(void* p, const void* g, void* s0, void* s1, void* s2,
                                 std::size_t n) {
  fused_loop<T, K>(static_cast<T*>(p), static_cast<const T*>(g), static_cast<T*>(s0),
                   static_cast<T*>(s1), static_cast<T*>(s2), n);
}
using FusedFn = void (*)(void*, const void*, void*, void*, void*, std::size_t);
template <class T>
constexpr FusedFn kFused[1 + kMaxStates] = {&fused_block<T, 0>, &fused_block<T, 1>,
                                            &fused_block<T, 2>, &fused_block<T, 3>};

// Streams of different types, a block at a time. buffer[i] = grad[i] in the arithmetic type C:
template <class C, class S>
ROOFLINE_CLONES void widen_block(const void* __restrict src, void* __restrict dst, std::size_t n) {
  const auto* s = static_cast<const typename S::Raw*>(src);
  auto* d = static_cast<C*>(dst);
  for (std::size_t i = 0; i < n; ++i) d[i] = static_cast<C>(S::widen(s[i]));
}

// x[i] += buffer[i], stored back in x's storage type
template <class C, class S>
ROOFLINE_CLONES void add_block(void* __restrict x, const void* __restrict src, std::size_t n) {
  auto* p = static_cast<typename S::Raw*>(x);
  const auto* g = static_cast<const C*>(src);
  using W = typename S::Wide;
  for (std::size_t i = 0; i < n; ++i)
    p[i] = S::narrow(static_cast<W>(static_cast<C>(S::widen(p[i])) + g[i]));
}

using WidenFn = void (*)(const void*, void*, std::size_t);
using AddFn = void (*)(void*, const void*, std::size_t);

enum Storage { kFloat32, kFloat64, kBFloat16, kFloat16, kStorageCount };
constexpr const char* kStorageNames[kStorageCount] = {"float32", "float64", "bfloat16", "float16"};
constexpr std::size_t kStorageBytes[kStorageCount] = {4, 8, 2, 2};

template <class C>
struct Loops {
  static constexpr WidenFn widen[kStorageCount] = {
      &widen_block<C, Plain<float>>, &widen_block<C, Plain<double>>,
      &widen_block<C, BFloat16>, &widen_block<C, Float16>};
  static constexpr AddFn add[kStorageCount] = {
      &add_block<C, Plain<float>>, &add_block<C, Plain<double>>, &add_block<C, BFloat16>,
      &add_block<C, Float16>};
};

Storage parse_storage(const std::string& name) {
  for (int s = 0; s < kStorageCount; ++s)
    if (name == kStorageNames[s]) return static_cast<Storage>(s);
  throw py::type_error("roofline: unsupported dtype '" + name +
                       "'; expected float32, float64, bfloat16 or float16");
}

// ---- one call: validated rows, then one parallel region over all their elements ---------------

struct Row {
  char* written[1 + kMaxStates];  // param, then the state slots
  const char* grad;
  std::size_t size;
};

struct Layout {
  int states;
  std::size_t grad_bytes;
  std::size_t written_bytes[1 + kMaxStates];
  FusedFn fused;  // every stream float32, or every stream float64; else null and blocks:
  WidenFn widen;  // null: the grad is stored in the arithmetic type and is added from where it is
  AddFn add[1 + kMaxStates];
};

Layout make_layout(const std::vector<std::string>& dtypes) {
  if (dtypes.size() < 2 || dtypes.size() > 2 + kMaxStates)
    throw py::value_error("roofline: dtypes names param, grad and 0..3 state streams, got " +
                          std::to_string(dtypes.size()) + " names");
  Storage s[2 + kMaxStates];
  bool any_double = false;
  for (std::size_t i = 0; i < dtypes.size(); ++i) {
    s[i] = parse_storage(dtypes[i]);
    any_double = any_double || s[i] == kFloat64;
  }
  // float arithmetic unless a stream is float64: x += grad in the precision a rule would use
  const WidenFn* widen = any_double ? Loops<double>::widen : Loops<float>::widen;
  const AddFn* add = any_double ? Loops<double>::add : Loops<float>::add;
  Layout l{};
  l.states = static_cast<int>(dtypes.size()) - 2;
  l.grad_bytes = kStorageBytes[s[1]];
  if (std::all_of(s, s + dtypes.size(), [&](Storage x) { return x == kFloat32; }))
    l.fused = kFused<float>[l.states];
  else if (std::all_of(s, s + dtypes.size(), [&](Storage x) { return x == kFloat64; }))
    l.fused = kFused<double>[l.states];
  l.widen = s[1] == (any_double ? kFloat64 : kFloat32) ? nullptr : widen[s[1]];
  const std::size_t written[1 + kMaxStates] = {0, 2, 3, 4};  // param, state 0..2 in `dtypes`
  for (int w = 0; w <= l.states; ++w) {
    l.written_bytes[w] = kStorageBytes[s[written[w]]];
    l.add[w] = add[s[written[w]]];
  }
  return l;
}

std::vector<Row> read_table(const py::buffer& table_obj, const Layout& l) {
  const py::buffer_info t = table_obj.request();
  const char kind = t.format.empty() ? '?' : t.format.back();
  if (t.ndim != 2 || t.shape[1] != 7 || t.itemsize != 8 || (kind != 'q' && kind != 'l') ||
      (t.shape[0] > 1 && t.strides[0] != 56) || t.strides[1] != 8)
    throw py::value_error("roofline: the pointer table must be a C-contiguous int64 array of "
                          "shape (n, 7)");
  const auto* cells = static_cast<const std::int64_t*>(t.ptr);
  std::vector<Row> rows(static_cast<std::size_t>(t.shape[0]));
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const std::int64_t* r = cells + 7 * i;  // param, grad, state 0..2, size, (unused)
    if (r[5] < 0) throw py::value_error("roofline: row " + std::to_string(i) + " has size < 0");
    Row& row = rows[i];
    row.size = static_cast<std::size_t>(r[5]);
    row.grad = reinterpret_cast<const char*>(r[1]);
    for (int w = 0; w <= kMaxStates; ++w)
      row.written[w] = w <= l.states ? reinterpret_cast<char*>(r[w == 0 ? 0 : 1 + w]) : nullptr;
    if (row.size == 0) continue;
    auto check = [&](const void* p, std::size_t bytes, const char* what) {
      if (p == nullptr)
        throw py::value_error("roofline: row " + std::to_string(i) + ": " + what + " is null");
      if (reinterpret_cast<std::uintptr_t>(p) % bytes != 0)
        throw py::value_error("roofline: row " + std::to_string(i) + ": " + what +
                              " is not aligned to its element size");
    };
    check(row.grad, l.grad_bytes, "grad");
    static constexpr const char* kWritten[] = {"param", "state 0", "state 1", "state 2"};
    for (int w = 0; w <= l.states; ++w) check(row.written[w], l.written_bytes[w], kWritten[w]);
  }
  return rows;
}

// Elements [lo, hi) of the concatenation of all rows.
void run_range(const Layout& l, const std::vector<Row>& rows,
               const std::vector<std::size_t>& starts, std::size_t lo, std::size_t hi) {
  alignas(64) double buffer[kBlock];  // room for kBlock elements of either arithmetic type
  std::size_t r = static_cast<std::size_t>(
      std::upper_bound(starts.begin(), starts.end(), lo) - starts.begin() - 1);
  for (; r < rows.size() && starts[r] < hi; ++r) {
    const Row& row = rows[r];
    const std::size_t first = std::max(lo, starts[r]) - starts[r];
    const std::size_t last = std::min(hi, starts[r] + row.size) - starts[r];
    if (first >= last) continue;
    if (l.fused) {
      auto at = [&](int w) {
        return row.written[w] ? row.written[w] + first * l.grad_bytes : nullptr;
      };
      l.fused(at(0), row.grad + first * l.grad_bytes, at(1), at(2), at(3), last - first);
      continue;
    }
    for (std::size_t i = first; i < last; i += kBlock) {
      const std::size_t n = std::min(kBlock, last - i);
      const void* grad = row.grad + i * l.grad_bytes;
      if (l.widen) {
        l.widen(grad, buffer, n);
        grad = buffer;
      }
      for (int w = 0; w <= l.states; ++w)
        l.add[w](row.written[w] + i * l.written_bytes[w], grad, n);
    }
  }
}

void step(const py::buffer& table, const std::vector<std::string>& dtypes, int num_threads,
          std::int64_t serial_threshold) {
  if (num_threads < 0)
    throw py::value_error("roofline: num_threads must be >= 0 (0: OpenMP's default)");
  const Layout layout = make_layout(dtypes);
  const std::vector<Row> rows = read_table(table, layout);
  std::vector<std::size_t> starts(rows.size() + 1, 0);
  for (std::size_t i = 0; i < rows.size(); ++i) starts[i + 1] = starts[i] + rows[i].size;
  const std::size_t total = starts.back();

  py::gil_scoped_release release;
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
      run_range(layout, rows, starts, boundary(t), boundary(t + 1));
    }
    return;
  }
#else
  (void)serial_threshold;
#endif
  run_range(layout, rows, starts, 0, total);
}

// The clone the ifunc resolvers pick on this CPU (they test the same features, best first).
std::string vector_level() {
#if defined(ROOFLINE_HAS_CLONES)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
  return "default";
#else
  return "plain";
#endif
}

std::size_t bytes_per_element(const std::vector<std::string>& dtypes) {
  const Layout l = make_layout(dtypes);
  std::size_t bytes = l.grad_bytes;
  for (int w = 0; w <= l.states; ++w) bytes += 2 * l.written_bytes[w];  // read and written
  return bytes;
}

}  // namespace

PYBIND11_MODULE(_roofline, m) {
  m.doc() = "fastoptim.bench's same-traffic roofline: x += grad over param and state streams";
  m.def("step", &step, py::arg("table"), py::arg("dtypes"), py::arg("num_threads"),
        py::arg("serial_threshold") = 16384,
        "One roofline step over an (n, 7) int64 pointer table (param, grad, state 0..2, element "
        "count, unused). dtypes names the storage type of param, grad and each state stream "
        "(2 + k names for k state slots). Threads: num_threads (0: OpenMP's default), one "
        "thread below serial_threshold elements in all.");
  m.def("bytes_per_element", &bytes_per_element, py::arg("dtypes"),
        "Bytes one step moves per element: grad read, param and state streams read and written.");
  m.def("vector_level", &vector_level,
        "The inner loops' clone on this CPU: avx512f, avx2, default (x86-64 glibc builds with "
        "GCC), or plain (a build without clones).");
  m.attr("dtypes") = py::make_tuple("float32", "float64", "bfloat16", "float16");
}
