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
// float64) the single fused pass moves float32 Adam's traffic as fast as the core's AVX-512
// kernels, ~40-46 GB/s on one thread, and so does its SSE2 clone (the memory is the limit
// there). The core's 16-bit layouts (16-bit params and grads, bfloat16 or float32 state, a float32
// master copy; float32 params with bfloat16 state or 16-bit grads) get a fused pass too, its
// conversions written out for AVX-512F and for AVX2 + F16C: 40-48 GB/s on one thread for every
// one of them, where the per-stream blocks that other mixes (and CPUs below AVX2) keep moved 20
// (all bfloat16), 33 (bfloat16 param and grad, float32 state) and 6 (all float16) GB/s.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace py = pybind11;

// ifunc (what target_clones dispatches through) needs glibc: not musl, macOS or Windows. Clang
// has the attribute too, but is not what the Linux wheels are built with: plain loops there.
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
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

// ---- 16-bit layouts: one fused pass with explicit conversions ----------------------------------
//
// The per-stream blocks above convert well enough for float32/float64 mixes, but with 16-bit
// streams they are bound by the conversions, not the memory: bfloat16 everywhere moved ~20 GB/s
// on one Zen 4 thread, float16 (bit arithmetic, no F16C) ~6, where float32 moves ~46. The
// layouts of the core (16-bit params and grads; float32 or bfloat16 state; a float32 master copy
// as the last state stream) therefore get a single pass over all streams, as a kernel makes, with
// the conversions written out for AVX-512F (16 lanes) and AVX2 + F16C (8 lanes): bfloat16 widened
// by a shift and narrowed to nearest even by integer arithmetic (NaN kept a quiet NaN), float16
// by vcvtph2ps / vcvtps2ph (round to nearest even). The results are the blocks' to the bit. Other
// combinations, other CPUs and other compilers keep the blocks.

enum Kind { kF32 = 0, kBF16 = 1, kF16 = 2 };

template <int T>
struct KindOf;
template <>
struct KindOf<kF32> {
  using S = Plain<float>;
};
template <>
struct KindOf<kBF16> {
  using S = BFloat16;
};
template <>
struct KindOf<kF16> {
  using S = Float16;
};

// the storage kind of state stream k of K: the last one is M (the master copy), the others S
template <int S, int M, int K>
constexpr int state_kind(int k) {
  return k == K - 1 ? M : S;
}

using MixedFn = void (*)(void*, const void*, void*, void*, void*, std::size_t, std::size_t);

// elements [i, n), one at a time: the vector loops' tails
#if defined(ROOFLINE_HAS_CLONES)
template <int P, int G, int S, int M, int K>
inline void mixed_scalar(void* p, const void* g, void* s0, void* s1, void* s2, std::size_t i,
                         std::size_t n) {
  using PS = typename KindOf<P>::S;
  using GS = typename KindOf<G>::S;
  void* states[3] = {s0, s1, s2};
  for (; i < n; ++i) {
    const float x = GS::widen(static_cast<const typename GS::Raw*>(g)[i]);
    auto* pp = static_cast<typename PS::Raw*>(p);
    pp[i] = PS::narrow(static_cast<float>(PS::widen(pp[i])) + x);
    auto one = [&](auto tag, void* s) {
      using SS = typename KindOf<decltype(tag)::value>::S;
      auto* ss = static_cast<typename SS::Raw*>(s);
      ss[i] = SS::narrow(static_cast<float>(SS::widen(ss[i])) + x);
    };
    if constexpr (K > 0) one(std::integral_constant<int, state_kind<S, M, K>(0)>{}, states[0]);
    if constexpr (K > 1) one(std::integral_constant<int, state_kind<S, M, K>(1)>{}, states[1]);
    if constexpr (K > 2) one(std::integral_constant<int, state_kind<S, M, K>(2)>{}, states[2]);
  }
}

#define ROOFLINE_AVX512 __attribute__((target("avx512f")))
#define ROOFLINE_AVX2 __attribute__((target("avx2,f16c")))

template <int T>
ROOFLINE_AVX512 inline __m512 load16(const void* p, std::size_t i) {
  if constexpr (T == kF32) {
    return _mm512_loadu_ps(static_cast<const float*>(p) + i);
  } else {
    const __m256i h =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const std::uint16_t*>(p) + i));
    if constexpr (T == kF16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

template <int T>
ROOFLINE_AVX512 inline void store16(void* p, std::size_t i, __m512 v) {
  if constexpr (T == kF32) {
    _mm512_storeu_ps(static_cast<float*>(p) + i, v);
  } else {
    __m256i h;
    if constexpr (T == kF16) {
      h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
    } else {
      const __m512i b = _mm512_castps_si512(v);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
      const __m512i rounded = _mm512_srli_epi32(
          _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), lsb), 16);
      const __mmask16 nan = _mm512_cmpgt_epi32_mask(
          _mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
      const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x40));
      h = _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<std::uint16_t*>(p) + i), h);
  }
}

template <int T>
ROOFLINE_AVX2 inline __m256 load8(const void* p, std::size_t i) {
  if constexpr (T == kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  } else {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const std::uint16_t*>(p) + i));
    if constexpr (T == kF16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

template <int T>
ROOFLINE_AVX2 inline void store8(void* p, std::size_t i, __m256 v) {
  if constexpr (T == kF32) {
    _mm256_storeu_ps(static_cast<float*>(p) + i, v);
  } else {
    __m128i h;
    if constexpr (T == kF16) {
      h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
    } else {
      const __m256i b = _mm256_castps_si256(v);
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
      const __m256i rounded = _mm256_srli_epi32(
          _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), lsb), 16);
      const __m256i nan = _mm256_cmpgt_epi32(
          _mm256_and_si256(b, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
      const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(0x40));
      const __m256i words = _mm256_blendv_epi8(rounded, quiet, nan);  // each < 2^16
      // pack the eight 32-bit words of both 128-bit halves, then gather the halves' low quads
      h = _mm256_castsi256_si128(
          _mm256_permute4x64_epi64(_mm256_packus_epi32(words, words), 0b1000));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<std::uint16_t*>(p) + i), h);
  }
}

// Every stream bfloat16: 32 elements per 512-bit word, widened as its even elements (the low
// halves of its 32-bit lanes shifted up) and its odd ones (the high halves masked), narrowed back
// in place: no shuffles, which the element-order conversions above spend most of their time on.
ROOFLINE_AVX512 inline __m512i bf16_round512(__m512 v) {  // the bfloat16 in the high half
  const __m512i b = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), lsb);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_or_epi32(rounded, nan, b, _mm512_set1_epi32(0x400000));
}

ROOFLINE_AVX512 inline void bf16_add512(void* x, std::size_t i, __m512 g_even, __m512 g_odd) {
  auto* at = reinterpret_cast<__m512i*>(static_cast<std::uint16_t*>(x) + i);
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  const __m512i w = _mm512_loadu_si512(at);
  const __m512 even = _mm512_add_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), g_even);
  const __m512 odd = _mm512_add_ps(_mm512_castsi512_ps(_mm512_and_si512(w, high)), g_odd);
  // even's bfloat16 into the low halves, odd's kept in the high ones: a | (b & c)
  _mm512_storeu_si512(at, _mm512_ternarylogic_epi32(_mm512_srli_epi32(bf16_round512(even), 16),
                                                    bf16_round512(odd), high, 0xf8));
}

template <int K>
ROOFLINE_AVX512 std::size_t bf16_pass512(void* p, const void* g, void* s0, void* s1, void* s2,
                                         std::size_t i, std::size_t n) {
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (; i + 32 <= n; i += 32) {
    const __m512i w =
        _mm512_loadu_si512(reinterpret_cast<const __m512i*>(static_cast<const std::uint16_t*>(g) + i));
    const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(w, high));
    bf16_add512(p, i, even, odd);
    if constexpr (K > 0) bf16_add512(s0, i, even, odd);
    if constexpr (K > 1) bf16_add512(s1, i, even, odd);
    if constexpr (K > 2) bf16_add512(s2, i, even, odd);
  }
  return i;
}

template <int P, int G, int S, int M, int K>
ROOFLINE_AVX512 void mixed_avx512(void* p, const void* g, void* s0, void* s1, void* s2,
                                  std::size_t i, std::size_t n) {
  if constexpr (P == kBF16 && G == kBF16 && S == kBF16 && M == kBF16)
    i = bf16_pass512<K>(p, g, s0, s1, s2, i, n);
  for (; i + 16 <= n; i += 16) {
    const __m512 x = load16<G>(g, i);
    store16<P>(p, i, _mm512_add_ps(load16<P>(p, i), x));
    constexpr int T0 = state_kind<S, M, K>(0), T1 = state_kind<S, M, K>(1),
                  T2 = state_kind<S, M, K>(2);
    if constexpr (K > 0) store16<T0>(s0, i, _mm512_add_ps(load16<T0>(s0, i), x));
    if constexpr (K > 1) store16<T1>(s1, i, _mm512_add_ps(load16<T1>(s1, i), x));
    if constexpr (K > 2) store16<T2>(s2, i, _mm512_add_ps(load16<T2>(s2, i), x));
  }
  mixed_scalar<P, G, S, M, K>(p, g, s0, s1, s2, i, n);
}

ROOFLINE_AVX2 inline __m256i bf16_round256(__m256 v) {  // the bfloat16 in the high half
  const __m256i b = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), lsb);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, _mm256_or_si256(b, _mm256_set1_epi32(0x400000)), nan);
}

ROOFLINE_AVX2 inline void bf16_add256(void* x, std::size_t i, __m256 g_even, __m256 g_odd) {
  auto* at = reinterpret_cast<__m256i*>(static_cast<std::uint16_t*>(x) + i);
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  const __m256i w = _mm256_loadu_si256(at);
  const __m256 even = _mm256_add_ps(_mm256_castsi256_ps(_mm256_slli_epi32(w, 16)), g_even);
  const __m256 odd = _mm256_add_ps(_mm256_castsi256_ps(_mm256_and_si256(w, high)), g_odd);
  _mm256_storeu_si256(at, _mm256_or_si256(_mm256_srli_epi32(bf16_round256(even), 16),
                                          _mm256_and_si256(bf16_round256(odd), high)));
}

template <int K>
ROOFLINE_AVX2 std::size_t bf16_pass256(void* p, const void* g, void* s0, void* s1, void* s2,
                                       std::size_t i, std::size_t n) {
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  for (; i + 16 <= n; i += 16) {
    const __m256i w =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const std::uint16_t*>(g) + i));
    const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(w, high));
    bf16_add256(p, i, even, odd);
    if constexpr (K > 0) bf16_add256(s0, i, even, odd);
    if constexpr (K > 1) bf16_add256(s1, i, even, odd);
    if constexpr (K > 2) bf16_add256(s2, i, even, odd);
  }
  return i;
}

template <int P, int G, int S, int M, int K>
ROOFLINE_AVX2 void mixed_avx2(void* p, const void* g, void* s0, void* s1, void* s2,
                              std::size_t i, std::size_t n) {
  if constexpr (P == kBF16 && G == kBF16 && S == kBF16 && M == kBF16)
    i = bf16_pass256<K>(p, g, s0, s1, s2, i, n);
  for (; i + 8 <= n; i += 8) {
    const __m256 x = load8<G>(g, i);
    store8<P>(p, i, _mm256_add_ps(load8<P>(p, i), x));
    constexpr int T0 = state_kind<S, M, K>(0), T1 = state_kind<S, M, K>(1),
                  T2 = state_kind<S, M, K>(2);
    if constexpr (K > 0) store8<T0>(s0, i, _mm256_add_ps(load8<T0>(s0, i), x));
    if constexpr (K > 1) store8<T1>(s1, i, _mm256_add_ps(load8<T1>(s1, i), x));
    if constexpr (K > 2) store8<T2>(s2, i, _mm256_add_ps(load8<T2>(s2, i), x));
  }
  mixed_scalar<P, G, S, M, K>(p, g, s0, s1, s2, i, n);
}

// The (param, grad, state, last state) kinds with a fused pass: the core's 16-bit layouts.
struct MixedEntry {
  int p, g, s, m;
  MixedFn avx512[1 + kMaxStates];
  MixedFn avx2[1 + kMaxStates];
};

template <int P, int G, int S, int M>
constexpr MixedEntry mixed_entry() {
  MixedEntry e{P, G, S, M, {}, {}};
  e.avx512[0] = &mixed_avx512<P, G, S, M, 0>;
  e.avx512[1] = &mixed_avx512<P, G, S, M, 1>;
  e.avx512[2] = &mixed_avx512<P, G, S, M, 2>;
  e.avx512[3] = &mixed_avx512<P, G, S, M, 3>;
  e.avx2[0] = &mixed_avx2<P, G, S, M, 0>;
  e.avx2[1] = &mixed_avx2<P, G, S, M, 1>;
  e.avx2[2] = &mixed_avx2<P, G, S, M, 2>;
  e.avx2[3] = &mixed_avx2<P, G, S, M, 3>;
  return e;
}

const MixedEntry kMixed[] = {
    mixed_entry<kBF16, kBF16, kBF16, kBF16>(),  // all bfloat16
    mixed_entry<kF16, kF16, kF16, kF16>(),      // all float16
    mixed_entry<kBF16, kBF16, kF32, kF32>(),    // float32 state (and master)
    mixed_entry<kF16, kF16, kF32, kF32>(),
    mixed_entry<kBF16, kBF16, kBF16, kF32>(),  // bfloat16 state, float32 master
    mixed_entry<kF16, kF16, kBF16, kF32>(),
    mixed_entry<kF32, kF32, kBF16, kBF16>(),  // float32 params, bfloat16 state
    mixed_entry<kF32, kBF16, kF32, kF32>(),   // float32 params, 16-bit grads
    mixed_entry<kF32, kF16, kF32, kF32>(),
    mixed_entry<kF32, kBF16, kBF16, kBF16>(),
    mixed_entry<kF32, kF16, kBF16, kBF16>(),
};

enum Level { kBlocks, kAvx2, kAvx512 };

Level mixed_level() {
#if defined(ROOFLINE_TEST_LEVEL)  // a build that checks a lower level on this CPU
  return static_cast<Level>(ROOFLINE_TEST_LEVEL);
#endif
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) return kAvx2;
  return kBlocks;  // the SSE2 clone's blocks
}

// the fused pass of these streams' kinds, or null (then blocks)
MixedFn find_mixed(const int* kinds, int states) {
  const int s = states >= 2 ? kinds[2] : -1;  // the first state's kind, when it is not the last
  const int m = states >= 1 ? kinds[1 + states] : -1;
  for (int k = 2; k < 1 + states; ++k)
    if (kinds[k] != s) return nullptr;  // states before the last must share a kind
  static const Level level = mixed_level();
  for (const MixedEntry& e : kMixed) {
    if (e.p != kinds[0] || e.g != kinds[1]) continue;
    if (states >= 1 && e.m != m) continue;
    if (states >= 2 && e.s != s) continue;
    if (level == kAvx512) return e.avx512[states];
    if (level == kAvx2) return e.avx2[states];
    return nullptr;
  }
  return nullptr;
}
#endif  // ROOFLINE_HAS_CLONES

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
  FusedFn fused;  // every stream float32, or every stream float64; else
  MixedFn mixed;  // the fused pass of a 16-bit layout; else null and blocks:
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
#if defined(ROOFLINE_HAS_CLONES)
  else if (!any_double) {  // no float64 stream: maybe a 16-bit layout with a fused pass
    int kinds[2 + kMaxStates];
    for (std::size_t i = 0; i < dtypes.size(); ++i)
      kinds[i] = s[i] == kFloat32 ? kF32 : s[i] == kBFloat16 ? kBF16 : kF16;
    l.mixed = find_mixed(kinds, l.states);
  }
#endif
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
    if (l.mixed) {  // every pointer at its row's start: the pass indexes elements [first, last)
      l.mixed(row.written[0], row.grad, row.written[1], row.written[2], row.written[3], first,
              last);
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
