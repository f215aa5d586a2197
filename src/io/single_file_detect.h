// What single_file.cc and single_file_detect.cc share: the CompVis/SGM key prefixes, canonical
// key names, and a file's header seen through them; and the detection of each part's diffusers
// config from tensor shapes (single_file_detect.cc). Private to io/.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "io/single_file.h"

namespace stipple::io::single_file_detail {

inline const std::string kUNetPrefix = "model.diffusion_model.";
inline const std::string kVAEPrefix = "first_stage_model.";
inline const std::string kClipPrefix = "cond_stage_model.transformer.text_model.";
inline const std::string kOpenClipPrefix = "cond_stage_model.model.";
// SDXL (SGM): CLIP ViT-L and OpenCLIP bigG in the base, bigG alone in the refiner.
inline const std::string kXLClipPrefix = "conditioner.embedders.0.transformer.text_model.";
inline const std::string kXLBigGPrefix = "conditioner.embedders.1.model.";
inline const std::string kXLRefinerBigGPrefix = "conditioner.embedders.0.model.";

inline bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

// Older SD 1.x files name the CLIP tower without "text_model." (transformers < 4.17).
std::string canonical_name(const std::string& name);
// "found 1131 tensors: model.diffusion_model.* (686), first_stage_model.* (248), ..."
std::string describe_found(const SafetensorsFile& file);

// Canonical name -> entry, over the whole file.
class Header {
 public:
  explicit Header(const SafetensorsFile& file) : file_(file) {
    for (const auto& [name, e] : file.entries()) canon_[canonical_name(name)] = name;
  }
  bool has(const std::string& n) const { return canon_.count(n) > 0; }
  // The file's own name of the tensor with canonical name n.
  const std::string& file_name(const std::string& n) const {
    auto it = canon_.find(n);
    STIPPLE_CHECK(it != canon_.end(), file_.path(), ": no tensor ", n);
    return it->second;
  }
  const Shape& shape(const std::string& n) const { return file_.shape(file_name(n)); }
  int64_t dim(const std::string& n, size_t d) const { return file_.dim(file_name(n), d); }
  // Counts i = 0, 1, ... while has(prefix + i + suffix).
  int64_t count(const std::string& prefix, const std::string& suffix) const {
    int64_t n = 0;
    while (has(str_cat(prefix, n, suffix))) ++n;
    return n;
  }
  const std::map<std::string, std::string>& canon() const { return canon_; }
  const SafetensorsFile& file() const { return file_; }

 private:
  const SafetensorsFile& file_;
  std::map<std::string, std::string> canon_;
};

// Each part as the diffusers config.json it would have (errors name the file and the tensor).
nlohmann::json detect_unet(const Header& h, const SingleFileOptions& opt, bool xl,
                           std::string* family);
nlohmann::json detect_vae(const Header& h, const SingleFileOptions& opt, bool xl);
nlohmann::json detect_text(const Header& h, const SingleFileOptions& opt, std::string* kind,
                           const std::string& clip, const std::string& open_clip, bool drop_last);
// The DDIMScheduler config of the original SD releases, with the given prediction type.
nlohmann::json sd_scheduler_json(const std::string& prediction_type);

}  // namespace stipple::io::single_file_detail
