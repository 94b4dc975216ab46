// Eigen adapter (header-only, opt-in: link fastoptim::eigen, which adds Eigen3::Eigen).
// Params and grads held in Eigen objects: vectors and matrices of float, double, Eigen::bfloat16
// (Eigen 3.4 and later) or Eigen::half, as Eigen::Ref, Matrix, Array, Map or a gap-free block.
// Nothing is copied: the optimizer updates the Eigen object's own memory. Eigen::bfloat16 and
// Eigen::half hold the same 2 bytes as fastoptim::bfloat16 and fastoptim::float16 (the value's
// bits), so their data is handed over as those types.
//
//   Eigen::MatrixXf w = Eigen::MatrixXf::Random(4, 3);
//   Eigen::VectorXf b = Eigen::VectorXf::Zero(4);
//   fastoptim::Adam opt;
//   fastoptim::eigen::add_param(opt, w);
//   fastoptim::eigen::add_param(opt, b);
//   fastoptim::eigen::step(opt, grad_w, grad_b);       // one grad per param, in order
//
//   Eigen::Matrix<Eigen::bfloat16, Eigen::Dynamic, Eigen::Dynamic> v(4, 3);  // 16-bit params
//   fastoptim::AdamW opt16({}, {.master_weights = true});  // float32 master copies and state
//   fastoptim::eigen::add_param(opt16, v);
//
// Only contiguous storage can be updated in place: a block with gaps (a row of a column-major
// matrix, a sub-matrix) throws std::invalid_argument instead of being silently copied.
#pragma once

#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <Eigen/Core>

#include "fastoptim/optimizer.hpp"

namespace fastoptim::eigen {

// The Ref types this adapter is written for (any Eigen object with direct, gap-free storage
// works too).
template <class T>
using VectorRef = Eigen::Ref<Eigen::Matrix<T, Eigen::Dynamic, 1>>;
template <class T>
using MatrixRef = Eigen::Ref<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>>;
template <class T>
using ConstVectorRef = Eigen::Ref<const Eigen::Matrix<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstMatrixRef = Eigen::Ref<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>>;

namespace detail {

template <class E>
concept DirectAccess = requires(E& e) {
  e.data();
  e.innerStride();
  e.outerStride();
  e.innerSize();
  e.outerSize();
  e.size();
} && std::is_base_of_v<Eigen::EigenBase<std::remove_cvref_t<E>>, std::remove_cvref_t<E>>;

template <class E>
using ElementOf = std::remove_pointer_t<decltype(std::declval<E&>().data())>;

// The fastoptim storage type of an Eigen scalar type (Unsupported: none).
struct Unsupported {};
template <class T>
struct Storage {
  using type = Unsupported;
};
template <>
struct Storage<float> {
  using type = float;
};
template <>
struct Storage<double> {
  using type = double;
};
template <>
struct Storage<Eigen::half> {
  using type = fastoptim::float16;
};
static_assert(sizeof(Eigen::half) == sizeof(fastoptim::float16) &&
                  alignof(Eigen::half) >= alignof(fastoptim::float16),
              "fastoptim::eigen: Eigen::half is not 2 bytes of IEEE binary16");
#if EIGEN_VERSION_AT_LEAST(3, 4, 0)
template <>
struct Storage<Eigen::bfloat16> {
  using type = fastoptim::bfloat16;
};
static_assert(sizeof(Eigen::bfloat16) == sizeof(fastoptim::bfloat16) &&
                  alignof(Eigen::bfloat16) >= alignof(fastoptim::bfloat16),
              "fastoptim::eigen: Eigen::bfloat16 is not the top 2 bytes of a float32");
#endif

// const T -> const Storage<T>::type
template <class T>
using StorageOf = std::conditional_t<std::is_const_v<T>,
                                     const typename Storage<std::remove_const_t<T>>::type,
                                     typename Storage<std::remove_const_t<T>>::type>;

}  // namespace detail

// The elements of `x` as a span (std::span<float>, std::span<const double>, ...), in storage
// order; Eigen::bfloat16 and Eigen::half elements as fastoptim::bfloat16 and fastoptim::float16
// (the same bytes). std::invalid_argument if `x` has gaps between its elements.
template <class E>
  requires detail::DirectAccess<std::remove_reference_t<E>>
auto as_span(E&& x)
    -> std::span<detail::StorageOf<detail::ElementOf<std::remove_reference_t<E>>>> {
  using Element = detail::ElementOf<std::remove_reference_t<E>>;
  using Stored = detail::StorageOf<Element>;
  static_assert(!std::is_same_v<std::remove_const_t<Stored>, detail::Unsupported>,
                "fastoptim::eigen: only float, double, Eigen::bfloat16 and Eigen::half Eigen "
                "objects are supported");
  const auto size = static_cast<std::size_t>(x.size());
  const bool contiguous =
      size <= 1 || ((x.innerSize() <= 1 || x.innerStride() == 1) &&
                    (x.outerSize() <= 1 || x.outerStride() == x.innerSize() * x.innerStride()));
  if (!contiguous)
    throw std::invalid_argument(
        "fastoptim::eigen: the Eigen object is not contiguous (inner stride " +
        std::to_string(x.innerStride()) + ", outer stride " + std::to_string(x.outerStride()) +
        " for " + std::to_string(x.rows()) + "x" + std::to_string(x.cols()) +
        "); pass a contiguous Matrix, Array, Ref or Map");
  // Eigen's 16-bit scalars are their bits, as fastoptim's storage types are
  return std::span<Stored>(reinterpret_cast<Stored*>(x.data()), size);
}

// Registers an Eigen object as a param (updated in place); returns its index.
template <class E>
  requires detail::DirectAccess<std::remove_reference_t<E>>
std::size_t add_param(Optimizer& optimizer, E&& param) {
  auto elements = as_span(param);
  static_assert(!std::is_const_v<typename decltype(elements)::element_type>,
                "fastoptim::eigen::add_param: the param must be writable (not a const Ref)");
  return optimizer.add_param(elements);
}

// A Grad viewing an Eigen object (valid while the object is).
template <class E>
  requires detail::DirectAccess<std::remove_reference_t<E>>
Grad grad(const E& g) {
  return Grad(as_span(g));
}

// One step with one Eigen grad per param, in add_param() order. Pass fastoptim::Grad{} (or
// nullptr) for a param without a grad this step.
template <class... Grads>
void step(Optimizer& optimizer, const Grads&... grads) {
  auto one = [](const auto& g) -> Grad {
    using G = std::remove_cvref_t<decltype(g)>;
    if constexpr (std::is_same_v<G, Grad> || std::is_same_v<G, std::nullptr_t>)
      return Grad(g);
    else
      return grad(g);
  };
  const Grad all[] = {one(grads)..., Grad()};  // trailing entry: a zero-length array is illegal
  optimizer.step(std::span<const Grad>(all, sizeof...(Grads)));
}

}  // namespace fastoptim::eigen
