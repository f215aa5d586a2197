// UniPC predictor-corrector steps (Zhao et al. 2023, Alg. 1-2, B(h) variants); see unipc.h.
#include "schedulers/unipc.h"

#include <algorithm>
#include <cmath>

#include "schedulers/prediction.h"

namespace stipple::schedulers {

namespace {

// Solves the small dense system A x = b (Gaussian elimination with partial pivoting).
std::vector<double> solve(std::vector<std::vector<double>> a, std::vector<double> b) {
  const int n = static_cast<int>(b.size());
  for (int c = 0; c < n; ++c) {
    int p = c;
    for (int r = c + 1; r < n; ++r)
      if (std::abs(a[r][c]) > std::abs(a[p][c])) p = r;
    std::swap(a[c], a[p]);
    std::swap(b[c], b[p]);
    for (int r = c + 1; r < n; ++r) {
      const double f = a[r][c] / a[c][c];
      for (int k = c; k < n; ++k) a[r][k] -= f * a[c][k];
      b[r] -= f * b[c];
    }
  }
  std::vector<double> x(n);
  for (int r = n - 1; r >= 0; --r) {
    double s = b[r];
    for (int k = r + 1; k < n; ++k) s -= a[r][k] * x[k];
    x[r] = s / a[r][r];
  }
  return x;
}

// The B(h) coefficient system shared by UniP and UniC: R[i][k] = r_k^i and
// b_i = h phi_{i+1}(h) i! / B(h), with hh = -h for data prediction.
struct Coeffs {
  std::vector<std::vector<double>> R;
  std::vector<double> b;
  double h_phi_1;
  double B_h;
};

Coeffs unipc_coeffs(const std::vector<double>& rks, double hh, bool bh1, int order) {
  Coeffs c;
  c.h_phi_1 = std::expm1(hh);
  double h_phi_k = c.h_phi_1 / hh - 1;
  double factorial = 1;
  c.B_h = bh1 ? hh : std::expm1(hh);
  for (int i = 1; i <= order; ++i) {
    std::vector<double> row;
    for (double r : rks) row.push_back(std::pow(r, i - 1));
    c.R.push_back(row);
    c.b.push_back(h_phi_k * factorial / c.B_h);
    factorial *= i + 1;
    h_phi_k = h_phi_k / hh - 1 / factorial;
  }
  return c;
}

}  // namespace

void UniPCMultistepScheduler::set_timesteps(int num_inference_steps) {
  const SigmaGrid g = sigma_grid(num_inference_steps, TimestepGrid::kRoundedPlus1);
  timesteps_ = g.timesteps;
  sigmas_.assign(g.sigmas.begin(), g.sigmas.end());
  sigmas_.push_back(static_cast<float>(final_sigma()));
  num_inference_steps_ = static_cast<int>(timesteps_.size());
  step_index_ = -1;
  model_outputs_.clear();
  last_sample_.clear();
  lower_order_nums_ = 0;
  this_order_ = 0;
}

double UniPCMultistepScheduler::lambda_at(int index) const {
  const AlphaSigma as = sigma_to_alpha_sigma(sigmas_[index]);
  return std::log(as.alpha) - std::log(as.sigma);
}

std::vector<float> UniPCMultistepScheduler::predict(const std::vector<float>& x, int order) const {
  const AlphaSigma t = sigma_to_alpha_sigma(sigmas_[step_index_ + 1]);
  const AlphaSigma s0 = sigma_to_alpha_sigma(sigmas_[step_index_]);
  const double lambda_t = lambda_at(step_index_ + 1), lambda_s0 = lambda_at(step_index_);
  const double h = lambda_t - lambda_s0;
  const size_t k = model_outputs_.size();
  const std::vector<float>& m0 = model_outputs_[k - 1];
  std::vector<double> rks;
  std::vector<const std::vector<float>*> ms;
  for (int i = 1; i < order; ++i) {
    rks.push_back((lambda_at(step_index_ - i) - lambda_s0) / h);
    ms.push_back(&model_outputs_[k - 1 - i]);
  }
  rks.push_back(1.0);
  const bool x0 = config_.predict_x0;
  const double hh = x0 ? -h : h;
  const Coeffs c = unipc_coeffs(rks, hh, config_.solver_type == "bh1", order);
  std::vector<double> rhos;
  if (order == 2) {
    rhos = {0.5};
  } else if (order > 2) {
    std::vector<std::vector<double>> a(order - 1, std::vector<double>(order - 1));
    for (int i = 0; i < order - 1; ++i)
      for (int j = 0; j < order - 1; ++j) a[i][j] = c.R[i][j];
    rhos = solve(a, std::vector<double>(c.b.begin(), c.b.end() - 1));
  }
  // x_t = sigma_t/sigma_s x - alpha_t h_phi_1 m0 - alpha_t B(h) sum_k rho_k D1_k  (data pred.)
  const double c_x = x0 ? t.sigma / s0.sigma : t.alpha / s0.alpha;
  const double c_m = x0 ? t.alpha * c.h_phi_1 : t.sigma * c.h_phi_1;
  const double c_b = x0 ? t.alpha * c.B_h : t.sigma * c.B_h;
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double res = 0;
    for (size_t j = 0; j < rhos.size(); ++j) res += rhos[j] * ((*ms[j])[i] - m0[i]) / rks[j];
    out[i] = static_cast<float>(c_x * x[i] - c_m * m0[i] - c_b * res);
  }
  return out;
}

std::vector<float> UniPCMultistepScheduler::correct(const std::vector<float>& model_t,
                                                    const std::vector<float>& last,
                                                    const std::vector<float>& this_sample,
                                                    int order) const {
  (void)this_sample;
  const AlphaSigma t = sigma_to_alpha_sigma(sigmas_[step_index_]);
  const AlphaSigma s0 = sigma_to_alpha_sigma(sigmas_[step_index_ - 1]);
  const double lambda_t = lambda_at(step_index_), lambda_s0 = lambda_at(step_index_ - 1);
  const double h = lambda_t - lambda_s0;
  const size_t k = model_outputs_.size();
  const std::vector<float>& m0 = model_outputs_[k - 1];
  std::vector<double> rks;
  std::vector<const std::vector<float>*> ms;
  for (int i = 1; i < order; ++i) {
    rks.push_back((lambda_at(step_index_ - (i + 1)) - lambda_s0) / h);
    ms.push_back(&model_outputs_[k - 1 - i]);
  }
  rks.push_back(1.0);
  const bool x0 = config_.predict_x0;
  const double hh = x0 ? -h : h;
  const Coeffs c = unipc_coeffs(rks, hh, config_.solver_type == "bh1", order);
  const std::vector<double> rhos = order == 1 ? std::vector<double>{0.5} : solve(c.R, c.b);
  const double c_x = x0 ? t.sigma / s0.sigma : t.alpha / s0.alpha;
  const double c_m = x0 ? t.alpha * c.h_phi_1 : t.sigma * c.h_phi_1;
  const double c_b = x0 ? t.alpha * c.B_h : t.sigma * c.B_h;
  std::vector<float> out(last.size());
  for (size_t i = 0; i < last.size(); ++i) {
    double res = 0;
    for (size_t j = 0; j + 1 < rhos.size(); ++j) res += rhos[j] * ((*ms[j])[i] - m0[i]) / rks[j];
    res += rhos.back() * (static_cast<double>(model_t[i]) - m0[i]);
    out[i] = static_cast<float>(c_x * last[i] - c_m * m0[i] - c_b * res);
  }
  return out;
}

Scheduler::StepResult UniPCMultistepScheduler::step_impl(const std::vector<float>& model_output,
                                                         double t,
                                                         const std::vector<float>& sample_in,
                                                         const Noise&) {
  init_step_index(t);
  const int steps = static_cast<int>(timesteps_.size());
  STIPPLE_CHECK(step_index_ < steps,
                "step called more times than there are timesteps; call set_timesteps again");
  const bool use_corrector =
      step_index_ > 0 && !last_sample_.empty() &&
      std::find(config_.disable_corrector.begin(), config_.disable_corrector.end(),
                step_index_ - 1) == config_.disable_corrector.end();
  // convert_model_output: x0 (predict_x0) or eps at the current sigma.
  const AlphaSigma s = sigma_to_alpha_sigma(sigmas_[step_index_]);
  const float a = static_cast<float>(s.alpha), sg = static_cast<float>(s.sigma);
  const size_t n = sample_in.size();
  std::vector<float> converted(n);
  for (size_t i = 0; i < n; ++i) {
    const X0Eps p = to_x0_eps(config_.prediction_type, model_output[i], sample_in[i], a, sg);
    converted[i] = config_.predict_x0 ? p.x0 : p.eps;
  }
  std::vector<float> sample = sample_in;
  if (use_corrector) sample = correct(converted, last_sample_, sample_in, this_order_);

  model_outputs_.push_back(converted);
  if (static_cast<int>(model_outputs_.size()) > config_.solver_order) {
    model_outputs_.erase(model_outputs_.begin());
  }
  int order = config_.lower_order_final ? std::min(config_.solver_order, steps - step_index_)
                                        : config_.solver_order;
  this_order_ = std::min(order, lower_order_nums_ + 1);
  last_sample_ = sample;
  StepResult r;
  r.prev_sample = predict(sample, this_order_);
  if (config_.predict_x0) r.pred_original_sample = converted;
  if (lower_order_nums_ < config_.solver_order) ++lower_order_nums_;
  ++step_index_;
  return r;
}

}  // namespace stipple::schedulers
