// The device seam on the CPU: which kernel table an op takes, the error for tensors on two
// devices, the stand-ins for kernels a backend lacks, host reads of device memory refused, and
// what a build without CUDA says. (The CUDA backend itself: tests/test_cuda.cc, on a GPU.)
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "ops/kernels.h"
#include "ops/ops.h"
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
