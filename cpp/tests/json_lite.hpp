// A small JSON reader for the reference-trajectory file: objects, arrays, strings (with the
// simple escapes), numbers (strtod, so decimal values written by Python's repr parse exactly),
// true/false/null. Throws std::runtime_error with the byte offset on malformed input.
#pragma once

#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace fastoptim::test::json {

struct Value {
  enum class Kind { null, boolean, number, string, array, object } kind = Kind::null;
  bool boolean = false;
  double number = 0.0;
  std::string string;
  std::vector<Value> array;
  std::map<std::string, Value> object;

  bool is_null() const { return kind == Kind::null; }
  const Value& operator[](const std::string& key) const {
    if (kind != Kind::object) throw std::runtime_error("json: not an object (looking for " + key + ")");
    auto it = object.find(key);
    if (it == object.end()) throw std::runtime_error("json: missing key " + key);
    return it->second;
  }
  const Value& operator[](std::size_t index) const {
    if (kind != Kind::array || index >= array.size()) throw std::runtime_error("json: bad index");
    return array[index];
  }
  bool has(const std::string& key) const { return kind == Kind::object && object.count(key) != 0; }
  double num() const {
    if (kind != Kind::number) throw std::runtime_error("json: not a number");
    return number;
  }
  const std::string& str() const {
    if (kind != Kind::string) throw std::runtime_error("json: not a string");
    return string;
  }
  template <class T>
  std::vector<T> numbers() const {
    if (kind != Kind::array) throw std::runtime_error("json: not an array of numbers");
    std::vector<T> out;
    out.reserve(array.size());
    for (const Value& v : array) out.push_back(static_cast<T>(v.num()));
    return out;
  }
};

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Value parse_document() {
    Value v = parse_value();
    skip_space();
    if (pos_ != text_.size()) fail("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("json: " + what + " at byte " + std::to_string(pos_));
  }
  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\r' || text_[pos_] == '\t'))
      ++pos_;
  }
  char peek() {
    skip_space();
    if (pos_ >= text_.size()) fail("unexpected end");
    return text_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  bool literal(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  Value parse_value() {
    const char c = peek();
    Value v;
    if (c == '{') {
      v.kind = Value::Kind::object;
      ++pos_;
      if (peek() == '}') return ++pos_, v;
      while (true) {
        std::string key = parse_string();
        expect(':');
        v.object.emplace(std::move(key), parse_value());
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.kind = Value::Kind::array;
      ++pos_;
      if (peek() == ']') return ++pos_, v;
      while (true) {
        v.array.push_back(parse_value());
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.kind = Value::Kind::string;
      v.string = parse_string();
      return v;
    }
    if (literal("true")) return v.kind = Value::Kind::boolean, v.boolean = true, v;
    if (literal("false")) return v.kind = Value::Kind::boolean, v;
    if (literal("null")) return v;
    if (literal("NaN")) return v.kind = Value::Kind::number, v.number = std::strtod("nan", nullptr), v;
    if (literal("Infinity")) return v.kind = Value::Kind::number, v.number = HUGE_VAL, v;
    if (literal("-Infinity")) return v.kind = Value::Kind::number, v.number = -HUGE_VAL, v;
    const std::size_t start = pos_;
    while (pos_ < text_.size() && std::string_view("+-0123456789.eE").find(text_[pos_]) != std::string_view::npos)
      ++pos_;
    if (start == pos_) fail("unexpected character");
    const std::string token(text_.substr(start, pos_ - start));
    char* end = nullptr;
    v.kind = Value::Kind::number;
    v.number = std::strtod(token.c_str(), &end);
    if (end != token.c_str() + token.size()) fail("bad number " + token);
    return v;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      if (pos_ >= text_.size()) fail("unterminated string");
      const char c = text_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) fail("unterminated escape");
      const char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        default: fail("unsupported escape");  // \uXXXX: not used by the reference file
      }
    }
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

inline Value parse(std::string_view text) { return Parser(text).parse_document(); }

}  // namespace fastoptim::test::json
