// oneDNN bfloat16 convolutions (forward, input gradient, kernel gradient) as XLA FFI handlers.
// The forward convolution also comes with the layer's bias and ReLU fused in (one pass over
// the output instead of three in XLA: see conv.py's conv_bias_relu_onednn), with ReLU's
// gradient for its backward pass; the max-pool that follows FacialNet's convolutions is here
// too (max_pool.py).
//
// Layouts are JAX's: activations NHWC, kernels HWIO. Activations and kernels are bfloat16;
// oneDNN accumulates in float32; the kernel gradient is returned in float32 (parameters are
// float32), with the bias gradient (the sum of dY per channel) from the same pass over dY.
// Built by facialnet_jax/training/onednn_build.py on first use; see training/conv.py.
#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2, kForwardBiasRelu = 3 };

// One convolution problem: batch, input size, channels, kernel size, stride, padding.
struct Shape {
  int64_t n, h, w, c, o, kh, kw, s, p;
  int64_t oh() const { return (h + 2 * p - kh) / s + 1; }
  int64_t ow() const { return (w + 2 * p - kw) / s + 1; }
  // Exact right/bottom padding: rows that no window reaches are not padding oneDNN must invent.
  int64_t pr_h() const { return (oh() - 1) * s + kh - h - p; }
  int64_t pr_w() const { return (ow() - 1) * s + kw - w - p; }
  auto key(int kind) const { return std::make_tuple(kind, n, h, w, c, o, kh, kw, s, p); }
};

// A primitive with the reorders between JAX's kernel layout (HWIO) and the one it prefers.
struct Prepared {
  dnnl::primitive conv;
  memory::desc wei_user, wei_conv;  // HWIO as JAX holds it / as the primitive wants it
  dnnl::reorder wei_reorder;        // user -> conv (forward, backward data); conv -> user (weights)
  bool needs_reorder = false;
  size_t scratch_bytes = 0;
};

// oneDNN runs its own OpenMP threads over all cores, so one convolution at a time is
// what the machine can do anyway; the lock also makes the shared scratch buffers safe.
std::mutex g_mu;
std::map<std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                    int64_t>,
         Prepared>
    g_cache;
std::vector<uint8_t> g_scratch, g_wei, g_src, g_dst;

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// Runs `work` under the library's lock with a stream and waits for it; oneDNN's exceptions
// become FFI errors that name `what`.
template <typename Work>
ffi::Error Locked(const char* what, Work&& work) {
  try {
    std::lock_guard<std::mutex> lock(g_mu);
    dnnl::stream strm(Engine());
    ffi::Error error = work(strm);
    strm.wait();
    return error;
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(what) + ": " + e.what());
  }
}

// A reorder between two layouts, prepared once (the buffers are given when it runs).
dnnl::reorder Reorder(const memory::desc& from, const memory::desc& to) {
  return dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), from, Engine(), to));
}

memory::desc Act(int64_t n, int64_t c, int64_t h, int64_t w, dt type) {
  return memory::desc({n, c, h, w}, type, tag::nhwc);
}

memory::desc Bias(int64_t o) { return memory::desc({o}, dt::f32, tag::x); }

Prepared& Prepare(const Shape& sh, int kind) {
  auto it = g_cache.find(sh.key(kind));
  if (it != g_cache.end()) return it->second;
  auto& eng = Engine();
  dnnl::primitive_attr attr;
  // Our scratch buffer, not the library's: the library's is not safe across threads.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  memory::dims strides = {sh.s, sh.s}, pl = {sh.p, sh.p}, pr = {sh.pr_h(), sh.pr_w()};
  auto src = Act(sh.n, sh.c, sh.h, sh.w, dt::bf16);
  auto dst = Act(sh.n, sh.o, sh.oh(), sh.ow(), dt::bf16);
  dt wtype = kind == kBackwardWeights ? dt::f32 : dt::bf16;
  memory::dims wdims = {sh.o, sh.c, sh.kh, sh.kw};
  auto wei_any = memory::desc(wdims, wtype, tag::any);
  Prepared out;
  out.wei_user = memory::desc(wdims, wtype, tag::hwio);
  auto fwd_pd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      memory::desc(wdims, dt::bf16, tag::any), dst, strides, pl, pr, attr);
  if (kind == kForwardBiasRelu) {
    // Float32 bias added to the float32 accumulator, then ReLU, then one rounding to bf16.
    dnnl::post_ops ops;
    ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    dnnl::primitive_attr fused;
    fused.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    fused.set_post_ops(ops);
    fwd_pd = dnnl::convolution_forward::primitive_desc(
        eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
        memory::desc(wdims, dt::bf16, tag::any), Bias(sh.o), dst,
        strides, pl, pr, fused);
  }
  if (kind == kForward || kind == kForwardBiasRelu) {
    out.conv = dnnl::convolution_forward(fwd_pd);
    out.wei_conv = fwd_pd.weights_desc();
    out.scratch_bytes = fwd_pd.scratchpad_desc().get_size();
  } else if (kind == kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src, wei_any, dst, strides, pl, pr, fwd_pd,
        attr);
    out.conv = dnnl::convolution_backward_data(pd);
    out.wei_conv = pd.weights_desc();
    out.scratch_bytes = pd.scratchpad_desc().get_size();
  } else {
    // X and dY read as JAX holds them (NHWC). oneDNN 3.2's bf16 kernel-gradient code would
    // prefer them blocked (aBcd16b), but reordering both into that layout cost more than it
    // saved: FacialNet's stride-1 kernel gradients took 33.2 ms with the reorders and 28.6 ms
    // without at batch 128 (the strided ones' phases 24.7 and 21.6 ms), about the same at
    // batch 25 (benchmarks/onednn_history.md).
    // The bias gradient too, from the same pass over dY: summed in XLA it was a second pass
    // (dropping that sum sped the whole step by 2.3-2.5%; benchmarks/onednn_history.md).
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src, wei_any, Bias(sh.o), dst, strides, pl, pr,
        fwd_pd, attr);
    out.conv = dnnl::convolution_backward_weights(pd);
    out.wei_conv = pd.diff_weights_desc();
    out.scratch_bytes = pd.scratchpad_desc().get_size();
  }
  out.needs_reorder = out.wei_conv != out.wei_user;
  if (out.needs_reorder) {
    out.wei_reorder = kind == kBackwardWeights ? Reorder(out.wei_conv, out.wei_user)
                                               : Reorder(out.wei_user, out.wei_conv);
  }
  return g_cache.emplace(sh.key(kind), std::move(out)).first->second;
}

void* Grow(std::vector<uint8_t>& v, size_t bytes) {
  if (v.size() < bytes) v.resize(bytes);
  return v.data();
}

// Runs `kind` with the kernel-side buffer `wei` (HWIO), the two activation-side buffers and,
// for kForwardBiasRelu, the float32 bias (kBackwardWeights: its gradient, written).
ffi::Error Run(const Shape& sh, int kind, void* src, void* wei, void* dst, void* bias = nullptr) {
  if (sh.n == 0) return ffi::Error::Success();
  return Locked("oneDNN convolution", [&](dnnl::stream& strm) -> ffi::Error {
    auto& eng = Engine();
    Prepared& pr = Prepare(sh, kind);
    memory wei_user(pr.wei_user, eng, wei);
    memory wei_conv = pr.needs_reorder
                          ? memory(pr.wei_conv, eng, Grow(g_wei, pr.wei_conv.get_size()))
                          : wei_user;
    memory scratch(memory::desc({static_cast<int64_t>(pr.scratch_bytes)}, dt::u8, tag::x), eng,
                   Grow(g_scratch, pr.scratch_bytes));
    memory src_m(Act(sh.n, sh.c, sh.h, sh.w, dt::bf16), eng, src);
    memory dst_m(Act(sh.n, sh.o, sh.oh(), sh.ow(), dt::bf16), eng, dst);
    if (kind == kForward || kind == kForwardBiasRelu) {
      if (pr.needs_reorder) pr.wei_reorder.execute(strm, wei_user, wei_conv);
      std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_conv},
                                              {DNNL_ARG_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}};
      if (bias) args.emplace(DNNL_ARG_BIAS, memory(Bias(sh.o), eng, bias));
      pr.conv.execute(strm, args);
    } else if (kind == kBackwardData) {
      if (pr.needs_reorder) pr.wei_reorder.execute(strm, wei_user, wei_conv);
      pr.conv.execute(strm, {{DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_conv},
                             {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      pr.conv.execute(strm, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_WEIGHTS, wei_conv},
                             {DNNL_ARG_DIFF_BIAS, memory(Bias(sh.o), eng, bias)},
                             {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (pr.needs_reorder) pr.wei_reorder.execute(strm, wei_conv, wei_user);
    }
    return ffi::Error::Success();
  });
}

// The kernel gradient of a strided convolution as a forward convolution (brgemm code), faster
// for a small output than oneDNN 3.2's strided kernel-gradient code at batch 128 and up (see
// conv.py's _onednn_kernel_grad for the measurements):
//   dW[o, c, i, j] = sum_{n, t, u} X[n, c, s*t + i - p, s*u + j - p] * dY[n, o, t, u]
// is a convolution whose batch is c, whose input channels are n, whose kernel is dY (o, n, t, u)
// dilated by s - 1, and whose output is the k x k kernel. JAX's NHWC buffers are read as
// strided views; oneDNN reorders them into the layouts it prefers.
struct PreparedAsForward {
  dnnl::convolution_forward conv;
  memory::desc src_user, wei_user, dst_user, src_conv, wei_conv, dst_conv;
  dnnl::reorder src_reorder, wei_reorder, dst_reorder;
  size_t scratch_bytes = 0;
};
std::map<std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                    int64_t>,
         PreparedAsForward>
    g_as_forward;
std::vector<uint8_t> g_out;

PreparedAsForward& PrepareAsForward(const Shape& sh) {
  auto key = sh.key(kBackwardWeights);
  auto it = g_as_forward.find(key);
  if (it != g_as_forward.end()) return it->second;
  auto& eng = Engine();
  PreparedAsForward out;
  int64_t oh = sh.oh(), ow = sh.ow();
  memory::dims src_dims = {sh.c, sh.n, sh.h, sh.w}, wei_dims = {sh.o, sh.n, oh, ow},
               dst_dims = {sh.c, sh.o, sh.kh, sh.kw};
  out.src_user = memory::desc(src_dims, dt::bf16,
                              memory::dims{1, sh.h * sh.w * sh.c, sh.w * sh.c, sh.c});
  out.wei_user = memory::desc(wei_dims, dt::bf16, memory::dims{1, oh * ow * sh.o, ow * sh.o, sh.o});
  out.dst_user = memory::desc(dst_dims, dt::f32,
                              memory::dims{sh.o, 1, sh.kw * sh.c * sh.o, sh.c * sh.o});  // HWIO
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto pd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
      memory::desc(src_dims, dt::bf16, tag::any), memory::desc(wei_dims, dt::bf16, tag::any),
      memory::desc(dst_dims, dt::f32, tag::any), {1, 1}, {sh.s - 1, sh.s - 1}, {sh.p, sh.p},
      // The dilated kernel (dY) reaches as far past the input as the original windows did.
      {sh.pr_h(), sh.pr_w()}, attr);
  out.conv = dnnl::convolution_forward(pd);
  out.src_conv = pd.src_desc();
  out.wei_conv = pd.weights_desc();
  out.dst_conv = pd.dst_desc();
  out.scratch_bytes = pd.scratchpad_desc().get_size();
  out.src_reorder = Reorder(out.src_user, out.src_conv);
  out.wei_reorder = Reorder(out.wei_user, out.wei_conv);
  out.dst_reorder = Reorder(out.dst_conv, out.dst_user);
  return g_as_forward.emplace(key, std::move(out)).first->second;
}

ffi::Error RunKernelGradAsForward(const Shape& sh, void* x, void* dy, void* dw) {
  if (sh.n == 0) {
    std::fill_n(static_cast<float*>(dw), sh.kh * sh.kw * sh.c * sh.o, 0.f);
    return ffi::Error::Success();
  }
  return Locked("oneDNN convolution", [&](dnnl::stream& strm) -> ffi::Error {
    auto& eng = Engine();
    PreparedAsForward& pr = PrepareAsForward(sh);
    memory src_user(pr.src_user, eng, x), wei_user(pr.wei_user, eng, dy),
        dst_user(pr.dst_user, eng, dw);
    memory src(pr.src_conv, eng, Grow(g_src, pr.src_conv.get_size()));
    memory wei(pr.wei_conv, eng, Grow(g_dst, pr.wei_conv.get_size()));
    memory dst(pr.dst_conv, eng, Grow(g_out, pr.dst_conv.get_size()));
    memory scratch(memory::desc({static_cast<int64_t>(pr.scratch_bytes)}, dt::u8, tag::x), eng,
                   Grow(g_scratch, pr.scratch_bytes));
    pr.src_reorder.execute(strm, src_user, src);
    pr.wei_reorder.execute(strm, wei_user, wei);
    pr.conv.execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst},
                           {DNNL_ARG_SCRATCHPAD, scratch}});
    pr.dst_reorder.execute(strm, dst, dst_user);
    return ffi::Error::Success();
  });
}

// The kernel gradient of a strided convolution as s*s stride-1 ones, in one call (faster than
// oneDNN 3.2's strided kernel-gradient code at batch 128 and up; conv.py's _onednn_kernel_grad
// has the measurements): taps
// i = a + s*i' only meet input rows s*t + i - p, so phase (a, b) -- every s-th row from a - p
// and column from b - p, correlated with dY at stride 1 -- gives taps [a::s, b::s]. The phases
// are strided views of JAX's NHWC input, copied into a dense NHWC buffer the primitive reads;
// rows before the input or past it are the primitive's padding; dY is read as JAX holds it
// (NHWC: cheaper than reordering it and the phases into oneDNN's blocked layout, as for the
// stride-1 kernel gradients) and each phase's taps written into the HWIO result in place.
// Every phase reads all of dY: the first one run also sums it into the bias gradient.
struct PhaseAxis {
  int64_t taps, first, rows, before, after;  // taps; first input row, real rows; padding rows
};

PhaseAxis Axis(int64_t size, int64_t out, int64_t k, int64_t s, int64_t p, int64_t a) {
  int64_t taps = (k - a + s - 1) / s;
  int64_t needed = out + taps - 1;  // phase rows the stride-1 windows read
  int64_t before = a < p ? (p - a + s - 1) / s : 0;
  int64_t first = a + s * before - p;
  int64_t rows = first < size ? std::min(needed - before, (size - first + s - 1) / s) : 0;
  return {taps, first, std::max<int64_t>(rows, 0), before, needed - before - rows};
}

// oneDNN rejects a strided view whose rows times row stride exceed the image stride, even
// though its last row ends inside the image (every other row of an odd-sized input): the
// phase is reordered in two parts, its last row apart.
struct PreparedPhase {
  dnnl::convolution_backward_weights conv;
  memory::desc src_conv, wei_conv, wei_user;
  // Part 0: all rows but the last; part 1: the last row.
  int64_t part_rows[2] = {0, 0}, src_offset[2] = {0, 0};  // src_offset: elements into x
  memory::desc src_user[2], src_part[2];
  dnnl::reorder src_reorder[2], wei_reorder;
  int64_t wei_offset = 0;          // elements into the HWIO kernel gradient
  size_t scratch_bytes = 0;
};
std::map<std::vector<int64_t>, PreparedPhase> g_phases;

PreparedPhase& PreparePhase(const Shape& sh, const PhaseAxis& ph, const PhaseAxis& pw,
                            int64_t a, int64_t b, bool with_bias) {
  std::vector<int64_t> key = {sh.n, sh.h, sh.w, sh.c, sh.o, sh.kh, sh.s, sh.p, a, b, with_bias};
  auto it = g_phases.find(key);
  if (it != g_phases.end()) return it->second;
  auto& eng = Engine();
  PreparedPhase out;
  int64_t k = sh.kh, s = sh.s, c = sh.c, o = sh.o;
  memory::dims wei_dims = {o, c, ph.taps, pw.taps};
  memory::dims view_strides = {sh.h * sh.w * c, 1, s * sh.w * c, s * c};
  out.wei_user = memory::desc(wei_dims, dt::f32, memory::dims{1, o, s * k * c * o, s * c * o});
  out.wei_offset = (a * k + b) * c * o;
  memory::dims strides = {1, 1}, pl = {ph.before, pw.before}, pr = {ph.after, pw.after};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto src = Act(sh.n, c, ph.rows, pw.rows, dt::bf16);
  auto dst = Act(sh.n, o, sh.oh(), sh.ow(), dt::bf16);
  auto fwd_pd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      memory::desc(wei_dims, dt::bf16, tag::any), dst, strides, pl, pr, attr);
  auto wei_any = memory::desc(wei_dims, dt::f32, tag::any);
  auto pd = with_bias ? dnnl::convolution_backward_weights::primitive_desc(
                            eng, dnnl::algorithm::convolution_direct, src, wei_any, Bias(o), dst,
                            strides, pl, pr, fwd_pd, attr)
                      : dnnl::convolution_backward_weights::primitive_desc(
                            eng, dnnl::algorithm::convolution_direct, src, wei_any, dst, strides,
                            pl, pr, fwd_pd, attr);
  out.conv = dnnl::convolution_backward_weights(pd);
  out.src_conv = src;
  out.wei_conv = pd.diff_weights_desc();
  out.scratch_bytes = pd.scratchpad_desc().get_size();
  for (int part = 0; part < 2; ++part) {
    int64_t row = part ? ph.rows - 1 : 0;
    out.part_rows[part] = part ? 1 : ph.rows - 1;
    if (out.part_rows[part] == 0) continue;
    memory::dims dims = {sh.n, c, out.part_rows[part], pw.rows};
    out.src_user[part] = memory::desc(dims, dt::bf16, view_strides);
    out.src_offset[part] = ((ph.first + s * row) * sh.w + pw.first) * c;
    out.src_part[part] = out.src_conv.submemory_desc(dims, {0, 0, row, 0});
    out.src_reorder[part] = Reorder(out.src_user[part], out.src_part[part]);
  }
  out.wei_reorder = Reorder(out.wei_conv, out.wei_user);
  return g_phases.emplace(key, std::move(out)).first->second;
}

ffi::Error RunKernelGradPhases(const Shape& sh, void* x, void* dy, void* dw, void* db) {
  float* dwf = static_cast<float*>(dw);
  // Phases whose windows see only padding contribute zeros; they are not run.
  std::fill_n(dwf, sh.kh * sh.kw * sh.c * sh.o, 0.f);
  std::fill_n(static_cast<float*>(db), sh.o, 0.f);
  if (sh.n == 0) return ffi::Error::Success();
  return Locked("oneDNN convolution", [&](dnnl::stream& strm) -> ffi::Error {
    auto& eng = Engine();
    memory dy_m(Act(sh.n, sh.o, sh.oh(), sh.ow(), dt::bf16), eng, dy);
    bool bias_done = false;
    for (int64_t a = 0; a < std::min(sh.s, sh.kh); ++a) {
      for (int64_t b = 0; b < std::min(sh.s, sh.kw); ++b) {
        PhaseAxis ph = Axis(sh.h, sh.oh(), sh.kh, sh.s, sh.p, a);
        PhaseAxis pw = Axis(sh.w, sh.ow(), sh.kw, sh.s, sh.p, b);
        if (ph.rows == 0 || pw.rows == 0) continue;
        PreparedPhase& pr = PreparePhase(sh, ph, pw, a, b, !bias_done);
        void* src_buffer = Grow(g_src, pr.src_conv.get_size());
        for (int part = 0; part < 2; ++part) {
          if (pr.part_rows[part] == 0) continue;
          memory view(pr.src_user[part], eng, static_cast<uint16_t*>(x) + pr.src_offset[part]);
          memory into(pr.src_part[part], eng, src_buffer);
          pr.src_reorder[part].execute(strm, view, into);
        }
        memory src(pr.src_conv, eng, src_buffer);
        memory wei(pr.wei_conv, eng, Grow(g_wei, pr.wei_conv.get_size()));
        memory scratch(memory::desc({static_cast<int64_t>(pr.scratch_bytes)}, dt::u8, tag::x),
                       eng, Grow(g_scratch, pr.scratch_bytes));
        std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_WEIGHTS, wei},
                                                {DNNL_ARG_DIFF_DST, dy_m},
                                                {DNNL_ARG_SCRATCHPAD, scratch}};
        if (!bias_done) args.emplace(DNNL_ARG_DIFF_BIAS, memory(Bias(sh.o), eng, db));
        bias_done = true;
        pr.conv.execute(strm, args);
        memory taps(pr.wei_user, eng, dwf + pr.wei_offset);
        pr.wei_reorder.execute(strm, wei, taps);
      }
    }
    return ffi::Error::Success();
  });
}

// ReLU's gradient, dY where the layer's output is positive and 0 elsewhere, for
// conv_bias_relu_onednn. In XLA:CPU the select ran in float32 (bfloat16 element-wise code is
// widened), writing a float32 copy that was then rounded back to bfloat16 for the convolution.
std::map<int64_t, dnnl::eltwise_backward> g_relu;

ffi::Error ReluBackward(ffi::Buffer<ffi::BF16> dy, ffi::Buffer<ffi::BF16> y,
                        ffi::ResultBuffer<ffi::BF16> dx) {
  int64_t size = static_cast<int64_t>(dy.element_count());
  if (size == 0) return ffi::Error::Success();
  return Locked("oneDNN ReLU gradient", [&](dnnl::stream& strm) -> ffi::Error {
    auto& eng = Engine();
    auto flat = memory::desc({size}, dt::bf16, tag::a);
    auto it = g_relu.find(size);
    if (it == g_relu.end()) {
      auto algorithm = dnnl::algorithm::eltwise_relu_use_dst_for_bwd;
      auto fwd_pd = dnnl::eltwise_forward::primitive_desc(
          eng, dnnl::prop_kind::forward_training, algorithm, flat, flat, 0.f, 0.f);
      auto pd = dnnl::eltwise_backward::primitive_desc(eng, algorithm, flat, flat, flat, 0.f,
                                                       0.f, fwd_pd);
      it = g_relu.emplace(size, dnnl::eltwise_backward(pd)).first;
    }
    memory diff_dst(flat, eng, dy.untyped_data()), dst(flat, eng, y.untyped_data()),
        diff_src(flat, eng, dx->untyped_data());
    it->second.execute(strm, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DST, dst},
                              {DNNL_ARG_DIFF_SRC, diff_src}});
    return ffi::Error::Success();
  });
}

// The max-pool after the last convolution (VALID windows), forward and gradient. XLA:CPU
// computes reduce_window max's gradient as a variadic reduce_window carrying indices: 9-10 ms
// at batch 128 for a 5x5x512 input, against about 1 ms here. The forward writes oneDNN's
// workspace (where each window's maximum was; one byte per output element for windows of
// fewer than 256 elements) for the gradient to route dY by.
struct PreparedPool {
  dnnl::pooling_forward fwd;
  dnnl::pooling_backward bwd;
  memory::desc src, dst, ws;  // NHWC input and output; the workspace
};
std::map<std::vector<int64_t>, PreparedPool> g_pools;

PreparedPool& PreparePool(int64_t n, int64_t h, int64_t w, int64_t c, int64_t k, int64_t s) {
  std::vector<int64_t> key = {n, h, w, c, k, s};
  auto it = g_pools.find(key);
  if (it != g_pools.end()) return it->second;
  auto& eng = Engine();
  auto src = Act(n, c, h, w, dt::bf16), dst = Act(n, c, (h - k) / s + 1, (w - k) / s + 1, dt::bf16);
  memory::dims strides = {s, s}, kernel = {k, k}, dilation = {0, 0}, pad = {0, 0};
  auto fwd_pd = dnnl::pooling_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::pooling_max, src, dst, strides,
      kernel, dilation, pad, pad);
  auto bwd_pd = dnnl::pooling_backward::primitive_desc(
      eng, dnnl::algorithm::pooling_max, src, dst, strides, kernel, dilation, pad, pad, fwd_pd);
  PreparedPool out{dnnl::pooling_forward(fwd_pd), dnnl::pooling_backward(bwd_pd), src, dst,
                   fwd_pd.workspace_desc()};
  return g_pools.emplace(key, std::move(out)).first->second;
}

ffi::Error MaxPoolForward(ffi::Buffer<ffi::BF16> x, ffi::ResultBuffer<ffi::BF16> y,
                          ffi::ResultBuffer<ffi::U8> ws, int64_t window, int64_t stride) {
  auto d = x.dimensions();
  if (d[0] == 0) return ffi::Error::Success();
  return Locked("oneDNN max-pool", [&](dnnl::stream& strm) -> ffi::Error {
    auto& eng = Engine();
    PreparedPool& pr = PreparePool(d[0], d[1], d[2], d[3], window, stride);
    if (pr.ws.get_size() != ws->size_bytes())
      return ffi::Error(ffi::ErrorCode::kInternal, "oneDNN max-pool: workspace of another size");
    memory src(pr.src, eng, x.untyped_data()), dst(pr.dst, eng, y->untyped_data()),
        wsm(pr.ws, eng, ws->untyped_data());
    pr.fwd.execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}, {DNNL_ARG_WORKSPACE, wsm}});
    return ffi::Error::Success();
  });
}

ffi::Error MaxPoolBackward(ffi::Buffer<ffi::BF16> dy, ffi::Buffer<ffi::U8> ws,
                           ffi::ResultBuffer<ffi::BF16> dx, int64_t window, int64_t stride) {
  auto d = dx->dimensions();
  if (d[0] == 0) return ffi::Error::Success();
  return Locked("oneDNN max-pool", [&](dnnl::stream& strm) -> ffi::Error {
    auto& eng = Engine();
    PreparedPool& pr = PreparePool(d[0], d[1], d[2], d[3], window, stride);
    memory diff_dst(pr.dst, eng, dy.untyped_data()), diff_src(pr.src, eng, dx->untyped_data()),
        wsm(pr.ws, eng, ws.untyped_data());
    pr.bwd.execute(strm, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_SRC, diff_src},
                          {DNNL_ARG_WORKSPACE, wsm}});
    return ffi::Error::Success();
  });
}

Shape FromDims(ffi::Span<const int64_t> act, ffi::Span<const int64_t> kernel, int64_t s,
               int64_t p) {
  return Shape{act[0], act[1], act[2], act[3], kernel[3], kernel[0], kernel[1], s, p};
}

ffi::Error Forward(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                   ffi::ResultBuffer<ffi::BF16> y, int64_t stride, int64_t padding) {
  Shape sh = FromDims(x.dimensions(), w.dimensions(), stride, padding);
  return Run(sh, kForward, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error ForwardBiasRelu(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                           ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::BF16> y,
                           int64_t stride, int64_t padding) {
  Shape sh = FromDims(x.dimensions(), w.dimensions(), stride, padding);
  return Run(sh, kForwardBiasRelu, x.untyped_data(), w.untyped_data(), y->untyped_data(),
             b.untyped_data());
}

ffi::Error BackwardData(ffi::Buffer<ffi::BF16> dy, ffi::Buffer<ffi::BF16> w,
                        ffi::ResultBuffer<ffi::BF16> dx, int64_t stride, int64_t padding) {
  Shape sh = FromDims(dx->dimensions(), w.dimensions(), stride, padding);
  return Run(sh, kBackwardData, dx->untyped_data(), w.untyped_data(), dy.untyped_data());
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> dy,
                           ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db,
                           int64_t stride, int64_t padding) {
  Shape sh = FromDims(x.dimensions(), dw->dimensions(), stride, padding);
  if (sh.n == 0) {  // an empty batch: zero gradients
    std::fill_n(dw->typed_data(), dw->element_count(), 0.f);
    std::fill_n(db->typed_data(), db->element_count(), 0.f);
  }
  return Run(sh, kBackwardWeights, x.untyped_data(), dw->untyped_data(), dy.untyped_data(),
             db->untyped_data());
}

ffi::Error BackwardWeightsAsForward(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> dy,
                                   ffi::ResultBuffer<ffi::F32> dw, int64_t stride,
                                   int64_t padding) {
  Shape sh = FromDims(x.dimensions(), dw->dimensions(), stride, padding);
  if (sh.oh() != dy.dimensions()[1] || sh.ow() != dy.dimensions()[2])
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "oneDNN kernel gradient: dy's size does not follow from x's");
  return RunKernelGradAsForward(sh, x.untyped_data(), dy.untyped_data(), dw->untyped_data());
}

ffi::Error BackwardWeightsPhases(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> dy,
                                 ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db,
                                 int64_t stride, int64_t padding) {
  Shape sh = FromDims(x.dimensions(), dw->dimensions(), stride, padding);
  if (sh.kh != sh.kw || sh.oh() != dy.dimensions()[1] || sh.ow() != dy.dimensions()[2])
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "oneDNN kernel gradient: square kernels only, and dy's size must follow "
                      "from x's");
  return RunKernelGradPhases(sh, x.untyped_data(), dy.untyped_data(), dw->untyped_data(),
                             db->untyped_data());
}

}  // namespace

// These handlers take two bfloat16 buffers and the stride and padding attributes; they
// differ in the result's dtype (the kernel gradient is float32).
#define FACIALNET_CONV_HANDLER(symbol, function, result_dtype)  \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, function,                \
                                ffi::Ffi::Bind()                 \
                                    .Arg<ffi::Buffer<ffi::BF16>>()  \
                                    .Arg<ffi::Buffer<ffi::BF16>>()  \
                                    .Ret<ffi::Buffer<result_dtype>>()  \
                                    .Attr<int64_t>("stride")     \
                                    .Attr<int64_t>("padding"))

FACIALNET_CONV_HANDLER(FacialnetOnednnConvForward, Forward, ffi::BF16);
FACIALNET_CONV_HANDLER(FacialnetOnednnConvBackwardData, BackwardData, ffi::BF16);
FACIALNET_CONV_HANDLER(FacialnetOnednnConvBackwardWeightsAsForward, BackwardWeightsAsForward,
                       ffi::F32);

// Kernel and bias gradients (float32) from X and dY (bfloat16).
#define FACIALNET_KERNEL_BIAS_GRAD_HANDLER(symbol, function)    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, function,                \
                                ffi::Ffi::Bind()                 \
                                    .Arg<ffi::Buffer<ffi::BF16>>()  \
                                    .Arg<ffi::Buffer<ffi::BF16>>()  \
                                    .Ret<ffi::Buffer<ffi::F32>>()   \
                                    .Ret<ffi::Buffer<ffi::F32>>()   \
                                    .Attr<int64_t>("stride")     \
                                    .Attr<int64_t>("padding"))

FACIALNET_KERNEL_BIAS_GRAD_HANDLER(FacialnetOnednnConvBackwardWeights, BackwardWeights);
FACIALNET_KERNEL_BIAS_GRAD_HANDLER(FacialnetOnednnConvBackwardWeightsPhases,
                                   BackwardWeightsPhases);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FacialnetOnednnConvBiasReluForward, ForwardBiasRelu,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FacialnetOnednnReluBackward, ReluBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(FacialnetOnednnMaxPoolForward, MaxPoolForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::U8>>()
                                  .Attr<int64_t>("window")
                                  .Attr<int64_t>("stride"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(FacialnetOnednnMaxPoolBackward, MaxPoolBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Attr<int64_t>("window")
                                  .Attr<int64_t>("stride"));

// Lets Python check, before registering anything, that this machine has the bf16 instructions
// oneDNN would use (else its bf16 convolutions fall back to slow reference code).
extern "C" int facialnet_onednn_has_bf16() {
  // cpu_isa values are nested bit sets: every ISA with AVX512-BF16 contains its bits.
  auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  return (isa & bf16) == bf16;
}
