// What every resumable trainer saves besides its model files: one safetensors file holding the
// named state tensors (weights, optimiser, data position, ...), the RNG state, the step and the
// seconds trained, with the run's config as JSON in its metadata; and a CSV log that a resume
// cuts back to the resumed step. Used by train-vae and train-clip (the DiT trainer has its own,
// older, checkpoint folders).
#pragma once

#include <cstdint>
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
