// The Eigen adapter: params and grads in Eigen objects, updated in place with no copy, and
// non-contiguous objects rejected instead of silently copied.
#include "fastoptim/eigen.hpp"

#include "support.hpp"

namespace fastoptim::test {
namespace {

namespace fe = fastoptim::eigen;

void update_through_ref(Adam& opt, fe::VectorRef<float> w, fe::ConstVectorRef<float> g) {
  // What a codebase passing Eigen::Ref around writes.
  (void)w;
  fe::step(opt, g);
}

TEST(Eigen, VectorsAndMatricesUpdatedInPlaceLikeSpans) {
  Eigen::MatrixXf w = Eigen::MatrixXf::Random(4, 3);
  Eigen::VectorXd b = Eigen::VectorXd::Random(5);
  std::vector<float> w_ref(w.data(), w.data() + w.size());
  std::vector<double> b_ref(b.data(), b.data() + b.size());

  Adam opt({.lr = 0.1, .amsgrad = true}), span_opt({.lr = 0.1, .amsgrad = true});
  EXPECT_EQ(fe::add_param(opt, w), 0u);
  EXPECT_EQ(fe::add_param(opt, b), 1u);
  span_opt.add_param(w_ref);
  span_opt.add_param(b_ref);
  const float* w_data = w.data();
  for (int s = 0; s < 4; ++s) {
    const Eigen::MatrixXf gw = Eigen::MatrixXf::Random(4, 3);
    const Eigen::VectorXd gb = Eigen::VectorXd::Random(5);
    fe::step(opt, gw, gb);
    span_opt.step({std::span<const float>(gw.data(), 12), std::span<const double>(gb.data(), 5)});
  }
  EXPECT_EQ(w.data(), w_data);  // same storage
  EXPECT_TRUE(bit_equal(std::vector<float>(w.data(), w.data() + w.size()), w_ref));
  EXPECT_TRUE(bit_equal(std::vector<double>(b.data(), b.data() + b.size()), b_ref));
}

// Every rule through the adapter: the same bits as spans over the same memory.
class EigenEveryRule : public testing::TestWithParam<NamedOptions> {};

TEST_P(EigenEveryRule, UpdatesInPlaceLikeSpans) {
  const AnyOptions& options = GetParam().options;
  Eigen::MatrixXf w = Eigen::MatrixXf::Random(5, 3);
  Eigen::VectorXd b = Eigen::VectorXd::Random(7);
  std::vector<float> w_ref(w.data(), w.data() + w.size());
  std::vector<double> b_ref(b.data(), b.data() + b.size());
  auto opt = make_optimizer(options), span_opt = make_optimizer(options);
  fe::add_param(*opt, w);
  fe::add_param(*opt, b);
  span_opt->add_param(w_ref);
  span_opt->add_param(b_ref);
  for (int s = 0; s < steps_for(options, 3); ++s) {
    const Eigen::MatrixXf gw = Eigen::MatrixXf::Random(5, 3);
    const Eigen::VectorXd gb = Eigen::VectorXd::Random(7);
    fe::step(*opt, gw, gb);
    span_opt->step({std::span<const float>(gw.data(), 15), std::span<const double>(gb.data(), 7)});
  }
  EXPECT_TRUE(bit_equal(std::vector<float>(w.data(), w.data() + w.size()), w_ref));
  EXPECT_TRUE(bit_equal(std::vector<double>(b.data(), b.data() + b.size()), b_ref));
  EXPECT_EQ(saved(*opt), saved(*span_opt));
}

INSTANTIATE_TEST_SUITE_P(Grid, EigenEveryRule, testing::ValuesIn(option_grid()), grid_name);

TEST(Eigen, RefsMapsRowMajorArraysAndContiguousBlocks) {
  Eigen::MatrixXf big = Eigen::MatrixXf::Zero(6, 4);
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> row_major =
      Eigen::MatrixXd::Ones(2, 3);
  Eigen::ArrayXf array = Eigen::ArrayXf::Constant(3, 1.0f);
  float raw[4] = {1, 1, 1, 1};
  Eigen::Map<Eigen::VectorXf> mapped(raw, 4);

  Sgd opt({.lr = 1.0});
  fe::add_param(opt, fe::MatrixRef<float>(big.leftCols(2)));  // columns 0-1: contiguous
  fe::add_param(opt, big.col(3));                               // a column: contiguous
  fe::add_param(opt, row_major);
  fe::add_param(opt, array);
  fe::add_param(opt, mapped);
  EXPECT_EQ(opt.param_size(0), 12u);
  EXPECT_EQ(opt.param_size(1), 6u);
  EXPECT_EQ(opt.param_dtype(2), DType::float64);

  const Eigen::MatrixXf g0 = Eigen::MatrixXf::Ones(6, 2);
  const Eigen::VectorXf g1 = Eigen::VectorXf::Constant(6, 2.0f);
  const Eigen::MatrixXd g2 = Eigen::MatrixXd::Constant(2, 3, 0.5);
  const Eigen::ArrayXf g3 = Eigen::ArrayXf::Constant(3, 0.25f);
  fe::step(opt, g0, g1, g2, g3, Grad{});
  EXPECT_TRUE((big.leftCols(2).array() == -1.0f).all());
  EXPECT_TRUE((big.col(2).array() == 0.0f).all());  // not a param: untouched
  EXPECT_TRUE((big.col(3).array() == -2.0f).all());
  EXPECT_TRUE((row_major.array() == 0.5).all());
  EXPECT_TRUE((array == 0.75f).all());
  EXPECT_EQ(raw[0], 1.0f);  // skipped
  EXPECT_EQ(opt.step_count(4), 0);

  // The Ref-typed helpers a codebase would write.
  Eigen::VectorXf w = Eigen::VectorXf::Zero(3);
  const Eigen::VectorXf g = Eigen::VectorXf::Ones(3);
  Adam adam({.lr = 0.5});
  fe::add_param(adam, fe::VectorRef<float>(w));
  update_through_ref(adam, w, g);
  EXPECT_LT((w.array() + 0.5f).abs().maxCoeff(), 1e-6f);  // Adam's first step: -lr * sign(g)
}

TEST(Eigen, NonContiguousObjectsAreRejected) {
  Eigen::MatrixXf m = Eigen::MatrixXf::Zero(4, 4);
  Adam opt;
  auto message = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "no exception";
  };
  EXPECT_NE(message([&] { fe::add_param(opt, m.row(1)); }).find("not contiguous"), std::string::npos);
  EXPECT_NE(message([&] { fe::add_param(opt, m.block(0, 0, 2, 2)); }).find("not contiguous"),
            std::string::npos);
  EXPECT_EQ(opt.num_params(), 0u);

  fe::add_param(opt, m);
  Eigen::MatrixXf wide = Eigen::MatrixXf::Ones(8, 4);
  const std::vector<float> before(m.data(), m.data() + m.size());
  EXPECT_NE(message([&] { fe::step(opt, wide.topRows(4)); }).find("not contiguous"), std::string::npos);
  EXPECT_EQ(std::vector<float>(m.data(), m.data() + m.size()), before);
  EXPECT_EQ(opt.step_count(0), 0);
  // A gap-free 1 x n block of a 1 x n matrix, and single elements, are fine.
  Eigen::MatrixXf one_row = Eigen::MatrixXf::Zero(1, 5);
  EXPECT_EQ(fe::as_span(one_row.block(0, 1, 1, 3)).size(), 3u);
  float strided[6] = {0, 1, 2, 3, 4, 5};
  Eigen::Map<Eigen::VectorXf, 0, Eigen::InnerStride<2>> every_other(strided, 3);
  EXPECT_NE(message([&] { fe::as_span(every_other); }).find("not contiguous"), std::string::npos);
  Eigen::Map<Eigen::VectorXf, 0, Eigen::InnerStride<2>> single(strided + 1, 1);
  EXPECT_EQ(fe::as_span(single).size(), 1u);
  EXPECT_EQ(fe::as_span(single)[0], 1.0f);
}

#if EIGEN_VERSION_AT_LEAST(3, 4, 0)  // Eigen::bfloat16
// Eigen's 16-bit scalars: the same bytes as fastoptim's storage types, updated in place like
// spans over that memory (with master weights and stochastic rounding too), and 16-bit grads of
// float params.
using MatrixBf = Eigen::Matrix<Eigen::bfloat16, Eigen::Dynamic, Eigen::Dynamic>;
using VectorHalf = Eigen::Matrix<Eigen::half, Eigen::Dynamic, 1>;

TEST(Eigen, SixteenBitScalarsAreFastoptimsStorageTypes) {
  MatrixBf w(2, 2);
  w << Eigen::bfloat16(1.5f), Eigen::bfloat16(-2.0f), Eigen::bfloat16(0.1f), Eigen::bfloat16(3.0f);
  const std::span<bfloat16> s = fe::as_span(w);
  EXPECT_EQ(static_cast<const void*>(s.data()), static_cast<const void*>(w.data()));
  EXPECT_EQ(to_float(s[0]), 1.5f);
  EXPECT_EQ(s[1].bits, to_bfloat16(0.1f).bits);  // column-major: (1, 0)
  VectorHalf h(3);
  h << Eigen::half(0.5f), Eigen::half(65504.0f), Eigen::half(1e-7f);
  const VectorHalf& ch = h;
  const std::span<const float16> t = fe::as_span(ch);
  EXPECT_EQ(to_float(t[0]), 0.5f);
  EXPECT_EQ(t[1].bits, 0x7bffu);
  EXPECT_EQ(t[2].bits, to_float16(1e-7f).bits);  // a subnormal, rounded alike
  s[3] = to_bfloat16(-7.0f);
  EXPECT_EQ(static_cast<float>(w(1, 1)), -7.0f);
}

TEST(Eigen, SixteenBitParamsUpdatedInPlaceLikeSpans) {
  for (const Precision& precision :
       {Precision{}, Precision{.master_weights = true},
        Precision{.master_weights = true, .state_dtype = DType::bfloat16,
                  .stochastic_rounding = true, .seed = 4}}) {
    MatrixBf w = Eigen::MatrixXf::Random(5, 3).cast<Eigen::bfloat16>();
    VectorHalf b = Eigen::VectorXf::Random(7).cast<Eigen::half>();
    Eigen::VectorXf f = Eigen::VectorXf::Random(4);  // float32, bfloat16 grads
    std::vector<bfloat16> w_ref(fe::as_span(w).begin(), fe::as_span(w).end());
    std::vector<float16> b_ref(fe::as_span(b).begin(), fe::as_span(b).end());
    std::vector<float> f_ref(f.data(), f.data() + f.size());
    Adam opt({.lr = 0.05}, precision), span_opt({.lr = 0.05}, precision);
    EXPECT_EQ(fe::add_param(opt, w), 0u);
    EXPECT_EQ(fe::add_param(opt, b), 1u);
    EXPECT_EQ(fe::add_param(opt, f), 2u);
    EXPECT_EQ(opt.param_dtype(0), DType::bfloat16);
    EXPECT_EQ(opt.param_dtype(1), DType::float16);
    span_opt.add_param(w_ref);
    span_opt.add_param(b_ref);
    span_opt.add_param(f_ref);
    for (int s = 0; s < 4; ++s) {
      const MatrixBf gw = Eigen::MatrixXf::Random(5, 3).cast<Eigen::bfloat16>();
      const VectorHalf gb = Eigen::VectorXf::Random(7).cast<Eigen::half>();
      const Eigen::Matrix<Eigen::bfloat16, Eigen::Dynamic, 1> gf =
          Eigen::VectorXf::Random(4).cast<Eigen::bfloat16>();
      fe::step(opt, gw, s == 1 ? Grad{} : fe::grad(gb), gf);
      span_opt.step({fe::grad(gw), s == 1 ? Grad{} : fe::grad(gb), fe::grad(gf)});
    }
    auto bits = [](auto span) {
      std::vector<std::uint16_t> out;
      for (auto x : span) out.push_back(x.bits);
      return out;
    };
    EXPECT_EQ(bits(fe::as_span(w)), bits(std::span(w_ref)));
    EXPECT_EQ(bits(fe::as_span(b)), bits(std::span(b_ref)));
    EXPECT_TRUE(bit_equal(std::vector<float>(f.data(), f.data() + f.size()), f_ref));
    EXPECT_EQ(saved(opt), saved(span_opt));
  }
}

TEST(Eigen, SixteenBitBlocksWithGapsAreRejected) {
  MatrixBf m = Eigen::MatrixXf::Zero(4, 4).cast<Eigen::bfloat16>();
  Adam opt;
  EXPECT_INVALID(fe::add_param(opt, m.row(1)), "not contiguous");
  EXPECT_EQ(opt.num_params(), 0u);
  EXPECT_EQ(fe::add_param(opt, m.col(2)), 0u);
  EXPECT_EQ(opt.param_size(0), 4u);
}
#endif

TEST(Eigen, SizeMismatchNamesTheParam) {
  Eigen::VectorXf a = Eigen::VectorXf::Zero(3), b = Eigen::VectorXf::Zero(4);
  Rmsprop opt;
  fe::add_param(opt, a);
  fe::add_param(opt, b);
  const Eigen::VectorXf ga = Eigen::VectorXf::Ones(3), gb = Eigen::VectorXf::Ones(5);
  try {
    fe::step(opt, ga, gb);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("param 1: grad has 5 elements, param has 4"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE((a.array() == 0.0f).all());
}

}  // namespace
}  // namespace fastoptim::test
