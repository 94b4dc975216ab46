// Eigen adapter (header-only, opt-in: link fastoptim::eigen, which adds Eigen3::Eigen).
// Params and grads held in Eigen objects: vectors and matrices of float or double, as
// Eigen::Ref, Matrix, Array, Map or a gap-free block. Nothing is copied: the optimizer updates
// the Eigen object's own memory.
//
//   Eigen::MatrixXf w = Eigen::MatrixXf::Random(4, 3);
//   Eigen::VectorXf b = Eigen::VectorXf::Zero(4);
//   fastoptim::Adam opt;
//   fastoptim::eigen::add_param(opt, w);
//   fastoptim::eigen::add_param(opt, b);
//   fastoptim::eigen::step(opt, grad_w, grad_b);       // one grad per param, in order
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

}  // namespace detail

// The elements of `x` as a span (std::span<float>, std::span<const double>, ...), in storage
// order. std::invalid_argument if `x` has gaps between its elements.
template <class E>
  requires detail::DirectAccess<std::remove_reference_t<E>>
auto as_span(E&& x) -> std::span<detail::ElementOf<std::remove_reference_t<E>>> {
  using Element = detail::ElementOf<std::remove_reference_t<E>>;
  static_assert(std::is_same_v<std::remove_const_t<Element>, float> ||
                    std::is_same_v<std::remove_const_t<Element>, double>,
                "fastoptim::eigen: only float and double Eigen objects are supported");
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
  return std::span<Element>(x.data(), size);
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
