// Conformance runner; see conformance.h.
#include "pipelines/conformance.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "pipelines/conformance_util.h"
#include "schedulers/scheduler.h"

namespace stipple::conformance {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool is_file(const fs::path& p) { return detail::is_file(p.string()); }
using detail::rel_error;

std::vector<float> slice(const Tensor& stacked, int64_t i) {
  return stacked.narrow(0, i, 1).contiguous().to_vector();
}

json read_json(const fs::path& p) { return detail::read_json(p.string()); }

CaseResult scheduler_case(const std::string& dir, const std::string& name, double tolerance) {
  CaseResult r;
  r.kind = "scheduler";
  r.name = name;
  r.tolerance = tolerance;
  const fs::path d(dir);
  const json meta = read_json(d / "reference" / "meta.json");
  const io::SafetensorsFile ref =
      io::SafetensorsFile::open((d / "reference" / "trajectory.safetensors").string());
  schedulers::SchedulerConfig cfg =
      schedulers::SchedulerConfig::from_json((d / "scheduler" / "scheduler_config.json").string());
  if (meta.contains("step_kwargs") && meta["step_kwargs"].contains("eta")) {
    cfg.eta = meta["step_kwargs"]["eta"].get<double>();
  }
  std::unique_ptr<schedulers::Scheduler> s = schedulers::make_scheduler(cfg);
  const int n = meta.at("num_inference_steps").get<int>();
  s->set_timesteps(n);

  std::string notes;
  auto note = [&](const std::string& what, double err) {
    r.max_error = std::max(r.max_error, err);
    if (!(err <= tolerance)) notes += str_cat(notes.empty() ? "" : "; ", what, " off by ", err);
  };
  // Grid and constants.
  const std::vector<float> ref_t = ref.tensor("timesteps").to_vector();
  if (ref_t.size() != s->timesteps().size()) {
    r.detail = str_cat(s->timesteps().size(), " timesteps, reference has ", ref_t.size());
    r.max_error = INFINITY;
    return r;
  }
  note("timesteps",
       rel_error(std::vector<float>(s->timesteps().begin(), s->timesteps().end()), ref_t));
  note("alphas_cumprod", rel_error(s->alphas_cumprod(), ref.tensor("alphas_cumprod").to_vector()));
  if (ref.contains("sigmas"))
    note("sigmas", rel_error(s->sigmas(), ref.tensor("sigmas").to_vector()));
  const float ins = static_cast<float>(s->init_noise_sigma());
  note("init_noise_sigma", rel_error({ins}, ref.tensor("init_noise_sigma").to_vector()));

  // The loop of the README: model_output = 0.1 * model_input + 0.05 * sin(float32(t) / 100).
  const Tensor x_t = ref.tensor("x_T");
  const Tensor model_input = ref.tensor("model_input"), prev = ref.tensor("prev_sample");
  const bool has_x0 = ref.contains("pred_original_sample");
  const Tensor pred_x0 = has_x0 ? ref.tensor("pred_original_sample") : Tensor();
  const bool has_noise = ref.contains("noise");
  const Tensor noise = has_noise ? ref.tensor("noise") : Tensor();
  Tensor latents = x_t * ins;
  for (size_t i = 0; i < ref_t.size(); ++i) {
    const double t = s->timesteps()[i];
    const Tensor in = s->scale_model_input(latents, t);
    std::vector<float> out = in.to_vector();
    const float shift = 0.05f * std::sin(static_cast<float>(t) / 100.0f);
    for (float& v : out) v = 0.1f * v + shift;
    const Tensor out_t = Tensor::from_vector(out, latents.shape());
    schedulers::SchedulerOutput o;
    if (has_noise) {
      o = s->step(out_t, t, latents, noise.narrow(0, i, 1).contiguous().reshape(latents.shape()));
    } else {
      o = s->step(out_t, t, latents);
    }
    double e = rel_error(in.to_vector(), slice(model_input, i));
    e = std::max(e, rel_error(o.prev_sample.to_vector(), slice(prev, i)));
    if (has_x0 && o.pred_original_sample.defined()) {
      e = std::max(e, rel_error(o.pred_original_sample.to_vector(), slice(pred_x0, i)));
    }
    r.step_errors.push_back(e);
    note(str_cat("step ", i), e);
    latents = o.prev_sample;
  }
  r.passed = notes.empty();
  r.detail = notes;
  return r;
}

// Distance in units in the last place between two floats of the same sign.
int64_t ulp_distance(float a, float b) {
  if (a == b) return 0;
  if (std::isnan(a) || std::isnan(b) || (a < 0) != (b < 0)) return INT64_MAX;
  return std::abs(static_cast<int64_t>(std::bit_cast<int32_t>(a)) -
                  static_cast<int64_t>(std::bit_cast<int32_t>(b)));
}

CaseResult compare_draw(const std::string& name, const Tensor& got, const Tensor& want) {
  CaseResult r;
  r.kind = "rng";
  r.name = name;
  r.passed = true;
  if (got.shape() != want.shape() || got.dtype() != want.dtype()) {
    r.passed = false;
    r.max_error = INFINITY;
    r.detail = str_cat("got ", got.describe(), ", reference ", want.describe());
    return r;
  }
  if (want.dtype() == DType::kF64) {
    r.tolerance = 0;  // exact
    const std::vector<double> a = got.to_vector_f64(), b = want.to_vector_f64();
    int64_t differ = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i] != b[i]) ++differ;
      r.max_error = std::max(r.max_error, std::abs(a[i] - b[i]) / std::max(1.0, std::abs(b[i])));
    }
    r.passed = differ == 0;
    if (differ) r.detail = str_cat(differ, " of ", a.size(), " f64 values differ");
  } else {
    r.tolerance = 1;  // ulp
    const std::vector<float> a = got.to_vector(), b = want.to_vector();
    int64_t worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, ulp_distance(a[i], b[i]));
    r.max_error = rel_error(a, b);
    r.passed = worst <= 1;
    r.detail = worst == 0 ? "" : str_cat("max ", worst, " ulp");
  }
  return r;
}

Shape to_shape(const json& j) {
  Shape s;
  for (const auto& v : j) s.push_back(v.get<int64_t>());
  return s;
}

std::vector<CaseResult> rng_cases(const std::string& dir, const std::string& prefix) {
  const fs::path d(dir);
  const json cases = read_json(d / "cases.json").at("cases");
  const io::SafetensorsFile ref =
      io::SafetensorsFile::open((d / "torch_cpu_rng.safetensors").string());
  std::vector<CaseResult> out;
  for (const auto& c : cases) {
    const std::string name = c.at("name").get<std::string>();
    try {
      Generator g(c.at("seed").get<uint64_t>());
      if (c.contains("draws")) {  // successive draws from one seeded generator
        CaseResult all;
        all.kind = "rng";
        all.name = prefix + name;
        all.tolerance = 1;
        all.passed = true;
        for (const auto& dr : c["draws"]) {
          const std::string key = name + "_" + dr[0].get<std::string>();
          const CaseResult one = compare_draw(key, g.randn(to_shape(dr[1])), ref.tensor(key));
          all.max_error = std::max(all.max_error, one.max_error);
          all.passed = all.passed && one.passed;
          if (!one.detail.empty())
            all.detail += str_cat(all.detail.empty() ? "" : "; ", key, ": ", one.detail);
        }
        out.push_back(all);
      } else {
        const DType dtype = c.value("dtype", "float32") == "float64" ? DType::kF64 : DType::kF32;
        const Shape shape = to_shape(c.at("shape"));
        const std::string op = c.at("op").get<std::string>();
        const Tensor got = op.rfind("rand ", 0) == 0 ? g.rand(shape, dtype) : g.randn(shape, dtype);
        CaseResult r = compare_draw(prefix + name, got, ref.tensor(name));
        out.push_back(r);
      }
    } catch (const std::exception& e) {
      CaseResult r;
      r.kind = "rng";
      r.name = prefix + name;
      r.max_error = INFINITY;
      r.detail = e.what();
      out.push_back(r);
    }
  }
  return out;
}

}  // namespace

CaseResult run_scheduler_case(const std::string& dir, double tolerance) {
  try {
    return scheduler_case(dir, fs::path(dir).filename().string(), tolerance);
  } catch (const std::exception& e) {
    CaseResult r;
    r.kind = "scheduler";
    r.name = fs::path(dir).filename().string();
    r.tolerance = tolerance;
    r.max_error = INFINITY;
    r.detail = e.what();
    return r;
  }
}

std::vector<CaseResult> run_rng_cases(const std::string& dir) {
  try {
    return rng_cases(dir, "");
  } catch (const std::exception& e) {
    CaseResult r;
    r.kind = "rng";
    r.name = fs::path(dir).filename().string();
    r.max_error = INFINITY;
    r.detail = e.what();
    return {r};
  }
}

namespace {

// A kind recognised by `dir`/reference/<reference> and `dir`/<need> for each need.
CaseKind reference_kind(const std::string& kind, const std::string& reference,
                        const std::vector<std::string>& needs,
                        std::function<CaseResult(const std::string&, const std::string&)> run) {
  return {kind,
          [reference, needs](const std::string& dir) {
            const fs::path d(dir);
            if (!is_file(d / "reference" / reference)) return false;
            for (const std::string& n : needs)
              if (!fs::exists(d / n)) return false;
            return true;
          },
          [kind, run](const std::string& dir, const std::string& name) {
            return std::vector<CaseResult>{run(dir, name + "/" + kind)};
          }};
}

CaseKind model_kind(const std::string& kind, const std::string& folder) {
  return reference_kind(kind, kind + ".safetensors", {folder + "/config.json"},
                        [kind](const std::string& dir, const std::string& name) {
                          return run_model_io_case(kind, dir, name);
                        });
}

CaseKind pipeline_kind(const std::string& kind) {
  return reference_kind(kind, kind + ".safetensors", {"model_index.json"},
                        [kind](const std::string& dir, const std::string& name) {
                          return run_pipeline_case(kind, dir, name);
                        });
}

}  // namespace

const std::vector<CaseKind>& case_kinds() {
  static const std::vector<CaseKind> kKinds = {
      model_kind("unet_io", "unet"),
      model_kind("vae_io", "vae"),
      model_kind("text_encoder_io", "text_encoder"),
      model_kind("dit_io", "transformer"),
      reference_kind("tokenization", "tokenization.json", {"tokenizer/vocab.json"},
                     [](const std::string& dir, const std::string& name) {
                       const fs::path d(dir);
                       return run_tokenization_case((d / "tokenizer").string(),
                                                    (d / "reference" / "tokenization.json").string(),
                                                    name);
                     }),
      {"tokenizer",
       [](const std::string& dir) {
         const fs::path d(dir);
         return is_file(d / "vocab.json") && is_file(d / "merges.txt") &&
                is_file(d / "cases.json");
       },
       [](const std::string& dir, const std::string& name) {
         return std::vector<CaseResult>{run_tokenization_case(
             dir, (fs::path(dir) / "cases.json").string(), name + "/tokenization")};
       }},
      pipeline_kind("txt2img"),
      pipeline_kind("img2img"),
      pipeline_kind("inpaint_legacy"),
      pipeline_kind("inpaint"),
      pipeline_kind("dit_pipeline"),
      {"scheduler",
       [](const std::string& dir) {
         const fs::path d(dir);
         return is_file(d / "scheduler" / "scheduler_config.json") &&
                is_file(d / "reference" / "meta.json") &&
                is_file(d / "reference" / "trajectory.safetensors");
       },
       [](const std::string& dir, const std::string& name) {
         CaseResult r = run_scheduler_case(dir);
         r.name = name;
         return std::vector<CaseResult>{r};
       }},
      {"rng",
       [](const std::string& dir) {
         const fs::path d(dir);
         return is_file(d / "cases.json") && is_file(d / "torch_cpu_rng.safetensors");
       },
       [](const std::string& dir, const std::string& name) {
         std::vector<CaseResult> rs = run_rng_cases(dir);
         for (CaseResult& r : rs) r.name = name + "/" + r.name;
         return rs;
       }},
  };
  return kKinds;
}

namespace detail {

bool is_file(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

double rel_error(const std::vector<float>& a, const std::vector<float>& ref) {
  if (a.size() != ref.size()) return INFINITY;
  double max_ref = 1.0, max_diff = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_ref = std::max(max_ref, std::abs(static_cast<double>(ref[i])));
    const double d = std::abs(static_cast<double>(a[i]) - ref[i]);
    if (!(d <= max_diff)) max_diff = std::isnan(d) ? INFINITY : d;
  }
  return max_diff / max_ref;
}

json read_json(const std::string& path) {
  std::ifstream f(path);
  STIPPLE_CHECK(f, "cannot open ", path);
  try {
    return json::parse(f);
  } catch (const json::exception& e) {  // parse_error; out_of_range for "1e999"
    throw Error(str_cat(path, ": not valid JSON (", e.what(), ")"));
  }
}

Checker::Checker(std::string kind, std::string name, double tolerance) {
  r_.kind = std::move(kind);
  r_.name = std::move(name);
  r_.tolerance = tolerance;
}

double Checker::check(const std::string& what, const Tensor& got, const Tensor& ref) {
  return check(what, got, ref, r_.tolerance);
}

double Checker::check(const std::string& what, const Tensor& got, const Tensor& ref,
                      double tolerance) {
  double e = INFINITY;
  if (!got.defined()) {
    fail(what + " was not produced");
    return e;
  }
  if (got.numel() != ref.numel()) {
    fail(str_cat(what, " is ", got.describe(), ", reference ", ref.describe()));
    return e;
  }
  e = rel_error(got.contiguous().to_vector(), ref.contiguous().to_vector());
  r_.max_error = std::max(r_.max_error, e);
  if (!(e <= tolerance)) notes_ += str_cat(notes_.empty() ? "" : "; ", what, " off by ", e);
  return e;
}

void Checker::fail(const std::string& why) {
  r_.max_error = INFINITY;
  notes_ += str_cat(notes_.empty() ? "" : "; ", why);
}

CaseResult Checker::result() const {
  CaseResult r = r_;
  r.passed = notes_.empty();
  r.detail = notes_;
  return r;
}

CaseResult error_result(const std::string& kind, const std::string& name, double tolerance,
                        const std::string& what) {
  CaseResult r;
  r.kind = kind;
  r.name = name;
  r.tolerance = tolerance;
  r.max_error = INFINITY;
  r.detail = what;
  return r;
}

}  // namespace detail

std::vector<CaseRef> find_cases(const std::string& root) {
  STIPPLE_CHECK(fs::is_directory(root), "no such folder: ", root);
  std::vector<CaseRef> out;
  auto visit = [&](const fs::path& p) {
    for (const CaseKind& k : case_kinds()) {
      if (k.matches(p.string())) {
        std::string rel = fs::relative(p, root).generic_string();
        if (rel == ".") rel = p.filename().string();
        out.push_back({k.kind, p.string(), rel});
      }
    }
  };
  visit(fs::path(root));
  for (auto it =
           fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied);
       it != fs::recursive_directory_iterator(); ++it) {
    if (it->is_directory()) visit(it->path());
  }
  std::sort(out.begin(), out.end(),
            [](const CaseRef& a, const CaseRef& b) { return a.name < b.name; });
  return out;
}

std::vector<CaseResult> run_case(const CaseRef& c) {
  for (const CaseKind& k : case_kinds()) {
    if (k.kind == c.kind) return k.run(c.dir, c.name);
  }
  throw Error(str_cat("unknown conformance case kind ", c.kind));
}

}  // namespace stipple::conformance
