// The C++ optimizer's checkpoints: save() and load() of the binary format documented in
// optimizer.hpp (version 2; version 1 files of fastoptim 0.1 still load).
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

// Storage type bytes of the format: 0 float32, 1 float64.
unsigned char storage_byte(DType dtype) { return dtype == DType::float32 ? 0 : 1; }

template <class T>
void write_values(Writer& w, const void* data, std::size_t count) {
  w.array(static_cast<const T*>(data), count);
}

}  // namespace

void Optimizer::save(std::ostream& out) const {
  Writer w(out);
  w.bytes(kMagic, sizeof(kMagic));
  w.scalar<std::uint32_t>(kStateFormatVersion);
  const unsigned char rule_bytes[4] = {static_cast<unsigned char>(rule_), 0, 0, 0};
  w.bytes(rule_bytes, sizeof(rule_bytes));
  const std::vector<double> options = options_vector();
  w.scalar<std::uint32_t>(static_cast<std::uint32_t>(options.size()));
  for (double v : options) w.scalar(std::bit_cast<std::uint64_t>(v));
  w.scalar<std::uint64_t>(impl_->params.size());
  for (const Impl::Param& p : impl_->params) {
    // every state slot is kept in the param's type; the scalar state in float32
    unsigned char head[8] = {storage_byte(p.dtype), 0, 0, 0, 0, 0, 0, 0};
    for (int slot = 0; slot < 3; ++slot)
      if (p.slots[slot]) {
        head[1] |= static_cast<unsigned char>(1u << slot);
        head[2 + slot] = storage_byte(p.dtype);
      }
    head[5] = storage_byte(DType::float32);
    w.bytes(head, sizeof(head));
    w.scalar<std::uint64_t>(p.size);
    w.scalar<std::int64_t>(p.step);
    for (int slot = 0; slot < 3; ++slot) {
      if (!p.slots[slot]) continue;
      if (p.dtype == DType::float32) write_values<float>(w, p.slots[slot].get(), p.size);
      else write_values<double>(w, p.slots[slot].get(), p.size);
    }
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
  if (version != 1 && version != kStateFormatVersion)
    corrupt("format version " + std::to_string(version) + " is not supported (this build reads " +
            "1 and " + std::to_string(kStateFormatVersion) + ")");
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

  const auto count = r.scalar<std::uint64_t>("the param count");
  const auto& params = impl_->params;
  if (count != params.size())
    corrupt("saved state has " + std::to_string(count) + " params, the optimizer has " +
            std::to_string(params.size()));
  struct Loaded {
    std::int64_t step;
    std::array<AlignedBuffer, 3> slots;
    std::array<float, 2> scalars;
  };
  std::vector<Loaded> loaded(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Impl::Param& p = params[i];
    unsigned char head[8];
    r.bytes(head, sizeof(head), "a param header");
    if (head[0] > 1) corrupt(param_name(i) + ": unknown dtype id " + std::to_string(head[0]));
    const DType dtype = head[0] == 0 ? DType::float32 : DType::float64;
    if (dtype != p.dtype)
      corrupt(param_name(i) + ": saved as " + dtype_name(dtype) + ", the param is " +
              dtype_name(p.dtype));
    for (int slot = 0; slot < 8; ++slot)
      if ((head[1] >> slot) & 1u && (slot > 2 || std::string_view(slot_name(slot)).empty()))
        corrupt(param_name(i) + ": state slot " + std::to_string(slot) + " does not exist for " +
                std::string(rule_name(rule_)));
    if (version == 1) {
      for (int k = 2; k < 8; ++k)
        if (head[k] != 0) corrupt(param_name(i) + ": reserved header bytes are not zero");
    } else {
      // each stored slot's storage type must be the one this optimizer keeps it in
      for (int slot = 0; slot < 3; ++slot) {
        const bool stored = (head[1] >> slot) & 1u;
        if (!stored && head[2 + slot] != 0)
          corrupt(param_name(i) + ": storage type given for state slot " + std::to_string(slot) +
                  ", which is not stored");
        if (stored && head[2 + slot] != storage_byte(p.dtype))
          corrupt(param_name(i) + ": state '" + slot_name(slot) + "' saved as storage type " +
                  std::to_string(head[2 + slot]) + ", this optimizer keeps it as " +
                  dtype_name(p.dtype));
      }
      if (head[5] != storage_byte(DType::float32))
        corrupt(param_name(i) + ": scalar state saved as storage type " +
                std::to_string(head[5]) + ", this optimizer keeps it as float32");
      if (head[6] != 0 || head[7] != 0)
        corrupt(param_name(i) + ": reserved header bytes are not zero");
    }
    const auto size = r.scalar<std::uint64_t>("a param size");
    if (size != p.size)
      corrupt(param_name(i) + ": saved with " + std::to_string(size) + " elements, the param has " +
              std::to_string(p.size));
    loaded[i].step = r.scalar<std::int64_t>("a step count");
    check_stored_step_count(i, loaded[i].step, "fastoptim state: ");
    for (int slot = 0; slot < 3; ++slot) {
      if (!((head[1] >> slot) & 1u)) continue;
      AlignedBuffer buffer(p.size * dtype_size(dtype));
      if (dtype == DType::float32)
        r.array(static_cast<float*>(buffer.get()), p.size, "a state buffer");
      else
        r.array(static_cast<double*>(buffer.get()), p.size, "a state buffer");
      loaded[i].slots[slot] = std::move(buffer);
    }
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
  for (std::size_t i = 0; i < params.size(); ++i) {
    impl_->params[i].step = loaded[i].step;
    impl_->params[i].scalars = loaded[i].scalars;
    for (int slot = 0; slot < 3; ++slot)
      impl_->params[i].slots[slot] = std::move(loaded[i].slots[slot]);
  }
}

}  // namespace fastoptim
