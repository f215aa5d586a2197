#include "train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

namespace stipple::train {
namespace {

struct Rgb {
  uint8_t r, g, b;
};
constexpr Rgb kAxis{40, 40, 40}, kGrid{215, 215, 215}, kGridMinor{236, 236, 236},
    kMinorLabel{140, 140, 140}, kRaw{160, 190, 235}, kSmooth{20, 60, 170};

// 5x7 glyphs, one byte per row (bit 4 = leftmost column).
const std::map<char, std::vector<uint8_t>>& font() {
  static const std::map<char, std::vector<uint8_t>> f = {
      {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}},
      {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
      {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}},
      {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
      {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}},
      {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
      {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}},
      {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
      {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}},
      {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
      {'.', {0, 0, 0, 0, 0, 0x0C, 0x0C}},
      {',', {0, 0, 0, 0, 0x0C, 0x04, 0x08}},
      {'-', {0, 0, 0, 0x1F, 0, 0, 0}},
      {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}},
      {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
      {'a', {0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F}},
      {'c', {0, 0, 0x0E, 0x10, 0x10, 0x11, 0x0E}},
      {'d', {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F}},
      {'e', {0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E}},
      {'g', {0, 0, 0x0F, 0x11, 0x0F, 0x01, 0x0E}},
      {'h', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}},
      {'i', {0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E}},
      {'k', {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12}},
      {'l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
      {'m', {0, 0, 0x1A, 0x15, 0x15, 0x11, 0x11}},
      {'n', {0, 0, 0x16, 0x19, 0x11, 0x11, 0x11}},
      {'o', {0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E}},
      {'p', {0, 0, 0x1E, 0x11, 0x1E, 0x10, 0x10}},
      {'r', {0, 0, 0x16, 0x19, 0x10, 0x10, 0x10}},
      {'s', {0, 0, 0x0F, 0x10, 0x0E, 0x01, 0x1E}},
      {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}},
      {'u', {0, 0, 0x11, 0x11, 0x11, 0x13, 0x0D}},
      {'w', {0, 0, 0x11, 0x11, 0x15, 0x15, 0x0A}},
  };
  return f;
}

class Canvas {
 public:
  Canvas(int w, int h) {
    img_.width = w;
    img_.height = h;
    img_.channels = 3;
    img_.pixels.assign(static_cast<size_t>(w) * h * 3, 255);
  }
  void set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= img_.width || y >= img_.height) return;
    uint8_t* p = &img_.pixels[(static_cast<size_t>(y) * img_.width + x) * 3];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }
  void hline(int x0, int x1, int y, Rgb c) {
    for (int x = std::min(x0, x1); x <= std::max(x0, x1); ++x) set(x, y, c);
  }
  void vline(int x, int y0, int y1, Rgb c) {
    for (int y = std::min(y0, y1); y <= std::max(y0, y1); ++y) set(x, y, c);
  }
  // Bresenham, `thick` pixels wide (vertically).
  void line(int x0, int y0, int x1, int y1, Rgb c, int thick = 1) {
    const int dx = std::abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
    const int dy = -std::abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    while (true) {
      for (int k = 0; k < thick; ++k) set(x0, y0 + k - thick / 2, c);
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) {
        err += dy;
        x0 += sx;
      }
      if (e2 <= dx) {
        err += dx;
        y0 += sy;
      }
    }
  }
  static int text_width(const std::string& s) { return static_cast<int>(s.size()) * 6 - 1; }
  void text(int x, int y, const std::string& s, Rgb c) {
    for (char ch : s) {
      const auto it = font().find(ch);
      if (it != font().end())
        for (int r = 0; r < 7; ++r)
          for (int col = 0; col < 5; ++col)
            if (it->second[r] & (0x10 >> col)) set(x + col, y + r, c);
      x += 6;
    }
  }
  io::Image take() { return std::move(img_); }

 private:
  io::Image img_;
};

// "0.01", "0.5", "2", "300", "1e-05" for axis labels.
std::string number_label(double v) {
  char buf[32];
  if (v >= 1e-4 && v < 1e6) {
    std::snprintf(buf, sizeof buf, "%.6g", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.0e", v);
  }
  return buf;
}

std::string step_label(int64_t s) {
  if (s >= 10000 && s % 1000 == 0) return std::to_string(s / 1000) + "k";
  return std::to_string(s);
}

}  // namespace

io::Image plot_loss_curve(const std::vector<int64_t>& steps, const std::vector<float>& losses,
                          int width, int height) {
  Canvas cv(width, height);
  const int left = 64, right = width - 16, top = 28, bottom = height - 32;
  std::vector<std::pair<int64_t, double>> pts;
  for (size_t i = 0; i < std::min(steps.size(), losses.size()); ++i)
    if (losses[i] > 0 && std::isfinite(losses[i])) pts.emplace_back(steps[i], losses[i]);

  // Ranges: whole decades on y, [0, last step] on x.
  double lo = 0.01, hi = 1.0;
  int64_t xmax = 1;
  if (!pts.empty()) {
    lo = hi = pts[0].second;
    for (const auto& p : pts) {
      lo = std::min(lo, p.second);
      hi = std::max(hi, p.second);
      xmax = std::max(xmax, p.first);
    }
  }
  double dlo = std::floor(std::log10(lo)), dhi = std::ceil(std::log10(hi));
  if (dhi <= dlo) dhi = dlo + 1;
  auto ypix = [&](double v) {
    return bottom -
           static_cast<int>(std::lround((std::log10(v) - dlo) / (dhi - dlo) * (bottom - top)));
  };
  auto xpix = [&](double s) {
    return left + static_cast<int>(std::lround(s / static_cast<double>(xmax) * (right - left)));
  };

  // Grid and y labels.
  for (int d = static_cast<int>(dlo); d <= static_cast<int>(dhi); ++d) {
    const double base = std::pow(10.0, d);
    cv.hline(left, right, ypix(base), kGrid);
    const std::string label = number_label(base);
    cv.text(left - 6 - Canvas::text_width(label), ypix(base) - 3, label, kAxis);
    if (d < dhi)
      for (double m : {2.0, 5.0}) {
        cv.hline(left, right, ypix(m * base), kGridMinor);
        if (dhi - dlo <= 2) {
          const std::string minor = number_label(m * base);
          cv.text(left - 6 - Canvas::text_width(minor), ypix(m * base) - 3, minor, kMinorLabel);
        }
      }
  }
  // X ticks at a 1-2-5 step giving about six of them.
  const double raw = static_cast<double>(xmax) / 6;
  const double mag = std::pow(10.0, std::floor(std::log10(std::max(raw, 1.0))));
  double tick = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      tick = m * mag;
      break;
    }
  for (double s = 0; s <= xmax + 1e-9; s += tick) {
    const int x = xpix(s);
    cv.vline(x, top, bottom, kGridMinor);
    cv.vline(x, bottom, bottom + 4, kAxis);
    const std::string label = step_label(static_cast<int64_t>(s));
    cv.text(x - Canvas::text_width(label) / 2, bottom + 8, label, kAxis);
  }
  // Axes and labels.
  cv.hline(left, right, bottom, kAxis);
  cv.vline(left, top, bottom, kAxis);
  cv.text(left, 10, "loss (log scale), raw and smoothed", kAxis);
  cv.text(right - Canvas::text_width("step"), bottom + 20, "step", kAxis);

  // The raw series, then an exponential moving average over it on top.
  for (size_t i = 1; i < pts.size(); ++i)
    cv.line(xpix(pts[i - 1].first), ypix(pts[i - 1].second), xpix(pts[i].first),
            ypix(pts[i].second), kRaw);
  if (pts.size() == 1)
    cv.line(xpix(pts[0].first), ypix(pts[0].second), xpix(pts[0].first), ypix(pts[0].second),
            kSmooth, 3);
  // Averaged in log space (as drawn) over a window of about 4% of the points, so the early fast
  // drop fades out of it as quickly as it happened.
  const double window = std::clamp(static_cast<double>(pts.size()) / 25.0, 1.0, 50.0);
  const double alpha = 1.0 - 1.0 / window;
  double ema = pts.empty() ? 0 : std::log(pts[0].second);
  for (size_t i = 1; i < pts.size(); ++i) {
    const double prev = ema;
    ema = alpha * ema + (1 - alpha) * std::log(pts[i].second);
    cv.line(xpix(pts[i - 1].first), ypix(std::exp(prev)), xpix(pts[i].first), ypix(std::exp(ema)),
            kSmooth, 2);
  }
  return cv.take();
}

}  // namespace stipple::train
