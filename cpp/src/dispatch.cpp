// Picks the widest kernel table this CPU and build can run, once, on first use.
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastoptim/step.hpp"
#include "kernels/dispatch.hpp"

#if defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#if defined(_MSC_VER)
#include <intrin.h>
#endif

namespace fastoptim::kernels {

// The levels this build compiled (CMake's FASTOPTIM_SIMD_LEVELS); scalar always.
namespace scalar { extern const KernelTable kTable; }
#if defined(FASTOPTIM_KERNEL_SSE2)
namespace sse2 { extern const KernelTable kTable; }
#endif
#if defined(FASTOPTIM_KERNEL_AVX2)
namespace avx2 { extern const KernelTable kTable; }
#endif
#if defined(FASTOPTIM_KERNEL_AVX512)
namespace avx512 { extern const KernelTable kTable; }
#endif
#if defined(FASTOPTIM_KERNEL_NEON)
namespace neon { extern const KernelTable kTable; }
#endif

namespace {

#if defined(FASTOPTIM_KERNELS_X86)
struct CpuidRegs {
  unsigned eax, ebx, ecx, edx;
};

CpuidRegs cpuid(unsigned leaf, unsigned subleaf) {
  CpuidRegs r{};
#if defined(_MSC_VER)
  int out[4];
  __cpuidex(out, static_cast<int>(leaf), static_cast<int>(subleaf));
  r = {static_cast<unsigned>(out[0]), static_cast<unsigned>(out[1]),
       static_cast<unsigned>(out[2]), static_cast<unsigned>(out[3])};
#else
  __asm__ volatile("cpuid"
                   : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx)
                   : "a"(leaf), "c"(subleaf));
#endif
  return r;
}

unsigned long long xgetbv0() {
#if defined(_MSC_VER)
  return _xgetbv(0);
#else
  unsigned eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
#endif
}

#if defined(__APPLE__) && defined(FASTOPTIM_KERNEL_AVX512)
// macOS enables AVX-512 state lazily, so XCR0 does not show it until first use.
bool macos_has_avx512() {
  int value = 0;
  size_t size = sizeof(value);
  return sysctlbyname("hw.optional.avx512f", &value, &size, nullptr, 0) == 0 && value != 0;
}
#endif

// Needs both the instructions (CPUID) and the OS saving the registers (XCR0).
void x86_levels(std::vector<const KernelTable*>& levels) {
#if defined(FASTOPTIM_KERNEL_SSE2)
  levels.push_back(&sse2::kTable);  // part of x86-64
#endif
  const unsigned max_leaf = cpuid(0, 0).eax;
  const CpuidRegs leaf1 = cpuid(1, 0);
  const bool osxsave = (leaf1.ecx >> 27) & 1;
  const bool avx = (leaf1.ecx >> 28) & 1;
  if (!osxsave || !avx || max_leaf < 7) return;
  const unsigned long long xcr0 = xgetbv0();
  if ((xcr0 & 0x6) != 0x6) return;  // XMM and YMM state
  const CpuidRegs leaf7 = cpuid(7, 0);
  // the avx2 level converts float16 with F16C and fuses multiply-adds with FMA3
  const bool f16c = (leaf1.ecx >> 29) & 1, fma = (leaf1.ecx >> 12) & 1;
  if (!(((leaf7.ebx >> 5) & 1) && f16c && fma)) return;
#if defined(FASTOPTIM_KERNEL_AVX2)
  levels.push_back(&avx2::kTable);
#endif
#if defined(FASTOPTIM_KERNEL_AVX512)
  bool avx512_state = (xcr0 & 0xE6) == 0xE6;  // + opmask, ZMM0-15 upper, ZMM16-31
#if defined(__APPLE__)
  avx512_state = avx512_state || macos_has_avx512();
#endif
  if (((leaf7.ebx >> 16) & 1) && avx512_state) levels.push_back(&avx512::kTable);
#endif
}
#endif

// Lowest first. The scalar level is always there: it is the reference the others must match.
const std::vector<const KernelTable*>& supported_tables() {
  static const std::vector<const KernelTable*> tables = [] {
    std::vector<const KernelTable*> levels{&scalar::kTable};
#if defined(FASTOPTIM_KERNELS_X86)
    x86_levels(levels);
#endif
#if defined(FASTOPTIM_KERNEL_NEON)
    levels.push_back(&neon::kTable);  // part of AArch64
#endif
    return levels;
  }();
  return tables;
}

const std::vector<std::string>& known_levels() {
  static const std::vector<std::string> names{"scalar", "sse2", "avx2", "avx512", "neon"};
  return names;
}

const KernelTable* find_table(const std::string& level) {
  for (const KernelTable* t : supported_tables())
    if (level == t->level) return t;
  return nullptr;
}

// FASTOPTIM_SIMD caps the level: an unknown name warns and is ignored, a level this CPU cannot
// run warns and falls back to the best one it can.
const KernelTable* choose_table() {
  const auto& tables = supported_tables();
  const KernelTable* best = tables.back();
  const char* requested = std::getenv("FASTOPTIM_SIMD");
  if (requested == nullptr || *requested == '\0') return best;
  std::string level(requested);
  for (char& c : level) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (level == "auto" || level == "native" || level == "best") return best;
  if (const KernelTable* t = find_table(level)) return t;
  bool known = false;
  for (const auto& name : known_levels()) known = known || name == level;
  std::fprintf(stderr,
               known ? "fastoptim: FASTOPTIM_SIMD=%s is not available on this CPU or build; "
                       "using %s\n"
                     : "fastoptim: unknown FASTOPTIM_SIMD=%s (expected scalar, sse2, avx2, "
                       "avx512 or neon); using %s\n",
               requested, best->level);
  return best;
}

std::atomic<const KernelTable*> g_table{nullptr};

}  // namespace

const KernelTable& active_table() {
  const KernelTable* t = g_table.load(std::memory_order_acquire);
  if (t == nullptr) {
    t = choose_table();
    const KernelTable* expected = nullptr;
    if (!g_table.compare_exchange_strong(expected, t, std::memory_order_acq_rel)) t = expected;
  }
  return *t;
}

}  // namespace fastoptim::kernels

namespace fastoptim {

std::string simd_level() { return kernels::active_table().level; }

std::vector<std::string> available_simd_levels() {
  std::vector<std::string> names;
  for (const kernels::KernelTable* t : kernels::supported_tables()) names.emplace_back(t->level);
  return names;
}

void set_simd_level(const std::string& level) {
  const kernels::KernelTable* t = kernels::find_table(level);
  if (t == nullptr) {
    std::string message = "SIMD level '" + level + "' is not available; available levels:";
    for (const auto& name : available_simd_levels()) message += " " + name;
    throw std::invalid_argument(message);
  }
  kernels::g_table.store(t, std::memory_order_release);
}

}  // namespace fastoptim
