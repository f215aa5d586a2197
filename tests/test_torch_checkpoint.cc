// PyTorch checkpoints read without running their pickles (io/torch_checkpoint.h), on files
// torch.save wrote (tests/data/torch, made by tools/refgen/make_torch_fixtures.py): every storage
// dtype, strided views, Parameters and Lightning metadata read back to torch's values; a pickle
// that calls os.system is refused by name; truncated and corrupted archives fail with an error;
// and an SDXL single file saved as .ckpt loads the same weights as its safetensors twin.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/error.h"
#include "io/single_file.h"
#include "io/torch_checkpoint.h"
#include "support/numerics.h"

namespace stipple::io {
namespace {

std::string data(const std::string& rel) {
  return std::string(STIPPLE_SOURCE_DIR) + "/tests/data/" + rel;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string error_of(const std::function<void()>& fn) { return testing::error_message(fn); }

TEST(TorchCheckpoint, ReadsWhatTorchSaved) {
  const SafetensorsFile f = open_torch_checkpoint(data("torch/basic.ckpt"));
  std::ifstream j(data("torch/basic.json"));
  const nlohmann::json want = nlohmann::json::parse(j);
  // Only the state dict's tensors: global_step, epoch and the callbacks are not weights.
  EXPECT_EQ(f.size(), want.size());
  for (const auto& [name, w] : want.items()) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(f.contains(name));
    const Tensor t = f.tensor(name);
    EXPECT_EQ(t.shape(), w.at("shape").get<Shape>());
    const std::string dtype = w.at("dtype");
    const bool floating = dtype.find("float") != std::string::npos;
    if (floating) {
      const std::vector<float> got = t.contiguous().to(DType::kF32).to_vector();
      const std::vector<float> ref = w.at("values").get<std::vector<float>>();
      ASSERT_EQ(got.size(), ref.size());
      for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], ref[i]) << i;
    } else {
      EXPECT_EQ(t.dtype(), DType::kI64);  // integers and bools widen to i64
      EXPECT_EQ(t.contiguous().to_vector_i64(), w.at("values").get<std::vector<int64_t>>());
    }
  }
  EXPECT_EQ(f.dtype("f16"), DType::kF16);  // 16-bit floats keep their storage type
  EXPECT_EQ(f.dtype("bf16"), DType::kBF16);
  EXPECT_EQ(f.dtype("f64"), DType::kF64);
}

TEST(TorchCheckpoint, NestedDictsJoinTheirKeys) {
  const SafetensorsFile f = open_torch_checkpoint(data("torch/nested.pt"));
  ASSERT_EQ(f.names(), (std::vector<std::string>{"string_to_param.*"}));
  EXPECT_EQ(f.shape("string_to_param.*"), (Shape{2, 8}));
}

TEST(TorchCheckpoint, RefusesAPickleThatRunsCode) {
  const std::string e = error_of([] { open_torch_checkpoint(data("torch/code.ckpt")); });
  EXPECT_NE(e.find("refuses the pickled global posix.system"), std::string::npos) << e;
  EXPECT_NE(e.find("never runs pickles"), std::string::npos) << e;
}

TEST(TorchCheckpoint, RefusesLegacyAndForeignFiles) {
  std::string e = error_of([] { torch_checkpoint_from_bytes("\x80\x02\x8a\x0a", "old.pt"); });
  EXPECT_NE(e.find("legacy format"), std::string::npos) << e;
  e = error_of([] { torch_checkpoint_from_bytes("hello", "x.ckpt"); });
  EXPECT_NE(e.find("not a PyTorch checkpoint"), std::string::npos) << e;
  e = error_of([] { torch_checkpoint_from_bytes("", "empty.ckpt"); });
  EXPECT_FALSE(e.empty());
}

TEST(TorchCheckpoint, TruncatedOrCorruptArchivesFailCleanly) {
  const std::string bytes = read_bytes(data("torch/basic.ckpt"));
  ASSERT_GT(bytes.size(), 1000u);
  // Every truncation fails with an error (the central directory is at the end).
  for (size_t n = 0; n < bytes.size(); n += 37) {
    const std::string e = error_of([&] { torch_checkpoint_from_bytes(bytes.substr(0, n), "cut"); });
    EXPECT_FALSE(e.empty()) << "a file cut to " << n << " bytes was read";
  }
  // Random byte changes: an error or a result, never a crash (ASan and UBSan watch this in CI).
  std::mt19937 rng(7);
  int errors = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string b = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] = static_cast<char>(rng());
    try {
      const SafetensorsFile f = torch_checkpoint_from_bytes(b, "flipped");
      for (const std::string& name : f.names()) (void)f.tensor(name).contiguous();
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 0);
}

TEST(TorchCheckpoint, APickleWhoseContainersHoldThemselvesDoesNotLeak) {
  // Found by fuzz_torch_checkpoint: a memo entry appended into its own dict made a reference
  // cycle that outlived the reader (LeakSanitizer in the ASan build watches this test).
  const std::string bytes = read_bytes(data("torch/memo_cycle.ckpt"));
  ASSERT_FALSE(bytes.empty());
  try {
    const SafetensorsFile f = torch_checkpoint_from_bytes(bytes, "memo_cycle.ckpt");
    for (const std::string& name : f.names()) (void)f.tensor(name);
  } catch (const Error&) {
  }
}

TEST(TorchCheckpoint, SdxlCheckpointLoadsLikeItsSafetensors) {
  SingleFileOptions opt;
  opt.config_dir = data("sdxl_tiny");
  const SingleFileModels from_ckpt = load_single_file(data("torch/sdxl_tiny.ckpt"), opt);
  const SingleFileModels from_st =
      load_single_file(data("sdxl_tiny_single_file.safetensors"), opt);
  EXPECT_EQ(from_ckpt.info.family, "SDXL");
  auto same = [](const nn::Module& a, const nn::Module& b) {
    const auto sa = a.state_dict(), sb = b.state_dict();
    ASSERT_EQ(sa.size(), sb.size());
    for (const auto& [name, t] : sa)
      EXPECT_TRUE(testing::tensors_close(t.contiguous(), sb.at(name).contiguous(), 0.0)) << name;
  };
  same(*from_ckpt.unet, *from_st.unet);
  same(*from_ckpt.vae, *from_st.vae);
  same(*from_ckpt.text_encoder, *from_st.text_encoder);
  same(*from_ckpt.text_encoder_2, *from_st.text_encoder_2);
  // open_weights_file picks the reader by the first bytes, whatever the extension.
  EXPECT_EQ(open_weights_file(data("torch/sdxl_tiny.ckpt")).size(),
            open_weights_file(data("sdxl_tiny_single_file.safetensors")).size());
}

}  // namespace
}  // namespace stipple::io
