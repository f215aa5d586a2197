#include "info_command.h"

#include <cstdio>
#include <filesystem>
#include <map>

#include <stipple/stipple.h>

#include "core/error.h"
#include "io/png.h"
#include "pipelines/model_info.h"

namespace stipple::cli {

InfoCommand::InfoCommand(CLI::App& app) {
  cmd_ = app.add_subcommand(
      "info",
      "Print what a file holds: for a PNG, its size and generation parameters; for a model (a "
      "diffusers folder or a single-file .safetensors checkpoint), its family (SD 1.x / SD 2.x / "
      "inpainting / DiT) detected from tensor names and shapes, its components with parameter "
      "counts and dtypes, and config highlights.");
  cmd_->add_option("file", path_, "PNG file, model folder or .safetensors checkpoint")->required();
  cmd_->add_option("--prediction-type", prediction_type_,
                   "for single files, which do not store it: epsilon or v_prediction (SD 2.x "
                   "768-v checkpoints)")
      ->capture_default_str()
      ->check(CLI::IsMember({"epsilon", "v_prediction", "sample"}));
}

int InfoCommand::run() {
  STIPPLE_CHECK(std::filesystem::exists(path_), "no such file: ", path_);
  if (pipelines::is_model_path(path_)) {
    io::SingleFileOptions opt;
    opt.prediction_type = prediction_type_;
    std::fputs(pipelines::format_model_info(pipelines::inspect_model(path_, opt)).c_str(), stdout);
    // What `stipple generate` does with it: the registry's family, tasks and defaults.
    try {
      OpenOptions open;
      open.prediction_type = prediction_type_;
      const Engine engine = Engine::open(path_, open);
      const ModelDescription& d = engine.description();
      std::string tasks;
      for (Task t : d.tasks) tasks += str_cat(tasks.empty() ? "" : ", ", to_string(t));
      const std::string interval =
          str_cat(d.default_guidance_interval.limited()
                      ? str_cat(" at sigma in [", d.default_guidance_interval.low, ", ",
                                d.default_guidance_interval.high, "]")
                      : std::string(),
                  d.guide_model.empty() ? std::string()
                                        : str_cat(" (autoguidance by ", d.guide_model, ")"));
      std::printf("generates as: %s (%s): %s; defaults: %d steps, %s, CFG scale %g%s, %dx%d\n",
                  d.family.c_str(), d.pipeline.c_str(), tasks.c_str(), d.default_steps,
                  d.default_sampler.c_str(), d.default_cfg_scale, interval.c_str(),
                  d.default_width, d.default_height);
    } catch (const Error& e) {
      std::printf("generates as: nothing yet: %s\n", e.what());
    }
    return 0;
  }
  std::map<std::string, std::string> text;
  const io::Image img = io::read_png(path_, &text);
  std::printf("%s: PNG %dx%d, %d channel%s\n", path_.c_str(), img.width, img.height, img.channels,
              img.channels == 1 ? "" : "s");
  auto it = text.find("parameters");
  if (it == text.end()) {
    std::printf("no generation parameters in this file\n");
  } else {
    std::printf("%s\n", it->second.c_str());
  }
  for (const auto& [k, v] : text)
    if (k != "parameters") std::printf("%s: %s\n", k.c_str(), v.c_str());
  return 0;
}

}  // namespace stipple::cli
