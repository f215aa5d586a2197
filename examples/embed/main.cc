// Generates an image inside a C++ program through stipple's public API, with a progress line and
// Ctrl-C to cancel.
//
//   embed MODEL OUT.png [PROMPT or CLASS LABEL]
//
// A class-to-image model (models/fashion-mnist-dit) takes a class label ("sneaker"), a
// text-to-image model a prompt ("red apple").
#include <csignal>
#include <cstdio>

#include <stipple/stipple.h>

namespace {
stipple::CancelToken cancel;
void on_signal(int) { cancel.cancel(); }
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL OUT.png [PROMPT or CLASS LABEL]\n", argv[0]);
    return 2;
  }
  std::signal(SIGINT, on_signal);
  try {
    const stipple::Engine engine = stipple::Engine::open(argv[1]);
    const stipple::ModelDescription& model = engine.description();
    std::printf("%s: %s, %dx%d, %d steps of %s by default\n", model.name.c_str(),
                model.family.c_str(), model.default_width, model.default_height,
                model.default_steps, model.default_sampler.c_str());

    stipple::GenerateRequest request;
    const std::string what = argc > 3 ? argv[3] : "";
    if (model.tasks[0] == stipple::Task::kClassToImage)
      request.class_labels = {what.empty() ? "0" : what};
    else
      request.prompt = what;
    request.seed = 1;

    const stipple::GenerateResult result = engine.generate(
        request,
        [](const stipple::Progress& p) {
          std::fprintf(stderr, "\rstep %d of %d (%.1f s)", p.step, p.total, p.elapsed_seconds);
        },
        &cancel);
    std::fprintf(stderr, "\n");
    const stipple::GeneratedImage& image = result.images[0];
    stipple::save_png(argv[2], image.image, image.parameters);
    std::printf("wrote %s (%dx%d, seed %llu)\n%s\n", argv[2], image.image.width,
                image.image.height, static_cast<unsigned long long>(image.seed),
                image.parameters.c_str());
    return 0;
  } catch (const stipple::Error& e) {
    std::fprintf(stderr, "error (%s): %s\n", stipple::to_string(e.kind()), e.what());
    return 1;
  }
}
