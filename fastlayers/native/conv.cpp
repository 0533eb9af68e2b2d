// 2-D convolution (NHWC, float32, groups 1, stride 1) for MLX's CPU backend: forward (with the
// bias, an optional residual and the activation after it), input gradient and weight gradient as
// one MLX primitive over the process's BLAS.
//
// Why native: MLX's convolution copies an im2col matrix k*k times the input's size and then
// runs one product; written with MLX operations as k*k products over shifted views
// (fastlayers/conv.py) every tap still passes the whole output through memory (addmm copies
// its accumulator). Here the output is cut into row blocks small enough to stay in the L2
// cache, and all k*k products of a block accumulate there with sgemm's beta = 1; padding,
// cropping, the bias, a residual and the ReLU happen in the same passes, on all threads. The
// gradients mask the incoming gradient by the ReLU as they read it. With MLX operations each of
// those is a pass over memory of its own, on one thread.
//
// The shifted-view trick: with the zero-padded image flattened to (pixels, channels), the
// inputs tap (i, j) reads for consecutive outputs of the padded width Wp are consecutive
// rows starting at i * Wp + j, i.e. a plain strided matrix. Outputs computed in the last
// kw - 1 columns of a padded row wrap around; they are dropped (forward, input gradient) or
// zero (weight gradient). The input gradient is the same correlation of the padded output
// gradient with the flipped kernel. A 1x1 layer is one product per row block, no padding.
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
// With `y` (the forward's output, shaped like the image) the image is a gradient arriving after the
// activation: it is masked as it is copied.
Padded pad(const float* image, int h, int w, int c, int top, int left, int hp, int wp, int slack,
           const float* y = nullptr, int act = kLinear) {
  Padded p{std::unique_ptr<float[]>(new float[((size_t)hp * wp + slack) * c]), wp};
  float* out = p.storage.get();
  int x0 = std::max(0, -left), x1 = std::min(w, wp - left);      // the image columns that land inside
  parallel_for(hp, [&](int begin, int end) {
    for (int py = begin; py < end; ++py) {
      float* row = out + (size_t)py * wp * c;
      int iy = py - top;
      if (iy < 0 || iy >= h || x0 >= x1) {
        std::fill(row, row + (size_t)wp * c, 0.0f);
        continue;
      }
      size_t from = ((size_t)iy * w + x0) * c;
      std::fill(row, row + (size_t)(x0 + left) * c, 0.0f);
      masked_copy(row + (size_t)(x0 + left) * c, image + from, y ? y + from : nullptr, c * (x1 - x0), act);
      std::fill(row + (size_t)(x1 + left) * c, row + (size_t)wp * c, 0.0f);
    }
  });
  std::fill(out + (size_t)hp * wp * c, out + ((size_t)hp * wp + slack) * c, 0.0f);
  return p;
}

// Rows of a block: enough that one sgemm is worth its call, few enough that the block's
// accumulator (rows x channels) stays in L2 while the k*k taps add into it.
int block_rows(int channels) { return std::max(256, (256 * 1024) / std::max(1, channels)); }

// The epilogue's inputs: out = activation(acc + bias + residual), per output pixel of `cd` channels.
struct Finish {
  const float* bias;
  const float* residual;      // shaped like the output, or null
  int act;
};

// out[y, x, :] = finish(sum_ij src[y + i, x + j, :] @ tap(i, j)) on a padded source (flattened,
// width wp): tap(i, j) is a (cs, cd) matrix given as (pointer, leading dimension, transposed).
// `out` is (oh, ow, cd), row-major.
template <typename Tap>
void correlate(const Padded& src, int cs, int oh, int ow, int cd, int kh, int kw, Tap tap, Finish finish,
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
    // Crop the wrapped-around columns, finish the rest.
    parallel_for(m, [&](int begin, int end) {
      for (int r = r0 + begin; r < r0 + end; ++r) {
        int y = r / wp, x = r % wp;
        if (x >= ow) continue;
        size_t at = ((size_t)y * ow + x) * cd;
        epilogue(out + at, &acc[(size_t)(r - r0) * cd], finish.bias, finish.residual ? finish.residual + at : nullptr,
                 cd, finish.act);
      }
    });
  }
}

// A 1x1 layer over `rows` pixels: out = finish(x @ w^T), one product per row block (x: (rows, ci),
// w: (co, ci)), each block finished while it is still in cache.
void pointwise(const float* x, const float* w, int rows, int ci, int co, Finish finish, float* out) {
  int block = block_rows(co);
  bool finished = finish.bias || finish.residual || finish.act != kLinear;
  for (int r0 = 0; r0 < rows; r0 += block) {
    int m = std::min(block, rows - r0);
    float* o = out + (size_t)r0 * co;
    sgemm()(kRowMajor, kNoTrans, kTrans, m, co, ci, 1.0f, x + (size_t)r0 * ci, ci, w, ci, 0.0f, o, co);
    if (!finished) continue;
    const float* residual = finish.residual ? finish.residual + (size_t)r0 * co : nullptr;
    parallel_for(m, [&](int begin, int end) {
      for (int r = begin; r < end; ++r)
        epilogue(o + (size_t)r * co, o + (size_t)r * co, finish.bias, residual ? residual + (size_t)r * co : nullptr,
                 co, finish.act);
    });
  }
}

// The rows [r0, r0 + m) of a gradient (rows, c), masked by the activation at y (null: as they are),
// as a matrix: the gradient itself when nothing masks it, else a masked copy in `scratch`.
const float* gradient_rows(const float* grad, const float* y, int act, int r0, int m, int c,
                           std::vector<float>& scratch) {
  const float* g = grad + (size_t)r0 * c;
  if (!y || act == kLinear) return g;
  scratch.resize((size_t)m * c);
  parallel_for(m, [&](int begin, int end) {
    masked_copy(scratch.data() + (size_t)begin * c, g + (size_t)begin * c, y + ((size_t)r0 + begin) * c,
                (end - begin) * c, act);
  });
  return scratch.data();
}

bool is_pointwise(const Geometry& g) { return g.kh == 1 && g.kw == 1; }

// Forward: tap (i, j) of weight (C_out, kh, kw, C_in) is w[:, i, j, :]^T.
void forward(const float* x, const float* w, const WeightsBuffer& w_buffer, const float* bias, const float* residual,
             float* out, const Geometry& g) {
  if (winograd_applies(g)) return winograd_forward(x, w, w_buffer, bias, residual, out, g);
  if (is_pointwise(g)) return pointwise(x, w, g.n * g.h * g.w, g.ci, g.co, {bias, residual, g.act}, out);
  int hp = g.oh + g.kh - 1, wp = g.ow + g.kw - 1, ld = g.kh * g.kw * g.ci;
  size_t image = (size_t)g.oh * g.ow * g.co;
  for (int n = 0; n < g.n; ++n) {
    Padded src = pad(x + (size_t)n * g.h * g.w * g.ci, g.h, g.w, g.ci, g.top, g.left, hp, wp, g.kw - 1);
    correlate(src, g.ci, g.oh, g.ow, g.co, g.kh, g.kw,
              [&](int i, int j) { return std::make_tuple(w + (size_t)(i * g.kw + j) * g.ci, ld, true); },
              {bias, residual ? residual + n * image : nullptr, g.act}, out + n * image);
  }
}

// Below this many output channels (the RGB input layer's gradient) k*k products of width cd
// run far below the BLAS's speed; one product with all k*k taps side by side (width k*k*cd)
// then a shifted sum of its column blocks is faster.
constexpr int kMinTapWidth = 16;

// As correlate() (no finish), with every tap in one (cs, kh*kw*cd) matrix `taps` (leading
// dimension ldt): tap (i, j) is its column block column_block(i, j).
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
    parallel_for(m, [&](int begin, int end) {
      for (int r = r0 + begin; r < r0 + end; ++r) {
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
    });
  }
}

// Input gradient: output pixel (y, x) read input (y + i - top, x + j - left), so
// dx[y, x] = sum_ij g[y + top - i, x + left - j] @ w[:, i, j, :], the correlation of g padded by
// (kh - 1 - top, kw - 1 - left) with the flipped kernel. g is masked by the activation at y first.
void input_grad(const float* grad, const float* w, const WeightsBuffer& w_buffer, const float* y, float* dx,
                const Geometry& g) {
  if (winograd_applies(g)) return winograd_input_grad(grad, w, w_buffer, y, dx, g);
  size_t out_image = (size_t)g.oh * g.ow * g.co, in_image = (size_t)g.h * g.w * g.ci;
  if (is_pointwise(g)) {
    // dx = g @ w, block by block: w (C_out, C_in) is already the product's right-hand side
    int rows = g.n * g.h * g.w, block = block_rows(std::max(g.ci, g.co));
    std::vector<float> scratch;
    for (int r0 = 0; r0 < rows; r0 += block) {
      int m = std::min(block, rows - r0);
      const float* gm = gradient_rows(grad, y, g.act, r0, m, g.co, scratch);
      sgemm()(kRowMajor, kNoTrans, kNoTrans, m, g.ci, g.co, 1.0f, gm, g.co, w, g.ci, 0.0f, dx + (size_t)r0 * g.ci,
              g.ci);
    }
    return;
  }
  int hp = g.h + g.kh - 1, wp = g.w + g.kw - 1, ld = g.kh * g.kw * g.ci;
  auto flipped = [&](int i, int j) { return (g.kh - 1 - i) * g.kw + (g.kw - 1 - j); };
  for (int n = 0; n < g.n; ++n) {
    Padded src = pad(grad + n * out_image, g.oh, g.ow, g.co, g.kh - 1 - g.top, g.kw - 1 - g.left, hp, wp, g.kw - 1,
                     y ? y + n * out_image : nullptr, g.act);
    float* out = dx + n * in_image;
    if (g.ci < kMinTapWidth)
      correlate_wide(src, g.co, g.h, g.w, g.ci, g.kh, g.kw, w, ld, flipped, out);
    else
      correlate(src, g.co, g.h, g.w, g.ci, g.kh, g.kw,
                [&](int i, int j) { return std::make_tuple(w + (size_t)flipped(i, j) * g.ci, ld, false); },
                {nullptr, nullptr, kLinear}, out);
  }
}

// Weight gradient: dw[:, i, j, :] = sum over outputs of g[y, x]^T x[y + i - top, x + j - left]; with
// g laid out on the padded width (zeros in the wrapped columns) each tap is one long product.
void weight_grad(const float* x, const float* grad, const float* y, float* dw, const Geometry& g) {
  size_t out_image = (size_t)g.oh * g.ow * g.co, in_image = (size_t)g.h * g.w * g.ci;
  if (is_pointwise(g)) {
    int rows = g.n * g.h * g.w, block = block_rows(std::max(g.ci, g.co));
    std::vector<float> scratch;
    for (int r0 = 0; r0 < rows; r0 += block) {
      int m = std::min(block, rows - r0);
      const float* gm = gradient_rows(grad, y, g.act, r0, m, g.co, scratch);
      sgemm()(kRowMajor, kTrans, kNoTrans, g.co, g.ci, m, 1.0f, gm, g.co, x + (size_t)r0 * g.ci, g.ci,
              r0 ? 1.0f : 0.0f, dw, g.ci);
    }
    return;
  }
  int hp = g.oh + g.kh - 1, wp = g.ow + g.kw - 1, ld = g.kh * g.kw * g.ci, rows = g.oh * wp;
  for (int n = 0; n < g.n; ++n) {
    Padded src = pad(x + n * in_image, g.h, g.w, g.ci, g.top, g.left, hp, wp, g.kw - 1);
    Padded gw = pad(grad + n * out_image, g.oh, g.ow, g.co, 0, 0, g.oh, wp, 0, y ? y + n * out_image : nullptr, g.act);
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
// given, bottom/right implied by the output size (oh, ow); act: Activation; residual: null or an array
// shaped like the output, added before the activation.
mx::array conv2d(const mx::array& x, const mx::array& w, const mx::array& bias, int top, int left, int oh, int ow,
                 int act, const std::optional<mx::array>& residual) {
  if (x.ndim() != 4 || w.ndim() != 4 || bias.ndim() != 1 || w.shape(3) != x.shape(3) || bias.shape(0) != w.shape(0) ||
      oh < 1 || ow < 1 || top < 0 || left < 0 || top >= w.shape(1) || left >= w.shape(2))
    throw std::invalid_argument("conv2d: x (N, H, W, C_in), w (C_out, kh, kw, C_in), bias (C_out,), 0 <= padding < k");
  if (act < kLinear || act > kReLU6) throw std::invalid_argument("conv2d: act is 0 (none), 1 (ReLU) or 2 (ReLU6)");
  mx::Shape out_shape{x.shape(0), oh, ow, w.shape(0)};
  if (residual && residual->shape() != out_shape)
    throw std::invalid_argument("conv2d: the residual must have the output's shape");
  if (!has_sgemm()) throw std::runtime_error("conv2d: no cblas_sgemm in the process");
  Geometry g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), oh, ow, w.shape(0), w.shape(1), w.shape(2), top, left,
             act, residual ? 1 : 0};
  std::vector<mx::array> inputs{x, w, bias};
  if (residual) inputs.push_back(*residual);
  return WeightedPrimitive<ConvOp>::make(Kind::Forward, g, std::move(inputs));
}

}  // namespace deepdream
