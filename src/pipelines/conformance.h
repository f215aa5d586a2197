// Conformance runner: replays the reference cases of a folder laid out like
// ../shared/conformance (outputs diffusers/torch computed) and reports, per case, the largest
// error relative to max(1, max|ref|) and pass/fail at the stated tolerance.
//
// Case kinds are one table (case_kinds()): each kind says how to recognise its folder and how to
// run it:
//   scheduler        scheduler/scheduler_config.json + reference/{meta.json,trajectory.safetensors};
//                    1e-4 per step
//   rng              cases.json + torch_cpu_rng.safetensors: exact for f64, 1 ulp for f32
//   unet_io, vae_io, text_encoder_io, dit_io
//                    reference/<kind>.safetensors next to the model's folder (unet/, vae/,
//                    text_encoder/, transformer/); 1e-4, intermediates included
//   tokenization     reference/tokenization.json next to tokenizer/; a tokenizer folder
//                    (vocab.json, merges.txt, cases.json) is the same kind; exact ids
//   txt2img, img2img, inpaint_legacy, inpaint, dit_pipeline
//                    reference/<kind>.{json,safetensors} in a pipeline folder (model_index.json);
//                    1e-3 on latents and intermediates, 2e-3 absolute on the [0, 1] image
// A folder can hold cases of several kinds; each result is named <folder>/<kind>.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace stipple::conformance {

struct CaseResult {
  std::string kind;      // "scheduler", "rng", ...
  std::string name;      // e.g. "schedulers/euler_eps" or "rng/randn_seed0_16"
  double max_error = 0;  // max over steps/tensors of max|ours - ref| / max(1, max|ref|)
  double tolerance = 0;  // (rng: in ulps)
  bool passed = false;
  std::vector<double> step_errors;  // scheduler cases: one per loop step
  std::string detail;               // what failed, or a note
};

struct CaseKind {
  std::string kind;
  // Whether `dir` is a case of this kind.
  std::function<bool(const std::string& dir)> matches;
  // Runs every case the folder holds (an rng folder holds many). Never throws: a case that
  // cannot be read is a failed result with the reason in `detail`.
  std::function<std::vector<CaseResult>(const std::string& dir, const std::string& name)> run;
};
const std::vector<CaseKind>& case_kinds();

struct CaseRef {
  std::string kind;
  std::string dir;
  std::string name;  // dir relative to the searched root
};
// Every case under `root` (recursively, `root` itself included), sorted by name.
std::vector<CaseRef> find_cases(const std::string& root);
// Runs a found case with its kind's runner.
std::vector<CaseResult> run_case(const CaseRef& c);

// Replays one scheduler trajectory: builds the scheduler from its config, checks timesteps,
// init_noise_sigma, and for every loop step the model input, prev_sample and
// pred_original_sample (stored noise replaces the scheduler's random draws).
CaseResult run_scheduler_case(const std::string& dir, double tolerance = 1e-4);
// Checks stipple::Generator against torch's draws: one result per entry of cases.json.
std::vector<CaseResult> run_rng_cases(const std::string& dir);

// Model forwards: `kind` is unet_io, vae_io, text_encoder_io or dit_io; `dir` holds the model
// folder and reference/<kind>.safetensors.
CaseResult run_model_io_case(const std::string& kind, const std::string& dir,
                             const std::string& name);
// Tokenizer in `tokenizer_dir` against the cases of `cases_json` (bpe_tokens, input_ids,
// input_ids_padded_77), exact; max_error is the fraction of cases that differ.
CaseResult run_tokenization_case(const std::string& tokenizer_dir, const std::string& cases_json,
                                 const std::string& name);
// Whole pipelines: `kind` is txt2img, img2img, inpaint_legacy, inpaint or dit_pipeline.
CaseResult run_pipeline_case(const std::string& kind, const std::string& dir,
                             const std::string& name);

}  // namespace stipple::conformance
