#include "models/component.h"

#include <filesystem>

#include "core/error.h"
#include "io/safetensors.h"

namespace stipple::models {

namespace fs = std::filesystem;

ComponentFiles find_component(const std::string& folder, const std::string& what,
                              const std::string& stem, const std::string& subfolder) {
  fs::path dir(folder);
  STIPPLE_CHECK_KIND(fs::is_directory(dir), kNotFound, what, ": no such folder: ", folder);
  if (!subfolder.empty() && !fs::exists(dir / "config.json") &&
      fs::exists(dir / subfolder / "config.json"))
    dir /= subfolder;
  ComponentFiles f;
  f.dir = dir.string();
  f.config = (dir / "config.json").string();
  STIPPLE_CHECK_KIND(fs::is_regular_file(f.config), kNotFound, what, ": no config.json in ",
                     dir.string());
  for (const std::string& name : {stem + ".safetensors", stem + ".fp16.safetensors"}) {
    if (fs::is_regular_file(dir / name)) {
      f.weights = (dir / name).string();
      return f;
    }
  }
  std::string hint;
  if (fs::exists(dir / (stem + ".safetensors.index.json")))
    hint = " (it holds a sharded checkpoint, which stipple does not read yet; join the shards "
           "into one safetensors file)";
  else if (fs::exists(dir / (stem + ".bin")) || fs::exists(dir / "pytorch_model.bin"))
    hint = " (only a PyTorch .bin is there, which stipple does not read; convert it to "
           "safetensors)";
  f.missing = str_cat(what, ": no ", stem, ".safetensors (or ", stem, ".fp16.safetensors) in ",
                      dir.string(), hint);
  return f;
}

const std::string& ComponentFiles::weights_file() const {
  if (weights.empty()) throw Error(missing, ErrorKind::kNotFound);
  return weights;
}

void check_config_matches(const io::SafetensorsFile& weights, const std::string& config_path,
                          const std::string& name, const std::vector<int64_t>& expected,
                          const std::string& fields) {
  if (!weights.contains(name)) return;
  const std::vector<int64_t>& shape = weights.shape(name);
  bool ok = shape.size() >= expected.size();
  for (size_t i = 0; ok && i < expected.size(); ++i) ok = shape[i] == expected[i];
  if (ok) return;
  auto dims = [](const std::vector<int64_t>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += str_cat(i ? ", " : "", v[i]);
    return s + "]";
  };
  throw Error(str_cat(config_path, " does not describe the weights in ", weights.path(), ": its ",
                      fields, " = ", dims(expected), " but ", name, " is ", dims(shape),
                      "; give the config.json that came with these weights"));
}

}  // namespace stipple::models
