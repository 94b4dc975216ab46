// The per-element math of every rule, written once against the small vector API that each
// ISA header provides (load/store/set1, + - * /, neg, sqrt, max). Included inside
// namespace fastoptim::kernels::<isa> by each isa_*.cpp, after its vector header, so every
// function here is compiled once per ISA and stays in that ISA's namespace.
//
// Operation order follows torch.optim's single-tensor (foreach=False) code line by line, and
// no path uses FMA or approximate reciprocals, so every ISA gives bit-identical results.
// Uniform flags are plain branches: they are predicted perfectly and the loops are
// memory-bound.

// The grad as the update sees it: unscaled, then clipped (GradFactors), in T.
template <class V, class T>
FASTOPTIM_INLINE V load_grad(const GradFactors<T>& f, const Streams& p, size_t i) {
  V g = V::load(static_cast<const T*>(p.grad) + i);
  if (f.unscale) g = g * V::set1(f.inv_scale);
  if (f.clip) g = g * V::set1(f.clip_coef);
  return g;
}

template <class V, class T>
FASTOPTIM_INLINE V lerp(V start, V end, const Lerp<T>& l) {
  const V diff = end - start;
  if (l.from_start) return start + V::set1(l.weight) * diff;
  return end - diff * V::set1(l.one_minus_weight);
}

struct Sgd {
  template <class V, class T>
  static FASTOPTIM_INLINE void update(const SgdScalars<T>& s, const Streams& p, size_t i) {
    T* param = static_cast<T*>(p.param) + i;
    V g = load_grad<V, T>(s.grad, p, i);
    if (s.maximize) g = neg(g);
    if (s.has_weight_decay) g = g + V::set1(s.weight_decay) * V::load(param);
    if (s.has_momentum) {
      T* buf_ptr = static_cast<T*>(p.state[0]) + i;
      V buf = s.first_step ? g
                           : V::load(buf_ptr) * V::set1(s.momentum) +
                                 V::set1(s.one_minus_dampening) * g;
      V::store(buf_ptr, buf);
      g = s.nesterov ? g + V::set1(s.momentum) * buf : buf;
    }
    V::store(param, V::load(param) + V::set1(s.neg_lr) * g);
  }
};

struct Adagrad {
  template <class V, class T>
  static FASTOPTIM_INLINE void update(const AdagradScalars<T>& s, const Streams& p, size_t i) {
    T* param = static_cast<T*>(p.param) + i;
    T* sum_ptr = static_cast<T*>(p.state[0]) + i;
    V g = load_grad<V, T>(s.grad, p, i);
    if (s.maximize) g = neg(g);
    if (s.has_weight_decay) g = g + V::set1(s.weight_decay) * V::load(param);
    const V sum = V::load(sum_ptr) + g * g;
    V::store(sum_ptr, sum);
    const V std_dev = sqrt(sum) + V::set1(s.eps);
    V::store(param, V::load(param) + V::set1(s.neg_clr) * (g / std_dev));
  }
};

struct Adadelta {
  template <class V, class T>
  static FASTOPTIM_INLINE void update(const AdadeltaScalars<T>& s, const Streams& p, size_t i) {
    T* param = static_cast<T*>(p.param) + i;
    T* square_avg_ptr = static_cast<T*>(p.state[0]) + i;
    T* acc_delta_ptr = static_cast<T*>(p.state[1]) + i;
    V g = load_grad<V, T>(s.grad, p, i);
    if (s.maximize) g = neg(g);
    if (s.has_weight_decay) g = g + V::set1(s.weight_decay) * V::load(param);
    const V one_minus_rho = V::set1(s.one_minus_rho);
    const V rho = V::set1(s.rho);
    const V eps = V::set1(s.eps);
    const V square_avg = V::load(square_avg_ptr) * rho + one_minus_rho * g * g;
    V::store(square_avg_ptr, square_avg);
    const V std_dev = sqrt(square_avg + eps);
    V acc_delta = V::load(acc_delta_ptr);
    const V delta = sqrt(acc_delta + eps) / std_dev * g;
    acc_delta = acc_delta * rho + one_minus_rho * delta * delta;
    V::store(acc_delta_ptr, acc_delta);
    V::store(param, V::load(param) + V::set1(s.neg_lr) * delta);
  }
};

struct Rmsprop {
  template <class V, class T>
  static FASTOPTIM_INLINE void update(const RmspropScalars<T>& s, const Streams& p, size_t i) {
    T* param = static_cast<T*>(p.param) + i;
    T* square_avg_ptr = static_cast<T*>(p.state[0]) + i;
    V g = load_grad<V, T>(s.grad, p, i);
    if (s.maximize) g = neg(g);
    if (s.has_weight_decay) g = g + V::set1(s.weight_decay) * V::load(param);
    const V square_avg =
        V::load(square_avg_ptr) * V::set1(s.alpha) + V::set1(s.one_minus_alpha) * g * g;
    V::store(square_avg_ptr, square_avg);
    V avg;
    if (s.centered) {
      T* grad_avg_ptr = static_cast<T*>(p.state[2]) + i;
      const V grad_avg = lerp(V::load(grad_avg_ptr), g, s.grad_avg_lerp);
      V::store(grad_avg_ptr, grad_avg);
      // addcmul with value=-1: square_avg + (-1 * grad_avg) * grad_avg
      avg = sqrt(square_avg + neg(grad_avg) * grad_avg);
    } else {
      avg = sqrt(square_avg);
    }
    avg = avg + V::set1(s.eps);
    if (s.has_momentum) {
      T* buf_ptr = static_cast<T*>(p.state[1]) + i;
      const V buf = V::load(buf_ptr) * V::set1(s.momentum) + g / avg;
      V::store(buf_ptr, buf);
      V::store(param, V::load(param) + V::set1(s.neg_lr) * buf);
    } else {
      V::store(param, V::load(param) + V::set1(s.neg_lr) * (g / avg));
    }
  }
};

struct Adam {
  template <class V, class T>
  static FASTOPTIM_INLINE void update(const AdamScalars<T>& s, const Streams& p, size_t i) {
    T* param_ptr = static_cast<T*>(p.param) + i;
    T* exp_avg_ptr = static_cast<T*>(p.state[0]) + i;
    T* exp_avg_sq_ptr = static_cast<T*>(p.state[1]) + i;
    V g = load_grad<V, T>(s.grad, p, i);
    V param = V::load(param_ptr);
    if (s.maximize) g = neg(g);
    if (s.decoupled_weight_decay) param = param * V::set1(s.decay_factor);
    if (s.coupled_weight_decay) g = g + V::set1(s.weight_decay) * param;
    const V exp_avg = lerp(V::load(exp_avg_ptr), g, s.exp_avg_lerp);
    V::store(exp_avg_ptr, exp_avg);
    const V exp_avg_sq =
        V::load(exp_avg_sq_ptr) * V::set1(s.beta2) + V::set1(s.one_minus_beta2) * g * g;
    V::store(exp_avg_sq_ptr, exp_avg_sq);
    V second_moment = exp_avg_sq;
    if (s.amsgrad) {
      T* max_ptr = static_cast<T*>(p.state[2]) + i;
      second_moment = max(V::load(max_ptr), exp_avg_sq);
      V::store(max_ptr, second_moment);
    }
    const V denom = sqrt(second_moment) / V::set1(s.bias_correction2_sqrt) + V::set1(s.eps);
    V::store(param_ptr, param + V::set1(s.neg_step_size) * (exp_avg / denom));
  }
};

// Same bytes as a rule, one add per stream: what the memory system allows.
struct Roofline {
  template <class V, class T>
  static FASTOPTIM_INLINE void update(const RooflineScalars& s, const Streams& p, size_t i) {
    const V g = V::load(static_cast<const T*>(p.grad) + i);
    T* param = static_cast<T*>(p.param) + i;
    V::store(param, V::load(param) + g);
    for (int k = 0; k < s.state_count; ++k) {
      T* state = static_cast<T*>(p.state[k]) + i;
      V::store(state, V::load(state) + g);
    }
  }
};

// The grad norm's inner loop: elements [0, n) (n a multiple of 8) into 8 double lanes, element
// k into lane k % 8, each lane adding in element order. Every ISA keeps exactly those eight
// sums (as 1, 2, 4 or 8 registers), so the result is the same bits at every level.
template <class T>
FASTOPTIM_INLINE void load8(const T* p, typename VecOf<double>::type* out) {
  using D = typename VecOf<double>::type;
  if constexpr (sizeof(T) == 4) {
    load8_widened(p, out);
  } else {
    for (size_t r = 0; r < 8 / D::kLanes; ++r) out[r] = D::load(p + r * D::kLanes);
  }
}

template <bool kSquares, class T>
void norm_lanes(const void* grad, size_t n, double* lanes) {
  using D = typename VecOf<double>::type;
  constexpr size_t kRegs = 8 / D::kLanes;
  D acc[kRegs];
  for (size_t r = 0; r < kRegs; ++r) acc[r] = D::load(lanes + r * D::kLanes);
  const T* g = static_cast<const T*>(grad);
  for (size_t i = 0; i < n; i += 8) {
    D x[kRegs];
    load8(g + i, x);
    for (size_t r = 0; r < kRegs; ++r) acc[r] = acc[r] + (kSquares ? x[r] * x[r] : abs(x[r]));
  }
  for (size_t r = 0; r < kRegs; ++r) D::store(lanes + r * D::kLanes, acc[r]);
}

template <class Rule, class T, class Scalars>
void run(const void* scalars, const Streams& stream_ptrs, size_t count) {
  const Streams streams = stream_ptrs;
  using V = typename VecOf<T>::type;
  // A local copy: stores through T* could alias the T fields of *scalars, which would force a
  // reload and broadcast of every scalar on every iteration.
  const Scalars s = *static_cast<const Scalars*>(scalars);
  // One-lane head up to the first vector-aligned param address: wide accesses that straddle
  // cache lines cost ~20% on these streams, and NumPy's large arrays are only 16-byte aligned
  // (the other streams usually share the param's offset).
  const size_t misaligned = reinterpret_cast<uintptr_t>(streams.param) / sizeof(T) % V::kLanes;
  const size_t head = misaligned == 0 ? 0 : V::kLanes - misaligned;
  size_t i = 0;
  for (; i < head && i < count; ++i) Rule::template update<Scalar<T>, T>(s, streams, i);
  for (; i + V::kLanes <= count; i += V::kLanes) Rule::template update<V, T>(s, streams, i);
  for (; i < count; ++i) Rule::template update<Scalar<T>, T>(s, streams, i);
}

template <class Rule, template <class> class Scalars>
constexpr Kernel kernel_f32 = &run<Rule, float, Scalars<float>>;
template <class Rule, template <class> class Scalars>
constexpr Kernel kernel_f64 = &run<Rule, double, Scalars<double>>;

extern const KernelTable kTable;
const KernelTable kTable = {
    FASTOPTIM_ISA_NAME,
    {
        {kernel_f32<Sgd, SgdScalars>, kernel_f64<Sgd, SgdScalars>},
        {kernel_f32<Adagrad, AdagradScalars>, kernel_f64<Adagrad, AdagradScalars>},
        {kernel_f32<Adadelta, AdadeltaScalars>, kernel_f64<Adadelta, AdadeltaScalars>},
        {kernel_f32<Rmsprop, RmspropScalars>, kernel_f64<Rmsprop, RmspropScalars>},
        {kernel_f32<Adam, AdamScalars>, kernel_f64<Adam, AdamScalars>},
        {&run<Roofline, float, RooflineScalars>, &run<Roofline, double, RooflineScalars>},
    },
    {
        {&norm_lanes<false, float>, &norm_lanes<false, double>},
        {&norm_lanes<true, float>, &norm_lanes<true, double>},
    },
};
