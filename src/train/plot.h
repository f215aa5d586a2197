// A loss curve drawn into an RGB image, for the trainer's loss.png: axes, a log-scale y axis with
// a line at every decade (fainter ones at 2x and 5x), step ticks on x, the raw loss in light blue
// and an exponentially smoothed one in dark blue. Text uses a built-in 5x7 pixel font (digits and
// the lower-case letters the labels need), so no font library is involved.
//
// Leaves out: anti-aliasing, legends beyond the title line, and linear-scale plots.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/png.h"

namespace stipple::train {

// steps and losses are parallel (non-positive losses are skipped). An empty series gives the
// empty axes.
io::Image plot_loss_curve(const std::vector<int64_t>& steps, const std::vector<float>& losses,
                          int width = 720, int height = 420);

}  // namespace stipple::train
