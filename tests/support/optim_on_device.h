// A training step's bookkeeping on device parameters — gradient clipping, AdamW, the EMA — held
// to the same on the CPU; shared by the emulated device's tests (tests/test_device.cc) and the
// GPU's (tests/test_cuda.cc).
#pragma once

#include "core/storage.h"

namespace stipple::testing {

// Three steps on a [7, 5] parameter on the CPU and on `device`. AdamW's kernel is exact; the
// clipping norm sums in f32 on a device (double on the CPU), so the clipped values agree to about
// 1e-6 relative. Also checks that the moments and the average stay on the device, that state
// dicts come out on the CPU and load back into device tensors.
void expect_optimizers_on_device_match_cpu(Device device);

}  // namespace stipple::testing
