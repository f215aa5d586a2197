// Fast CPU linear algebra on oneDNN 2.6: matmul, conv2d forward, conv2d backward data and
// backward weights (+ bias). Every entry has a plain-loop twin in ref_linalg.cc and
// tests/test_linalg.cc holds them together.
//
// oneDNN stays inside this file (its API changed in 3.x). Choices made here:
// - One global engine; one stream per thread (CPU streams are cheap). Primitives use a
//   user-managed scratchpad from a per-thread buffer, so one cached primitive can run on several
//   threads at once.
// - Primitive descriptors and primitives are cached by shape and parameters (PrimitiveCache), so a
//   repeated call neither re-creates the descriptor nor re-JITs.
// - Forward convolutions run in oneDNN's channel-blocked layout (nChw8c on AVX2, nChw16c on
//   AVX-512) on every side whose channels fill whole blocks, asked for explicitly: with
//   format_tag::any oneDNN 2.6 on AVX-512 picks its NHWC "brgconv" kernels, which measured slower
//   here than the blocked direct kernels (3x3 320->320 at 64x64: 33 vs 24 ms of main-thread CPU
//   time) and far slower for 3- or 4-channel inputs. The backward kernels let oneDNN pick
//   (format_tag::any; it picks the blocked kernels for them).
//   Inputs are reordered into the chosen layout when they are not in it already. When the caller
//   allows it and the output is in a blocked layout with whole blocks, it stays blocked
//   (Tensor::empty_blocked); otherwise it is reordered back to plain NCHW.
// - Forward weights are reordered to the primitive's layout on every call, except for weights
//   whose storage is frozen (Module::freeze_for_inference; see core/storage.h): those are kept
//   reordered in WeightCache, keyed by storage id + offset + dtype + shape + the primitive's
//   weight descriptor and tagged with the storage version, so an in-place update (optimiser step,
//   load_state_dict) makes the entry stale. At SD's 8x8 and 16x16 levels the reorder costs as much
//   as the convolution (1280->1280 3x3 at 8x8: 33 ms of copy next to 56 ms of conv). Each cached
//   weight is a second f32 copy, so the cache holds at most STIPPLE_CONV_WEIGHT_CACHE_MB (default
//   1024) and, once full, keeps what it has (an LRU would evict every entry once per UNet step and
//   never hit). SD 1.5 at 512x512 measured 7.49 s/step without it, 7.08 with 1 GB (+1.1 GB RSS)
//   and 6.43 with all conv weights (~2.3 GB). The backward kernels (training) always reorder.
// - Weights may be stored as f16 or bf16 (half-precision checkpoints): they are widened to f32 and
//   written in the primitive's layout in one pass (widen_into_layout; oneDNN 2.6's own f16 -> f32
//   reorder made an SD step 7x slower). Weights reordered for one call only (not frozen, or not
//   in the cache) go to a per-thread buffer that is kept, not to fresh memory each call.
#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "backends/cpu/convert.h"
#include "backends/cpu/fill.h"
#include "ops/ops.h"

namespace stipple::cpu {

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using DT = memory::data_type;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& cpu_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

// A per-thread buffer grown as needed and kept (page-aligned), so that repeated calls reuse
// resident memory instead of taking freshly mapped pages each time. Throws bad_alloc when it
// cannot grow.
class ThreadBuffer {
 public:
  ~ThreadBuffer() { std::free(data_); }
  void* reserve(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + 4095) / 4096 * 4096;
      data_ = std::aligned_alloc(4096, size_);
      if (data_ == nullptr) {
        size_ = 0;
        throw std::bad_alloc();
      }
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// oneDNN's scratchpad: one per thread, reused across primitives.
memory scratchpad_for(const memory::desc& md) {
  thread_local ThreadBuffer buf;
  return memory(md, cpu_engine(), buf.reserve(md.get_size()));
}

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A small thread-safe map from a key to a cached primitive bundle. Creation runs outside the lock
// (JIT can take milliseconds); if two threads race, the first stored entry wins.
template <typename Entry>
class PrimitiveCache {
 public:
  template <typename Make>
  std::shared_ptr<const Entry> get(const std::string& key, Make&& make) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = map_.find(key);
      if (it != map_.end()) return it->second;
    }
    auto entry = std::make_shared<const Entry>(make());
    std::lock_guard<std::mutex> lock(mu_);
    if (map_.size() >= kMaxEntries) map_.clear();
    return map_.emplace(key, std::move(entry)).first->second;
  }

 private:
  static constexpr size_t kMaxEntries = 512;
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<const Entry>> map_;
};

memory::dims to_dims(const Shape& s) { return memory::dims(s.begin(), s.end()); }

// The memory descriptor of a 4-D tensor as stored: plain NCHW or channel-blocked.
memory::desc md_of_nchw(const Tensor& t) {
  const int b = t.channel_block();
  const Tag tag = b == 8 ? Tag::nChw8c : b == 16 ? Tag::nChw16c : Tag::nchw;
  STIPPLE_ASSERT(b == 0 || b == 8 || b == 16);
  return memory::desc(to_dims(t.shape()), DT::f32, tag);
}

memory wrap(const memory::desc& md, const Tensor& t) {
  return memory(md, cpu_engine(), t.raw_data());
}

// oneDNN memory of layout `md` in a storage of stipple's (the block cache, or a sampling loop's
// memory plan), which `*keep` holds: oneDNN's own allocation is a malloc, which in --low-memory
// maps fresh pages (zeroed by the kernel) on every call for anything of 1 MiB or more.
memory memory_in_storage(const memory::desc& md, Tensor* keep) {
  *keep = Tensor::empty({static_cast<int64_t>((md.get_size() + sizeof(float) - 1) / sizeof(float))});
  return memory(md, cpu_engine(), keep->raw_data());
}

// `src` in the layout `want`: src itself when it already is, else a reordered copy (in a storage
// that `*keep` holds).
memory reorder_to(const memory& src, const memory::desc& want, Tensor* keep) {
  if (src.get_desc() == want) return src;
  memory dst = memory_in_storage(want, keep);
  dnnl::reorder(src, dst).execute(cpu_stream(), const_cast<memory&>(src), dst);
  return dst;
}

void reorder_into(const memory& src, const memory& dst) {
  dnnl::reorder(src, dst).execute(cpu_stream(), const_cast<memory&>(src), const_cast<memory&>(dst));
}

// The offset of element (d0, d1, d2, d3) of a 4-D blocked oneDNN layout is a sum of one part per
// dimension: its outer index times the dimension's stride, plus its position in each inner block
// on that dimension times the block's stride. `part[d][i]` is that part for index i of dimension
// d (over the padded dims); `block[d]` the product of the inner blocks on d.
struct BlockedOffsets {
  std::array<std::vector<int64_t>, 4> part;
  std::array<int64_t, 4> block{1, 1, 1, 1};
  bool padded = false;  // the layout pads a dimension (those elements must read as zero)
};

bool blocked_offsets(const memory::desc& md, BlockedOffsets* t) {
  const dnnl_memory_desc_t& d = md.data;
  if (d.ndims != 4 || d.format_kind != dnnl_blocked) return false;
  const dnnl_blocking_desc_t& b = d.format_desc.blocking;
  std::array<int64_t, DNNL_MAX_NDIMS> stride_after{};  // stride of inner block j
  int64_t inner = 1;
  for (int j = b.inner_nblks - 1; j >= 0; --j) {
    stride_after[j] = inner;
    inner *= b.inner_blks[j];
  }
  for (int dim = 0; dim < 4; ++dim) {
    if (d.padded_offsets[dim] != 0) return false;
    for (int j = 0; j < b.inner_nblks; ++j) {
      if (b.inner_idxs[j] == dim) t->block[dim] *= b.inner_blks[j];
    }
    const int64_t n = d.padded_dims[dim];
    t->padded = t->padded || n != d.dims[dim];
    std::vector<int64_t>& part = t->part[dim];
    part.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      int64_t off = d.offset0 * (dim == 0) + (i / t->block[dim]) * b.strides[dim];
      int64_t rest = t->block[dim];  // product of the blocks on dim from block j inwards
      for (int j = 0; j < b.inner_nblks; ++j) {
        if (b.inner_idxs[j] != dim) continue;
        rest /= b.inner_blks[j];
        off += (i / rest) % b.inner_blks[j] * stride_after[j];
      }
      part[static_cast<size_t>(i)] = off;
    }
  }
  return true;
}

// Plain OIHW f16/bf16 weights `w` widened straight into `dst` in the blocked layout `t` describes,
// one pass over the weights (tests/test_linalg.cc holds convolutions with half-precision weights to
// the reference convolution of the widened weights). Work items are
// (output block, input block) pairs: each writes one contiguous run of the blocked layout.
void widen_into_layout(const Tensor& w, const BlockedOffsets& t, float* dst, size_t dst_bytes) {
  const int kind = w.dtype() == DType::kF16 ? 0 : 1;
  const uint16_t* src = w.data<uint16_t>();
  const int64_t O = w.size(0), I = w.size(1), H = w.size(2), W = w.size(3), hw = H * W;
  if (t.padded) std::memset(dst, 0, dst_bytes);
  const int64_t ob = t.block[0], ib = t.block[1];
  const int64_t n_ob = (O + ob - 1) / ob, n_ib = (I + ib - 1) / ib;
  const int64_t* p0 = t.part[0].data();
  const int64_t* p1 = t.part[1].data();
  const int64_t* p2 = t.part[2].data();
  const int64_t* p3 = t.part[3].data();
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(ib * hw));
#pragma omp for schedule(static)
    for (int64_t task = 0; task < n_ob * n_ib; ++task) {
      const int64_t o0 = task / n_ib * ob, i0 = task % n_ib * ib;
      const int64_t ni = std::min(ib, I - i0);
      for (int64_t o = o0; o < std::min(o0 + ob, O); ++o) {
        widen_halves(kind, src + (o * I + i0) * hw, row.data(), ni * hw);
        const float* r = row.data();
        for (int64_t i = 0; i < ni; ++i) {
          const int64_t oi = p0[o] + p1[i0 + i];
          for (int64_t h = 0; h < H; ++h) {
            const int64_t oih = oi + p2[h];
            for (int64_t x = 0; x < W; ++x) dst[oih + p3[x]] = *r++;
          }
        }
      }
    }
  }
}

// The calling thread's buffer for weights reordered for one call only: grown as needed and kept,
// so that an unfrozen or uncached weight does not take freshly mapped (page-faulted) memory per
// call. Valid until this thread's next convolution.
void* weight_scratch(size_t bytes) {
  thread_local ThreadBuffer buf;
  return buf.reserve(bytes);
}

// `w` (plain OIHW, f32, f16 or bf16, contiguous) reordered into layout `want` (f32): into this
// thread's scratch buffer when `scratch`, else into a new buffer the memory owns. Half-precision
// weights are widened and laid out in one pass (widen_into_layout) when `want` is a blocked
// layout, else widened (Highway) and then reordered by oneDNN (whose own f16 -> f32 reorder in 2.6
// is a slow reference loop: an SD step 7x slower).
memory reorder_weights(const Tensor& w, const memory::dims& dims, const memory::desc& want,
                       bool scratch) {
  STIPPLE_ASSERT(w.dtype() == DType::kF32 || w.dtype() == DType::kF16 ||
                 w.dtype() == DType::kBF16);
  memory dst = scratch ? memory(want, cpu_engine(), weight_scratch(want.get_size()))
                       : memory(want, cpu_engine());
  if (w.dtype() == DType::kF32) {
    reorder_into(wrap(memory::desc(dims, DT::f32, Tag::oihw), w), dst);
    return dst;
  }
  BlockedOffsets t;
  if (blocked_offsets(want, &t)) {
    widen_into_layout(w, t, static_cast<float*>(dst.get_data_handle()), want.get_size());
  } else {
    const Tensor w32 = fast_kernels().copy(w, DType::kF32);
    reorder_into(wrap(memory::desc(dims, DT::f32, Tag::oihw), w32), dst);
  }
  return dst;
}

// Reordered weights of frozen storages (see the header comment). Thread-safe.
class WeightCache {
 public:
  static WeightCache& instance() {  // never destroyed: its memories outlive no engine at exit
    static WeightCache* cache = new WeightCache();
    return *cache;
  }

  // `w` in layout `want`: the cached copy when w's storage is frozen and unchanged since, else a
  // fresh reorder (stored for next time when frozen and the budget allows).
  memory get(const Tensor& w, const memory::dims& dims, const memory::desc& want) {
    const std::shared_ptr<Storage>& s = w.storage();
    if (w.dtype() == DType::kF32) {
      const memory plain = wrap(memory::desc(dims, DT::f32, Tag::oihw), w);
      if (plain.get_desc() == want) return plain;
      if (!s->frozen()) return reorder_weights(w, dims, want, /*scratch=*/true);
    } else if (!s->frozen()) {
      return reorder_weights(w, dims, want, /*scratch=*/true);
    }
    const std::string key = key_of(w);
    const uint64_t version = s->version();
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = map_.find(key);
      if (it != map_.end()) {
        std::vector<Entry>& list = it->second;
        for (size_t i = 0; i < list.size(); ++i) {
          if (!(list[i].md == want)) continue;
          if (list[i].version == version) return list[i].mem;
          bytes_ -= list[i].bytes;  // stale: the weights were written since
          list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
          break;
        }
      }
    }
    const size_t bytes = want.get_size();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (bytes_ + bytes > budget_) drop_dead();
      if (bytes_ + bytes > budget_) return reorder_weights(w, dims, want, /*scratch=*/true);
    }
    memory m = reorder_weights(w, dims, want, /*scratch=*/false);
    std::lock_guard<std::mutex> lock(mu_);
    if (bytes_ + bytes <= budget_) {
      map_[key].push_back(Entry{s, version, want, m, bytes});
      bytes_ += bytes;
    }
    return m;
  }

  // Whether get() keeps `w` in the cache, or would: its storage is frozen and it is cached already
  // or `bytes` more fit in the budget.
  bool holds_or_fits(const Tensor& w, size_t bytes) {
    if (!w.storage()->frozen()) return false;
    const std::string key = key_of(w);
    std::lock_guard<std::mutex> lock(mu_);
    return bytes_ + bytes <= budget_ || map_.count(key) > 0;
  }

 private:
  static std::string key_of(const Tensor& w) {
    return str_cat(w.storage()->id(), ':', w.storage_offset(), ':', dtype_name(w.dtype()), ':',
                   shape_str(w.shape()));
  }

  struct Entry {
    std::weak_ptr<Storage> owner;
    uint64_t version;
    memory::desc md;
    memory mem;  // owns its buffer
    size_t bytes;
  };

  WeightCache() {
    const char* env = std::getenv("STIPPLE_CONV_WEIGHT_CACHE_MB");
    if (env != nullptr) budget_ = static_cast<size_t>(std::strtoull(env, nullptr, 10)) << 20;
  }

  // Removes the entries of storages that no longer exist.
  void drop_dead() {
    for (auto it = map_.begin(); it != map_.end();) {
      std::vector<Entry>& list = it->second;
      for (size_t i = list.size(); i-- > 0;) {
        if (!list[i].owner.expired()) continue;
        bytes_ -= list[i].bytes;
        list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
      }
      it = list.empty() ? map_.erase(it) : std::next(it);
    }
  }

  static constexpr size_t kDefaultBudget = size_t{1024} << 20;

 public:
  void set_budget(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    budget_ = bytes;
    drop_dead();
    for (auto it = map_.begin(); bytes_ > budget_ && it != map_.end();) {
      for (const Entry& e : it->second) bytes_ -= e.bytes;
      it = map_.erase(it);
    }
  }
  size_t budget() {
    std::lock_guard<std::mutex> lock(mu_);
    return budget_;
  }

 private:
  std::mutex mu_;
  std::unordered_map<std::string, std::vector<Entry>> map_;
  size_t bytes_ = 0;
  size_t budget_ = kDefaultBudget;
};

// ---------------------------------------------------------------- matmul

struct MatmulEntry {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul prim;
};

// op(a) @ op(b) for operands of data type `dt` (f32, or bf16 with f32 accumulation), f32 out.
Tensor matmul_of(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, DT dt) {
  const int64_t ba = a.size(0), bb = b.size(0);
  const int64_t m = trans_a ? a.size(2) : a.size(1);
  const int64_t k = trans_a ? a.size(1) : a.size(2);
  const int64_t n = trans_b ? b.size(1) : b.size(2);
  const int64_t batch = ba > bb ? ba : bb;
  Tensor out = Tensor::empty({batch, m, n});
  if (out.numel() == 0) return out;
  if (k == 0) return Tensor::zeros({batch, m, n});
  // Transposes are strides on the logical [B, M, K] / [B, K, N] views; batch 1 broadcasts.
  const memory::desc a_md({ba, m, k}, dt,
                          trans_a ? memory::dims{m * k, 1, m} : memory::dims{m * k, k, 1});
  const memory::desc b_md({bb, k, n}, dt,
                          trans_b ? memory::dims{k * n, 1, k} : memory::dims{k * n, n, 1});
  const memory::desc c_md({batch, m, n}, DT::f32, Tag::abc);
  static PrimitiveCache<MatmulEntry> cache;
  const std::string key = str_cat(ba, ',', bb, ',', m, ',', k, ',', n, ',', trans_a, trans_b,
                                  dt == DT::bf16 ? ",bf16" : "");
  auto e = cache.get(key, [&] {
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), user_scratchpad(),
                                    cpu_engine());
    return MatmulEntry{pd, dnnl::matmul(pd)};
  });
  e->prim.execute(cpu_stream(), {{DNNL_ARG_SRC, wrap(a_md, a)},
                                 {DNNL_ARG_WEIGHTS, wrap(b_md, b)},
                                 {DNNL_ARG_DST, wrap(c_md, out)},
                                 {DNNL_ARG_SCRATCHPAD, scratchpad_for(e->pd.scratchpad_desc())}});
  return out;
}

Tensor fast_matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  return matmul_of(a, b, trans_a, trans_b, DT::f32);
}

// Whether oneDNN runs bf16 matmuls on bf16 instructions here (AVX512-BF16 or AMX). Without them
// oneDNN 2.6 emulates bf16 (AVX-512) or has no bf16 matmul (AVX2).
bool native_bf16() {
  static const bool yes = [] {
    const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
    return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
  }();
  return yes;
}

// The f32 operands rounded to bf16 (Highway's conversion, round to nearest even), then oneDNN's
// bf16 x bf16 -> f32 matmul; without bf16 instructions, the f32 matmul of the rounded values.
Tensor fast_matmul_bf16(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const KernelTable& kt = fast_kernels();
  const auto bf16 = [&](const Tensor& t) {
    return t.dtype() == DType::kBF16 ? t : kt.copy(t, DType::kBF16);
  };
  const Tensor a16 = bf16(a), b16 = bf16(b);
  if (native_bf16()) return matmul_of(a16, b16, trans_a, trans_b, DT::bf16);
  return matmul_of(kt.copy(a16, DType::kF32), kt.copy(b16, DType::kF32), trans_a, trans_b,
                   DT::f32);
}

// ---------------------------------------------------------------- convolution

// The geometry of one convolution in oneDNN's terms (dilation counts extra gaps: 0 = none).
struct ConvSpec {
  memory::dims x, w, y, bias;
  memory::dims strides, dilates, pad_l, pad_r;

  ConvSpec(const Shape& xs, const Shape& ws, const ops::Conv2dParams& p) {
    const int64_t ho = (xs[2] + 2 * p.pad_h - p.dilation_h * (ws[2] - 1) - 1) / p.stride_h + 1;
    const int64_t wo = (xs[3] + 2 * p.pad_w - p.dilation_w * (ws[3] - 1) - 1) / p.stride_w + 1;
    x = to_dims(xs);
    w = to_dims(ws);
    y = {xs[0], ws[0], ho, wo};
    bias = {ws[0]};
    strides = {p.stride_h, p.stride_w};
    dilates = {p.dilation_h - 1, p.dilation_w - 1};
    pad_l = {p.pad_h, p.pad_w};
    pad_r = {p.pad_h, p.pad_w};
  }
  std::string key(bool has_bias) const {
    return str_cat(x[0], ',', x[1], ',', x[2], ',', x[3], '|', w[0], ',', w[2], ',', w[3], '|',
                   strides[0], ',', strides[1], ',', dilates[0], ',', dilates[1], ',', pad_l[0],
                   ',', pad_l[1], has_bias ? "|b" : "");
  }
  memory::desc any(const memory::dims& d) const { return memory::desc(d, DT::f32, Tag::any); }

  // src and dst layouts are `x_tag` and `y_tag` (format_tag::any lets oneDNN choose).
  dnnl::convolution_forward::desc forward_desc(dnnl::prop_kind kind, bool has_bias,
                                               Tag x_tag = Tag::any, Tag y_tag = Tag::any) const {
    const memory::desc xd(x, DT::f32, x_tag), yd(y, DT::f32, y_tag);
    if (has_bias) {
      return dnnl::convolution_forward::desc(kind, dnnl::algorithm::convolution_direct, xd, any(w),
                                             memory::desc(bias, DT::f32, Tag::x), yd, strides,
                                             dilates, pad_l, pad_r);
    }
    return dnnl::convolution_forward::desc(kind, dnnl::algorithm::convolution_direct, xd, any(w),
                                           yd, strides, dilates, pad_l, pad_r);
  }
};

// The channel block of oneDNN's direct-convolution kernels on this CPU: 16 with AVX-512, else 8.
int native_block() {
  static const int block = [] {
    switch (dnnl::get_effective_cpu_isa()) {
      case dnnl::cpu_isa::avx512_core:
      case dnnl::cpu_isa::avx512_core_vnni:
      case dnnl::cpu_isa::avx512_core_bf16:
      case dnnl::cpu_isa::avx512_core_amx:
      case dnnl::cpu_isa::avx512_mic:
      case dnnl::cpu_isa::avx512_mic_4ops:
        return 16;
      default:
        return 8;
    }
  }();
  return block;
}

// The block of a chosen NCHW-family layout: 8 or 16 for nChw8c / nChw16c, else 0.
int block_of(const memory::desc& md, const memory::dims& dims) {
  if (md == memory::desc(dims, DT::f32, Tag::nChw8c)) return 8;
  if (md == memory::desc(dims, DT::f32, Tag::nChw16c)) return 16;
  return 0;
}

// Runs `fill(dst_memory)` so that its result lands in a plain NCHW tensor (or a blocked one when
// `allow_blocked` and the chosen layout is nChw8c/16c with whole blocks).
template <typename Fill>
Tensor conv_output(const memory::desc& chosen, const memory::dims& dims, bool allow_blocked,
                   Fill&& fill) {
  const Shape shape(dims.begin(), dims.end());
  const int block = block_of(chosen, dims);
  if (allow_blocked && block > 0 && shape[1] % block == 0) {
    Tensor out = Tensor::empty_blocked(shape, block);
    fill(wrap(chosen, out));
    return out;
  }
  Tensor out = Tensor::empty(shape);
  const memory plain = wrap(memory::desc(dims, DT::f32, Tag::nchw), out);
  if (chosen == plain.get_desc()) {
    fill(plain);
  } else {
    Tensor keep;
    memory tmp = memory_in_storage(chosen, &keep);
    fill(tmp);
    reorder_into(tmp, plain);
  }
  return out;
}

struct ConvFwdEntry {
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::convolution_forward prim;
};

Tensor fast_conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const ops::Conv2dParams& p,
                   bool allow_blocked);

// The most bytes of f32 weights one convolution call reorders into the per-thread buffer
// (weight_scratch): a layer with more, when the cache does not keep it, runs in groups of output
// channels. Without the bound that buffer grew to SD 1.5's largest layer (2560 -> 1280 3x3:
// 113 MiB), resident for good, a sixth of what --low-memory holds besides the weights.
constexpr size_t kWeightScratchLimit = size_t{16} << 20;

// conv2d of `x` with `w` in groups of `group` output channels, each group a call of its own (its
// weights reordered alone), written into one plain NCHW output.
Tensor conv_in_output_groups(const Tensor& x, const Tensor& w, const Tensor& bias,
                             const ops::Conv2dParams& p, int64_t group) {
  const int64_t n = x.size(0), o = w.size(0);
  Tensor y;
  int64_t plane = 0;
  for (int64_t o0 = 0; o0 < o; o0 += group) {
    const int64_t g = std::min(group, o - o0);
    const Tensor yg = fast_conv2d(x, w.narrow(0, o0, g),
                                  bias.defined() ? bias.narrow(0, o0, g) : Tensor(), p, false);
    if (!y.defined()) {
      y = Tensor::empty({n, o, yg.size(2), yg.size(3)});
      plane = yg.size(2) * yg.size(3);
    }
    const float* src = yg.data<float>();
    float* dst = y.data<float>();
    for (int64_t b = 0; b < n; ++b) {
      std::memcpy(dst + (b * o + o0) * plane, src + b * g * plane,
                  static_cast<size_t>(g * plane) * sizeof(float));
    }
  }
  return y;
}

Tensor fast_conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const ops::Conv2dParams& p,
                   bool allow_blocked) {
  const int block = native_block();
  const size_t w_bytes = static_cast<size_t>(w.numel()) * sizeof(float);
  if (w_bytes > kWeightScratchLimit && w.size(0) > block &&
      !WeightCache::instance().holds_or_fits(w, w_bytes)) {
    const size_t per_channel = w_bytes / static_cast<size_t>(w.size(0));
    const int64_t fit = static_cast<int64_t>(kWeightScratchLimit / per_channel) / block * block;
    return conv_in_output_groups(x, w, bias, p, std::max<int64_t>(block, fit));
  }
  const ConvSpec spec(x.shape(), w.shape(), p);
  // Whole blocks: the blocked direct kernels. A few input channels (RGB, latents): plain NCHW
  // input (oneDNN's first-layer kernels read it directly). A few output channels: oneDNN's choice
  // (a padded blocked output, reordered to plain below; asking for plain NCHW there selects a
  // reference kernel hundreds of times slower).
  const Tag blk = block == 16 ? Tag::nChw16c : Tag::nChw8c;
  const Tag x_tag = spec.x[1] % block == 0 ? blk : Tag::nchw;
  const Tag y_tag = spec.y[1] % block == 0 ? blk : Tag::any;
  static PrimitiveCache<ConvFwdEntry> cache;
  auto e = cache.get(str_cat(spec.key(bias.defined()), '|', block), [&] {
    dnnl::convolution_forward::primitive_desc pd(
        spec.forward_desc(dnnl::prop_kind::forward_inference, bias.defined(), x_tag, y_tag),
        user_scratchpad(), cpu_engine());
    return ConvFwdEntry{pd, dnnl::convolution_forward(pd)};
  });
  Tensor src_keep;
  const memory src = reorder_to(wrap(md_of_nchw(x), x), e->pd.src_desc(), &src_keep);
  const memory wts = WeightCache::instance().get(w, spec.w, e->pd.weights_desc());
  return conv_output(e->pd.dst_desc(), spec.y, allow_blocked, [&](const memory& dst) {
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, src},
        {DNNL_ARG_WEIGHTS, wts},
        {DNNL_ARG_DST, dst},
        {DNNL_ARG_SCRATCHPAD, scratchpad_for(e->pd.scratchpad_desc())}};
    if (bias.defined()) args[DNNL_ARG_BIAS] = wrap(memory::desc(spec.bias, DT::f32, Tag::x), bias);
    e->prim.execute(cpu_stream(), args);
  });
}

struct ConvBwdDataEntry {
  dnnl::convolution_backward_data::primitive_desc pd;
  dnnl::convolution_backward_data prim;
};

Tensor fast_conv2d_backward_data(const Tensor& grad_y, const Tensor& w, const Shape& x_shape,
                                 const ops::Conv2dParams& p) {
  const ConvSpec spec(x_shape, w.shape(), p);
  static PrimitiveCache<ConvBwdDataEntry> cache;
  auto e = cache.get(spec.key(false), [&] {
    dnnl::convolution_forward::primitive_desc hint(
        spec.forward_desc(dnnl::prop_kind::forward_training, false), cpu_engine());
    dnnl::convolution_backward_data::primitive_desc pd(
        dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, spec.any(spec.x),
                                              spec.any(spec.w), spec.any(spec.y), spec.strides,
                                              spec.dilates, spec.pad_l, spec.pad_r),
        user_scratchpad(), cpu_engine(), hint);
    return ConvBwdDataEntry{pd, dnnl::convolution_backward_data(pd)};
  });
  Tensor gy_keep, w_keep;
  const memory gy = reorder_to(wrap(md_of_nchw(grad_y), grad_y), e->pd.diff_dst_desc(), &gy_keep);
  const memory wts = reorder_to(wrap(memory::desc(spec.w, DT::f32, Tag::oihw), w),
                                e->pd.weights_desc(), &w_keep);
  return conv_output(e->pd.diff_src_desc(), spec.x, false, [&](const memory& gx) {
    e->prim.execute(cpu_stream(), {{DNNL_ARG_DIFF_DST, gy},
                                   {DNNL_ARG_WEIGHTS, wts},
                                   {DNNL_ARG_DIFF_SRC, gx},
                                   {DNNL_ARG_SCRATCHPAD, scratchpad_for(e->pd.scratchpad_desc())}});
  });
}

struct ConvBwdWeightsEntry {
  dnnl::convolution_backward_weights::primitive_desc pd;
  dnnl::convolution_backward_weights prim;
};

void fast_conv2d_backward_weight(const Tensor& x, const Tensor& grad_y, const Shape& w_shape,
                                 const ops::Conv2dParams& p, Tensor* grad_w, Tensor* grad_b) {
  if (!grad_w && !grad_b) return;
  const ConvSpec spec(x.shape(), w_shape, p);
  const memory::desc bias_md(spec.bias, DT::f32, Tag::x);
  static PrimitiveCache<ConvBwdWeightsEntry> cache;
  auto e = cache.get(spec.key(true), [&] {
    dnnl::convolution_forward::primitive_desc hint(
        spec.forward_desc(dnnl::prop_kind::forward_training, true), cpu_engine());
    dnnl::convolution_backward_weights::primitive_desc pd(
        dnnl::convolution_backward_weights::desc(
            dnnl::algorithm::convolution_direct, spec.any(spec.x), spec.any(spec.w), bias_md,
            spec.any(spec.y), spec.strides, spec.dilates, spec.pad_l, spec.pad_r),
        user_scratchpad(), cpu_engine(), hint);
    return ConvBwdWeightsEntry{pd, dnnl::convolution_backward_weights(pd)};
  });
  Tensor src_keep, gy_keep;
  const memory src = reorder_to(wrap(md_of_nchw(x), x), e->pd.src_desc(), &src_keep);
  const memory gy = reorder_to(wrap(md_of_nchw(grad_y), grad_y), e->pd.diff_dst_desc(), &gy_keep);
  Tensor gb = Tensor::empty({w_shape[0]});
  Tensor gw = conv_output(e->pd.diff_weights_desc(), spec.w, false, [&](const memory& dw) {
    e->prim.execute(cpu_stream(), {{DNNL_ARG_SRC, src},
                                   {DNNL_ARG_DIFF_DST, gy},
                                   {DNNL_ARG_DIFF_WEIGHTS, dw},
                                   {DNNL_ARG_DIFF_BIAS, wrap(bias_md, gb)},
                                   {DNNL_ARG_SCRATCHPAD, scratchpad_for(e->pd.scratchpad_desc())}});
  });
  if (grad_w) *grad_w = gw;
  if (grad_b) *grad_b = gb;
}

}  // namespace

void fill_fast_linalg(KernelTable& t) {
  t.matmul = fast_matmul;
  t.matmul_bf16 = fast_matmul_bf16;
  t.native_bf16_matmul = native_bf16();
  t.conv2d = fast_conv2d;
  t.conv2d_backward_data = fast_conv2d_backward_data;
  t.conv2d_backward_weight = fast_conv2d_backward_weight;
}

}  // namespace stipple::cpu

namespace stipple::ops {

void set_conv_weight_cache_budget(size_t bytes) { cpu::WeightCache::instance().set_budget(bytes); }
size_t conv_weight_cache_budget() { return cpu::WeightCache::instance().budget(); }

}  // namespace stipple::ops
