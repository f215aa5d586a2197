// LoRA files: key formats, matching to modules, merging (see lora.h).
#include "models/lora.h"

#include <cmath>
#include <cstdlib>
#include <set>
#include <tuple>

#include "core/error.h"
#include "io/single_file.h"
#include "ops/ops.h"

namespace stipple::models {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

std::string underscored(std::string s) {
  for (char& c : s)
    if (c == '.') c = '_';
  return s;
}

// Every module with a weight a LoRA can change (Linear: 2-D, Conv2d: 4-D), by component.
struct ModuleIndex {
  std::map<std::string, std::set<std::string>> modules;  // component -> module paths
  std::map<std::string, std::pair<std::string, std::string>> kohya;  // name -> (component, module)
};

ModuleIndex index_targets(const LoraTargets& targets) {
  ModuleIndex ix;
  for (const auto& [component, module] : targets.components) {
    if (module == nullptr) continue;
    std::map<std::string, Tensor> weights;
    for (const auto& [name, t] : module->state_dict()) {
      if (!ends_with(name, ".weight") || (t.dim() != 2 && t.dim() != 4)) continue;
      const std::string path = name.substr(0, name.size() - 7);
      ix.modules[component].insert(path);
      weights[name] = t;
      if (component == "unet") {
        ix.kohya["lora_unet_" + underscored(path)] = {component, path};
      } else if (component == "text_encoder") {
        ix.kohya["lora_te_" + underscored(path)] = {component, path};
        ix.kohya["lora_te1_" + underscored(path)] = {component, path};
      } else if (component == "text_encoder_2") {
        ix.kohya["lora_te2_" + underscored(path)] = {component, path};
      }
    }
    // SDXL's kohya files name UNet modules by their original (SGM/CompVis) paths; the key
    // table maps every weight of an SD/SDXL UNet (a UNet it cannot map gets no such names).
    if (component == "unet" && targets.unet_config != nullptr) {
      // Each weight goes through as a one-number tag: its index in `names`.
      std::vector<std::string> names;
      std::map<std::string, Tensor> tags;
      for (const auto& [name, t] : weights) {
        tags[name] = Tensor::from_vector_i64({static_cast<int64_t>(names.size())}, {1});
        names.push_back(name);
      }
      std::map<std::string, Tensor> compvis;
      try {
        compvis = io::to_single_file_names(io::SingleFileComponent::kUNet, tags,
                                           targets.unet_config, nullptr);
      } catch (const Error&) {
      }
      for (const auto& [cv, tag] : compvis) {
        const std::string& name = names.at(static_cast<size_t>(tag.to_vector_i64()[0]));
        const std::string stem = cv.substr(22, cv.size() - 22 - 7);  // model.diffusion_model.
        ix.kohya.emplace("lora_unet_" + underscored(stem),
                         std::make_pair(component, name.substr(0, name.size() - 7)));
      }
    }
  }
  return ix;
}

struct Parts {
  Tensor down, up;
  double alpha = -1;
  std::string key;  // the file's name for the module
  std::string format;
};

// The older diffusers attention-processor names: to_q_lora -> to_q (UNet) or q_proj (CLIP).
std::string processor_leaf(const std::string& component, const std::string& leaf) {
  if (component == "unet") return leaf == "to_out" ? "to_out.0" : leaf;
  if (leaf == "to_q") return "q_proj";
  if (leaf == "to_k") return "k_proj";
  if (leaf == "to_v") return "v_proj";
  if (leaf == "to_out") return "out_proj";
  return leaf;
}

}  // namespace

Lora read_lora(const io::SafetensorsFile& file, const LoraTargets& targets) {
  const ModuleIndex ix = index_targets(targets);
  std::map<std::string, Parts> groups;  // base name -> parts
  std::vector<std::string> unsupported, unmatched;
  for (const std::string& name : file.names()) {
    std::string base, part, format;
    if (starts_with(name, "lora_")) {
      const size_t dot = name.find('.');
      base = name.substr(0, dot);
      const std::string rest = dot == std::string::npos ? "" : name.substr(dot + 1);
      format = "kohya";
      if (rest == "lora_down.weight") part = "down";
      else if (rest == "lora_up.weight") part = "up";
      else if (rest == "alpha") part = "alpha";
    } else {
      static const std::vector<std::tuple<std::string, std::string, std::string>> kSuffixes = {
          {".lora_A.weight", "down", "peft"},       {".lora_B.weight", "up", "peft"},
          {".lora.down.weight", "down", "diffusers"}, {".lora.up.weight", "up", "diffusers"},
          {"_lora.down.weight", "down", "diffusers"}, {"_lora.up.weight", "up", "diffusers"},
          {".alpha", "alpha", "peft"}};
      for (const auto& [suffix, p, f] : kSuffixes) {
        if (ends_with(name, suffix)) {
          base = name.substr(0, name.size() - suffix.size());
          part = p;
          format = f;
          break;
        }
      }
    }
    if (part.empty()) {
      unsupported.push_back(name);
      continue;
    }
    Parts& g = groups[base];
    g.key = base;
    if (g.format.empty() || part != "alpha") g.format = format;
    const Tensor t = file.tensor(name);
    if (part == "down") g.down = t;
    else if (part == "up") g.up = t;
    else {
      STIPPLE_CHECK(t.numel() == 1, file.path(), ": ", name, " must hold one number, got ",
                    t.describe());
      g.alpha = t.contiguous().to(DType::kF32).to_vector()[0];
    }
  }
  Lora lora;
  lora.path = file.path();
  for (auto& [base, g] : groups) {
    if (!g.down.defined() && !g.up.defined()) continue;  // an alpha alone
    STIPPLE_CHECK(g.down.defined() && g.up.defined(), file.path(), ": LoRA ", base, " has only its ",
                  g.down.defined() ? "down (A)" : "up (B)", " matrix");
    // Resolve the module.
    std::string component, module;
    if (g.format == "kohya") {
      auto it = ix.kohya.find(base);
      if (it != ix.kohya.end()) std::tie(component, module) = it->second;
    } else {
      const size_t dot = base.find('.');
      component = base.substr(0, dot);
      module = dot == std::string::npos ? "" : base.substr(dot + 1);
      const size_t proc = module.find(".processor.");
      if (proc != std::string::npos) module.erase(proc, 10);  // "<attn>.processor.to_q" -> "<attn>.to_q"
      const size_t last = module.rfind('.');
      const std::string leaf = module.substr(last == std::string::npos ? 0 : last + 1);
      if (leaf == "to_q" || leaf == "to_k" || leaf == "to_v" || leaf == "to_out") {
        const std::string mapped = processor_leaf(component, leaf);
        const std::string head = last == std::string::npos ? "" : module.substr(0, last + 1);
        if (!ix.modules.count(component) || !ix.modules.at(component).count(module))
          module = head + mapped;
      }
    }
    if (component.empty() || !ix.modules.count(component) ||
        !ix.modules.at(component).count(module)) {
      unmatched.push_back(base);
      continue;
    }
    const int64_t rank = g.down.size(0);
    STIPPLE_CHECK((g.down.dim() == 2 || g.down.dim() == 4) && g.down.dim() == g.up.dim() &&
                      g.up.size(1) == rank && rank > 0,
                  file.path(), ": LoRA ", base, " has down ", g.down.describe(), " and up ",
                  g.up.describe(), "; expected [r, in(, kh, kw)] and [out, r(, 1, 1)]");
    LoraLayer layer;
    layer.component = component;
    layer.module = module;
    layer.key = base;
    layer.down = g.down;
    layer.up = g.up;
    layer.alpha = g.alpha >= 0 ? g.alpha : static_cast<double>(rank);
    STIPPLE_CHECK(std::isfinite(layer.alpha), file.path(), ": LoRA ", base, " has alpha ",
                  layer.alpha);
    if (lora.format.empty()) lora.format = g.format;
    lora.layers.push_back(std::move(layer));
  }
  auto list = [](const std::vector<std::string>& names) {
    std::string s;
    for (size_t i = 0; i < names.size() && i < 8; ++i) s += (i ? ", " : "") + names[i];
    return s + (names.size() > 8 ? str_cat(", ... (", names.size(), " in all)") : "");
  };
  STIPPLE_CHECK(unsupported.empty(), file.path(), ": ", unsupported.size(),
                " tensors are not LoRA down/up/alpha weights (LoHa, LoKr and DoRA files are not "
                "supported): ",
                list(unsupported));
  STIPPLE_CHECK(unmatched.empty(), file.path(), ": ", unmatched.size(),
                " LoRA modules match nothing in this model (a LoRA for another model family?): ",
                list(unmatched));
  STIPPLE_CHECK(!lora.layers.empty(), file.path(), ": holds no LoRA weights");
  return lora;
}

Tensor merge_lora_layer(const Tensor& w, const LoraLayer& layer, double weight) {
  const int64_t rank = layer.down.size(0);
  const int64_t out = w.size(0);
  const int64_t rest = w.numel() / std::max<int64_t>(out, 1);
  const Tensor up = layer.up.contiguous().to(DType::kF32).to(w.device());
  const Tensor down = layer.down.contiguous().to(DType::kF32).to(w.device());
  STIPPLE_CHECK(up.numel() == out * rank && up.size(0) == out && down.numel() == rank * rest,
                "LoRA ", layer.key, ": up ", layer.up.describe(), " and down ",
                layer.down.describe(), " do not fit ", layer.component, ".", layer.module,
                ".weight ", w.describe());
  const Tensor delta = ops::matmul(up.reshape({out, rank}), down.reshape({rank, rest}));  // [out, rest]
  const float s = static_cast<float>(weight * layer.alpha / static_cast<double>(rank));
  const Tensor merged = w.contiguous().to(DType::kF32) + (delta * s).reshape(w.shape());
  return merged.to(w.dtype());
}

LoraSpec parse_lora_spec(const std::string& text) {
  LoraSpec spec;
  spec.path = text;
  const size_t colon = text.rfind(':');
  if (colon != std::string::npos && colon + 1 < text.size()) {
    const std::string num = text.substr(colon + 1);
    char* end = nullptr;
    const double w = std::strtod(num.c_str(), &end);
    if (end != nullptr && *end == '\0' && std::isfinite(w)) {
      spec.path = text.substr(0, colon);
      spec.weight = w;
    }
  }
  return spec;
}

}  // namespace stipple::models
