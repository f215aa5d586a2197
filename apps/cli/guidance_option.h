// --guidance-interval LO HI for the commands that sample with classifier-free guidance: guidance
// only at noise levels sigma = sqrt((1 - acp) / acp) in [LO, HI] (pipelines::GuidanceInterval).
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace stipple::cli {

inline void add_guidance_interval_option(CLI::App* cmd, std::vector<double>& interval,
                                         const std::string& default_text) {
  cmd->add_option("--guidance-interval", interval,
                  "classifier-free guidance only at noise levels sigma = sqrt((1 - acp) / acp) in "
                  "[LO, HI], 'inf' for no upper end (Kynkaanniemi et al. 2024: guidance at high "
                  "noise narrows the variety of layouts); default: " + default_text)
      ->expected(2);
}

}  // namespace stipple::cli
