// Private to the C++ optimizer's two sources: optimizer.cpp (the param registry, step, state
// views) and checkpoint.cpp (the binary format documented in optimizer.hpp).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <istream>
#include <new>
#include <ostream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fastoptim/optimizer.hpp"

namespace fastoptim::detail {

inline constexpr char kMagic[8] = {'F', 'O', 'P', 'T', 'S', 'T', 'A', 'T'};

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::bfloat16: return "bfloat16";
    case DType::float16: return "float16";
    case DType::int8: return "int8";
  }
  return "an unknown type";
}
inline std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::float32: return 4;
    case DType::float64: return 8;
    case DType::bfloat16:
    case DType::float16: return 2;
    case DType::int8: return 1;
  }
  return 0;
}

// int8 state: a slot's buffer holds its codes (the element count, rounded up to 64 bytes) and
// then its float32 scales, one per block.
inline std::size_t code_bytes(std::size_t size) { return (size + 63) / 64 * 64; }
inline std::size_t scale_count(std::size_t size, std::size_t block) {
  return (size + block - 1) / block;
}
inline std::size_t quantized_bytes(std::size_t size, std::size_t block) {
  return code_bytes(size) + scale_count(size, block) * sizeof(float);
}
inline float* scales_in(void* buffer, std::size_t size) {
  return reinterpret_cast<float*>(static_cast<unsigned char*>(buffer) + code_bytes(size));
}
inline bool is_half(DType dtype) { return dtype == DType::bfloat16 || dtype == DType::float16; }
inline std::string param_name(std::size_t index) { return "param " + std::to_string(index); }

// A param's count of updates made, as stored by load() and set_step_count(): its next update
// (count + 1) must still be a valid driver step, 1..kMaxStepCount.
constexpr std::int64_t kMaxStoredStepCount = kMaxStepCount - 1;

inline void check_stored_step_count(std::size_t index, std::int64_t step, const char* prefix = "") {
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

// `size` elements of `value` in `dtype` (16-bit types: the float32 value rounded to nearest,
// as torch's full_like in that dtype).
inline AlignedBuffer filled_buffer(DType dtype, std::size_t size, double value) {
  AlignedBuffer buffer(size * dtype_size(dtype));
  switch (dtype) {
    case DType::float32:
      std::fill_n(static_cast<float*>(buffer.get()), size, static_cast<float>(value));
      break;
    case DType::float64: std::fill_n(static_cast<double*>(buffer.get()), size, value); break;
    case DType::bfloat16:
      std::fill_n(static_cast<bfloat16*>(buffer.get()), size, to_bfloat16(static_cast<float>(value)));
      break;
    case DType::float16:
      std::fill_n(static_cast<float16*>(buffer.get()), size, to_float16(static_cast<float>(value)));
      break;
    case DType::int8: break;  // quantized by the caller (Optimizer::new_slot)
  }
  return buffer;
}

// A float32 master copy of a 16-bit param: its values widened (exactly).
// A state buffer of `dtype` holding the param's values (Schedule-Free's z starts as the param),
// each converted as a store converts it (float32 to bfloat16: nearest-even).
inline AlignedBuffer param_copy(DType dtype, DType param_dtype, const void* param,
                                std::size_t size) {
  AlignedBuffer buffer(size * dtype_size(dtype));
  auto value = [&](std::size_t i) -> double {
    switch (param_dtype) {
      case DType::float32: return static_cast<const float*>(param)[i];
      case DType::float64: return static_cast<const double*>(param)[i];
      case DType::bfloat16: return to_float(static_cast<const bfloat16*>(param)[i]);
      case DType::float16: return to_float(static_cast<const float16*>(param)[i]);
      case DType::int8: break;
    }
    return 0.0;
  };
  for (std::size_t i = 0; i < size; ++i) {
    switch (dtype) {
      case DType::float32: static_cast<float*>(buffer.get())[i] = static_cast<float>(value(i)); break;
      case DType::float64: static_cast<double*>(buffer.get())[i] = value(i); break;
      case DType::bfloat16:
        static_cast<bfloat16*>(buffer.get())[i] = to_bfloat16(static_cast<float>(value(i)));
        break;
      case DType::float16:
        static_cast<float16*>(buffer.get())[i] = to_float16(static_cast<float>(value(i)));
        break;
      case DType::int8: break;  // quantized by the caller (Optimizer::new_slot)
    }
  }
  return buffer;
}

inline AlignedBuffer master_from(DType dtype, const void* param, std::size_t size) {
  AlignedBuffer buffer(size * sizeof(float));
  auto* out = static_cast<float*>(buffer.get());
  if (dtype == DType::bfloat16)
    for (std::size_t i = 0; i < size; ++i) out[i] = to_float(static_cast<const bfloat16*>(param)[i]);
  else
    for (std::size_t i = 0; i < size; ++i) out[i] = to_float(static_cast<const float16*>(param)[i]);
  return buffer;
}

// ---- little-endian streams with a running FNV-1a 64 hash -------------------------------------
constexpr std::uint64_t kFnvOffset = 14695981039346656037ull;
constexpr std::uint64_t kFnvPrime = 1099511628211ull;

inline std::uint64_t fnv1a(std::uint64_t hash, const unsigned char* bytes, std::size_t count) {
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

[[noreturn]] inline void corrupt(const std::string& what) {
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

}  // namespace fastoptim::detail

namespace fastoptim {
using namespace detail;  // NOLINT: the helpers above, in both sources

struct Optimizer::Impl {
  struct Param {
    DType dtype;
    void* data;
    std::size_t size;
    DType state_dtype;  // storage type of the slots (Precision::state_dtype resolved)
    bool has_master;    // updated through a float32 master copy (Precision::master_weights)
    std::int64_t step = 0;
    std::array<AlignedBuffer, 3> slots;
    AlignedBuffer master;            // the float32 master copy, once created
    std::array<float, 2> scalars{};  // the rule's scalar state (torch: 0-d float32 tensors)
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

}  // namespace fastoptim
