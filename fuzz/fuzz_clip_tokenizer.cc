// Fuzzes the CLIP tokenizer: the input is prompt text (any bytes, not necessarily UTF-8) for
// encode(), encode_padded() and bpe_tokens(). The vocabulary is loaded once, from
// $STIPPLE_FUZZ_TOKENIZER, else ../shared/clip-tokenizer (the full CLIP vocabulary), else the
// conformance sd_tiny tokenizer. Ids must lie in the vocabulary; the padded form must be 77 long.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "fuzz_util.h"
#include "text/clip_tokenizer.h"

namespace {

std::unique_ptr<stipple::text::ClipTokenizer> tokenizer;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::string dir;
  if (const char* env = std::getenv("STIPPLE_FUZZ_TOKENIZER")) {
    dir = env;
  } else {
    for (const char* d : {STIPPLE_SHARED_DIR "/clip-tokenizer",
                          STIPPLE_SHARED_DIR "/conformance/sd_tiny/tokenizer"}) {
      if (std::filesystem::exists(std::string(d) + "/vocab.json")) {
        dir = d;
        break;
      }
    }
  }
  if (dir.empty()) {
    std::fprintf(stderr, "fuzz_clip_tokenizer: no tokenizer folder; set STIPPLE_FUZZ_TOKENIZER\n");
    std::exit(1);
  }
  tokenizer = std::make_unique<stipple::text::ClipTokenizer>(
      stipple::text::ClipTokenizer::from_folder(dir));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const int64_t vocab = tokenizer->vocab_size();
  stipple::fuzz::run_catching_errors([&] {
    const auto ids = tokenizer->encode(text);
    STIPPLE_FUZZ_EXPECT(ids.size() >= 2);
    for (int64_t id : ids) STIPPLE_FUZZ_EXPECT(id >= 0 && id < vocab);
    const auto padded = tokenizer->encode_padded(text, 77);
    STIPPLE_FUZZ_EXPECT(padded.size() == 77);
    tokenizer->bpe_tokens(text);
  });
  return 0;
}
