// Stride-1 2-D convolution (NHWC, float32, groups 1) for MLX's CPU backend: forward (with the
// bias), input gradient and weight gradient as one MLX primitive over the process's BLAS.
//
// Why native: MLX's convolution copies an im2col matrix k*k times the input's size and then
// runs one product; written with MLX operations as k*k products over shifted views
// (fastlayers/conv.py) every tap still passes the whole output through memory (addmm copies
// its accumulator). Here the output is cut into row blocks small enough to stay in the L2
// cache, and all k*k products of a block accumulate there with sgemm's beta = 1; padding,
// cropping and the bias happen in the same passes.
//
// The shifted-view trick: with the zero-padded image flattened to (pixels, channels), the
// inputs tap (i, j) reads for consecutive outputs of the padded width Wp are consecutive
// rows starting at i * Wp + j, i.e. a plain strided matrix. Outputs computed in the last
// kw - 1 columns of a padded row wrap around; they are dropped (forward, input gradient) or
// zero (weight gradient). The input gradient is the same correlation of the padded output
// gradient with the flipped kernel.
//
// 3x3 layers with >= 16 channels on each side and >= 16 4x4 output tiles (every VGG layer but
// the first, most 3x3 layers of the other models) take winograd.cpp's F(4x4, 3x3) for the forward
// and the input gradient instead: 4x fewer multiply-adds. The weight gradient is always here.

#include <dlfcn.h>

#include <memory>
#include <tuple>

#include "conv.h"

namespace deepdream {

Sgemm sgemm() {
  static Sgemm fn = reinterpret_cast<Sgemm>(dlsym(RTLD_DEFAULT, "cblas_sgemm"));
  return fn;
}

namespace {

using Geometry = ConvGeometry;

// A zero-padded copy of one image, flattened to (rows * wp + slack, c); `slack` zero pixels at the
// end let the last tap's view run past the last row.
struct Padded {
  std::unique_ptr<float[]> storage;
  int wp;
  const float* data() const { return storage.get(); }
};

// Every padded row is written once (zeros or the image row between zeros): no separate zero fill.
Padded pad(const float* image, int h, int w, int c, int top, int left, int hp, int wp, int slack) {
  Padded p{std::unique_ptr<float[]>(new float[((size_t)hp * wp + slack) * c]), wp};
  float* out = p.storage.get();
  int x0 = std::max(0, -left), x1 = std::min(w, wp - left);      // the image columns that land inside
  for (int py = 0; py < hp; ++py) {
    float* row = out + (size_t)py * wp * c;
    int y = py - top;
    if (y < 0 || y >= h || x0 >= x1) {
      std::fill(row, row + (size_t)wp * c, 0.0f);
      continue;
    }
    std::fill(row, row + (size_t)(x0 + left) * c, 0.0f);
    std::memcpy(row + (size_t)(x0 + left) * c, image + ((size_t)y * w + x0) * c, sizeof(float) * c * (x1 - x0));
    std::fill(row + (size_t)(x1 + left) * c, row + (size_t)wp * c, 0.0f);
  }
  std::fill(out + (size_t)hp * wp * c, out + ((size_t)hp * wp + slack) * c, 0.0f);
  return p;
}

// Rows of a block: enough that one sgemm is worth its call, few enough that the block's
// accumulator (rows x channels) stays in L2 while the k*k taps add into it.
int block_rows(int channels) { return std::max(256, (256 * 1024) / std::max(1, channels)); }

// out[y, x, :] = bias + sum_ij src[y + i, x + j, :] @ tap(i, j) on a padded source (flattened,
// width wp): tap(i, j) is a (cs, cd) matrix given as (pointer, leading dimension, transposed).
// `out` is (oh, ow, cd), row-major.
template <typename Tap>
void correlate(const Padded& src, int cs, int oh, int ow, int cd, int kh, int kw, Tap tap, const float* bias,
               float* out) {
  int wp = src.wp;
  int rows = oh * wp, block = block_rows(cd);
  std::vector<float> acc((size_t)block * cd);
  for (int r0 = 0; r0 < rows; r0 += block) {
    int m = std::min(block, rows - r0);
    for (int i = 0; i < kh; ++i)
      for (int j = 0; j < kw; ++j) {
        auto [b, ldb, trans] = tap(i, j);
        sgemm()(kRowMajor, kNoTrans, trans ? kTrans : kNoTrans, m, cd, cs, 1.0f,
                src.data() + ((size_t)r0 + i * wp + j) * cs, cs, b, ldb, (i | j) ? 1.0f : 0.0f, acc.data(), cd);
      }
    // Crop the wrapped-around columns, add the bias.
    for (int r = r0; r < r0 + m; ++r) {
      int y = r / wp, x = r % wp;
      if (x >= ow) continue;
      const float* a = &acc[(size_t)(r - r0) * cd];
      float* o = out + ((size_t)y * ow + x) * cd;
      if (bias)
        for (int k = 0; k < cd; ++k) o[k] = a[k] + bias[k];
      else
        std::memcpy(o, a, sizeof(float) * cd);
    }
  }
}

// Forward: tap (i, j) of weight (C_out, kh, kw, C_in) is w[:, i, j, :]^T.
void forward(const float* x, const float* w, const WeightsBuffer& w_buffer, const float* bias, float* out,
             const Geometry& g) {
  if (winograd_applies(g)) return winograd_forward(x, w, w_buffer, bias, out, g);
  int hp = g.oh + g.kh - 1, wp = g.ow + g.kw - 1, ld = g.kh * g.kw * g.ci;
  for (int n = 0; n < g.n; ++n) {
    Padded src = pad(x + (size_t)n * g.h * g.w * g.ci, g.h, g.w, g.ci, g.top, g.left, hp, wp, g.kw - 1);
    correlate(src, g.ci, g.oh, g.ow, g.co, g.kh, g.kw,
              [&](int i, int j) { return std::make_tuple(w + (size_t)(i * g.kw + j) * g.ci, ld, true); }, bias,
              out + (size_t)n * g.oh * g.ow * g.co);
  }
}

// Below this many output channels (the RGB input layer's gradient) k*k products of width cd
// run far below the BLAS's speed; one product with all k*k taps side by side (width k*k*cd)
// then a shifted sum of its column blocks is faster.
constexpr int kMinTapWidth = 16;

// As correlate(), with every tap in one (cs, kh*kw*cd) matrix `taps` (leading dimension ldt):
// tap (i, j) is its column block column_block(i, j).
template <typename Block>
void correlate_wide(const Padded& src, int cs, int oh, int ow, int cd, int kh, int kw, const float* taps, int ldt,
                    Block column_block, float* out) {
  int wp = src.wp, k = kh * kw, width = k * cd;
  int rows = oh * wp, halo = (kh - 1) * wp + kw - 1, block = block_rows(width);
  std::vector<float> z((size_t)(block + halo) * width);
  for (int r0 = 0; r0 < rows; r0 += block) {
    int m = std::min(block, rows - r0);
    sgemm()(kRowMajor, kNoTrans, kNoTrans, m + halo, width, cs, 1.0f, src.data() + (size_t)r0 * cs, cs, taps,
            ldt, 0.0f, z.data(), width);
    for (int r = r0; r < r0 + m; ++r) {
      int y = r / wp, x = r % wp;
      if (x >= ow) continue;
      float* o = out + ((size_t)y * ow + x) * cd;
      std::fill(o, o + cd, 0.0f);
      for (int i = 0; i < kh; ++i)
        for (int j = 0; j < kw; ++j) {
          const float* zp = &z[(size_t)(r - r0 + i * wp + j) * width + column_block(i, j) * cd];
          for (int c = 0; c < cd; ++c) o[c] += zp[c];
        }
    }
  }
}

// Input gradient: output pixel (y, x) read input (y + i - top, x + j - left), so
// dx[y, x] = sum_ij g[y + top - i, x + left - j] @ w[:, i, j, :], the correlation of g padded by
// (kh - 1 - top, kw - 1 - left) with the flipped kernel.
void input_grad(const float* grad, const float* w, const WeightsBuffer& w_buffer, float* dx, const Geometry& g) {
  if (winograd_applies(g)) return winograd_input_grad(grad, w, w_buffer, dx, g);
  int hp = g.h + g.kh - 1, wp = g.w + g.kw - 1, ld = g.kh * g.kw * g.ci;
  auto flipped = [&](int i, int j) { return (g.kh - 1 - i) * g.kw + (g.kw - 1 - j); };
  for (int n = 0; n < g.n; ++n) {
    Padded src = pad(grad + (size_t)n * g.oh * g.ow * g.co, g.oh, g.ow, g.co, g.kh - 1 - g.top,
                     g.kw - 1 - g.left, hp, wp, g.kw - 1);
    float* out = dx + (size_t)n * g.h * g.w * g.ci;
    if (g.ci < kMinTapWidth)
      correlate_wide(src, g.co, g.h, g.w, g.ci, g.kh, g.kw, w, ld, flipped, out);
    else
      correlate(src, g.co, g.h, g.w, g.ci, g.kh, g.kw,
                [&](int i, int j) { return std::make_tuple(w + (size_t)flipped(i, j) * g.ci, ld, false); }, nullptr,
                out);
  }
}

// Weight gradient: dw[:, i, j, :] = sum over outputs of g[y, x]^T x[y + i - top, x + j - left]; with
// g laid out on the padded width (zeros in the wrapped columns) each tap is one long product.
void weight_grad(const float* x, const float* grad, float* dw, const Geometry& g) {
  int hp = g.oh + g.kh - 1, wp = g.ow + g.kw - 1, ld = g.kh * g.kw * g.ci, rows = g.oh * wp;
  for (int n = 0; n < g.n; ++n) {
    Padded src = pad(x + (size_t)n * g.h * g.w * g.ci, g.h, g.w, g.ci, g.top, g.left, hp, wp, g.kw - 1);
    Padded gw = pad(grad + (size_t)n * g.oh * g.ow * g.co, g.oh, g.ow, g.co, 0, 0, g.oh, wp, 0);
    for (int i = 0; i < g.kh; ++i)
      for (int j = 0; j < g.kw; ++j)
        sgemm()(kRowMajor, kTrans, kNoTrans, g.co, g.ci, rows, 1.0f, gw.data(), g.co,
                src.data() + (size_t)(i * wp + j) * g.ci, g.ci, n ? 1.0f : 0.0f,
                dw + (size_t)(i * g.kw + j) * g.ci, ld);
  }
}

// The primitive's loops and result shapes (common.h).
struct ConvOp {
  using Geometry = deepdream::Geometry;
  static constexpr const char* name = "Conv";
  static constexpr const char* gpu_alternative = "mx.conv2d";
  static mx::Shape shape(Kind kind, const Geometry& g) {
    return kind == Kind::Forward ? mx::Shape{g.n, g.oh, g.ow, g.co}
         : kind == Kind::InputGrad ? mx::Shape{g.n, g.h, g.w, g.ci}
         : mx::Shape{g.co, g.kh, g.kw, g.ci};
  }
  static constexpr auto forward = &deepdream::forward;
  static constexpr auto input_grad = &deepdream::input_grad;
  static constexpr auto weight_grad = &deepdream::weight_grad;
};

}  // namespace

bool has_sgemm() { return sgemm() != nullptr; }

// x (N, H, W, C_in), w (C_out, kh, kw, C_in), bias (C_out,); stride 1, zero padding top/left
// given, bottom/right implied by the output size (oh, ow).
mx::array conv2d(const mx::array& x, const mx::array& w, const mx::array& bias, int top, int left, int oh, int ow) {
  if (x.ndim() != 4 || w.ndim() != 4 || bias.ndim() != 1 || w.shape(3) != x.shape(3) || bias.shape(0) != w.shape(0) ||
      oh < 1 || ow < 1 || top < 0 || left < 0 || top >= w.shape(1) || left >= w.shape(2))
    throw std::invalid_argument("conv2d: x (N, H, W, C_in), w (C_out, kh, kw, C_in), bias (C_out,), 0 <= padding < k");
  if (!has_sgemm()) throw std::runtime_error("conv2d: no cblas_sgemm in the process");
  Geometry g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), oh, ow, w.shape(0), w.shape(1), w.shape(2), top, left};
  return WeightedPrimitive<ConvOp>::make(Kind::Forward, g, {x, w, bias});
}

}  // namespace deepdream
