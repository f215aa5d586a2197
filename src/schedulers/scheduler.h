// The Scheduler interface (diffusers' names: set_timesteps, timesteps, scale_model_input, step,
// add_noise, init_noise_sigma, order), its configuration as diffusers writes it in
// scheduler_config.json, the factory by `_class_name`, and the one table that maps the sampler
// names users know (euler, euler_a, dpm++2m_karras, ddim, ...) onto a class and options.
//
// A scheduler never sees the model: the denoise loop calls
//   x = scale_model_input(x, t); out = model(x, t); x = step(out, t, x).prev_sample
// for each t in timesteps(). Multistep and two-stage schedulers (Heun, PNDM, LMS, DPM-Solver,
// UniPC) keep state between calls, so one scheduler serves one sampling run at a time; call
// set_timesteps again to start another.
//
// Schedulers compute on float32 buffers with plain loops (latents are small next to the model);
// constants follow torch's float32 where diffusers uses torch and float64 where it uses numpy.
#pragma once

#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "schedulers/schedule.h"

namespace stipple::schedulers {

// What the model predicts: the noise (DDPM), the velocity v = alpha eps - sigma x0 (Salimans &
// Ho 2022, "Progressive Distillation", sec. 4), or the clean sample x0.
enum class PredictionType { kEpsilon, kVPrediction, kSample };
PredictionType parse_prediction_type(const std::string& value);
std::string to_string(PredictionType p);

// diffusers' scheduler config. One struct serves every class; each field keeps diffusers' key
// name, and the defaults are those of the class named in class_name (see defaults_for).
struct SchedulerConfig {
  std::string class_name = "DDIMScheduler";
  int num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";
  std::vector<float> trained_betas;  // overrides the schedule when not empty
  PredictionType prediction_type = PredictionType::kEpsilon;
  TimestepSpacing timestep_spacing = TimestepSpacing::kLeading;
  int steps_offset = 0;
  bool rescale_betas_zero_snr = false;
  // DDIM / DDPM / PNDM
  bool clip_sample = true;
  double clip_sample_range = 1.0;
  bool set_alpha_to_one = true;
  std::string variance_type = "fixed_small";  // DDPM: fixed_small, fixed_small_log, fixed_large
  bool skip_prk_steps = false;                // PNDM: only true (PLMS) is supported
  // Euler / Heun / LMS / DPM-Solver / UniPC
  bool use_karras_sigmas = false;
  std::string final_sigmas_type = "zero";  // "zero" or "sigma_min"
  std::optional<double> sigma_min;         // Karras range; the training range when unset
  std::optional<double> sigma_max;
  // multistep solvers
  int solver_order = 2;
  std::string algorithm_type = "dpmsolver++";
  std::string solver_type = "midpoint";  // DPM-Solver: midpoint/heun; UniPC: bh1/bh2
  bool lower_order_final = true;
  bool euler_at_final = false;
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();
  bool predict_x0 = true;  // UniPC
  std::vector<int> disable_corrector;
  // stipple options that diffusers passes to step() instead: DDIM's eta (0 deterministic,
  // 1 DDPM-like). Not read from scheduler_config.json.
  double eta = 0.0;
  // The JSON object this config was parsed from (Infinity etc. made strict), or empty; keeps the
  // keys a class switch (config_for_sampler) carries over, as diffusers' from_config does.
  std::string source_json;

  // The defaults of a diffusers class (DDIMScheduler, EulerDiscreteScheduler, ...); throws for a
  // class stipple does not implement.
  static SchedulerConfig defaults_for(const std::string& class_name);
  // Parses a scheduler_config.json given as a file path or as JSON text (anything starting with
  // '{'). Accepts Infinity / -Infinity / NaN (real diffusers configs hold them), ignores unknown
  // keys, takes the class defaults for missing ones, and throws stipple::Error naming the key and
  // value for an unsupported value or a wrong type.
  static SchedulerConfig from_json(const std::string& path_or_json);
};

struct SchedulerOutput {
  Tensor prev_sample;           // x_{t-1}
  Tensor pred_original_sample;  // x0 estimate; undefined where the algorithm forms none
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config);
  virtual ~Scheduler() = default;
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Builds the inference grid and resets all per-run state.
  virtual void set_timesteps(int num_inference_steps) = 0;
  // The loop's timesteps (Heun: 2N-1 entries; PNDM: N+1). Integral values except for
  // Euler-type schedulers, whose fractional values are float32 numbers.
  const std::vector<double>& timesteps() const { return timesteps_; }
  // As a tensor the way diffusers holds it: I64, or F32 for fractional timesteps.
  Tensor timesteps_tensor() const;
  int num_inference_steps() const { return num_inference_steps_; }

  // Scales the denoiser input at timestep t (Euler-type: x / sqrt(sigma^2 + 1)); identity else.
  virtual Tensor scale_model_input(const Tensor& sample, double t);

  // One reverse step from `sample` at timestep t. Stochastic schedulers (DDPM, Euler ancestral,
  // DDIM with eta > 0) draw their standard normal noise from `gen`, or take `noise` (same shape
  // as sample) when given; they throw when neither is there.
  SchedulerOutput step(const Tensor& model_output, double t, const Tensor& sample,
                       Generator* gen = nullptr);
  SchedulerOutput step(const Tensor& model_output, double t, const Tensor& sample,
                       const Tensor& noise);

  // Forward process q(x_t | x_0) at timestep t: sqrt(acp_t) x0 + sqrt(1 - acp_t) noise (DDPM
  // eq. 4), or x0 + sigma noise for Euler-type schedulers (t must then be one of timesteps()).
  virtual Tensor add_noise(const Tensor& x0, const Tensor& noise, double t) const;

  // The scale of the initial noise: x_T = randn * init_noise_sigma().
  virtual double init_noise_sigma() const { return 1.0; }
  // Model calls per timestep of the underlying method (Heun: 2); diffusers' `order`.
  virtual int order() const { return 1; }
  // Whether step() draws noise.
  virtual bool is_stochastic() const { return false; }
  // The first step index for img2img (timesteps()[begin_index:]); sigma-based schedulers use it
  // in add_noise and step.
  void set_begin_index(int begin_index) { begin_index_ = begin_index; }

  const SchedulerConfig& config() const { return config_; }
  const std::vector<float>& betas() const { return betas_; }
  const std::vector<float>& alphas_cumprod() const { return alphas_cumprod_; }
  // Sigma grid of sigma-based schedulers (length timesteps()+1, ending in the final sigma);
  // empty for DDIM/DDPM/PNDM.
  const std::vector<float>& sigmas() const { return sigmas_; }

 protected:
  // Where a stochastic step takes its draw from.
  class Noise {
   public:
    Noise(Generator* gen, const Tensor* noise, const Shape& shape)
        : gen_(gen), noise_(noise), shape_(shape) {}
    std::vector<float> draw() const;

   private:
    Generator* gen_;
    const Tensor* noise_;
    Shape shape_;
  };
  struct StepResult {
    std::vector<float> prev_sample;
    std::vector<float> pred_original_sample;  // empty when none
  };
  virtual StepResult step_impl(const std::vector<float>& model_output, double t,
                               const std::vector<float>& sample, const Noise& noise) = 0;

  // acp[t] for an integral t in range; throws a teaching message otherwise.
  double alpha_cumprod_at(double t) const;
  // Position of t in timesteps() as diffusers' index_for_timestep: the second match when t occurs
  // twice; throws when absent.
  int index_for_timestep(double t) const;
  void check_ready(const char* what) const;

  SchedulerConfig config_;
  std::vector<float> betas_;
  std::vector<float> alphas_cumprod_;
  std::vector<float> sigmas_;
  std::vector<double> timesteps_;
  int num_inference_steps_ = 0;
  int begin_index_ = -1;

 private:
  SchedulerOutput run_step(const Tensor& model_output, double t, const Tensor& sample,
                           Generator* gen, const Tensor* noise);
};

// Base of the schedulers that walk a sigma grid (Euler, Euler ancestral, Heun, LMS, DPM-Solver,
// UniPC): keeps the step index as diffusers does (found from t on the first call, then counted).
class SigmaScheduler : public Scheduler {
 public:
  using Scheduler::Scheduler;
  Tensor add_noise(const Tensor& x0, const Tensor& noise, double t) const override;

 protected:
  // The inference grid of sigma-based schedulers: timesteps (descending) and their sigmas
  // (interpolated from the training sigmas, or Karras' grid mapped back to timesteps: fractional
  // for kFloat, rounded for kRoundedPlus1), without the final sigma.
  struct SigmaGrid {
    std::vector<double> timesteps;
    std::vector<double> sigmas;
  };
  SigmaGrid sigma_grid(int num_inference_steps, TimestepGrid grid) const;
  // The sigma after the last step: 0, or the smallest training sigma ("sigma_min").
  double final_sigma() const;
  // The training sigmas, float32, with the zero-SNR fix (acp[-1] = 2^-24) where it applies.
  std::vector<float> training_sigmas() const;
  // Sets step_index_ from t (or begin_index) when this run has not started yet.
  void init_step_index(double t);
  // Whether add_noise uses x0 + sigma n (Euler type) or alpha x0 + sigma_t n (DPM-Solver, UniPC).
  virtual bool variance_preserving() const { return false; }
  int step_index_ = -1;
};

// The Euler-type schedulers (Euler, Euler ancestral, Heun, LMS) work in k-diffusion's variance
// exploding form: x_T has std init_noise_sigma(), and the model sees x / sqrt(sigma^2 + 1)
// (Karras et al. 2022, Table 1, c_in with sigma_data = 1). Defined in euler.cc.
class KDiffusionScheduler : public SigmaScheduler {
 public:
  using SigmaScheduler::SigmaScheduler;
  Tensor scale_model_input(const Tensor& sample, double t) override;
  double init_noise_sigma() const override;
};

// The scheduler named by config.class_name (DDIMScheduler, DDPMScheduler, PNDMScheduler,
// EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler,
// LMSDiscreteScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler).
std::unique_ptr<Scheduler> make_scheduler(const SchedulerConfig& config);

// The sampler names users know, as one table: name -> class + option overrides.
struct SamplerName {
  const char* name;        // "euler_a", "dpm++2m_karras", ...
  const char* a1111;       // A1111's name: "Euler a", "DPM++ 2M Karras", ...
  const char* class_name;  // diffusers class
  const char* overrides;   // JSON object applied over the model's scheduler config
  const char* description;
};
const std::vector<SamplerName>& sampler_names();
// The entry for a name in either spelling ("dpm++2m_karras", "DPM++ 2M Karras", "Euler a");
// nullptr when unknown.
const SamplerName* find_sampler(const std::string& sampler);
// The entry a scheduler config is (its class and Karras grid); nullptr when none matches.
const SamplerName* sampler_for_config(const SchedulerConfig& config);
// "ddim, ddpm, ..." for error messages.
std::string sampler_list();
// The model's scheduler config (e.g. from its scheduler/scheduler_config.json, which supplies
// betas, prediction type and offsets) switched to the named sampler, the way diffusers users do
// `NewScheduler.from_config(pipe.scheduler.config, **overrides)`. Throws listing the known names.
SchedulerConfig config_for_sampler(const std::string& sampler, const SchedulerConfig& base);

}  // namespace stipple::schedulers
