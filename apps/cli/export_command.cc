#include "export_command.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "io/torch_checkpoint.h"
#include "train/evaluate.h"

namespace stipple::cli {
namespace fs = std::filesystem;

namespace {

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  STIPPLE_CHECK(in.good(), "cannot read ", p.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// "keep" -> nullopt
std::optional<DType> parse_dtype(const std::string& s) {
  if (s == "f16") return DType::kF16;
  if (s == "bf16") return DType::kBF16;
  if (s == "f32") return DType::kF32;
  return std::nullopt;
}

// Reads a weights file (safetensors or a PyTorch checkpoint) and writes it as safetensors with
// its floating tensors in `dtype` (as stored when none), its metadata plus `extra`; returns the
// tensors written. `label` names the input when it must hold tensors (convert's file), "" when
// an empty file is copied as it is (export's components).
int64_t convert_weights_file(const fs::path& in, const fs::path& out, std::optional<DType> dtype,
                             const std::map<std::string, std::string>& extra = {},
                             const std::string& label = "") {
  const io::SafetensorsFile file = io::open_weights_file(in.string());
  std::map<std::string, Tensor> weights = file.tensors();
  STIPPLE_CHECK(label.empty() || !weights.empty(), label, " holds no tensors");
  for (auto& [name, t] : weights) {
    const bool floating = t.dtype() == DType::kF32 || t.dtype() == DType::kF16 ||
                          t.dtype() == DType::kBF16 || t.dtype() == DType::kF64;
    if (dtype && floating && t.dtype() != *dtype) t = t.to(*dtype);
  }
  std::map<std::string, std::string> metadata = file.metadata();
  for (const auto& [k, v] : extra) metadata.emplace(k, v);
  io::save_safetensors(out.string(), weights, metadata);
  return static_cast<int64_t>(weights.size());
}

struct CopyStats {
  int files = 0;
  int64_t tensors = 0, bytes = 0;
};

// The source's model_index.json, keeping the sampling defaults (train::SamplingDefaults) that the
// destination's own index holds and the source's lacks: a folder re-exported from a newer
// checkpoint keeps how it was tuned to sample, as it keeps its README.
std::string merged_model_index(const fs::path& src, const fs::path& dst) {
  const std::string text = read_bytes(src / "model_index.json");
  const char* key = train::SamplingDefaults::kKey;
  if (!fs::exists(dst / "model_index.json")) return text;
  nlohmann::json from = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  const nlohmann::json to =
      nlohmann::json::parse(read_bytes(dst / "model_index.json"), nullptr, false);
  if (!from.is_object() || from.contains(key) || !to.is_object() || !to.contains(key)) return text;
  from[key] = to.at(key);
  return from.dump(2) + "\n";
}

// The folder copy of `export`: model_index.json, then each component folder's files (configs
// and tokenizer files as they are, weights converted; PyTorch .bin weights become .safetensors).
// A sub-folder that is a model folder itself (an autoguidance model, train::SamplingDefaults'
// guide_model) is copied the same way.
CopyStats copy_model_folder(const fs::path& src, const fs::path& dst, std::optional<DType> dtype) {
  CopyStats st;
  fs::create_directories(dst);
  io::write_file_atomic((dst / "model_index.json").string(), merged_model_index(src, dst));
  st.files = 1;
  for (const auto& entry : fs::directory_iterator(src)) {
    if (!entry.is_directory()) continue;  // training_state.safetensors and other top-level files
    const fs::path sub = dst / entry.path().filename();
    if (fs::exists(entry.path() / "model_index.json")) {
      const CopyStats inner = copy_model_folder(entry.path(), sub, dtype);
      st.files += inner.files;
      st.tensors += inner.tensors;
      st.bytes += inner.bytes;
      continue;
    }
    fs::create_directories(sub);
    for (const auto& f : fs::directory_iterator(entry.path())) {
      if (!f.is_regular_file()) continue;
      const std::string ext = f.path().extension().string();
      fs::path target = sub / f.path().filename();
      if (ext == ".safetensors" || ext == ".bin") {
        // transformers' pytorch_model.bin -> model.safetensors; diffusers' names keep their stem.
        if (ext == ".bin") {
          const std::string stem = f.path().stem().string();
          target = sub / ((stem == "pytorch_model" ? std::string("model") : stem) + ".safetensors");
        }
        st.tensors += convert_weights_file(f.path(), target, dtype);
        st.bytes += static_cast<int64_t>(fs::file_size(target));
      } else {  // configs, tokenizer files (merges.txt) and the like, as they are
        io::write_file_atomic(target.string(), read_bytes(f.path()));
      }
      ++st.files;
    }
  }
  return st;
}

}  // namespace

ExportCommand::ExportCommand(CLI::App& app) {
  cmd_ = app.add_subcommand(
      "export",
      "Write a model folder to ship from a diffusers folder (for example a training run's "
      "checkpoint-<step>/ or latest/, which hold the EMA weights): model_index.json and the "
      "components' configs and other files (tokenizer) copied, their weights converted to "
      "--dtype, training state left out. "
      "Each file is written atomically; other files in --out (a README) are kept.");
  cmd_->add_option("model", model_, "diffusers folder with a model_index.json")->required();
  cmd_->add_option("--out", out_, "folder to write (created if missing)")->required();
  cmd_->add_option("--dtype", dtype_, "weight dtype of the export")
      ->capture_default_str()
      ->check(CLI::IsMember({"f16", "bf16", "f32"}));
  cmd_->add_flag("--quiet,-q", quiet_, "no summary");
}

int ExportCommand::run() {
  STIPPLE_CHECK(fs::is_directory(model_), "no such model folder: ", model_);
  const fs::path src = fs::canonical(model_);
  STIPPLE_CHECK(fs::exists(src / "model_index.json"), model_,
                " is not a diffusers folder: it holds no model_index.json");
  const fs::path dst = fs::absolute(out_);
  STIPPLE_CHECK(fs::weakly_canonical(dst) != src, "--out must differ from the model folder");
  const CopyStats st = copy_model_folder(src, dst, parse_dtype(dtype_));
  if (!quiet_)
    std::printf("exported %s to %s: %d files, %lld tensors in %s, %.1f MB of weights\n",
                src.string().c_str(), dst.string().c_str(), st.files,
                static_cast<long long>(st.tensors), dtype_.c_str(), st.bytes / 1048576.0);
  return 0;
}

ConvertCommand::ConvertCommand(CLI::App& app) {
  cmd_ = app.add_subcommand(
      "convert",
      "Write any weights stipple reads as safetensors: a single file (.safetensors, or a PyTorch "
      ".ckpt/.pt/.pth/.bin, read without running its pickle) to one .safetensors with the same "
      "tensor names, or a diffusers folder to a folder (as export, PyTorch .bin weights "
      "rewritten as .safetensors).");
  cmd_->add_option("input", in_, "a weights file or a diffusers folder")->required();
  cmd_->add_option("--out", out_, "the .safetensors file (or folder) to write")->required();
  cmd_->add_option("--dtype", dtype_, "floating-point weights as: keep (as stored), f16, bf16, f32")
      ->capture_default_str()
      ->check(CLI::IsMember({"keep", "f16", "bf16", "f32"}));
  cmd_->add_flag("--overwrite", overwrite_, "replace --out when it exists");
  cmd_->add_flag("--quiet,-q", quiet_, "no summary");
}

int ConvertCommand::run() {
  STIPPLE_CHECK(fs::exists(in_), "no such file or folder: ", in_);
  const fs::path src = fs::canonical(in_);
  const fs::path dst = fs::absolute(out_);
  STIPPLE_CHECK(fs::weakly_canonical(dst) != src, "--out must differ from the input");
  const std::optional<DType> dtype = parse_dtype(dtype_);
  if (fs::is_directory(src)) {
    STIPPLE_CHECK(fs::exists(src / "model_index.json"), in_,
                  " is a folder but not a diffusers model (no model_index.json); give a weights "
                  "file or a model folder");
    STIPPLE_CHECK(overwrite_ || !fs::exists(dst) || fs::is_empty(dst), out_,
                  " exists and is not empty; pass --overwrite to write into it");
    const CopyStats st = copy_model_folder(src, dst, dtype);
    if (!quiet_)
      std::printf("converted %s to %s: %d files, %lld tensors, %.1f MB of weights\n",
                  src.string().c_str(), dst.string().c_str(), st.files,
                  static_cast<long long>(st.tensors), st.bytes / 1048576.0);
    return 0;
  }
  STIPPLE_CHECK(dst.extension() == ".safetensors", "--out must name a .safetensors file, got ",
                out_);
  STIPPLE_CHECK(overwrite_ || !fs::exists(dst), out_,
                " exists; pass --overwrite to replace it");
  if (dst.has_parent_path()) fs::create_directories(dst.parent_path());
  const int64_t tensors = convert_weights_file(src, dst, dtype, {{"format", "pt"}}, in_);
  if (!quiet_)
    std::printf("converted %s to %s: %lld tensors, %.1f MB\n", src.string().c_str(),
                dst.string().c_str(), static_cast<long long>(tensors),
                fs::file_size(dst) / 1048576.0);
  return 0;
}

}  // namespace stipple::cli
