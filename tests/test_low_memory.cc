// Loading in less memory: layer weights held in their stored precision (nn::LoadScope), zero
// parameters that never become resident, checkpoint pages handed back once copied, and the
// low-memory Stable Diffusion pipeline that holds each component only during its stage. Each is
// held to the plain path: stored-precision loading computes exactly what widening at load does,
// and the low-memory pipeline (with and without LoRAs) draws the same pixels as the resident one.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <stipple/stipple.h>

#include "autograd/grad_mode.h"
#include "core/block_cache.h"
#include "core/error.h"
#include "core/memory_plan.h"
#include "core/rng.h"
#include "core/storage.h"
#include "io/safetensors.h"
#include "models/unet2d_condition.h"
#include "nn/layers.h"
#include "nn/module.h"
#include "nn/transformer_block.h"
#include "ops/ops.h"
#include "pipelines/stable_diffusion.h"
#include "support/numerics.h"

namespace stipple {
namespace {

namespace fs = std::filesystem;

std::string sd_tiny() { return testing::shared_path("conformance/sd_tiny"); }

// A fresh folder under the build's temporary directory.
fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("stipple_low_memory_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// sd_tiny's UNet with every floating tensor stored as `dtype` (a half-precision checkpoint).
fs::path half_unet(DType dtype, const std::string& name) {
  const fs::path src = fs::path(sd_tiny()) / "unet";
  const fs::path d = temp_dir(name);
  fs::copy_file(src / "config.json", d / "config.json");
  std::map<std::string, Tensor> half;
  for (const auto& [key, t] : io::load_safetensors((src / "diffusion_pytorch_model.safetensors").string()))
    half[key] = t.to(dtype).contiguous();
  io::save_safetensors((d / "diffusion_pytorch_model.safetensors").string(), half);
  return d;
}

Tensor unet_out(const models::UNet2DConditionModel& unet) {
  autograd::NoGradGuard no_grad;
  const auto& c = unet.config();
  Generator gen(3);
  const Tensor x = gen.randn({1, c.in_channels, 8, 8});
  const Tensor ctx = gen.randn({1, 5, c.cross_attention_dim.at(0)});
  return unet.forward(x, Tensor::from_vector({500.0f}, {1}), ctx).contiguous();
}

TEST(LoadScope, StoredPrecisionKeepsHalfWeightsAndComputesTheSame) {
  if (sd_tiny().empty()) GTEST_SKIP() << "../shared/conformance is absent";
  for (const DType dtype : {DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const fs::path dir = half_unet(dtype, dtype == DType::kF16 ? "f16" : "bf16");
    const auto widened = models::UNet2DConditionModel::from_pretrained(dir.string());
    std::shared_ptr<models::UNet2DConditionModel> stored;
    {
      nn::LoadScope scope(nn::WeightPrecision::kStored);
      stored = models::UNet2DConditionModel::from_pretrained(dir.string());
    }
    // Layer weights (Linear, Conv2d) keep the file's precision; biases and norms are f32.
    const auto sd = stored->state_dict();
    EXPECT_EQ(sd.at("conv_in.weight").dtype(), dtype);
    EXPECT_EQ(sd.at("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight").dtype(),
              dtype);
    EXPECT_EQ(sd.at("conv_in.bias").dtype(), DType::kF32);
    EXPECT_EQ(sd.at("conv_norm_out.weight").dtype(), DType::kF32);
    EXPECT_EQ(widened->state_dict().at("conv_in.weight").dtype(), DType::kF32);
    // Widening per layer gives the values widening at load gives: the same outputs.
    EXPECT_TENSORS_CLOSE(unet_out(*stored), unet_out(*widened), 1e-6, 1e-6);
    fs::remove_all(dir);
  }
}

TEST(LoadScope, F16NarrowsAnF32CheckpointWithinHalfPrecision) {
  if (sd_tiny().empty()) GTEST_SKIP() << "../shared/conformance is absent";
  const std::string dir = sd_tiny() + "/unet";
  const auto f32 = models::UNet2DConditionModel::from_pretrained(dir);
  std::shared_ptr<models::UNet2DConditionModel> f16;
  {
    nn::LoadScope scope(nn::WeightPrecision::kF16);
    f16 = models::UNet2DConditionModel::from_pretrained(dir);
  }
  EXPECT_EQ(f16->state_dict().at("conv_in.weight").dtype(), DType::kF16);
  const Tensor a = unet_out(*f16), b = unet_out(*f32);
  EXPECT_TRUE(testing::close_relative(a, b, 1e-2));
  EXPECT_THROW(nn::parse_weight_precision("f8"), Error);
}

TEST(LoadScope, HalfEmbeddingTableGathersTheSameRows) {
  Generator gen(5);
  nn::Embedding emb(50, 16, gen);
  const Tensor ids = Tensor::from_vector_i64({3, 0, 49, 3}, {2, 2});
  autograd::NoGradGuard no_grad;
  const Tensor half = emb.weight().to(DType::kF16).contiguous();
  const Tensor want = ops::embedding(half.to(DType::kF32), ids);
  const Tensor got = ops::embedding(half, ids);
  EXPECT_EQ(got.shape(), (Shape{2, 2, 16}));
  EXPECT_TENSORS_CLOSE(got, want, 0.0, 0.0);
  EXPECT_THROW(ops::embedding(half, Tensor::from_vector_i64({50}, {1})), Error);
}

// Normal random weights (times `weight_scale`, biases times `bias_scale`) loaded into `ff`, kept
// as f16 when `half`, else f32.
void load_random(nn::FeedForward& ff, Generator& gen, float weight_scale, float bias_scale,
                 bool half) {
  std::map<std::string, Tensor> random;
  for (const auto& [name, p] : ff.state_dict()) {
    const bool bias = name.find("bias") != std::string::npos;
    random[name] = gen.randn(p.shape()) * (bias ? bias_scale : weight_scale);
  }
  nn::LoadScope scope(half ? nn::WeightPrecision::kF16 : nn::WeightPrecision::kF32);
  ff.load_state_dict(random);
}

TEST(FeedForward, ChunkedRowsGiveTheSameOutput) {
  // f32 weights, and half-precision ones (widened once for all the chunks).
  for (const bool half : {false, true}) {
    SCOPED_TRACE(half ? "f16 weights" : "f32 weights");
    Generator gen(8);
    nn::FeedForward ff(24);  // GEGLU, inner 96
    load_random(ff, gen, 0.2f, 0.2f, half);
    ASSERT_EQ(ff.out_proj()->weight().dtype(), half ? DType::kF16 : DType::kF32);
    const Tensor x = gen.randn({2, 37, 24});
    autograd::NoGradGuard no_grad;
    const Tensor whole = ff.forward(x).contiguous();
    nn::set_feed_forward_chunk_rows(16);  // 74 rows: 16, 16, 16, 16, 10
    const Tensor chunked = ff.forward(x).contiguous();
    nn::set_feed_forward_chunk_rows(0);
    EXPECT_EQ(chunked.shape(), whole.shape());
    EXPECT_TENSORS_CLOSE(chunked, whole, 1e-6, 1e-6);
  }
}

TEST(FeedForward, LargeProjectionsGoInPartsOfTheInnerFeatures) {
  // 1024 -> GEGLU 2 x 3072 -> 1024: 24 MiB of f32 projection weights, so with chunking on the
  // inner features go in two parts; with half-precision weights too (widened a part at a time).
  // Each activation is computed as whole; the output projection sums its two halves then adds
  // the bias, so only the summation order differs.
  for (const bool half : {false, true}) {
    Generator gen(9);
    nn::FeedForward ff(1024, {.mult = 3});
    load_random(ff, gen, 0.03f, 0.1f, half);
    EXPECT_EQ(ff.act_proj()->weight().dtype(), half ? DType::kF16 : DType::kF32);
    const Tensor x = gen.randn({3, 5, 1024});
    autograd::NoGradGuard no_grad;
    const Tensor whole = ff.forward(x).contiguous();
    // 15 rows in one chunk, and in chunks of 4 rows (each part's weights serve all four)
    for (const int64_t chunk : {1024, 4}) {
      nn::set_feed_forward_chunk_rows(chunk);
      const Tensor parts = ff.forward(x).contiguous();
      nn::set_feed_forward_chunk_rows(0);
      EXPECT_EQ(parts.shape(), whole.shape());
      EXPECT_TENSORS_CLOSE(parts, whole, 1e-5, 1e-5);
    }
  }
}

TEST(Storage, LazyZeroAllocationsReadAsZero) {
  Tensor t;
  {
    Storage::LazyZeroScope lazy;
    t = Tensor::zeros({1 << 19});  // 2 MiB: a fresh mapping
  }
  const float* p = t.data<float>();
  double sum = 0;
  for (int64_t i = 0; i < t.numel(); ++i) sum += std::abs(p[i]);
  EXPECT_EQ(sum, 0.0);
  t.data<float>()[7] = 1.0f;  // writable
  EXPECT_EQ(t.data<float>()[7], 1.0f);
}

TEST(Storage, BlockCacheDropsTheBlocksFreedLongestAgo) {
  // Budget 3 MiB: free a 2 MiB block, then two 1 MiB blocks. The third free overflows the budget,
  // and the 2 MiB block (freed first) goes, not a smaller one: what a step frees last it asks
  // for again soonest.
  const size_t budget = Storage::cache_budget();
  Storage::trim_cache();
  Storage::set_cache_budget(3 << 20);
  auto big = Storage::allocate(2 << 20), a = Storage::allocate(1 << 20);
  auto c = Storage::allocate(1 << 20);
  const void* a_data = a->data();
  const void* c_data = c->data();
  big.reset();
  a.reset();
  EXPECT_EQ(Storage::cached_bytes(), size_t{3} << 20);
  c.reset();
  EXPECT_EQ(Storage::cached_bytes(), size_t{2} << 20);  // a and c kept, big dropped
  auto again = Storage::allocate(1 << 20);
  EXPECT_EQ(again->data(), c_data);  // the last freed of the size asked for
  auto again2 = Storage::allocate(1 << 20);
  EXPECT_EQ(again2->data(), a_data);
  EXPECT_EQ(Storage::cached_bytes(), 0u);
  again.reset();
  again2.reset();
  Storage::trim_cache();
  Storage::set_cache_budget(budget);
}

TEST(Storage, BlockCacheNeverRaisesThePeak) {
  // With the peak bound (--low-memory), a block that must come fresh from the system first drops
  // cached blocks, so that in-use storages, the new block and the cache stay under the high-water
  // mark of in-use storages.
  const size_t budget = Storage::cache_budget();
  Storage::trim_cache();
  Storage::set_cache_budget(8 << 20);
  set_block_cache_peak_bound(true);
  auto two = Storage::allocate(2 << 20);
  two.reset();
  EXPECT_EQ(Storage::cached_bytes(), size_t{2} << 20);
  Storage::reset_peak_bytes();  // the mark: what is in use now
  auto three = Storage::allocate(3 << 20);  // no cached block fits: fresh, and the 2 MiB go
  EXPECT_EQ(Storage::cached_bytes(), 0u);
  const void* three_data = three->data();
  three.reset();
  EXPECT_EQ(Storage::cached_bytes(), size_t{3} << 20);  // under the new mark: kept
  auto again = Storage::allocate(3 << 20);  // reused, nothing fresh
  EXPECT_EQ(again->data(), three_data);
  again.reset();
  auto one = Storage::allocate(1 << 20);  // split from the cached 3 MiB: nothing fresh
  EXPECT_EQ(one->data(), three_data);
  EXPECT_EQ(Storage::cached_bytes(), size_t{2} << 20);
  auto five = Storage::allocate(5 << 20);  // the cached 2 MiB, grown
  EXPECT_EQ(Storage::cached_bytes(), 0u);
  one.reset();
  five.reset();
  set_block_cache_peak_bound(false);
  Storage::trim_cache();
  Storage::set_cache_budget(budget);
}

namespace {

// How many of a storage's bytes differ from `v`.
size_t bytes_other_than(const Storage& s, unsigned char v) {
  const auto* p = static_cast<const unsigned char*>(s.data());
  size_t n = 0;
  for (size_t i = 0; i < s.nbytes(); ++i) n += p[i] != v;
  return n;
}

}  // namespace

TEST(Storage, BlockCacheGrowsAndSplitsBlocks) {
  // No cached block within 1/8 of the size asked: the largest smaller one grows (its pages moved
  // to the larger block, the rest fresh), or else the smallest larger one is split.
  const size_t budget = Storage::cache_budget();
  Storage::trim_cache();
  Storage::set_cache_budget(64 << 20);
  auto four = Storage::allocate(4 << 20, Device::kCPU, false);
  auto* bytes = static_cast<unsigned char*>(four->data());
  for (size_t i = 0; i < (4u << 20); ++i) bytes[i] = static_cast<unsigned char>(i * 7 + 3);
  four.reset();
  EXPECT_EQ(Storage::cached_bytes(), size_t{4} << 20);
  auto eight = Storage::allocate(8 << 20, Device::kCPU, false);
  EXPECT_EQ(Storage::cached_bytes(), 0u);
  bytes = static_cast<unsigned char*>(eight->data());
  size_t same = 0;
  for (size_t i = 0; i < (4u << 20); ++i) same += bytes[i] == static_cast<unsigned char>(i * 7 + 3);
  EXPECT_EQ(same, size_t{4} << 20);  // the grown block holds the old pages
  std::memset(bytes, 0xab, 8u << 20);  // and all of it is writable
  const void* eight_data = eight->data();
  eight.reset();
  auto two = Storage::allocate(2 << 20);
  EXPECT_EQ(two->data(), eight_data);  // the front of the 8 MiB block
  EXPECT_EQ(Storage::cached_bytes(), size_t{6} << 20);
  auto three = Storage::allocate(3 << 20, Device::kCPU, true);  // zeroed, cut from used pages
  const auto* p = static_cast<const unsigned char*>(three->data());
  EXPECT_EQ(static_cast<const void*>(p), static_cast<const char*>(eight_data) + (2 << 20));
  EXPECT_EQ(bytes_other_than(*three, 0), 0u);
  EXPECT_EQ(Storage::cached_bytes(), size_t{3} << 20);
  two.reset();
  three.reset();
  Storage::trim_cache();
  Storage::set_cache_budget(budget);
}

namespace {

// One "step": blocks of 4, 2, 4 and 3 MiB with overlapping lifetimes (at most 9 MiB at once:
// a+b, then b+c, then c+d+e), each filled with its own byte and checked before it is freed, and a
// 1 MiB result that outlives the step. Returns how many bytes read back wrong.
size_t one_step(std::vector<std::shared_ptr<Storage>>* results, size_t extra = 0) {
  size_t wrong = 0;
  auto fill = [](const std::shared_ptr<Storage>& s, unsigned char v) {
    std::memset(s->data(), v, s->nbytes());
  };
  auto check = [&](const std::shared_ptr<Storage>& s, unsigned char v) {
    wrong += bytes_other_than(*s, v);
  };
  auto a = Storage::allocate((4 << 20) + extra);
  fill(a, 1);
  auto b = Storage::allocate(2 << 20);
  fill(b, 2);
  check(a, 1);
  a.reset();
  auto c = Storage::allocate(4 << 20);
  fill(c, 3);
  check(b, 2);
  b.reset();
  auto d = Storage::allocate(3 << 20);
  fill(d, 4);
  auto e = Storage::allocate(2 << 20);
  fill(e, 5);
  check(c, 3);
  check(d, 4);
  check(e, 5);
  auto result = Storage::allocate(1 << 20);
  fill(result, 6);
  results->push_back(result);
  return wrong;
}

}  // namespace

TEST(MemoryPlan, LaterRunsReuseOneArenaLaidOutFromTheFirst) {
  const size_t budget = Storage::cache_budget();
  Storage::trim_cache();
  Storage::set_cache_budget(0);  // every block not from the arena is fresh from the system
  std::vector<std::shared_ptr<Storage>> results;
  {
    MemoryPlan plan;
    {
      MemoryPlan::Scope scope(plan);
      EXPECT_EQ(one_step(&results), 0u);
    }
    // Five blocks freed within the run are planned; the result, alive after it, is not. The
    // arena is the peak of the planned blocks together: c + d + e = 9 MiB.
    EXPECT_EQ(plan.planned_blocks(), 5u);
    EXPECT_EQ(plan.arena_bytes(), size_t{9} << 20);
    const size_t live_before = Storage::live_bytes();
    for (int run = 0; run < 3; ++run) {
      const size_t fresh = block_cache_fresh_bytes();
      MemoryPlan::Scope scope(plan);
      EXPECT_EQ(one_step(&results), 0u);
      // The first placing run maps the arena; later ones take only the result fresh.
      EXPECT_EQ(block_cache_fresh_bytes() - fresh, (run == 0 ? size_t{9} << 20 : 0) + (1 << 20));
    }
    EXPECT_EQ(plan.placed_blocks(), 15u);
    EXPECT_EQ(Storage::live_bytes() - live_before, (size_t{9} << 20) + (size_t{3} << 20));
    for (const auto& r : results)
      EXPECT_EQ(static_cast<const unsigned char*>(r->data())[12345], 6);
  }
  results.clear();
  Storage::set_cache_budget(budget);
}

TEST(MemoryPlan, RunsThatDifferAreServedAsUsual) {
  std::vector<std::shared_ptr<Storage>> results;
  MemoryPlan plan;
  {
    MemoryPlan::Scope scope(plan);
    EXPECT_EQ(one_step(&results), 0u);
  }
  // A first block of another size: not placed; the rest still are.
  {
    MemoryPlan::Scope scope(plan);
    EXPECT_EQ(one_step(&results, 64 << 10), 0u);
  }
  EXPECT_EQ(plan.placed_blocks(), 4u);
  // A block from the arena kept past its run: the next run's blocks that would overlap it are
  // served elsewhere, and nothing is overwritten.
  std::shared_ptr<Storage> kept;
  {
    MemoryPlan::Scope scope(plan);
    kept = Storage::allocate(4 << 20);
    std::memset(kept->data(), 9, kept->nbytes());
  }
  {
    MemoryPlan::Scope scope(plan);
    EXPECT_EQ(one_step(&results), 0u);
  }
  EXPECT_EQ(bytes_other_than(*kept, 9), 0u);
  // A nested Scope does nothing; the plan and its arena may go before a block placed in it.
  {
    MemoryPlan::Scope scope(plan);
    MemoryPlan::Scope inner(plan);
    EXPECT_EQ(one_step(&results), 0u);
  }
}

TEST(MemoryPlan, BlocksOutliveTheirPlan) {
  std::vector<std::shared_ptr<Storage>> results;
  std::shared_ptr<Storage> kept;
  const size_t live_before = Storage::live_bytes();
  {
    MemoryPlan plan;
    {
      MemoryPlan::Scope scope(plan);
      EXPECT_EQ(one_step(&results), 0u);
    }
    MemoryPlan::Scope scope(plan);
    kept = Storage::allocate(4 << 20);  // placed
    EXPECT_EQ(plan.placed_blocks(), 1u);
  }
  std::memset(kept->data(), 7, kept->nbytes());  // still mapped
  EXPECT_EQ(static_cast<const unsigned char*>(kept->data())[(4 << 20) - 1], 7);
  kept.reset();
  results.clear();
  EXPECT_EQ(Storage::live_bytes(), live_before);  // the arena went with its last block
}

TEST(Storage, ReleasedFilePagesReadBackTheSameValues) {
  const fs::path d = temp_dir("pages");
  const std::string path = (d / "w.safetensors").string();
  Generator gen(1);
  io::save_safetensors(path, {{"w", gen.randn({1 << 20})}});  // 4 MiB
  const io::SafetensorsFile f = io::SafetensorsFile::open(path);
  const Tensor t = f.tensor("w");
  const Tensor copy = t.clone();
  EXPECT_GT(t.storage()->release_pages(), size_t{0});
  EXPECT_TENSORS_CLOSE(t, copy, 0.0, 0.0);  // mapped again from the file
  // Memory that is not a file mapping is never released.
  EXPECT_EQ(copy.storage()->release_pages(), size_t{0});
  fs::remove_all(d);
}

TEST(ReleaseWeights, ReleasedWeightsReadZeroAndAdoptRestoresThem) {
  Generator gen(2);
  nn::Linear a(1024, 512, true, gen);  // 2 MiB weight: released; 2 KiB bias: kept
  nn::Linear b(1024, 512, true, gen);
  const Tensor x = gen.randn({3, 1024});
  autograd::NoGradGuard no_grad;
  const Tensor want = b.forward(x);
  const Tensor bias = a.bias().clone();
  nn::release_weights(a);
  EXPECT_EQ(ops::sum(ops::abs(a.weight())).item(), 0.0f);
  EXPECT_TENSORS_CLOSE(a.bias(), bias, 0.0, 0.0);
  nn::adopt_weights(a, b);
  EXPECT_TENSORS_CLOSE(a.forward(x), want, 0.0, 0.0);
}

GenerateRequest small_request() {
  GenerateRequest r;
  r.prompt = "a red circle";
  r.steps = 3;
  r.width = r.height = 32;
  r.seed = 4;
  return r;
}

TEST(LowMemory, EngineDrawsTheSamePixelsAsTheResidentPipeline) {
  if (sd_tiny().empty()) GTEST_SKIP() << "../shared/conformance is absent";
  const Engine resident = Engine::open(sd_tiny());
  OpenOptions opt;
  opt.low_memory = true;
  const Engine low = Engine::open(sd_tiny(), opt);
  const GenerateRequest r = small_request();
  const GenerateResult a = resident.generate(r);
  const GenerateResult b = low.generate(r);
  EXPECT_EQ(a.images[0].image.pixels, b.images[0].image.pixels);
  // Again (every component read once more), and with an image-to-image request.
  EXPECT_EQ(low.generate(r).images[0].image.pixels, a.images[0].image.pixels);
  GenerateRequest i2i = r;
  i2i.init_image = a.images[0].image;
  i2i.strength = 0.6;
  EXPECT_EQ(low.generate(i2i).images[0].image.pixels,
            resident.generate(i2i).images[0].image.pixels);
}

TEST(LowMemory, PipelineReleasesEveryComponentBetweenRuns) {
  if (sd_tiny().empty()) GTEST_SKIP() << "../shared/conformance is absent";
  pipelines::StableDiffusion sd = pipelines::StableDiffusion::load(sd_tiny(), "", {}, true);
  ASSERT_TRUE(sd.low_memory());
  auto zero = [](const nn::Module& m, const std::string& key) {
    return ops::sum(ops::abs(m.state_dict().at(key).to(DType::kF32))).item() == 0.0f;
  };
  // Opened released (tensors of 64 KiB or more are).
  const std::string big = "text_model.embeddings.token_embedding.weight";  // 1000 x 32 f32
  EXPECT_TRUE(zero(*sd.text_encoder(), big));
  // Encoding the prompt reads the text encoder in; the UNet's stage releases it again.
  sd.encode_prompt("a red circle", "", 1, true);
  EXPECT_FALSE(zero(*sd.text_encoder(), big));
  pipelines::GenerationParams p;
  p.prompt = "a red circle";
  p.steps = 2;
  p.width = p.height = 32;
  sd.run_txt2img(p);
  EXPECT_TRUE(zero(*sd.text_encoder(), big));
  sd.encode_prompt("a red circle", "", 1, true);
  sd.release_all();
  EXPECT_TRUE(zero(*sd.text_encoder(), big));
}

TEST(LowMemory, LorasAreMergedIntoEachComponentAsItIsRead) {
  if (sd_tiny().empty()) GTEST_SKIP() << "../shared/conformance is absent";
  const std::string lora = testing::test_data_path("lora/sd_kohya.safetensors");
  const Engine resident = Engine::open(sd_tiny());
  OpenOptions opt;
  opt.low_memory = true;
  const Engine low = Engine::open(sd_tiny(), opt);
  GenerateRequest r = small_request();
  const GenerateResult plain = low.generate(r);
  r.loras = {{lora, 0.8}};
  const GenerateResult a = resident.generate(r);
  const GenerateResult b = low.generate(r);
  EXPECT_EQ(a.images[0].image.pixels, b.images[0].image.pixels);
  EXPECT_NE(b.images[0].image.pixels, plain.images[0].image.pixels);
  // Taken off: the plain image again; a file that matches nothing is refused up front.
  r.loras.clear();
  EXPECT_EQ(low.generate(r).images[0].image.pixels, plain.images[0].image.pixels);
  r.loras = {{testing::test_data_path("lora/sd_kohya_unmatched.safetensors"), 1.0}};
  EXPECT_THROW(low.generate(r), Error);
  r.loras.clear();
  EXPECT_EQ(low.generate(r).images[0].image.pixels, plain.images[0].image.pixels);
}

TEST(LowMemory, WeightPrecisionIsCheckedAtOpen) {
  if (sd_tiny().empty()) GTEST_SKIP() << "../shared/conformance is absent";
  OpenOptions opt;
  opt.weight_precision = "f12";
  try {
    Engine::open(sd_tiny(), opt);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("f12"), std::string::npos) << e.what();
  }
  opt.weight_precision = "f16";
  const Engine e = Engine::open(sd_tiny(), opt);
  EXPECT_EQ(e.generate(small_request()).images.size(), 1u);
}

}  // namespace
}  // namespace stipple
