// Logistic regression on generated data, trained with each of fastoptim's rules through
// the Eigen adapter. Prints the loss as it falls; exits 1 if a rule's loss did not fall.
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
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

struct Run {
  std::string name;
  std::function<std::unique_ptr<fastoptim::Optimizer>()> make;
};

}  // namespace

int main() {
  const Data data = make_data(512, 8, 42);
  const int steps = 200;

  fastoptim::AdamW::Options adamw;
  adamw.lr = 0.05;
  const std::vector<Run> runs = {
      {"SGD", [] { return std::make_unique<fastoptim::Sgd>(fastoptim::SgdOptions{.lr = 0.5, .momentum = 0.9}); }},
      {"Adagrad", [] { return std::make_unique<fastoptim::Adagrad>(fastoptim::AdagradOptions{.lr = 0.2}); }},
      {"Adadelta", [] { return std::make_unique<fastoptim::Adadelta>(fastoptim::AdadeltaOptions{.lr = 1.0}); }},
      {"RMSprop", [] { return std::make_unique<fastoptim::Rmsprop>(fastoptim::RmspropOptions{.lr = 0.01}); }},
      {"Adam", [] { return std::make_unique<fastoptim::Adam>(fastoptim::AdamOptions{.lr = 0.05}); }},
      {"AdamW", [adamw] { return std::make_unique<fastoptim::AdamW>(adamw); }},
      {"NAdam", [] { return std::make_unique<fastoptim::Nadam>(fastoptim::NadamOptions{.lr = 0.05}); }},
      {"RAdam", [] { return std::make_unique<fastoptim::Radam>(fastoptim::RadamOptions{.lr = 0.05}); }},
      {"Adamax", [] { return std::make_unique<fastoptim::Adamax>(fastoptim::AdamaxOptions{.lr = 0.05}); }},
  };

  std::printf("fastoptim logistic regression: SIMD level %s, %d thread(s)\n",
              fastoptim::simd_level().c_str(), fastoptim::get_num_threads());
  int failures = 0;
  for (const Run& run : runs) {
    Model model{Eigen::VectorXf::Zero(data.x.cols()), Eigen::VectorXf::Zero(1)};
    Eigen::VectorXf grad_w(data.x.cols()), grad_b(1);
    auto optimizer = run.make();
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
  if (failures != 0) {
    std::printf("%d rule(s) did not reduce the loss\n", failures);
    return 1;
  }
  std::printf("loss fell with every rule\n");
  return 0;
}
