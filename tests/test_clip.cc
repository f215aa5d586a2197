// CLIP tokenizer and text encoder against transformers' reference outputs in ../shared:
//   clip-tokenizer/cases.json              the real CLIP vocabulary: bpe_tokens, input_ids and
//                                          input_ids_padded_77 of every case, exact
//   conformance/sd_tiny/reference/         tokenization.json (the tiny vocabulary, exact) and
//                                          text_encoder_io.safetensors (CLIPTextModel outputs,
//                                          max|ours-ref| <= 1e-4 * max(1, max|ref|))
// plus padding/truncation rules, the SD 2.x "!" padding override, and errors that name the
// problem (missing vocab, bad merges line, missing tensor). Tests skip when ../shared is absent.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "support/numerics.h"
#include "text/clip_tokenizer.h"

namespace stipple {
namespace {

namespace fs = std::filesystem;
using text::ClipTokenizer;

std::string ids_str(const std::vector<int64_t>& ids) {
  std::ostringstream os;
  for (size_t i = 0; i < ids.size(); ++i) os << (i ? " " : "") << ids[i];
  return os.str();
}

std::string tokens_str(const std::vector<std::string>& toks) {
  std::ostringstream os;
  for (size_t i = 0; i < toks.size(); ++i) os << (i ? " | " : "") << toks[i];
  return os.str();
}

// A fresh temporary folder holding copies of `files` from `src`.
fs::path copy_folder(const std::string& src, const std::vector<std::string>& files,
                     const std::string& name) {
  const fs::path dst =
      fs::temp_directory_path() / ("stipple_test_clip_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dst);
  fs::create_directories(dst);
  for (const std::string& f : files) fs::copy_file(fs::path(src) / f, dst / f);
  return dst;
}

void write_file(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs every case of a reference file; returns how many matched all three targets exactly.
int check_cases(const ClipTokenizer& tok, const nlohmann::json& cases, size_t* total) {
  int passed = 0;
  *total = cases.size();
  for (const auto& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    const std::string id = c.contains("id") ? c.at("id").get<std::string>() : text.substr(0, 30);
    const auto want_bpe = c.at("bpe_tokens").get<std::vector<std::string>>();
    const auto want_ids = c.at("input_ids").get<std::vector<int64_t>>();
    const auto want_pad = c.at("input_ids_padded_77").get<std::vector<int64_t>>();
    const auto got_bpe = tok.bpe_tokens(text);
    const auto got_ids = tok.encode(text);
    const auto got_pad = tok.encode_padded(text, 77);
    EXPECT_EQ(got_bpe, want_bpe) << id << " text=" << nlohmann::json(text).dump()
                                 << "\n got:  " << tokens_str(got_bpe)
                                 << "\n want: " << tokens_str(want_bpe);
    EXPECT_EQ(got_ids, want_ids) << id << "\n got:  " << ids_str(got_ids)
                                 << "\n want: " << ids_str(want_ids);
    EXPECT_EQ(got_pad, want_pad) << id << "\n got:  " << ids_str(got_pad)
                                 << "\n want: " << ids_str(want_pad);
    if (got_bpe == want_bpe && got_ids == want_ids && got_pad == want_pad) ++passed;
  }
  return passed;
}

// ---------------- tokenizer: the real CLIP vocabulary ----------------

TEST(ClipTokenizer, RealVocabularyCasesExact) {
  const std::string dir = testing::shared_path("clip-tokenizer");
  if (dir.empty()) GTEST_SKIP() << "../shared/clip-tokenizer is absent";
  const ClipTokenizer tok = ClipTokenizer::from_folder(dir);
  EXPECT_EQ(tok.vocab_size(), 49408);
  EXPECT_EQ(tok.num_merges(), 48894u);
  EXPECT_EQ(tok.bos_token_id(), 49406);
  EXPECT_EQ(tok.eos_token_id(), 49407);
  EXPECT_EQ(tok.pad_token_id(), 49407);
  EXPECT_EQ(tok.unk_token_id(), 49407);
  EXPECT_EQ(tok.model_max_length(), 77);
  EXPECT_TRUE(tok.do_lower_case());

  const nlohmann::json doc = io::read_json_file(dir + "/cases.json");
  EXPECT_EQ(doc.at("bos_token_id").get<int64_t>(), tok.bos_token_id());
  EXPECT_EQ(doc.at("pad_token_id").get<int64_t>(), tok.pad_token_id());
  size_t total = 0;
  const int passed = check_cases(tok, doc.at("cases"), &total);
  EXPECT_EQ(total, doc.at("n_cases").get<size_t>());
  EXPECT_EQ(static_cast<size_t>(passed), total) << passed << " of " << total << " cases exact";
  std::printf("[clip-tokenizer] %d of %zu cases exact\n", passed, total);
}

TEST(ClipTokenizer, TinyVocabularyCasesExact) {
  const std::string dir = testing::shared_path("conformance/sd_tiny/tokenizer");
  if (dir.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  const ClipTokenizer tok = ClipTokenizer::from_folder(dir);
  const nlohmann::json doc =
      io::read_json_file(testing::shared_path("conformance/sd_tiny/reference/tokenization.json"));
  EXPECT_EQ(tok.bos_token_id(), doc.at("bos_token_id").get<int64_t>());
  EXPECT_EQ(tok.eos_token_id(), doc.at("eos_token_id").get<int64_t>());
  EXPECT_EQ(tok.pad_token_id(), doc.at("pad_token_id").get<int64_t>());
  size_t total = 0;
  const int passed = check_cases(tok, doc.at("cases"), &total);
  EXPECT_EQ(static_cast<size_t>(passed), total) << passed << " of " << total << " cases exact";
  std::printf("[sd_tiny tokenizer] %d of %zu cases exact\n", passed, total);
}

TEST(ClipTokenizer, PreTokenizerRules) {
  const std::string dir = testing::shared_path("clip-tokenizer");
  if (dir.empty()) GTEST_SKIP() << "../shared/clip-tokenizer is absent";
  const ClipTokenizer tok = ClipTokenizer::from_folder(dir);
  using V = std::vector<std::string>;
  // Single digits, contractions, punctuation runs, lower-casing.
  EXPECT_EQ(tok.pre_tokenize("In 2023 it's OK!!"),
            (V{"in", "2", "0", "2", "3", "it", "'s", "ok", "!!"}));
  // Controls deleted without a space; CJK ideographs spaced; NFC; long s matches 's.
  EXPECT_EQ(tok.pre_tokenize("a\x0b"
                             "b zero\u200bwidth"),
            (V{"ab", "zerowidth"}));
  EXPECT_EQ(tok.pre_tokenize("\u4e2d\u6587"), (V{"\u4e2d", "\u6587"}));
  EXPECT_EQ(tok.pre_tokenize("e\u0301"), (V{"\u00e9"}));
  EXPECT_EQ(tok.pre_tokenize("it'\u017f"), (V{"it", "'\u017f"}));
  // Python's str.lower(): dotted capital I and final sigma.
  EXPECT_EQ(tok.pre_tokenize("\u0130"), (V{"i", "\u0307"}));
  EXPECT_EQ(tok.pre_tokenize("\u039f\u0394\u039f\u03a3"), (V{"\u03bf\u03b4\u03bf\u03c2"}));
  EXPECT_EQ(tok.pre_tokenize("\u03a3\u03b1"), (V{"\u03c3\u03b1"}));
}

TEST(ClipTokenizer, PaddingAndTruncation) {
  const std::string dir = testing::shared_path("clip-tokenizer");
  if (dir.empty()) GTEST_SKIP() << "../shared/clip-tokenizer is absent";
  const ClipTokenizer tok = ClipTokenizer::from_folder(dir);
  // Empty text: bos, eos, then padding.
  EXPECT_EQ(tok.encode(""), (std::vector<int64_t>{49406, 49407}));
  const auto empty = tok.encode_padded("", 77);
  ASSERT_EQ(empty.size(), 77u);
  EXPECT_EQ(empty[0], 49406);
  for (size_t i = 1; i < 77; ++i) EXPECT_EQ(empty[i], 49407);
  // 100 words: keep bos + the first 75 content ids, then eos.
  std::string long_text;
  for (int i = 0; i < 100; ++i) long_text += "cat ";
  const auto full = tok.encode(long_text);
  ASSERT_EQ(full.size(), 102u);
  const auto cut = tok.encode_padded(long_text, 77);
  ASSERT_EQ(cut.size(), 77u);
  EXPECT_TRUE(std::equal(cut.begin(), cut.begin() + 76, full.begin()));
  EXPECT_EQ(cut[76], 49407);
  // Exactly 75 content tokens fit without truncation; a shorter max_length truncates the same way.
  const auto short_cut = tok.encode_padded(long_text, 5);
  EXPECT_EQ(short_cut, (std::vector<int64_t>{full[0], full[1], full[2], full[3], 49407}));
  // An explicit padding id.
  const auto zero_pad = tok.encode_padded("a cat", 8, 0);
  EXPECT_EQ(zero_pad, (std::vector<int64_t>{49406, tok.encode("a cat")[1], tok.encode("a cat")[2],
                                            49407, 0, 0, 0, 0}));
  EXPECT_THROW(tok.encode_padded("a", 1), Error);
  // Batches: i64 [B, 77].
  const Tensor batch = tok.encode_batch({"a red circle", ""});
  EXPECT_EQ(batch.shape(), (Shape{2, 77}));
  EXPECT_EQ(batch.dtype(), DType::kI64);
  const auto flat = batch.to_vector_i64();
  EXPECT_TRUE(
      std::equal(flat.begin(), flat.begin() + 77, tok.encode_padded("a red circle").begin()));
  // Literal special tokens become their ids; invalid UTF-8 is refused with a message.
  EXPECT_EQ(tok.encode("<|endoftext|>"), (std::vector<int64_t>{49406, 49407, 49407}));
  EXPECT_THROW(tok.encode("bad \xff byte"), Error);
}

// SD 2.x / SDXL tokenizer_2: special_tokens_map.json says pad_token "!", which overrides the
// config when there is no added_tokens_decoder: padding id 0, EOS still 49407.
TEST(ClipTokenizer, SpecialTokensMapOverridesPadToken) {
  const std::string dir = testing::shared_path("clip-tokenizer");
  if (dir.empty()) GTEST_SKIP() << "../shared/clip-tokenizer is absent";
  const fs::path tmp =
      copy_folder(dir, {"vocab.json", "merges.txt", "tokenizer_config.json"}, "pad_bang");
  write_file(tmp / "special_tokens_map.json",
             R"({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                 "unk_token": "<|endoftext|>", "pad_token": "!"})");
  const ClipTokenizer tok = ClipTokenizer::from_folder(tmp.string());
  EXPECT_EQ(tok.pad_token(), "!");
  EXPECT_EQ(tok.pad_token_id(), 0);
  EXPECT_EQ(tok.eos_token_id(), 49407);
  const ClipTokenizer sd1 = ClipTokenizer::from_folder(dir);
  auto want = sd1.encode_padded("a red circle");
  const size_t n = sd1.encode("a red circle").size();
  for (size_t i = n; i < want.size(); ++i) want[i] = 0;
  EXPECT_EQ(tok.encode_padded("a red circle"), want);
  // "!" is then an added token, cut out before BPE like <|endoftext|>: every "!" becomes id 0
  // (transformers' slow CLIPTokenizer on SDXL's tokenizer_2, diffusers issue #4153).
  std::vector<int64_t> bangs(77, 0);
  bangs[0] = 49406;
  bangs[7] = 49407;
  EXPECT_EQ(tok.encode_padded("! !! !!!"), bangs);
  EXPECT_EQ(sd1.encode("! !! !!!"), (std::vector<int64_t>{49406, 256, 748, 995, 49407}));
  fs::remove_all(tmp);
}

TEST(ClipTokenizer, ErrorsNameTheProblem) {
  const std::string dir = testing::shared_path("conformance/sd_tiny/tokenizer");
  if (dir.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  auto expect_error = [](const std::string& folder, const std::string& needle) {
    try {
      ClipTokenizer::from_folder(folder);
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("/nonexistent/tokenizer", "tokenizer folder not found");
  // Missing vocab.json / merges.txt.
  fs::path tmp = copy_folder(dir, {"merges.txt", "tokenizer_config.json"}, "no_vocab");
  expect_error(tmp.string(), "missing vocab.json");
  fs::remove_all(tmp);
  tmp = copy_folder(dir, {"vocab.json"}, "no_merges");
  expect_error(tmp.string(), "missing merges.txt");
  fs::remove_all(tmp);
  // Corrupt vocab.json: not JSON, and not a map of ids.
  tmp = copy_folder(dir, {"merges.txt"}, "bad_vocab");
  write_file(tmp / "vocab.json", "{\"a\": 1, ");
  expect_error(tmp.string(), "vocab.json");
  write_file(tmp / "vocab.json", "{\"a\": \"one\"}");
  expect_error(tmp.string(), "must be an integer");
  fs::remove_all(tmp);
  // A merges line with three fields names its line number.
  tmp = copy_folder(dir, {"vocab.json"}, "bad_merges");
  write_file(tmp / "merges.txt", "#version: 0.2\nt h\ni n x\n");
  expect_error(tmp.string(), "bad merges line 3");
  write_file(tmp / "merges.txt", "");
  expect_error(tmp.string(), "merges.txt: the file is empty");
  fs::remove_all(tmp);
}

// ---------------- text encoder ----------------

std::string sd_tiny(const std::string& rel) {
  return testing::shared_path("conformance/sd_tiny/" + rel);
}

// max|ours-ref| <= 1e-4 * max(1, max|ref|): the README's tolerance for single-model forwards.
::testing::AssertionResult close_to_ref(const std::string& name, const Tensor& ours,
                                        const Tensor& ref, double* worst_rel) {
  if (ours.shape() != ref.shape()) {
    return ::testing::AssertionFailure() << name << ": shape " << shape_str(ours.shape())
                                         << " vs reference " << shape_str(ref.shape());
  }
  const auto a = ours.to_vector();
  const auto b = ref.to_vector();
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(static_cast<double>(a[i]) - b[i]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(b[i])));
  }
  const double rel = max_diff / std::max(1.0, max_ref);
  *worst_rel = std::max(*worst_rel, rel);
  std::printf("[clip text encoder] %-28s max|diff| = %.3g, relative %.3g\n", name.c_str(), max_diff,
              rel);
  if (rel <= 1e-4) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << name << ": max|ours-ref| = " << max_diff << ", relative " << rel << " > 1e-4";
}

void check_text_encoder_outputs(const models::CLIPTextModel& model, const io::SafetensorsFile& ref,
                                const std::string& suffix, double* worst_rel) {
  const Tensor ids = ref.tensor("input_ids" + suffix);
  const models::CLIPTextOutput out = model.forward(ids);
  EXPECT_TRUE(close_to_ref("last_hidden_state" + suffix, out.last_hidden_state,
                           ref.tensor("last_hidden_state" + suffix), worst_rel));
  EXPECT_TRUE(close_to_ref("pooler_output" + suffix, out.pooler_output,
                           ref.tensor("pooler_output" + suffix), worst_rel));
  const int64_t layers = model.config().num_hidden_layers;
  ASSERT_EQ(static_cast<int64_t>(out.hidden_states.size()), layers + 1);
  // hidden_states.0..L are stored for the padded batch only.
  for (int64_t i = 0; i <= layers; ++i) {
    const std::string key = "hidden_states." + std::to_string(i) + suffix;
    if (!suffix.empty() && !ref.contains(key)) continue;
    ASSERT_TRUE(ref.contains(key)) << "reference lacks " << key;
    EXPECT_TRUE(
        close_to_ref(key, out.hidden_states[static_cast<size_t>(i)], ref.tensor(key), worst_rel));
  }
}

TEST(CLIPTextModel, MatchesTransformersReference) {
  const std::string folder = sd_tiny("text_encoder");
  if (folder.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  auto model = models::CLIPTextModel::from_pretrained(folder);
  const auto& cfg = model->config();
  EXPECT_EQ(cfg.hidden_size, 32);
  EXPECT_EQ(cfg.num_hidden_layers, 2);
  EXPECT_EQ(cfg.hidden_act, "quick_gelu");
  EXPECT_EQ(cfg.eos_token_id, 999);
  const io::SafetensorsFile ref =
      io::SafetensorsFile::open(sd_tiny("reference/text_encoder_io.safetensors"));
  double worst = 0.0;
  check_text_encoder_outputs(*model, ref, "", &worst);
  if (ref.contains("input_ids_short")) check_text_encoder_outputs(*model, ref, "_short", &worst);
  std::printf("[clip text encoder] worst relative error %.3g (tolerance 1e-4)\n", worst);
}

// The pipeline records: the tokenizer and encoder together reproduce what diffusers fed the UNet.
TEST(CLIPTextModel, PipelinePromptEmbeddings) {
  const std::string path = sd_tiny("reference/txt2img.safetensors");
  if (path.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  const io::SafetensorsFile ref = io::SafetensorsFile::open(path);
  if (!ref.contains("text_encoder.0.input_ids")) GTEST_SKIP() << "no text encoder record";
  const ClipTokenizer tok = ClipTokenizer::from_folder(sd_tiny("tokenizer"));
  auto model = models::CLIPTextModel::from_pretrained(sd_tiny("text_encoder"));
  const std::vector<std::string> prompts = {"a red circle", ""};
  for (int k = 0; k < 2; ++k) {
    const std::string pre = "text_encoder." + std::to_string(k) + ".";
    const Tensor ids = tok.encode_batch({prompts[static_cast<size_t>(k)]});
    EXPECT_EQ(ids.to_vector_i64(), ref.tensor(pre + "input_ids").to_vector_i64()) << pre;
    double worst = 0.0;
    EXPECT_TRUE(close_to_ref(pre + "last_hidden_state", model->forward(ids).last_hidden_state,
                             ref.tensor(pre + "last_hidden_state"), &worst));
  }
}

TEST(CLIPTextModel, ClipSkipUsesEarlierLayerThenFinalNorm) {
  const std::string folder = sd_tiny("text_encoder");
  if (folder.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  auto model = models::CLIPTextModel::from_pretrained(folder);
  const io::SafetensorsFile ref =
      io::SafetensorsFile::open(sd_tiny("reference/text_encoder_io.safetensors"));
  const Tensor ids = ref.tensor("input_ids");
  const auto& ln = model->final_layer_norm();
  // clip_skip 1: the last layer's output, normalised (what last_hidden_state is).
  double worst = 0.0;
  EXPECT_TRUE(close_to_ref("clip_skip=1", model->forward(ids, 1).last_hidden_state,
                           ref.tensor("last_hidden_state"), &worst));
  // clip_skip 2: hidden_states[-2] (after layer L-1), then final_layer_norm.
  const Tensor want = ln.forward(ref.tensor("hidden_states.1"));
  EXPECT_TRUE(close_to_ref("clip_skip=2", model->forward(ids, 2).last_hidden_state, want, &worst));
  EXPECT_THROW(model->forward(ids, 3), Error);
  EXPECT_THROW(model->forward(ids, 0), Error);
}

TEST(CLIPTextModel, PooledOutputRules) {
  const std::string folder = sd_tiny("text_encoder");
  if (folder.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  auto model = models::CLIPTextModel::from_pretrained(folder);
  // eos 999: the first position equal to eos, even when a larger id comes later.
  const std::vector<int64_t> ids = {998, 5, 999, 7, 999, 999};
  const Tensor t = Tensor::from_vector_i64(ids, {1, 6});
  const auto out = model->forward(t);
  EXPECT_EQ(models::CLIPTextModel::eos_positions(t, 999), (std::vector<int64_t>{2}));
  // The legacy rule (eos_token_id == 2): argmax of the ids, the first maximum.
  EXPECT_EQ(models::CLIPTextModel::eos_positions(Tensor::from_vector_i64({1, 9, 3, 9}, {1, 4}), 2),
            (std::vector<int64_t>{1}));
  const auto h = out.last_hidden_state.to_vector();
  const auto p = out.pooler_output.to_vector();
  const int64_t d = model->config().hidden_size;
  for (int64_t j = 0; j < d; ++j)
    EXPECT_EQ(p[static_cast<size_t>(j)], h[static_cast<size_t>(2 * d + j)]);
}

TEST(CLIPTextModel, LoadingChecks) {
  const std::string folder = sd_tiny("text_encoder");
  if (folder.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  // The inpaint checkpoint stores the position_ids buffer: accepted.
  const std::string inpaint = testing::shared_path("conformance/sd_tiny_inpaint/text_encoder");
  if (!inpaint.empty()) {
    EXPECT_NO_THROW(models::CLIPTextModel::from_pretrained(inpaint));
  }
  // A missing tensor is named.
  const fs::path tmp = copy_folder(folder, {"config.json"}, "missing_tensor");
  auto tensors = io::load_safetensors(folder + "/model.safetensors");
  tensors.erase("text_model.encoder.layers.1.mlp.fc2.weight");
  io::save_safetensors((tmp / "model.safetensors").string(), tensors);
  try {
    models::CLIPTextModel::from_pretrained(tmp.string());
    ADD_FAILURE() << "expected a missing-tensor error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("text_model.encoder.layers.1.mlp.fc2.weight"),
              std::string::npos)
        << e.what();
  }
  // A missing config and a bad hidden_act are named.
  fs::remove(tmp / "config.json");
  EXPECT_THROW(models::CLIPTextModel::from_pretrained(tmp.string()), Error);
  std::string cfg = read_file(fs::path(folder) / "config.json");
  cfg.replace(cfg.find("quick_gelu"), 10, "swish_gelu");
  write_file(tmp / "config.json", cfg);
  try {
    models::CLIPTextModel::from_pretrained(tmp.string());
    ADD_FAILURE() << "expected a hidden_act error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_act"), std::string::npos) << e.what();
  }
  fs::remove_all(tmp);
  // Ids out of range are refused.
  auto model = models::CLIPTextModel::from_pretrained(folder);
  EXPECT_THROW(model->forward(Tensor::from_vector_i64({1, 5000}, {1, 2})), Error);
  EXPECT_THROW(model->forward(Tensor::zeros({1, 78}, DType::kI64)), Error);
}

}  // namespace
}  // namespace stipple
