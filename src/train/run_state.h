// What every resumable trainer saves besides its model files: one safetensors file holding the
// named state tensors (weights, optimiser, data position, ...), the RNG state, the step and the
// seconds trained, with the run's config as JSON in its metadata; and a CSV log that a resume
// cuts back to the resumed step; and the steps every such run takes around its own training
// (resuming its config, preparing its folder, counting its seconds). Used by train-vae,
// train-clip, train-sr and tune (the DiT trainer has its own, older, checkpoint folders).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace stipple::train {

struct RunState {
  std::map<std::string, Tensor> tensors;  // everything else saved, by name
  std::vector<uint8_t> rng;
  int64_t step = 0;
  double elapsed_seconds = 0;
  nlohmann::json config;
};

// Writes `state` atomically to `path`; `format` names the trainer in the metadata.
void save_run_state(const std::string& path, const RunState& state, const std::string& format);
// Reads a file save_run_state wrote; errors name the file and what is missing.
RunState load_run_state(const std::string& path);

// load_run_state for --resume: a missing file is a not-found error that says to start without
// --resume.
RunState load_run_state_to_resume(const std::string& path);

// A run's config and state at its start. Resuming: the state saved at `state_path` and the
// config saved in it, with the caller's `steps` and `out_dir` (the settings a resume may
// change); else `given`, and `*state` is left empty.
template <class Config>
Config resumed_config(const Config& given, bool resume, const std::string& state_path,
                      RunState* state) {
  if (!resume) return given;
  *state = load_run_state_to_resume(state_path);
  Config saved = Config::from_json(state->config, state_path + " (train_config)");
  saved.steps = given.steps;
  saved.out_dir = given.out_dir;
  return saved;
}

// The run's folder made ready (on the rank that writes): the temporary files an interrupted
// atomic write left are removed (`say` tells how many), the folder is created and `config_file`
// in it written with `config`.
void prepare_run_folder(const std::string& dir, const std::string& config_file,
                        const nlohmann::json& config,
                        const std::function<void(const std::string&)>& say);

// Seconds trained over every run: the earlier runs' (a resumed state's elapsed_seconds) plus
// this run's since the clock was made.
class RunClock {
 public:
  explicit RunClock(double before) : before_(before), start_(std::chrono::steady_clock::now()) {}
  double seconds() const { return before_ + this_run(); }
  double this_run() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  double before_;
  std::chrono::steady_clock::time_point start_;
};

// A state to save at `step`: the RNG's state, the seconds and the config; the caller adds its
// tensors (model, optimiser, data position, ...) under their prefixes.
RunState make_run_state(int64_t step, double seconds, const Generator& gen, nlohmann::json config);

// The entries of `state` whose names start with `prefix`, with the prefix removed.
std::map<std::string, Tensor> with_prefix(const std::map<std::string, Tensor>& state,
                                          const std::string& prefix);
// Adds `part` to `state` under `prefix`.
void add_prefixed(std::map<std::string, Tensor>& state, const std::string& prefix,
                  const std::map<std::string, Tensor>& part);

// A CSV log rewritten atomically after each row.
class CsvLog {
 public:
  CsvLog(std::string path, std::string header);
  // Keeps the rows of an earlier run whose first column (the step) is <= step.
  void resume(int64_t step);
  void append(const std::string& row);  // without the newline

 private:
  std::string path_, text_;
};

}  // namespace stipple::train
