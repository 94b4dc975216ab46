// The C++ optimizer's checkpoints: save() and load() of the binary format documented in
// optimizer.hpp (version 3; version 2 files and version 1 files of fastoptim 0.1 still load).
#include <bit>
#include <cmath>
#include <cstring>
#include <istream>
#include <ostream>
#include <stdexcept>
#include <string>

#include "optimizer_impl.hpp"
#include "py_float.hpp"

namespace fastoptim {

// ---- save / load -----------------------------------------------------------------------------
namespace {

// Storage type bytes of the format: DType values (0 float32, 1 float64, 2 bfloat16, 3 float16,
// 4 int8: codes and block scales).
unsigned char storage_byte(DType dtype) { return static_cast<unsigned char>(dtype); }
constexpr unsigned char kDefaultStateByte = 255;  // Precision::state_dtype unset
constexpr unsigned char kMasterBit = 1u << 3;     // the stream mask's bit for the master copy

void write_values(Writer& w, DType dtype, const void* data, std::size_t count,
                  std::size_t block = 0) {
  switch (dtype) {
    case DType::int8:
      w.array(static_cast<const std::uint8_t*>(data), count);
      w.array(scales_in(const_cast<void*>(data), count), scale_count(count, block));
      break;
    case DType::float32: w.array(static_cast<const float*>(data), count); break;
    case DType::float64: w.array(static_cast<const double*>(data), count); break;
    case DType::bfloat16: w.array(static_cast<const bfloat16*>(data), count); break;
    case DType::float16: w.array(static_cast<const float16*>(data), count); break;
  }
}

AlignedBuffer read_values(Reader& r, DType dtype, std::size_t count, const char* what,
                          std::size_t block = 0) {
  AlignedBuffer buffer(dtype == DType::int8 ? quantized_bytes(count, block)
                                            : count * dtype_size(dtype));
  switch (dtype) {
    case DType::int8:
      r.array(static_cast<std::uint8_t*>(buffer.get()), count, what);
      r.array(scales_in(buffer.get(), count), scale_count(count, block), what);
      break;
    case DType::float32: r.array(static_cast<float*>(buffer.get()), count, what); break;
    case DType::float64: r.array(static_cast<double*>(buffer.get()), count, what); break;
    case DType::bfloat16: r.array(static_cast<bfloat16*>(buffer.get()), count, what); break;
    case DType::float16: r.array(static_cast<float16*>(buffer.get()), count, what); break;
  }
  return buffer;
}

std::string describe(const Precision& p) {
  return std::string("{master_weights=") + (p.master_weights ? "true" : "false") +
         ", state_dtype=" + (p.state_dtype ? dtype_name(*p.state_dtype) : "default") +
         ", stochastic_rounding=" + (p.stochastic_rounding ? "true" : "false") +
         ", seed=" + std::to_string(p.seed) +
         (p.state_dtype == DType::int8 ? ", block_size=" + std::to_string(p.block_size) +
                                             ", min_8bit_size=" + std::to_string(p.min_8bit_size)
                                       : std::string()) +
         "}";
}

}  // namespace

void Optimizer::save(std::ostream& out) const {
  Writer w(out);
  w.bytes(kMagic, sizeof(kMagic));
  // version 4 only where it is needed (int8 state): other checkpoints stay version 3, which
  // fastoptim builds before int8 state read
  const bool int8 = precision_.state_dtype == DType::int8;
  w.scalar<std::uint32_t>(int8 ? kStateFormatVersion : 3);
  const unsigned char rule_bytes[4] = {static_cast<unsigned char>(rule_), 0, 0, 0};
  w.bytes(rule_bytes, sizeof(rule_bytes));
  const std::vector<double> options = options_vector();
  w.scalar<std::uint32_t>(static_cast<std::uint32_t>(options.size()));
  for (double v : options) w.scalar(std::bit_cast<std::uint64_t>(v));
  const unsigned char precision[8] = {
      static_cast<unsigned char>(precision_.master_weights ? 1 : 0),
      precision_.state_dtype ? storage_byte(*precision_.state_dtype) : kDefaultStateByte,
      static_cast<unsigned char>(precision_.stochastic_rounding ? 1 : 0), 0, 0, 0, 0, 0};
  w.bytes(precision, sizeof(precision));
  w.scalar<std::uint64_t>(precision_.seed);
  if (int8) {
    w.scalar<std::uint64_t>(precision_.block_size);
    w.scalar<std::uint64_t>(precision_.min_8bit_size);
  }
  w.scalar<std::uint64_t>(impl_->params.size());
  for (const Impl::Param& p : impl_->params) {
    // the state slots in the param's state type, the scalar state in float32, the master copy
    // in float32
    unsigned char head[8] = {storage_byte(p.dtype), 0, 0, 0, 0, 0, 0, 0};
    for (int slot = 0; slot < 3; ++slot)
      if (p.slots[slot]) {
        head[1] |= static_cast<unsigned char>(1u << slot);
        head[2 + slot] = storage_byte(p.state_dtype);
      }
    head[5] = storage_byte(DType::float32);
    if (p.master) {
      head[1] |= kMasterBit;
      head[6] = storage_byte(DType::float32);
    }
    w.bytes(head, sizeof(head));
    w.scalar<std::uint64_t>(p.size);
    w.scalar<std::int64_t>(p.step);
    for (int slot = 0; slot < 3; ++slot)
      if (p.slots[slot])
        write_values(w, p.state_dtype, p.slots[slot].get(), p.size, precision_.block_size);
    if (p.master) write_values(w, DType::float32, p.master.get(), p.size);
    for (int k = 0; k < scalar_count(); ++k)
      w.scalar(std::bit_cast<std::uint64_t>(static_cast<double>(p.scalars[k])));
  }
  w.scalar<std::uint64_t>(w.hash());
  if (!out) throw std::runtime_error("fastoptim state: writing to the stream failed");
}

void Optimizer::load(std::istream& in) {
  Reader r(in);
  char magic[8];
  r.bytes(magic, sizeof(magic), "the magic");
  if (std::memcmp(magic, kMagic, sizeof(kMagic)) != 0)
    corrupt("not a fastoptim state (bad magic)");
  const auto version = r.scalar<std::uint32_t>("the version");
  if (version < 1 || version > kStateFormatVersion)
    corrupt("format version " + std::to_string(version) + " is not supported (this build reads " +
            "1 to " + std::to_string(kStateFormatVersion) + ")");
  unsigned char rule_bytes[4];
  r.bytes(rule_bytes, sizeof(rule_bytes), "the rule");
  if (rule_bytes[0] >= rules::All::size)
    corrupt("unknown rule id " + std::to_string(rule_bytes[0]));
  const auto saved_rule = static_cast<Rule>(rule_bytes[0]);
  // fastoptim 0.1 wrote version 1 for its six rules only (none with scalar state)
  if (version == 1 && rule_bytes[0] > static_cast<unsigned char>(Rule::adamw))
    corrupt("format version 1 has no rule " + std::string(rule_name(saved_rule)) +
            " (it was written for sgd, adagrad, adadelta, rmsprop, adam and adamw)");
  if (saved_rule != rule_)
    corrupt("saved by " + std::string(rule_name(saved_rule)) + ", loading into " +
            std::string(rule_name(rule_)));
  if (rule_bytes[1] != 0 || rule_bytes[2] != 0 || rule_bytes[3] != 0)
    corrupt("reserved header bytes are not zero");
  const auto option_count = r.scalar<std::uint32_t>("the option count");
  if (option_count != options_count())
    corrupt(std::to_string(option_count) + " option values, " + std::string(rule_name(rule_)) +
            " has " + std::to_string(options_count()));
  std::vector<double> options(option_count);
  for (double& v : options) v = std::bit_cast<double>(r.scalar<std::uint64_t>("the options"));

  // The mixed-precision storage settings (versions 1 and 2: the defaults) must be this
  // optimizer's; the seed is restored, as the options are (versions 1 and 2 keep the current).
  Precision saved_precision = precision_;
  saved_precision.master_weights = false;
  saved_precision.state_dtype.reset();
  saved_precision.stochastic_rounding = false;
  if (version >= 3) {
    unsigned char bytes[8];
    r.bytes(bytes, sizeof(bytes), "the mixed-precision settings");
    if (bytes[0] > 1 || bytes[2] > 1)
      corrupt("mixed-precision flags must be 0 or 1, got " + std::to_string(bytes[0]) + " and " +
              std::to_string(bytes[2]));
    if (bytes[1] != kDefaultStateByte && bytes[1] != storage_byte(DType::float32) &&
        bytes[1] != storage_byte(DType::bfloat16) &&
        !(version >= 4 && bytes[1] == storage_byte(DType::int8)))
      corrupt("state_dtype setting " + std::to_string(bytes[1]) +
              " is not valid (255 default, 0 float32, 2 bfloat16, 4 int8)");
    for (int k = 3; k < 8; ++k)
      if (bytes[k] != 0) corrupt("reserved mixed-precision bytes are not zero");
    saved_precision.master_weights = bytes[0] == 1;
    if (bytes[1] != kDefaultStateByte) saved_precision.state_dtype = static_cast<DType>(bytes[1]);
    saved_precision.stochastic_rounding = bytes[2] == 1;
    saved_precision.seed = r.scalar<std::uint64_t>("the seed");
  }
  if (version >= 4) {
    saved_precision.block_size = r.scalar<std::uint64_t>("the block size");
    saved_precision.min_8bit_size = r.scalar<std::uint64_t>("min_8bit_size");
  }
  // the quantization settings matter only to int8 state (versions 1 to 3 have none)
  const bool int8 = precision_.state_dtype == DType::int8;
  if (saved_precision.master_weights != precision_.master_weights ||
      saved_precision.state_dtype != precision_.state_dtype ||
      saved_precision.stochastic_rounding != precision_.stochastic_rounding ||
      (int8 && (saved_precision.block_size != precision_.block_size ||
                saved_precision.min_8bit_size != precision_.min_8bit_size)))
    corrupt("saved with mixed-precision settings " + describe(saved_precision) +
            ", this optimizer has " + describe(precision_));

  const auto count = r.scalar<std::uint64_t>("the param count");
  const auto& params = impl_->params;
  if (count != params.size())
    corrupt("saved state has " + std::to_string(count) + " params, the optimizer has " +
            std::to_string(params.size()));
  struct Loaded {
    std::int64_t step;
    std::array<AlignedBuffer, 3> slots;
    AlignedBuffer master;
    std::array<float, 2> scalars;
  };
  std::vector<Loaded> loaded(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Impl::Param& p = params[i];
    unsigned char head[8];
    r.bytes(head, sizeof(head), "a param header");
    const unsigned max_dtype = version >= 3 ? 3 : 1;  // 16-bit params from version 3 on
    if (head[0] > max_dtype)
      corrupt(param_name(i) + ": unknown dtype id " + std::to_string(head[0]));
    const auto dtype = static_cast<DType>(head[0]);
    if (dtype != p.dtype)
      corrupt(param_name(i) + ": saved as " + dtype_name(dtype) + ", the param is " +
              dtype_name(p.dtype));
    const bool master_stored = version >= 3 && (head[1] & kMasterBit) != 0;
    for (int slot = 0; slot < 8; ++slot)
      if ((head[1] >> slot) & 1u && !(slot == 3 && master_stored) &&
          (slot > 2 || std::string_view(slot_name(slot)).empty()))
        corrupt(param_name(i) + ": state slot " + std::to_string(slot) + " does not exist for " +
                std::string(rule_name(rule_)));
    if (master_stored && !p.has_master)
      corrupt(param_name(i) + ": a master copy is stored, this optimizer keeps none for " +
              dtype_name(p.dtype) + " params");
    if (version == 1) {
      for (int k = 2; k < 8; ++k)
        if (head[k] != 0) corrupt(param_name(i) + ": reserved header bytes are not zero");
    } else {
      // each stored stream's storage type must be the one this optimizer keeps it in
      for (int slot = 0; slot < 3; ++slot) {
        const bool stored = (head[1] >> slot) & 1u;
        if (!stored && head[2 + slot] != 0)
          corrupt(param_name(i) + ": storage type given for state slot " + std::to_string(slot) +
                  ", which is not stored");
        if (stored && head[2 + slot] != storage_byte(p.state_dtype))
          corrupt(param_name(i) + ": state '" + slot_name(slot) + "' saved as storage type " +
                  std::to_string(head[2 + slot]) + ", this optimizer keeps it as " +
                  dtype_name(p.state_dtype));
      }
      if (head[5] != storage_byte(DType::float32))
        corrupt(param_name(i) + ": scalar state saved as storage type " +
                std::to_string(head[5]) + ", this optimizer keeps it as float32");
      if (master_stored && head[6] != storage_byte(DType::float32))
        corrupt(param_name(i) + ": master copy saved as storage type " +
                std::to_string(head[6]) + ", this optimizer keeps it as float32");
      if ((!master_stored && head[6] != 0) || head[7] != 0)
        corrupt(param_name(i) + ": reserved header bytes are not zero");
    }
    const auto size = r.scalar<std::uint64_t>("a param size");
    if (size != p.size)
      corrupt(param_name(i) + ": saved with " + std::to_string(size) + " elements, the param has " +
              std::to_string(p.size));
    loaded[i].step = r.scalar<std::int64_t>("a step count");
    check_stored_step_count(i, loaded[i].step, "fastoptim state: ");
    for (int slot = 0; slot < 3; ++slot)
      if ((head[1] >> slot) & 1u)
        loaded[i].slots[slot] =
            read_values(r, p.state_dtype, p.size, "a state buffer", precision_.block_size);
    if (master_stored) loaded[i].master = read_values(r, DType::float32, p.size, "a master copy");
    loaded[i].scalars = p.scalars;
    for (int k = 0; k < scalar_count(); ++k) {
      const double v = std::bit_cast<double>(r.scalar<std::uint64_t>("a scalar state"));
      const auto f = static_cast<float>(v);
      if (!std::isfinite(v) || static_cast<double>(f) != v)
        corrupt(param_name(i) + ": " + scalar_name(k) + " " + detail::py_float(v) +
                " is not a finite float32 value");
      loaded[i].scalars[k] = f;
    }
  }
  const std::uint64_t computed = r.hash();
  const auto stored = r.scalar<std::uint64_t>("the checksum");
  if (stored != computed) corrupt("checksum mismatch (the data is corrupt)");

  set_options_vector(options);  // validates; the last step that can throw
  precision_.seed = saved_precision.seed;
  for (std::size_t i = 0; i < params.size(); ++i) {
    impl_->params[i].step = loaded[i].step;
    impl_->params[i].scalars = loaded[i].scalars;
    for (int slot = 0; slot < 3; ++slot)
      impl_->params[i].slots[slot] = std::move(loaded[i].slots[slot]);
    impl_->params[i].master = std::move(loaded[i].master);  // none: made again from the param
  }
}

}  // namespace fastoptim
