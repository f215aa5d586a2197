#include "export_command.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

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

DType parse_dtype(const std::string& s) {
  if (s == "f16") return DType::kF16;
  if (s == "bf16") return DType::kBF16;
  return DType::kF32;
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
  const DType dtype = parse_dtype(dtype_);
  fs::create_directories(dst);
  io::write_file_atomic((dst / "model_index.json").string(),
                        read_bytes(src / "model_index.json"));
  int64_t tensors = 0, bytes = 0;
  int files = 1;
  for (const auto& entry : fs::directory_iterator(src)) {
    if (!entry.is_directory()) continue;  // training_state.safetensors and other top-level files
    const fs::path sub = dst / entry.path().filename();
    fs::create_directories(sub);
    for (const auto& f : fs::directory_iterator(entry.path())) {
      if (!f.is_regular_file()) continue;
      const std::string ext = f.path().extension().string();
      const fs::path target = sub / f.path().filename();
      if (ext == ".json") {
        io::write_file_atomic(target.string(), read_bytes(f.path()));
        ++files;
      } else if (ext == ".safetensors") {
        const io::SafetensorsFile in = io::SafetensorsFile::open(f.path().string());
        std::map<std::string, Tensor> weights = in.tensors();
        for (auto& [name, t] : weights) {
          if (t.dtype() == DType::kF32 || t.dtype() == DType::kF16 || t.dtype() == DType::kBF16 ||
              t.dtype() == DType::kF64) {
            if (t.dtype() != dtype) t = t.to(dtype);
          }
          ++tensors;
        }
        io::save_safetensors(target.string(), weights, in.metadata());
        bytes += static_cast<int64_t>(fs::file_size(target));
        ++files;
      } else {  // tokenizer files (merges.txt) and the like, as they are
        io::write_file_atomic(target.string(), read_bytes(f.path()));
        ++files;
      }
    }
  }
  if (!quiet_)
    std::printf("exported %s to %s: %d files, %lld tensors in %s, %.1f MB of weights\n",
                src.string().c_str(), dst.string().c_str(), files,
                static_cast<long long>(tensors), dtype_.c_str(), bytes / 1048576.0);
  return 0;
}

}  // namespace stipple::cli
