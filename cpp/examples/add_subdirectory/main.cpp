// Links fastoptim built as a subproject: one Adam step through the span API and one through
// the Eigen adapter must agree, and land where Adam's first step goes (-lr * sign(grad)).
#include <cmath>
#include <cstdio>
#include <vector>

#include <fastoptim/eigen.hpp>
#include <fastoptim/fastoptim.hpp>

int main() {
  std::vector<double> w = {1.0, -2.0, 3.0};
  const std::vector<double> g = {0.5, -0.25, 2.0};
  fastoptim::Adam span_opt({.lr = 0.1});
  span_opt.add_param(w);
  span_opt.step({g});

  Eigen::VectorXd v(3);
  v << 1.0, -2.0, 3.0;
  const Eigen::Map<const Eigen::VectorXd> gv(g.data(), 3);
  fastoptim::Adam eigen_opt({.lr = 0.1});
  fastoptim::eigen::add_param(eigen_opt, v);
  fastoptim::eigen::step(eigen_opt, gv);

  const double expected[3] = {0.9, -1.9, 2.9};
  for (int i = 0; i < 3; ++i) {
    if (w[i] != v(i) || std::abs(w[i] - expected[i]) > 1e-6) {
      std::printf("mismatch at %d: span %.17g, eigen %.17g, expected %.17g\n", i, w[i], v(i),
                  expected[i]);
      return 1;
    }
  }
  std::printf("add_subdirectory consumer ok (SIMD level %s)\n", fastoptim::simd_level().c_str());
  return 0;
}
