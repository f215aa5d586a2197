// `stipple bench checkpoint` and `stipple bench generate`: a whole Stable Diffusion generation's
// time and peak memory, as users run it. `checkpoint` writes a diffusers folder with SD 1.5's or
// SDXL's real shapes and seeded random weights (f16 or f32), so the measurement needs no
// download; `generate` opens a model through the engine and draws one image, reporting the open
// time, seconds per step, the VAE decode and the process's peak resident memory (getrusage),
// which covers loading, every stage and the decode.
#pragma once

#include <cstdint>
#include <string>

namespace stipple::cli {

double now_s();        // a steady clock, in seconds
double peak_rss_mb();  // the process's peak resident memory so far (getrusage), MiB
double current_rss_mb();  // its resident memory now (/proc/self/statm), MiB

struct BenchCheckpointOptions {
  std::string family = "sd15";  // or "sdxl"
  std::string out;
  std::string tokenizer;  // a CLIP tokenizer folder (vocab.json, merges.txt) copied in
  std::string dtype = "f16";
  uint64_t seed = 0;
};
int bench_checkpoint(const BenchCheckpointOptions& options);

struct BenchGenerateOptions {
  std::string model;
  std::string weight_precision = "stored";
  bool low_memory = false;
  std::string device = "cpu";
  int steps = 4;
  int width = 0, height = 0;  // 0: the model's default
  std::string sampler;        // "": the model's default
  bool verbose = false;       // resident and tensor memory after each step
};
int bench_generate(const BenchGenerateOptions& options);

}  // namespace stipple::cli
