#include "support/optim_on_device.h"

#include <gtest/gtest.h>

#include "support/numerics.h"
#include "train/optim.h"

namespace stipple::testing {

void expect_optimizers_on_device_match_cpu(Device device) {
  const Tensor w0 = random_tensor({7, 5}, 11), g0 = random_tensor({7, 5}, 12, -3.0f, 3.0f);
  Tensor wc = w0.clone(), wd = w0.to(device);
  wc.set_requires_grad(true);
  wd.set_requires_grad(true);
  wc.set_grad(g0.clone());
  wd.set_grad(g0.to(device));
  const float norm_c = train::clip_grad_norm({wc}, 1.0f);
  const float norm_d = train::clip_grad_norm({wd}, 1.0f);
  EXPECT_NEAR(norm_d, norm_c, 1e-5 * norm_c);
  EXPECT_EQ(wd.grad().device(), device);
  EXPECT_TRUE(tensors_close(wd.grad().to(Device::kCPU), wc.grad(), 1e-7, 1e-5)) << "clipped gradient";
  train::AdamW opt_c({wc}), opt_d({wd});
  train::Ema ema_c({wc}), ema_d({wd});
  for (int step = 0; step < 3; ++step) {
    opt_c.step();
    opt_d.step();
    ema_c.step({wc});
    ema_d.step({wd});
  }
  EXPECT_EQ(wd.device(), device);
  EXPECT_TRUE(tensors_close(wd.detach().to(Device::kCPU), wc.detach(), 1e-7, 1e-5))
      << "parameters after 3 AdamW steps";
  EXPECT_EQ(ema_d.shadow_params()[0].device(), device);
  EXPECT_TRUE(tensors_close(ema_d.shadow_params()[0].to(Device::kCPU), ema_c.shadow_params()[0],
                            1e-7, 1e-6))
      << "EMA shadow";
  for (const auto& [k, v] : opt_d.state_dict()) EXPECT_EQ(v.device(), Device::kCPU) << k;
  for (const auto& [k, v] : ema_d.state_dict()) EXPECT_EQ(v.device(), Device::kCPU) << k;
  train::AdamW opt_e({wd});
  opt_e.load_state_dict(opt_d.state_dict());
  EXPECT_EQ(opt_e.state_dict().at("exp_avg.0").to_vector(),
            opt_d.state_dict().at("exp_avg.0").to_vector());
}

}  // namespace stipple::testing
