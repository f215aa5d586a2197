// The op set: every differentiable function on tensors. Models, samplers and trainers use only
// these. Each op checks its inputs (STIPPLE_CHECK: a clear error, never a crash), runs the active
// kernel table's kernel (ops/kernels.h), and, when grad mode is on and an input requires grad,
// records its gradient rule (autograd/node.h), written next to the forward in src/ops/*.cc.
//
// Dtypes: float ops compute in f32. f16/bf16/f64 inputs are converted to f32 on use; outputs are
// f32. Shapes follow PyTorch: broadcasting for elementwise ops, batch broadcasting in matmul.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace stipple {
class Generator;
}

namespace stipple::ops {

// ---------------- views and data movement ----------------
Tensor reshape(const Tensor& x, const Shape& shape);  // one entry may be -1; a view when possible
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor expand(const Tensor& x, const Shape& shape);  // broadcast; -1 keeps a dim
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor squeeze(const Tensor& x, int64_t dim);
Tensor flatten(const Tensor& x, int64_t start = 0, int64_t end = -1);
Tensor contiguous(const Tensor& x);  // plain row-major; returns x itself when already so
Tensor clone(const Tensor& x);
Tensor cast(const Tensor& x, DType dtype);
// x's values on `device` (x itself when already there), plain contiguous, same dtype; the
// gradient goes back to x's device.
Tensor to_device(const Tensor& x, Device device);
// Writes src's values into dst in place, without autograd: dst plain contiguous, src of the same
// shape in any float dtype, layout and device (converted to dst's dtype, copied to dst's device).
// Bumps dst's version (core/storage.h). Checkpoint loads and optimizer states use it.
void assign(const Tensor& dst, const Tensor& src);
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim);
// Constant padding, PyTorch F.pad order: {last_left, last_right, prev_left, prev_right, ...}.
Tensor pad(const Tensor& x, const std::vector<int64_t>& pads, float value = 0.0f);
Tensor to_blocked(const Tensor& x, int block);  // NCHW -> nChw{block}c (inference layout)

// ---------------- elementwise ----------------
enum class UnaryOp {
  kNeg, kExp, kLog, kSqrt, kRsqrt, kSigmoid, kTanh, kSilu, kGeluErf, kGeluTanh, kQuickGelu,
  kRelu, kAbs, kSquare, kSin, kCos, kReciprocal
};
enum class BinaryOp { kAdd, kSub, kMul, kDiv, kMax, kMin };

Tensor unary(UnaryOp op, const Tensor& x);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor gelu(const Tensor& x, bool tanh_approximation = false);
Tensor quick_gelu(const Tensor& x);  // x * sigmoid(1.702 x), CLIP's activation
Tensor relu(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor square(const Tensor& x);
Tensor sin(const Tensor& x);
Tensor cos(const Tensor& x);
Tensor reciprocal(const Tensor& x);

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);

Tensor affine(const Tensor& x, float scale, float shift);  // x * scale + shift
Tensor pow(const Tensor& x, float exponent);
Tensor clamp(const Tensor& x, float lo, float hi);
Tensor geglu(const Tensor& x);  // last dim split in (h, gate): h * gelu(gate)

// ---------------- reductions ----------------
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor sum(const Tensor& x);  // all elements -> 0-d
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor max(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
// Sums `x` down to `shape` (the reverse of broadcasting); used by gradient rules.
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---------------- linear algebra ----------------
// PyTorch matmul for >= 2-D operands: [..., M, K] @ [..., K, N] with broadcast batch dims.
Tensor matmul(const Tensor& a, const Tensor& b);
// x [..., in] @ weight[out, in]^T + bias[out]; bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// The precision matmul and linear compute their products in, on this thread (a training speed
// setting, as PyTorch's bf16 autocast runs matmuls). kBF16: both operands rounded to bf16 (to
// nearest, ties to even), the exact products summed in f32, the result f32; the gradients of
// such an op are bf16 matmuls too (the precision is fixed when the op runs, not when backward
// does). Elementwise ops, norms, attention and convolutions stay f32. The CPU runs them on
// oneDNN's AVX512-BF16/AMX kernels where the CPU has them (about twice the f32 rate), else as f32
// products of the rounded operands (same values, no faster): KernelTable::native_bf16_matmul.
enum class MatmulPrecision : uint8_t { kF32, kBF16 };
MatmulPrecision matmul_precision();
// "f32" / "bf16"; parse_matmul_precision throws naming the choices.
const char* matmul_precision_name(MatmulPrecision p);
MatmulPrecision parse_matmul_precision(const std::string& name);
// Sets this thread's matmul precision for the scope's lifetime.
class MatmulPrecisionScope {
 public:
  explicit MatmulPrecisionScope(MatmulPrecision p);
  ~MatmulPrecisionScope();
  MatmulPrecisionScope(const MatmulPrecisionScope&) = delete;
  MatmulPrecisionScope& operator=(const MatmulPrecisionScope&) = delete;

 private:
  MatmulPrecision saved_;
};

struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
};
// x [N, C, H, W], weight [O, C, kh, kw], bias [O] or undefined. Groups = 1.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
              const Conv2dParams& p = {});
// Whether conv2d may return channel-blocked outputs on inference paths (nothing to record); on by
// default. Off forces plain NCHW everywhere (debugging, comparing layouts).
void set_blocked_layout(bool on);
bool blocked_layout_enabled();
// The budget of the CPU convolutions' cache of weights kept in oneDNN's layout (f32) between
// calls (STIPPLE_CONV_WEIGHT_CACHE_MB at start, default 1 GB); setting it drops what no longer
// fits. 0 reorders (and widens half-precision weights) on every call: low-memory runs.
void set_conv_weight_cache_budget(size_t bytes);
size_t conv_weight_cache_budget();

// ---------------- normalisation, softmax, attention ----------------
// x [N, C, ...], C divisible by groups; weight/bias [C] or undefined.
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                  float eps = 1e-5f);
// Over the last dim; weight/bias [D] or undefined.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps = 1e-5f);
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);
// q [B, H, Lq, D], k and v [B, H, Lk, D] (v may have its own last dim Dv). `mask` is additive
// and broadcasts to [B, H, Lq, Lk] (use -inf to block). scale <= 0 means 1/sqrt(D). Never builds
// the full Lq x Lk matrix for long sequences (tiled, online softmax).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& mask = Tensor(), float scale = 0.0f,
                                    bool causal = false);

// ---------------- resampling, lookup, regularisation ----------------
Tensor upsample_nearest2x(const Tensor& x);  // [N, C, H, W] -> [N, C, 2H, 2W]
Tensor avg_pool2x(const Tensor& x);          // [N, C, H, W] -> [N, C, H/2, W/2]
Tensor embedding(const Tensor& weight, const Tensor& ids);  // weight [V, D], ids i64 -> [..., D]
Tensor dropout(const Tensor& x, float p, Generator& gen, bool training = true);

// ---------------- losses ----------------
Tensor mse_loss(const Tensor& pred, const Tensor& target);  // mean of squares
Tensor cross_entropy(const Tensor& logits, const Tensor& labels);  // logits [N, K], labels i64 [N]

}  // namespace stipple::ops
