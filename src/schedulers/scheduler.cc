// Scheduler base class, config parsing, the factory and the sampler-name table; see scheduler.h.
#include "schedulers/scheduler.h"

#include <cctype>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/json.h"
#include "schedulers/ddim.h"
#include "schedulers/ddpm.h"
#include "schedulers/dpmsolver_multistep.h"
#include "schedulers/euler.h"
#include "schedulers/euler_ancestral.h"
#include "schedulers/heun.h"
#include "schedulers/lms.h"
#include "schedulers/pndm.h"
#include "schedulers/unipc.h"

namespace stipple::schedulers {

using nlohmann::json;

PredictionType parse_prediction_type(const std::string& value) {
  if (value == "epsilon") return PredictionType::kEpsilon;
  if (value == "v_prediction") return PredictionType::kVPrediction;
  if (value == "sample") return PredictionType::kSample;
  throw Error(str_cat("unsupported prediction_type \"", value,
                      "\": expected epsilon, v_prediction or sample"));
}

std::string to_string(PredictionType p) {
  switch (p) {
    case PredictionType::kEpsilon:
      return "epsilon";
    case PredictionType::kVPrediction:
      return "v_prediction";
    case PredictionType::kSample:
      return "sample";
  }
  return "?";
}

// ---- config ----

namespace {

double get_number(const json& v, const std::string& key) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "Infinity") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
    if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
  }
  throw Error(str_cat("scheduler config: \"", key, "\" must be a number, got ", v.dump()));
}

int get_int(const json& v, const std::string& key) {
  const double d = get_number(v, key);
  STIPPLE_CHECK(std::isfinite(d) && d == std::floor(d) && std::abs(d) < 1e9, "scheduler config: \"",
                key, "\" must be an integer, got ", v.dump());
  return static_cast<int>(d);
}

bool get_bool(const json& v, const std::string& key) {
  STIPPLE_CHECK(v.is_boolean(), "scheduler config: \"", key, "\" must be true or false, got ",
                v.dump());
  return v.get<bool>();
}

std::string get_string(const json& v, const std::string& key) {
  STIPPLE_CHECK(v.is_string(), "scheduler config: \"", key, "\" must be a string, got ", v.dump());
  return v.get<std::string>();
}

void check_one_of(const std::string& key, const std::string& value,
                  std::initializer_list<const char*> allowed) {
  std::string list;
  for (const char* a : allowed) {
    if (value == a) return;
    list += list.empty() ? a : str_cat(", ", a);
  }
  throw Error(str_cat("unsupported ", key, " \"", value, "\": expected one of ", list));
}

}  // namespace

SchedulerConfig SchedulerConfig::defaults_for(const std::string& class_name) {
  SchedulerConfig c;
  c.class_name = class_name;
  if (class_name == "DDIMScheduler") {
    c.set_alpha_to_one = true;
  } else if (class_name == "DDPMScheduler") {
    c.set_alpha_to_one = false;
  } else if (class_name == "PNDMScheduler") {
    c.clip_sample = false;
    c.set_alpha_to_one = false;
  } else if (class_name == "EulerDiscreteScheduler" ||
             class_name == "EulerAncestralDiscreteScheduler" ||
             class_name == "HeunDiscreteScheduler" || class_name == "LMSDiscreteScheduler") {
    c.clip_sample = false;
    c.timestep_spacing = TimestepSpacing::kLinspace;
  } else if (class_name == "DPMSolverMultistepScheduler") {
    c.clip_sample = false;
    c.timestep_spacing = TimestepSpacing::kLinspace;
    c.solver_type = "midpoint";
  } else if (class_name == "UniPCMultistepScheduler") {
    c.clip_sample = false;
    c.timestep_spacing = TimestepSpacing::kLinspace;
    c.solver_type = "bh2";
  } else {
    throw Error(str_cat("unsupported scheduler _class_name \"", class_name,
                        "\": stipple implements DDIMScheduler, DDPMScheduler, PNDMScheduler, "
                        "EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, "
                        "HeunDiscreteScheduler, LMSDiscreteScheduler, "
                        "DPMSolverMultistepScheduler and UniPCMultistepScheduler"));
  }
  return c;
}

SchedulerConfig SchedulerConfig::from_json(const std::string& path_or_json) {
  std::string text = path_or_json;
  const size_t first = text.find_first_not_of(" \t\r\n");
  const bool inline_json = first != std::string::npos && text[first] == '{';
  if (!inline_json) {
    std::ifstream f(path_or_json);
    STIPPLE_CHECK(f, "cannot open scheduler config ", path_or_json);
    std::ostringstream ss;
    ss << f.rdbuf();
    text = ss.str();
  }
  const std::string where = inline_json ? std::string("scheduler config") : path_or_json;
  const std::string strict = io::make_strict_json(text);
  json j;
  try {
    j = json::parse(strict);
  } catch (const json::exception& e) {  // parse_error; out_of_range for "1e999"
    throw Error(str_cat(where, ": not valid JSON (", e.what(), ")"));
  }
  STIPPLE_CHECK(j.is_object(), where, ": a scheduler config must be a JSON object");
  STIPPLE_CHECK(j.contains("_class_name"), where,
                ": no \"_class_name\" (which scheduler class, e.g. \"EulerDiscreteScheduler\")");
  try {
    SchedulerConfig c = defaults_for(get_string(j["_class_name"], "_class_name"));
    c.source_json = strict;
    auto has = [&](const char* k) { return j.contains(k) && !j[k].is_null(); };
    if (has("num_train_timesteps"))
      c.num_train_timesteps = get_int(j["num_train_timesteps"], "num_train_timesteps");
    if (has("beta_start")) c.beta_start = get_number(j["beta_start"], "beta_start");
    if (has("beta_end")) c.beta_end = get_number(j["beta_end"], "beta_end");
    if (has("beta_schedule")) {
      c.beta_schedule = get_string(j["beta_schedule"], "beta_schedule");
      check_one_of("beta_schedule", c.beta_schedule,
                   {"linear", "scaled_linear", "squaredcos_cap_v2"});
    }
    if (has("trained_betas")) {
      STIPPLE_CHECK(j["trained_betas"].is_array(),
                    "scheduler config: \"trained_betas\" must be a list");
      for (const auto& b : j["trained_betas"]) {
        c.trained_betas.push_back(static_cast<float>(get_number(b, "trained_betas")));
      }
    }
    if (has("prediction_type")) {
      c.prediction_type =
          parse_prediction_type(get_string(j["prediction_type"], "prediction_type"));
    }
    if (has("timestep_spacing")) {
      c.timestep_spacing =
          parse_timestep_spacing(get_string(j["timestep_spacing"], "timestep_spacing"));
    }
    if (has("steps_offset")) c.steps_offset = get_int(j["steps_offset"], "steps_offset");
    if (has("rescale_betas_zero_snr"))
      c.rescale_betas_zero_snr = get_bool(j["rescale_betas_zero_snr"], "rescale_betas_zero_snr");
    if (has("clip_sample")) c.clip_sample = get_bool(j["clip_sample"], "clip_sample");
    if (has("clip_sample_range"))
      c.clip_sample_range = get_number(j["clip_sample_range"], "clip_sample_range");
    if (has("set_alpha_to_one"))
      c.set_alpha_to_one = get_bool(j["set_alpha_to_one"], "set_alpha_to_one");
    if (has("variance_type")) c.variance_type = get_string(j["variance_type"], "variance_type");
    if (has("skip_prk_steps")) c.skip_prk_steps = get_bool(j["skip_prk_steps"], "skip_prk_steps");
    if (has("use_karras_sigmas"))
      c.use_karras_sigmas = get_bool(j["use_karras_sigmas"], "use_karras_sigmas");
    if (has("final_sigmas_type")) {
      c.final_sigmas_type = get_string(j["final_sigmas_type"], "final_sigmas_type");
      check_one_of("final_sigmas_type", c.final_sigmas_type, {"zero", "sigma_min"});
    }
    if (has("sigma_min")) c.sigma_min = get_number(j["sigma_min"], "sigma_min");
    if (has("sigma_max")) c.sigma_max = get_number(j["sigma_max"], "sigma_max");
    if (has("solver_order")) c.solver_order = get_int(j["solver_order"], "solver_order");
    if (has("algorithm_type")) c.algorithm_type = get_string(j["algorithm_type"], "algorithm_type");
    if (has("solver_type")) c.solver_type = get_string(j["solver_type"], "solver_type");
    if (has("lower_order_final"))
      c.lower_order_final = get_bool(j["lower_order_final"], "lower_order_final");
    if (has("euler_at_final")) c.euler_at_final = get_bool(j["euler_at_final"], "euler_at_final");
    if (has("lambda_min_clipped"))
      c.lambda_min_clipped = get_number(j["lambda_min_clipped"], "lambda_min_clipped");
    if (has("predict_x0")) c.predict_x0 = get_bool(j["predict_x0"], "predict_x0");
    if (has("disable_corrector")) {
      STIPPLE_CHECK(j["disable_corrector"].is_array(),
                    "scheduler config: \"disable_corrector\" must be a list");
      for (const auto& v : j["disable_corrector"])
        c.disable_corrector.push_back(get_int(v, "disable_corrector"));
    }
    // Values this implementation does not do: refuse them by name rather than sample wrongly.
    if (has("thresholding") && get_bool(j["thresholding"], "thresholding")) {
      throw Error(
          "unsupported thresholding \"true\": dynamic thresholding (Imagen) is not implemented");
    }
    if (has("timestep_type"))
      check_one_of("timestep_type", get_string(j["timestep_type"], "timestep_type"), {"discrete"});
    if (has("interpolation_type"))
      check_one_of("interpolation_type", get_string(j["interpolation_type"], "interpolation_type"),
                   {"linear"});
    if (has("use_lu_lambdas") && get_bool(j["use_lu_lambdas"], "use_lu_lambdas")) {
      throw Error("unsupported use_lu_lambdas \"true\"");
    }
    if (c.class_name == "DDPMScheduler") {
      check_one_of("variance_type", c.variance_type,
                   {"fixed_small", "fixed_small_log", "fixed_large"});
    }
    if (c.class_name == "PNDMScheduler" && !c.skip_prk_steps) {
      throw Error(
          "unsupported skip_prk_steps \"false\": stipple's PNDM is PLMS only (skip_prk_steps "
          "true, as Stable Diffusion ships it)");
    }
    if (c.class_name == "DPMSolverMultistepScheduler") {
      check_one_of("algorithm_type", c.algorithm_type, {"dpmsolver++"});
      check_one_of("solver_type", c.solver_type, {"midpoint", "heun"});
      STIPPLE_CHECK(c.solver_order == 1 || c.solver_order == 2, "unsupported solver_order \"",
                    c.solver_order, "\": expected 1 or 2");
    }
    if (c.class_name == "UniPCMultistepScheduler") {
      check_one_of("solver_type", c.solver_type, {"bh1", "bh2"});
      STIPPLE_CHECK(c.solver_order >= 1 && c.solver_order <= 3, "unsupported solver_order \"",
                    c.solver_order, "\": expected 1, 2 or 3");
    }
    return c;
  } catch (const Error& e) {
    if (inline_json) throw;
    throw Error(str_cat(path_or_json, ": ", e.what()));
  }
}

// ---- Scheduler ----

Scheduler::Scheduler(SchedulerConfig config) : config_(std::move(config)) {
  if (!config_.trained_betas.empty()) {
    betas_ = config_.trained_betas;
    STIPPLE_CHECK(static_cast<int>(betas_.size()) == config_.num_train_timesteps,
                  "trained_betas has ", betas_.size(), " values but num_train_timesteps is ",
                  config_.num_train_timesteps);
  } else {
    betas_ = make_betas(config_.beta_schedule, config_.num_train_timesteps, config_.beta_start,
                        config_.beta_end);
  }
  if (config_.rescale_betas_zero_snr) betas_ = rescale_zero_terminal_snr(betas_);
  alphas_cumprod_ = alphas_cumprod_from_betas(betas_);
}

Tensor Scheduler::timesteps_tensor() const {
  bool integral = true;
  for (double t : timesteps_) integral = integral && t == std::floor(t);
  const Shape shape{static_cast<int64_t>(timesteps_.size())};
  if (integral) {
    std::vector<int64_t> v(timesteps_.begin(), timesteps_.end());
    return Tensor::from_vector_i64(v, shape);
  }
  return Tensor::from_vector(std::vector<float>(timesteps_.begin(), timesteps_.end()), shape);
}

Tensor Scheduler::scale_model_input(const Tensor& sample, double) { return sample; }

std::vector<float> Scheduler::Noise::draw() const {
  if (noise_ != nullptr && noise_->defined()) {
    STIPPLE_CHECK(noise_->shape() == shape_, "step: noise has shape ", shape_str(noise_->shape()),
                  " but the sample has ", shape_str(shape_));
    return noise_->to_vector();
  }
  STIPPLE_CHECK(
      gen_ != nullptr,
      "this scheduler step is stochastic: pass a Generator (or a noise tensor) to step()");
  return gen_->randn(shape_).to_vector();
}

SchedulerOutput Scheduler::step(const Tensor& model_output, double t, const Tensor& sample,
                                Generator* gen) {
  return run_step(model_output, t, sample, gen, nullptr);
}

SchedulerOutput Scheduler::step(const Tensor& model_output, double t, const Tensor& sample,
                                const Tensor& noise) {
  return run_step(model_output, t, sample, nullptr, &noise);
}

SchedulerOutput Scheduler::run_step(const Tensor& model_output, double t, const Tensor& sample,
                                    Generator* gen, const Tensor* noise) {
  check_ready("step");
  STIPPLE_CHECK(model_output.shape() == sample.shape(), "step: model_output ",
                model_output.describe(), " and sample ", sample.describe(),
                " must have the same shape");
  const StepResult r =
      step_impl(model_output.to_vector(), t, sample.to_vector(), Noise(gen, noise, sample.shape()));
  // The step's arithmetic runs on the host (the samplers are written over vectors): a sample on
  // another device is read once and written back once per step.
  SchedulerOutput out;
  out.prev_sample = Tensor::from_vector(r.prev_sample, sample.shape()).to(sample.device());
  if (!r.pred_original_sample.empty()) {
    out.pred_original_sample =
        Tensor::from_vector(r.pred_original_sample, sample.shape()).to(sample.device());
  }
  return out;
}

Tensor Scheduler::add_noise(const Tensor& x0, const Tensor& noise, double t) const {
  STIPPLE_CHECK(x0.shape() == noise.shape(), "add_noise: x0 ", x0.describe(), " and noise ",
                noise.describe(), " must have the same shape");
  const double a = alpha_cumprod_at(t);
  const float sa = static_cast<float>(std::sqrt(a)), sb = static_cast<float>(std::sqrt(1 - a));
  return x0 * sa + noise * sb;
}

double Scheduler::alpha_cumprod_at(double t) const {
  const int T = config_.num_train_timesteps;
  STIPPLE_CHECK(t == std::floor(t) && t >= 0 && t < T, "timestep ", t,
                " is not an integer training step in [0, ", T, ")");
  return alphas_cumprod_[static_cast<size_t>(t)];
}

int Scheduler::index_for_timestep(double t) const {
  std::vector<int> matches;
  for (size_t i = 0; i < timesteps_.size(); ++i)
    if (timesteps_[i] == t) matches.push_back(static_cast<int>(i));
  if (matches.empty()) {
    // Accept a value rounded on the way (e.g. a float32 timestep printed and parsed back).
    for (size_t i = 0; i < timesteps_.size(); ++i)
      if (std::abs(timesteps_[i] - t) <= 1e-4 * std::max(1.0, std::abs(t))) {
        matches.push_back(static_cast<int>(i));
      }
  }
  STIPPLE_CHECK(!matches.empty(), "timestep ", t,
                " is not one of this scheduler's timesteps(); pass the values from timesteps()");
  return matches.size() > 1 ? matches[1] : matches[0];
}

void Scheduler::check_ready(const char* what) const {
  STIPPLE_CHECK(num_inference_steps_ > 0, "call set_timesteps before ", what);
}

// ---- SigmaScheduler ----

void SigmaScheduler::init_step_index(double t) {
  if (step_index_ >= 0) return;
  step_index_ = begin_index_ >= 0 ? begin_index_ : index_for_timestep(t);
}

Tensor SigmaScheduler::add_noise(const Tensor& x0, const Tensor& noise, double t) const {
  check_ready("add_noise");
  STIPPLE_CHECK(x0.shape() == noise.shape(), "add_noise: x0 ", x0.describe(), " and noise ",
                noise.describe(), " must have the same shape");
  int index;
  if (begin_index_ < 0) {
    index = index_for_timestep(t);
  } else if (step_index_ >= 0) {
    index = step_index_;  // called after the first step (inpainting)
  } else {
    index = begin_index_;  // called before the first step (img2img)
  }
  const double sigma = sigmas_[index];
  if (!variance_preserving()) return x0 + noise * static_cast<float>(sigma);
  const AlphaSigma as = sigma_to_alpha_sigma(sigma);
  return x0 * static_cast<float>(as.alpha) + noise * static_cast<float>(as.sigma);
}

std::vector<float> SigmaScheduler::training_sigmas() const {
  std::vector<float> acp = alphas_cumprod_;
  // Zero terminal SNR makes the last sigma infinite; diffusers nudges acp[-1] to 2^-24.
  if (config_.rescale_betas_zero_snr) acp.back() = std::ldexp(1.0f, -24);
  return sigmas_from_alphas_cumprod(acp);
}

double SigmaScheduler::final_sigma() const {
  if (config_.final_sigmas_type == "zero") return 0.0;
  const float a = alphas_cumprod_[0];
  return std::sqrt((1.0f - a) / a);
}

SigmaScheduler::SigmaGrid SigmaScheduler::sigma_grid(int n, TimestepGrid grid) const {
  const int T = config_.num_train_timesteps;
  const std::vector<float> train = training_sigmas();
  int last_timestep = T;
  if (grid == TimestepGrid::kRoundedPlus1 && std::isfinite(config_.lambda_min_clipped)) {
    // DPM-Solver: drop the noisiest steps whose log-SNR lambda = log(alpha/sigma) falls below
    // lambda_min_clipped (for numerical stability with cosine schedules).
    int clipped = 0;
    for (int t = 0; t < T; ++t) {
      const double a = alphas_cumprod_[t];
      const double lambda = 0.5 * std::log(a) - 0.5 * std::log(1 - a);
      if (lambda < config_.lambda_min_clipped) ++clipped;
    }
    last_timestep = T - clipped;
  }
  SigmaGrid g;
  g.timesteps =
      make_timesteps(config_.timestep_spacing, grid, T, n, config_.steps_offset, last_timestep);
  for (double t : g.timesteps) g.sigmas.push_back(interp_at(t, train));
  if (config_.use_karras_sigmas) {
    // Karras et al. 2022, eq. 5, over the range of the training sigmas (or of the grid above).
    double lo = grid == TimestepGrid::kRoundedPlus1 ? train.front() : g.sigmas.back();
    double hi = grid == TimestepGrid::kRoundedPlus1 ? train.back() : g.sigmas.front();
    if (config_.sigma_min) lo = *config_.sigma_min;
    if (config_.sigma_max) hi = *config_.sigma_max;
    g.sigmas = karras_sigmas(lo, hi, n);
    std::vector<float> log_sigmas(train.size());
    for (size_t i = 0; i < train.size(); ++i) log_sigmas[i] = std::log(train[i]);
    g.timesteps.clear();
    for (double s : g.sigmas) {
      const double t = sigma_to_t(s, log_sigmas);
      g.timesteps.push_back(grid == TimestepGrid::kFloat
                                ? static_cast<double>(static_cast<float>(t))
                                : std::nearbyint(t));
    }
  }
  return g;
}

// ---- factory and names ----

std::unique_ptr<Scheduler> make_scheduler(const SchedulerConfig& config) {
  const std::string& c = config.class_name;
  if (c == "DDIMScheduler") return std::make_unique<DDIMScheduler>(config);
  if (c == "DDPMScheduler") return std::make_unique<DDPMScheduler>(config);
  if (c == "PNDMScheduler") return std::make_unique<PNDMScheduler>(config);
  if (c == "EulerDiscreteScheduler") return std::make_unique<EulerDiscreteScheduler>(config);
  if (c == "EulerAncestralDiscreteScheduler") {
    return std::make_unique<EulerAncestralDiscreteScheduler>(config);
  }
  if (c == "HeunDiscreteScheduler") return std::make_unique<HeunDiscreteScheduler>(config);
  if (c == "LMSDiscreteScheduler") return std::make_unique<LMSDiscreteScheduler>(config);
  if (c == "DPMSolverMultistepScheduler") {
    return std::make_unique<DPMSolverMultistepScheduler>(config);
  }
  if (c == "UniPCMultistepScheduler") return std::make_unique<UniPCMultistepScheduler>(config);
  SchedulerConfig::defaults_for(c);  // throws the message that lists the supported classes
  throw Error(str_cat("unsupported scheduler class ", c));
}

const std::vector<SamplerName>& sampler_names() {
  static const std::vector<SamplerName> kNames = {
      {"ddim", "DDIM", "DDIMScheduler", "{}", "DDIM, deterministic (eta 0)"},
      {"ddpm", "DDPM", "DDPMScheduler", "{}", "DDPM ancestral sampling (stochastic)"},
      {"pndm", "PLMS", "PNDMScheduler", R"({"skip_prk_steps": true})", "PNDM / PLMS (SD 1.x default)"},
      {"plms", "PLMS", "PNDMScheduler", R"({"skip_prk_steps": true})", "same as pndm"},
      {"euler", "Euler", "EulerDiscreteScheduler", "{}", "Euler (Karras et al. 2022, Alg. 1)"},
      {"euler_karras", "Euler Karras", "EulerDiscreteScheduler", R"({"use_karras_sigmas": true})",
       "Euler on the Karras sigma grid"},
      {"euler_a", "Euler a", "EulerAncestralDiscreteScheduler", "{}", "Euler ancestral (stochastic)"},
      {"heun", "Heun", "HeunDiscreteScheduler", "{}", "Heun, 2 model calls per step (Karras Alg. 1)"},
      {"lms", "LMS", "LMSDiscreteScheduler", "{}", "linear multistep, order 4"},
      {"lms_karras", "LMS Karras", "LMSDiscreteScheduler", R"({"use_karras_sigmas": true})",
       "LMS on the Karras sigma grid"},
      {"dpm++2m", "DPM++ 2M", "DPMSolverMultistepScheduler",
       R"({"algorithm_type": "dpmsolver++", "solver_order": 2})", "DPM-Solver++(2M)"},
      {"dpm++2m_karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler",
       R"({"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": true})",
       "DPM-Solver++(2M) on the Karras sigma grid"},
      {"unipc", "UniPC", "UniPCMultistepScheduler", R"({"solver_type": "bh2", "predict_x0": true})",
       "UniPC (bh2, data prediction)"},
  };
  return kNames;
}

const SamplerName* find_sampler(const std::string& sampler) {
  // A1111 spellings too: "DPM++ 2M Karras" -> "dpm++2m_karras", "Euler a" -> "euler_a".
  std::string key;
  for (char ch : sampler) {
    if (ch == ' ' || ch == '-') {
      if (!key.empty() && key.back() != '_') key += '_';
    } else {
      key += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    }
  }
  if (key.rfind("dpm++_", 0) == 0) key = "dpm++" + key.substr(6);
  for (const SamplerName& s : sampler_names())
    if (key == s.name) return &s;
  return nullptr;
}

std::string sampler_list() {
  std::string list;
  for (const SamplerName& s : sampler_names()) list += str_cat(list.empty() ? "" : ", ", s.name);
  return list;
}

const SamplerName* sampler_for_config(const SchedulerConfig& config) {
  for (const SamplerName& s : sampler_names()) {
    if (config.class_name != s.class_name) continue;
    const bool karras = std::string(s.overrides).find("use_karras_sigmas") != std::string::npos;
    if (karras == config.use_karras_sigmas) return &s;
  }
  return nullptr;
}

SchedulerConfig config_for_sampler(const std::string& sampler, const SchedulerConfig& base) {
  if (const SamplerName* found = find_sampler(sampler)) {
    const SamplerName& s = *found;
    json j = base.source_json.empty() ? json::object() : json::parse(base.source_json);
    if (base.source_json.empty()) {  // carry the model-defining fields of a programmatic config
      j["num_train_timesteps"] = base.num_train_timesteps;
      j["beta_start"] = base.beta_start;
      j["beta_end"] = base.beta_end;
      j["beta_schedule"] = base.beta_schedule;
      j["prediction_type"] = to_string(base.prediction_type);
      j["steps_offset"] = base.steps_offset;
      j["rescale_betas_zero_snr"] = base.rescale_betas_zero_snr;
      if (!base.trained_betas.empty()) j["trained_betas"] = base.trained_betas;
    }
    j["_class_name"] = s.class_name;
    j.merge_patch(json::parse(s.overrides));
    SchedulerConfig c = SchedulerConfig::from_json(j.dump());
    c.eta = base.eta;
    return c;
  }
  throw Error(str_cat("unknown sampler \"", sampler, "\": expected one of ", sampler_list()));
}

}  // namespace stipple::schedulers
