// Logistic regression on generated data, trained with each of fastoptim's rules through
// the Eigen adapter, then with the model held in bfloat16 (mixed precision: float32 master
// weights, or bfloat16 state with stochastic rounding). Prints the loss as it falls; exits 1
// if a run's loss did not fall.
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <fastoptim/eigen.hpp>
#include <fastoptim/fastoptim.hpp>

namespace {

struct Data {
  Eigen::MatrixXf x;  // samples x features
  Eigen::VectorXf y;  // labels in {0, 1}
};

// Two Gaussian classes whose means differ along a random direction, with label noise.
Data make_data(int samples, int features, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  Eigen::VectorXf direction(features);
  for (int j = 0; j < features; ++j) direction(j) = normal(rng);
  direction.normalize();
  Data d{Eigen::MatrixXf(samples, features), Eigen::VectorXf(samples)};
  for (int i = 0; i < samples; ++i) {
    const bool positive = uniform(rng) < 0.5f;
    for (int j = 0; j < features; ++j)
      d.x(i, j) = normal(rng) + (positive ? 1.5f : -1.5f) * direction(j) + 0.5f;
    d.y(i) = (uniform(rng) < 0.05f) != positive ? 1.0f : 0.0f;
  }
  return d;
}

struct Model {
  Eigen::VectorXf w;
  Eigen::VectorXf b;  // one element: a bias
};

// Mean binary cross-entropy, and its gradient with respect to w and b.
float loss_and_grad(const Data& d, const Model& m, Eigen::VectorXf& grad_w, Eigen::VectorXf& grad_b) {
  const Eigen::ArrayXf logits = (d.x * m.w).array() + m.b(0);
  const Eigen::ArrayXf p = 1.0f / (1.0f + (-logits).exp());
  const Eigen::ArrayXf y = d.y.array();
  // log(1 + e^z) - y z, computed without overflow
  const Eigen::ArrayXf softplus = logits.max(0.0f) + (1.0f + (-logits.abs()).exp()).log();
  const float n = static_cast<float>(d.x.rows());
  const Eigen::VectorXf residual = ((p - y) / n).matrix();
  grad_w = d.x.transpose() * residual;
  grad_b(0) = residual.sum();
  return (softplus - y * logits).sum() / n;
}

// A learning rate that makes each rule learn this problem in 200 steps: kLearningRate unless the
// rule is listed. Every registered rule runs (fastoptim::rules::All), each with its defaults
// otherwise.
constexpr double kLearningRate = 0.05;
constexpr std::pair<std::string_view, double> kLearningRates[] = {
    {"sgd", 0.5}, {"adagrad", 0.2}, {"adadelta", 1.0}, {"rmsprop", 0.01}};

double learning_rate(std::string_view rule) {
  for (const auto& [name, lr] : kLearningRates)
    if (name == rule) return lr;
  return kLearningRate;
}

struct Run {
  std::string name;
  std::unique_ptr<fastoptim::Optimizer> optimizer;
};

}  // namespace

int main() {
  const Data data = make_data(512, 8, 42);
  const int steps = 200;

  std::vector<Run> runs;
  fastoptim::rules::for_each_rule([&](auto rule) {
    using Rule = decltype(rule);
    typename Rule::Options options;
    options.lr = learning_rate(Rule::name);
    auto optimizer = std::make_unique<fastoptim::RuleOptimizer<Rule>>(options);
    // a rule with transforms starts in the mode its target leaves (Schedule-Free: eval, where a
    // step throws): as schedulefree's opt.train() before training
    if constexpr (fastoptim::rules::transform_count<Rule>() > 0)
      for (const auto& transform : Rule::transforms)
        if (transform.to) optimizer->transform(transform.name);
    runs.push_back({Rule::torch_name, std::move(optimizer)});
  });

  std::printf("fastoptim logistic regression: SIMD level %s, %d thread(s)\n",
              fastoptim::simd_level().c_str(), fastoptim::get_num_threads());
  int failures = 0;
  for (const Run& run : runs) {
    Model model{Eigen::VectorXf::Zero(data.x.cols()), Eigen::VectorXf::Zero(1)};
    Eigen::VectorXf grad_w(data.x.cols()), grad_b(1);
    fastoptim::Optimizer* optimizer = run.optimizer.get();
    fastoptim::eigen::add_param(*optimizer, model.w);
    fastoptim::eigen::add_param(*optimizer, model.b);

    const float first = loss_and_grad(data, model, grad_w, grad_b);
    std::printf("%-9s loss %.4f", run.name.c_str(), first);
    float loss = first;
    for (int step = 1; step <= steps; ++step) {
      fastoptim::eigen::step(*optimizer, grad_w, grad_b);
      loss = loss_and_grad(data, model, grad_w, grad_b);
      if (step % 40 == 0) std::printf(" -> %.4f", loss);
    }
    const bool fell = std::isfinite(loss) && loss < 0.95f * first;
    std::printf("  %s\n", fell ? "ok" : "DID NOT FALL");
    failures += fell ? 0 : 1;
  }

#if EIGEN_VERSION_AT_LEAST(3, 4, 0)  // Eigen::bfloat16
  // The same model in bfloat16 (half the memory of float32): the optimizer keeps a float32
  // master copy of each param and writes the param as the master rounded to nearest, in the
  // same pass; or keeps bfloat16 state and rounds every store stochastically (unbiased).
  using VectorBf = Eigen::Matrix<Eigen::bfloat16, Eigen::Dynamic, 1>;
  struct Mixed {
    std::string name;
    fastoptim::Precision precision;
  };
  const std::vector<Mixed> mixed = {
      {"AdamW bf16 + fp32 master weights", {.master_weights = true}},
      {"AdamW bf16, bf16 state, stochastic rounding",
       {.state_dtype = fastoptim::DType::bfloat16, .stochastic_rounding = true, .seed = 42}},
  };
  for (const Mixed& run : mixed) {
    VectorBf w = Eigen::VectorXf::Zero(data.x.cols()).cast<Eigen::bfloat16>();
    VectorBf b = Eigen::VectorXf::Zero(1).cast<Eigen::bfloat16>();
    Eigen::VectorXf grad_w(data.x.cols()), grad_b(1);
    fastoptim::AdamW optimizer({.lr = learning_rate("adamw")}, run.precision);
    fastoptim::eigen::add_param(optimizer, w);
    fastoptim::eigen::add_param(optimizer, b);
    auto loss = [&] {  // the loss and float32 grads of the bfloat16 model
      const Model model{w.cast<float>(), b.cast<float>()};
      return loss_and_grad(data, model, grad_w, grad_b);
    };
    const float first = loss();
    std::printf("%s\n          loss %.4f", run.name.c_str(), first);
    float last = first;
    for (int step = 1; step <= steps; ++step) {
      const VectorBf gw = grad_w.cast<Eigen::bfloat16>(), gb = grad_b.cast<Eigen::bfloat16>();
      fastoptim::eigen::step(optimizer, gw, gb);  // bfloat16 grads, as the params
      last = loss();
      if (step % 40 == 0) std::printf(" -> %.4f", last);
    }
    const bool fell = std::isfinite(last) && last < 0.95f * first;
    std::printf("  %s (master copy: %s)\n", fell ? "ok" : "DID NOT FALL",
                optimizer.state(0).master != nullptr ? "float32" : "none");
    failures += fell ? 0 : 1;
  }
#endif

  if (failures != 0) {
    std::printf("%d run(s) did not reduce the loss\n", failures);
    return 1;
  }
  std::printf("loss fell with every rule\n");
  return 0;
}
