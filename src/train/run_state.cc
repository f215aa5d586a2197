// Run state files and CSV logs for the resumable trainers (see run_state.h).
#include "train/run_state.h"

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "train/datasets.h"

namespace stipple::train {

void save_run_state(const std::string& path, const RunState& state, const std::string& format) {
  std::map<std::string, Tensor> t = state.tensors;
  t["rng"] = bytes_to_tensor(state.rng);
  t["step"] = Tensor::scalar(static_cast<double>(state.step), DType::kI64);
  t["elapsed_seconds"] = Tensor::scalar(state.elapsed_seconds, DType::kF64);
  io::save_safetensors(path, t,
                       {{"format", format},
                        {"step", std::to_string(state.step)},
                        {"train_config", state.config.dump()}});
}

RunState load_run_state(const std::string& path) {
  const io::SafetensorsFile f = io::SafetensorsFile::open(path);
  const auto it = f.metadata().find("train_config");
  STIPPLE_CHECK(it != f.metadata().end(), path,
                ": no train_config in its metadata (not a stipple training state)");
  RunState s;
  s.config = io::parse_json(it->second, path + " (train_config)");
  s.tensors = f.tensors();
  for (const char* key : {"rng", "step", "elapsed_seconds"})
    STIPPLE_CHECK(s.tensors.count(key), path, ": missing '", key, "' (not a complete state)");
  s.rng = tensor_to_bytes(s.tensors.at("rng"));
  s.step = s.tensors.at("step").to_vector_i64().at(0);
  s.elapsed_seconds = s.tensors.at("elapsed_seconds").to_vector_f64().at(0);
  STIPPLE_CHECK(s.step >= 0 && s.step <= 100000000, path, ": step ", s.step,
                " is outside [0, 1e8] (a damaged state file)");
  for (const char* key : {"rng", "step", "elapsed_seconds"}) s.tensors.erase(key);
  return s;
}

RunState load_run_state_to_resume(const std::string& path) {
  STIPPLE_CHECK_KIND(std::filesystem::exists(path), kNotFound, "cannot resume: ", path,
                     " does not exist (start without --resume)");
  return load_run_state(path);
}

void prepare_run_folder(const std::string& dir, const std::string& config_file,
                        const nlohmann::json& config,
                        const std::function<void(const std::string&)>& say) {
  if (const int k = io::remove_stale_temporaries(dir))
    say(str_cat("removed ", k, " temporary file(s) left by an interrupted write in ", dir));
  io::create_output_dir(dir);
  io::write_file_atomic(dir + "/" + config_file, config.dump(2) + "\n");
}

RunState make_run_state(int64_t step, double seconds, const Generator& gen, nlohmann::json config) {
  RunState s;
  s.rng = gen.state();
  s.step = step;
  s.elapsed_seconds = seconds;
  s.config = std::move(config);
  return s;
}

std::map<std::string, Tensor> with_prefix(const std::map<std::string, Tensor>& state,
                                          const std::string& prefix) {
  std::map<std::string, Tensor> out;
  for (const auto& [k, v] : state)
    if (k.rfind(prefix, 0) == 0) out.emplace(k.substr(prefix.size()), v);
  return out;
}

void add_prefixed(std::map<std::string, Tensor>& state, const std::string& prefix,
                  const std::map<std::string, Tensor>& part) {
  for (const auto& [k, v] : part) state[prefix + k] = v;
}

CsvLog::CsvLog(std::string path, std::string header)
    : path_(std::move(path)), text_(std::move(header) + "\n") {}

void CsvLog::resume(int64_t step) {
  std::ifstream in(path_);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    try {
      if (std::stoll(line.substr(0, line.find(','))) <= step) text_ += line + "\n";
    } catch (const std::exception&) {
    }
  }
}

void CsvLog::append(const std::string& row) {
  text_ += row + "\n";
  io::write_file_atomic(path_, text_);
}

}  // namespace stipple::train
