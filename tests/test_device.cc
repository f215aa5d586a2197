// The device seam on the CPU: which kernel table an op takes, the error for tensors on two
// devices, the stand-ins for kernels a backend lacks, host reads of device memory refused, and
// what a build without CUDA says. (The CUDA backend itself: tests/test_cuda.cc, on a GPU.)
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/dit.h"
#include "models/unet2d_condition.h"
#include "models/vae.h"
#include "ops/kernels.h"
#include "ops/ops.h"
#include "pipelines/dit_pipeline.h"
#include "pipelines/stable_diffusion.h"
#include "support/numerics.h"
#include "support/optim_on_device.h"
#include "support/tiny_models.h"
#ifdef STIPPLE_WITH_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

namespace stipple {
namespace {

// Expects `f` to throw a stipple::Error of `kind` whose message contains `part`.
template <typename F>
void expect_error(F&& f, ErrorKind kind, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing \"" << part << "\"";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// A tensor whose storage says "cuda" but is host memory: it lets the CPU build check what the ops
// do with a device tensor before any kernel would touch its memory.
Tensor tagged_as_cuda(const Shape& shape) {
  auto host = std::make_shared<std::vector<float>>(static_cast<size_t>(shape_numel(shape)), 1.0f);
  auto storage = Storage::wrap(host->data(), host->size() * sizeof(float), host, Device::kCUDA);
  return Tensor::from_storage(storage, 0, shape, DType::kF32);
}

TEST(Device, CpuTensorsTakeTheActiveCpuTable) {
  const Tensor x = Tensor::ones({2, 3});
  EXPECT_EQ(&kernels_for(x), &active_kernels());
  EXPECT_EQ(kernels_for(Device::kCPU).device, Device::kCPU);
  use_reference_kernels(true);
  EXPECT_EQ(&kernels_for(x), &reference_kernels());
  use_reference_kernels(false);
  EXPECT_EQ(&kernels_for(x), &fast_kernels());
}

TEST(Device, SameDeviceSkipsUndefinedAndNamesBothDevices) {
  const Tensor a = Tensor::ones({2, 3}), none;
  EXPECT_EQ(same_device("op", a, none), Device::kCPU);
  EXPECT_EQ(same_device("op", none, none), Device::kCPU);
  const Tensor b = tagged_as_cuda({2, 3});
  EXPECT_EQ(same_device("op", b, none), Device::kCUDA);
  expect_error([&] { same_device("my_op", a, b); }, ErrorKind::kInvalidArgument,
               "my_op: its tensors are on two devices (f32[2, 3] on cpu, f32[2, 3] on cuda)");
}

TEST(Device, OpsOnTwoDevicesAreErrorsBeforeAnyKernelRuns) {
  const Tensor a = Tensor::ones({2, 3}), b = tagged_as_cuda({2, 3});
  expect_error([&] { ops::add(a, b); }, ErrorKind::kInvalidArgument, "on two devices");
  expect_error([&] { ops::matmul(a, b.reshape({3, 2})); }, ErrorKind::kInvalidArgument,
               "matmul: its tensors are on two devices");
  expect_error([&] { ops::linear(a, b, Tensor()); }, ErrorKind::kInvalidArgument,
               "linear: its tensors are on two devices");
  expect_error([&] { ops::layer_norm(a, b.narrow(0, 0, 1).reshape({3}), Tensor(), 1e-5f); },
               ErrorKind::kInvalidArgument, "layer_norm: its tensors are on two devices");
}

TEST(Device, HostCodeCannotReadDeviceMemory) {
  const Tensor b = tagged_as_cuda({4});
  expect_error([&] { b.data<float>(); }, ErrorKind::kInvalidArgument,
               "host code read f32[4] on cuda; copy it with .to(Device::kCPU) first");
}

TEST(Device, ToTheSameDeviceIsTheTensorItself) {
  const Tensor x = Tensor::ones({2, 2});
  EXPECT_TRUE(x.to(Device::kCPU).is_same(x));
}

TEST(Device, MissingKernelsAreReportedByName) {
  KernelTable t{};
  t.name = "test-device";
  t.copy = reference_kernels().copy;
  fill_missing_kernels(t);
  EXPECT_EQ(t.copy, reference_kernels().copy);  // entries it has stay
  const Tensor x = Tensor::ones({1, 2, 4, 4}), w = Tensor::ones({3, 2, 3, 3});
  expect_error([&] { t.conv2d(x, w, Tensor(), ops::Conv2dParams{}, false); },
               ErrorKind::kUnsupported, "conv2d has no test-device kernel yet");
  expect_error([&] { t.softmax(x); }, ErrorKind::kUnsupported, "softmax has no test-device kernel");
  Tensor p = Tensor::ones({2}), m = Tensor::zeros({2}), v = Tensor::zeros({2});
  expect_error([&] { t.adamw_step(p, p, m, v, AdamWParams{1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1}); },
               ErrorKind::kUnsupported, "adamw_step has no test-device kernel");
}

// ---------------- the emulated device: host memory, reference kernels, no host reads --------

TEST(EmulatedDevice, OpsRunThereAndHostCodeMustCopyBack) {
  const Tensor a = testing::random_tensor({3, 5}, 1), b = testing::random_tensor({5, 2}, 2);
  const Tensor ae = a.to(Device::kEmulated), be = b.to(Device::kEmulated);
  const Tensor ye = ops::relu(ops::matmul(ae, be));
  EXPECT_EQ(ye.device(), Device::kEmulated);
  expect_error([&] { ye.data<float>(); }, ErrorKind::kInvalidArgument, "on emulated");
  const Tensor y = ye.to(Device::kCPU);
  EXPECT_EQ(y.device(), Device::kCPU);
  use_reference_kernels(true);  // the emulated device runs the reference kernels
  EXPECT_EQ(y.to_vector(), ops::relu(ops::matmul(a, b)).to_vector());
  use_reference_kernels(false);
  EXPECT_EQ(ye.to_vector(), y.to_vector());  // to_vector copies from any device
  expect_error([&] { ops::add(ye, a.narrow(1, 0, 2)); }, ErrorKind::kInvalidArgument,
               "on two devices");
}

TEST(EmulatedDevice, GradientsComeBackToTheHostLeaf) {
  Tensor x = testing::random_tensor({4, 3}, 3);
  x.set_requires_grad(true);
  const Tensor z = ops::sum(ops::mul(ops::tanh(x.to(Device::kEmulated)), x.to(Device::kEmulated)));
  EXPECT_EQ(z.device(), Device::kEmulated);
  z.backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_EQ(x.grad().device(), Device::kCPU);
  Tensor xc = x.detach().clone();
  xc.set_requires_grad(true);
  use_reference_kernels(true);
  ops::sum(ops::mul(ops::tanh(xc), xc)).backward();
  use_reference_kernels(false);
  EXPECT_EQ(x.grad().to_vector(), xc.grad().to_vector());
}

// bf16 matmuls (ops::MatmulPrecision::kBF16) on a device: the operands are rounded there and
// kept for backward there, and the values and gradients are the CPU's with the same kernels.
TEST(EmulatedDevice, Bf16LinearAndGradientsMatchTheCpu) {
  const Tensor x = testing::random_tensor({6, 5}, 4), w = testing::random_tensor({3, 5}, 5),
               b = testing::random_tensor({3}, 6);
  const auto run = [&](Device d, std::vector<float>* gx, std::vector<float>* gw) {
    Tensor xl = x.detach().clone(), wl = w.detach().clone();
    xl.set_requires_grad(true);
    wl.set_requires_grad(true);
    Tensor y;
    {
      ops::MatmulPrecisionScope bf16(ops::MatmulPrecision::kBF16);
      y = ops::linear(xl.to(d), wl.to(d), b.to(d));
    }
    EXPECT_EQ(y.device(), d);
    ops::sum(ops::square(y)).backward();  // outside the scope: the op's precision holds
    *gx = xl.grad().to_vector();
    *gw = wl.grad().to_vector();
    return y.to_vector();
  };
  std::vector<float> gx_cpu, gw_cpu, gx_dev, gw_dev;
  use_reference_kernels(true);
  const std::vector<float> y_cpu = run(Device::kCPU, &gx_cpu, &gw_cpu);
  use_reference_kernels(false);
  EXPECT_EQ(run(Device::kEmulated, &gx_dev, &gw_dev), y_cpu);
  EXPECT_EQ(gx_dev, gx_cpu);
  EXPECT_EQ(gw_dev, gw_cpu);
  use_reference_kernels(true);  // and the rounding happened: f32 products differ
  const std::vector<float> y_f32 = ops::linear(x, w, b).to_vector();
  use_reference_kernels(false);
  EXPECT_NE(y_f32, y_cpu);
}

// A whole model moved with Module::to: its forward on the emulated device gives the CPU's values
// exactly (the same reference kernels), so it reads no device memory from the host and mixes in
// no host tensor — what it needs to run on a GPU.
TEST(EmulatedDevice, DiTForwardMatchesTheCpu) {
  models::DiTTransformer2DModel model(testing::tiny_dit_config());
  Generator gen(10);
  model.nn::Module::reset_parameters(gen);
  const Tensor x = testing::random_tensor({2, 2, 4, 4}, 11);
  const Tensor t = Tensor::from_vector_i64({17, 901}, {2});
  const Tensor labels = Tensor::from_vector_i64({2, 3}, {2});
  use_reference_kernels(true);
  const std::vector<float> want = model.forward(x, t, labels).to_vector();
  use_reference_kernels(false);
  const Tensor w0 = model.parameters()[0];
  model.to(Device::kEmulated);
  EXPECT_EQ(w0.device(), Device::kEmulated);  // the handles the model holds moved
  const Tensor got = model.forward(x.to(Device::kEmulated), t.to(Device::kEmulated),
                                   labels.to(Device::kEmulated));
  EXPECT_EQ(got.device(), Device::kEmulated);
  EXPECT_EQ(got.to_vector(), want);
}

// Stable Diffusion's three models (the tiny real-layout set of ../shared/conformance/sd_tiny)
// on the emulated device against the CPU with the same (reference) kernels.
class EmulatedSdTiny : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::shared_path("conformance/sd_tiny");
    if (dir_.empty()) GTEST_SKIP() << "../shared is absent";
    io_ = dir_ + "/reference/";
    use_reference_kernels(true);
  }
  void TearDown() override { use_reference_kernels(false); }
  static Tensor emu(const Tensor& t) { return t.to(Device::kEmulated); }
  std::string dir_, io_;
};

TEST_F(EmulatedSdTiny, TextEncoder) {
  const auto model = models::CLIPTextModel::from_pretrained(dir_ + "/text_encoder");
  const Tensor ids = io::load_safetensors(io_ + "text_encoder_io.safetensors").at("input_ids");
  const models::CLIPTextOutput want = model->forward(ids);
  model->to(Device::kEmulated);
  const models::CLIPTextOutput got = model->forward(emu(ids));
  EXPECT_EQ(got.last_hidden_state.device(), Device::kEmulated);
  EXPECT_EQ(got.last_hidden_state.to_vector(), want.last_hidden_state.to_vector());
  EXPECT_EQ(got.pooler_output.to_vector(), want.pooler_output.to_vector());
}

TEST_F(EmulatedSdTiny, VaeEncodeDecode) {
  const auto vae = models::AutoencoderKL::from_pretrained(dir_ + "/vae");
  const auto ref = io::load_safetensors(io_ + "vae_io.safetensors");
  const Tensor want_mean = vae->encode(ref.at("image")).mean;
  const Tensor want = vae->decode(ref.at("z"));
  const Tensor z = ref.at("z");
  ASSERT_GT(z.size(2), 4);  // more than one 4x4 tile below
  const Tensor want_tiled = vae->decode_tiled(z, 4);
  vae->to(Device::kEmulated);
  const Tensor got_mean = vae->encode(emu(ref.at("image"))).mean;
  const Tensor got = vae->decode(emu(z));
  EXPECT_EQ(got.device(), Device::kEmulated);
  EXPECT_EQ(got_mean.to_vector(), want_mean.to_vector());
  EXPECT_EQ(got.to_vector(), want.to_vector());
  const Tensor got_tiled = vae->decode_tiled(emu(z), 4);  // seams blended on the CPU
  EXPECT_EQ(got_tiled.device(), Device::kCPU);
  EXPECT_EQ(got_tiled.to_vector(), want_tiled.to_vector());
}

TEST_F(EmulatedSdTiny, Unet) {
  const auto unet = models::UNet2DConditionModel::from_pretrained(dir_ + "/unet");
  const auto ref = io::load_safetensors(io_ + "unet_io.safetensors");
  const Tensor& sample = ref.at("sample");
  const Tensor& context = ref.at("encoder_hidden_states");
  const Tensor& t = ref.at("timestep_a");
  const Tensor want = unet->forward(sample, t, context);
  unet->to(Device::kEmulated);
  const Tensor got = unet->forward(emu(sample), emu(t), emu(context));
  EXPECT_EQ(got.device(), Device::kEmulated);
  EXPECT_EQ(got.to_vector(), want.to_vector());
}

// The whole Stable Diffusion pipeline on the emulated device: text-to-image (plain and A1111
// prompt weights), image-to-image and inpainting (the 4-channel blend and the 9-channel UNet) give
// the CPU's images exactly, and come back on the CPU.
TEST_F(EmulatedSdTiny, PipelinesDrawTheCpusImages) {
  const std::string inpaint_dir = testing::shared_path("conformance/sd_tiny_inpaint");
  Generator g(3);
  pipelines::GenerationParams p;
  p.prompt = "a (red:1.3) fox";
  p.negative_prompt = "blur";
  p.steps = 3;
  p.seed = 9;
  p.sampler = "euler_a";  // ancestral: step noise from the CPU generator
  auto sd = pipelines::StableDiffusion::from_pretrained(dir_);
  const int64_t size = sd.default_size();
  const Tensor image = g.rand({1, 3, size, size});
  std::vector<float> m(static_cast<size_t>(size * size));
  for (int64_t i = 0; i < size * size; ++i) m[static_cast<size_t>(i)] = i % size < size / 2 ? 1.0f : 0.0f;
  const Tensor mask = Tensor::from_vector(m, {1, 1, size, size});
  auto all = [&](const pipelines::StableDiffusion& s, bool nine) {
    std::vector<std::vector<float>> out;
    pipelines::GenerationParams q = p;
    if (!nine) {
      out.push_back(s.run_txt2img(q).to_vector());
      q.prompt_syntax = PromptSyntax::kA1111;
      out.push_back(s.run_txt2img(q).to_vector());
      q.init_image = image;
      q.strength = 0.6;
      out.push_back(s.run_img2img(q).to_vector());
    }
    q.init_image = image;
    q.mask = mask;
    q.strength = 1.0;
    out.push_back(s.run_inpaint(q).to_vector());
    return out;
  };
  const auto want = all(sd, false);
  sd.to(Device::kEmulated);
  EXPECT_EQ(sd.device(), Device::kEmulated);
  EXPECT_EQ(all(sd, false), want);
  if (inpaint_dir.empty()) return;
  auto nine = pipelines::StableDiffusion::from_pretrained(inpaint_dir);
  const auto want9 = all(nine, true);
  nine.to(Device::kEmulated);
  EXPECT_EQ(all(nine, true), want9);
}

// A whole text-free pipeline — noise drawn on the CPU, guided denoising with an Euler-type and a
// multistep sampler, VAE decode — on the emulated device gives the CPU's image exactly.
TEST(EmulatedDevice, DiTPipelineDrawsTheCpusImage) {
  const std::string dir = testing::shared_path("conformance/dit_tiny");
  if (dir.empty()) GTEST_SKIP() << "../shared is absent";
  use_reference_kernels(true);
  for (const char* sampler : {"euler", "dpm++2m"}) {
    SCOPED_TRACE(sampler);
    pipelines::DiTParams p;
    p.class_labels = {1, 207};
    p.steps = 3;
    p.cfg = 3.0f;
    p.sampler = sampler;
    p.seed = 5;
    pipelines::DiTPipeline dit = pipelines::DiTPipeline::from_pretrained(dir);
    const std::vector<float> want = dit.run(p).to_vector();
    dit.to(Device::kEmulated);
    const Tensor got = dit.run(p);
    EXPECT_EQ(got.device(), Device::kCPU);
    EXPECT_EQ(got.to_vector(), want);
  }
  use_reference_kernels(false);
}

// Gradient clipping, AdamW and the EMA on device parameters (tests/support/optim_on_device.h),
// with the CPU's reference kernels behind the emulated device.
TEST(EmulatedDevice, ClippingAdamWAndEmaOnDeviceParameters) {
  use_reference_kernels(true);
  testing::expect_optimizers_on_device_match_cpu(Device::kEmulated);
  use_reference_kernels(false);
}

#ifndef STIPPLE_WITH_CUDA
TEST(Device, WithoutCudaAskingForTheGpuSaysHowToGetIt) {
  const std::string how = "built without CUDA (configure with -DSTIPPLE_CUDA=ON)";
  expect_error([] { Tensor::empty({2}, DType::kF32, Device::kCUDA); }, ErrorKind::kUnsupported,
               how);
  expect_error([] { Tensor::ones({2}).to(Device::kCUDA); }, ErrorKind::kUnsupported, how);
  expect_error([] { kernels_for(Device::kCUDA); }, ErrorKind::kUnsupported, how);
  const Tensor b = tagged_as_cuda({2});
  expect_error([&] { ops::relu(b); }, ErrorKind::kUnsupported, how);
  expect_error([&] { b.to_vector(); }, ErrorKind::kUnsupported, how);
}
#else
TEST(Device, WithCudaButNoGpuAllocatingSaysWhy) {
  if (cuda::available()) GTEST_SKIP() << "a CUDA device is present: " << cuda::device_description();
  try {
    Tensor::empty({2}, DType::kF32, Device::kCUDA);
    ADD_FAILURE() << "allocated on a machine without a usable GPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(cuda::unavailable_reason()), std::string::npos)
        << e.what();
  }
}
#endif

}  // namespace
}  // namespace stipple
