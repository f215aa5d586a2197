// Conformance runners for single models (UNet, VAE, CLIP text encoder, DiT; tolerance 1e-4
// relative) and the CLIP tokenizer (exact ids); see conformance.h.
#include <filesystem>
#include <map>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/dit.h"
#include "models/unet2d_condition.h"
#include "models/vae.h"
#include "pipelines/conformance.h"
#include "pipelines/conformance_util.h"
#include "text/clip_tokenizer.h"

namespace stipple::conformance {

namespace fs = std::filesystem;
using detail::Checker;

namespace {

// Compares every reference tensor named prefix + path with what the hook recorded at `path`.
void check_intermediates(Checker& c, const io::SafetensorsFile& ref, const std::string& prefix,
                         const std::map<std::string, Tensor>& got) {
  for (const std::string& key : ref.names()) {
    if (key.rfind(prefix, 0) != 0) continue;
    auto it = got.find(key.substr(prefix.size()));
    if (it == got.end()) {
      c.fail(key + " was not produced");
      continue;
    }
    c.check(key, it->second, ref.tensor(key));
  }
}

models::IntermediateHook recorder(std::map<std::string, Tensor>& into) {
  return [&into](const std::string& path, const Tensor& v) { into[path] = v.contiguous().clone(); };
}

CaseResult unet_io(const fs::path& d, Checker c) {
  const auto unet = models::UNet2DConditionModel::from_pretrained((d / "unet").string());
  const auto ref = io::SafetensorsFile::open((d / "reference" / "unet_io.safetensors").string());
  const Tensor sample = ref.tensor("sample"), ehs = ref.tensor("encoder_hidden_states");
  std::map<std::string, Tensor> inter;
  c.check("out_a", unet->forward(sample, ref.tensor("timestep_a"), ehs, Tensor(), recorder(inter)),
          ref.tensor("out_a"));
  check_intermediates(c, ref, "inter_a.", inter);
  c.check("out_b", unet->forward(sample, ref.tensor("timestep_b"), ehs), ref.tensor("out_b"));
  return c.result();
}

CaseResult vae_io(const fs::path& d, Checker c) {
  const auto vae = models::AutoencoderKL::from_pretrained((d / "vae").string());
  const auto ref = io::SafetensorsFile::open((d / "reference" / "vae_io.safetensors").string());
  std::map<std::string, Tensor> enc, dec;
  const models::DiagonalGaussian post = vae->encode(ref.tensor("image"), recorder(enc));
  c.check("latent_mean", post.mean, ref.tensor("latent_mean"));
  c.check("latent_logvar", post.logvar, ref.tensor("latent_logvar"));
  c.check("latent_std", post.std, ref.tensor("latent_std"));
  check_intermediates(c, ref, "inter_enc.", enc);
  c.check("decoded", vae->decode(ref.tensor("z"), recorder(dec)), ref.tensor("decoded"));
  check_intermediates(c, ref, "inter_dec.", dec);
  c.check("roundtrip_decoded", vae->decode(ref.tensor("latent_mean")),
          ref.tensor("roundtrip_decoded"));
  return c.result();
}

CaseResult text_encoder_io(const fs::path& d, Checker c) {
  const auto clip = models::CLIPTextModel::from_pretrained((d / "text_encoder").string());
  const auto ref =
      io::SafetensorsFile::open((d / "reference" / "text_encoder_io.safetensors").string());
  for (const std::string suffix : {"", "_short"}) {
    if (!ref.contains("input_ids" + suffix)) continue;
    const models::CLIPTextOutput out = clip->forward(ref.tensor("input_ids" + suffix));
    c.check("last_hidden_state" + suffix, out.last_hidden_state,
            ref.tensor("last_hidden_state" + suffix));
    c.check("pooler_output" + suffix, out.pooler_output, ref.tensor("pooler_output" + suffix));
    for (size_t i = 0; i < out.hidden_states.size(); ++i) {
      const std::string key = str_cat("hidden_states.", i, suffix);
      if (ref.contains(key)) c.check(key, out.hidden_states[i], ref.tensor(key));
    }
  }
  return c.result();
}

CaseResult dit_io(const fs::path& d, Checker c) {
  const auto dit = models::DiTTransformer2DModel::from_pretrained((d / "transformer").string());
  const auto ref = io::SafetensorsFile::open((d / "reference" / "dit_io.safetensors").string());
  const Tensor x = ref.tensor("hidden_states");
  if (ref.contains("inter_a.pos_embed"))
    c.check("inter_a.pos_embed", dit->pos_embed->forward(x), ref.tensor("inter_a.pos_embed"));
  c.check("out_a", dit->forward(x, ref.tensor("timestep_a"), ref.tensor("class_labels_a")),
          ref.tensor("out_a"));
  c.check("out_b", dit->forward(x, ref.tensor("timestep_b"), ref.tensor("class_labels_b")),
          ref.tensor("out_b"));
  return c.result();
}

}  // namespace

CaseResult run_model_io_case(const std::string& kind, const std::string& dir,
                             const std::string& name) {
  constexpr double kTolerance = 1e-4;
  try {
    autograd::NoGradGuard no_grad;
    Checker c(kind, name, kTolerance);
    const fs::path d(dir);
    if (kind == "unet_io") return unet_io(d, c);
    if (kind == "vae_io") return vae_io(d, c);
    if (kind == "text_encoder_io") return text_encoder_io(d, c);
    if (kind == "dit_io") return dit_io(d, c);
    throw Error(str_cat("unknown model case kind ", kind));
  } catch (const std::exception& e) {
    return detail::error_result(kind, name, kTolerance, e.what());
  }
}

CaseResult run_tokenization_case(const std::string& tokenizer_dir, const std::string& cases_json,
                                 const std::string& name) {
  try {
    const text::ClipTokenizer tok = text::ClipTokenizer::from_folder(tokenizer_dir);
    const nlohmann::json doc = detail::read_json(cases_json);
    const nlohmann::json& cases = doc.at("cases");
    CaseResult r;
    r.kind = "tokenization";
    r.name = name;
    r.tolerance = 0;  // exact
    int wrong = 0;
    for (const auto& k : cases) {
      const std::string text = k.at("text").get<std::string>();
      const bool ok =
          tok.bpe_tokens(text) == k.at("bpe_tokens").get<std::vector<std::string>>() &&
          tok.encode(text) == k.at("input_ids").get<std::vector<int64_t>>() &&
          tok.encode_padded(text, 77) == k.at("input_ids_padded_77").get<std::vector<int64_t>>();
      if (!ok) {
        if (wrong < 3)
          r.detail += str_cat(r.detail.empty() ? "" : "; ", "differs on ",
                              nlohmann::json(text).dump());
        ++wrong;
      }
    }
    // The error is the fraction of cases whose tokens or ids differ.
    r.max_error = cases.empty() ? 0.0 : static_cast<double>(wrong) / cases.size();
    r.passed = wrong == 0;
    if (wrong) r.detail = str_cat(wrong, " of ", cases.size(), " cases differ: ", r.detail);
    else r.detail = str_cat(cases.size(), " cases exact");
    return r;
  } catch (const std::exception& e) {
    return detail::error_result("tokenization", name, 0, e.what());
  }
}

}  // namespace stipple::conformance
