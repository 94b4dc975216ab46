// Per-step scalars of each rule, computed in double by the driver and stored in the element
// type T, as torch casts Python scalars to the tensor's type inside its kernels.
// Plain data only: included by every ISA object.
#pragma once

namespace fastoptim::kernels {

// torch's lerp(start, end, w): start + w * (end - start) when |w| < 0.5,
// else end - (end - start) * (1 - w), with 1 - w computed in T.
template <class T>
struct Lerp {
  T weight;
  T one_minus_weight;
  bool from_start;
};

// Factors every grad is multiplied by as it is read, in this order, as torch's in-place
// multiplies apply them before the update: GradScaler's unscale (grad * inv_scale), then
// clip_grad_norm_'s clip (grad * clip_coef). Value-initialised: neither applied.
template <class T>
struct GradFactors {
  T inv_scale, clip_coef;
  bool unscale, clip;
};

template <class T>
struct SgdScalars {
  T neg_lr, weight_decay, momentum, one_minus_dampening;
  bool maximize, has_weight_decay, has_momentum, nesterov, first_step;
  GradFactors<T> grad;
};

template <class T>
struct AdagradScalars {
  T neg_clr, weight_decay, eps;
  bool maximize, has_weight_decay;
  GradFactors<T> grad;
};

template <class T>
struct AdadeltaScalars {
  T neg_lr, rho, one_minus_rho, eps, weight_decay;
  bool maximize, has_weight_decay;
  GradFactors<T> grad;
};

template <class T>
struct RmspropScalars {
  T neg_lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
  Lerp<T> grad_avg_lerp;
  bool maximize, has_weight_decay, has_momentum, centered;
  GradFactors<T> grad;
};

template <class T>
struct AdamScalars {
  T neg_step_size, beta2, one_minus_beta2, bias_correction2_sqrt, eps, weight_decay,
      decay_factor;
  Lerp<T> exp_avg_lerp;
  bool maximize, coupled_weight_decay, decoupled_weight_decay, amsgrad;
  GradFactors<T> grad;
};

struct RooflineScalars {
  int state_count;
};

}  // namespace fastoptim::kernels
