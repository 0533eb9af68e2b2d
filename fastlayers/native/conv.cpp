// 2-D convolution (NHWC, float32, groups 1) for MLX's CPU backend: forward (with the
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
// gradient with the flipped kernel. A 1x1 layer is one product per row block, no padding. A strided
// layer is the sum of stride-1 correlations over the input's phases (every s-th pixel from each of
// the s x s offsets), each with its own taps: no product with a zero tap.
//
// 3x3 layers with >= 16 channels on each side and >= 16 4x4 output tiles (every VGG layer but
// the first, most 3x3 layers of the other models) take winograd.cpp's F(4x4, 3x3) for the forward
// and the input gradient instead: 4x fewer multiply-adds; layers with fewer than 16 input channels
// (the RGB input layer) take im2col.cpp's window products. The weight gradient is always here.

#include <dlfcn.h>

#include <memory>
#include <tuple>

#include "conv.h"

namespace deepdream {

Sgemm sgemm() {
  static Sgemm fn = reinterpret_cast<Sgemm>(dlsym(RTLD_DEFAULT, "cblas_sgemm"));
  return fn;
}

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

namespace {

using Geometry = ConvGeometry;

// A zero-padded (and for strides > 1, subsampled) copy of one image, flattened to
// (rows * wp + slack, c); `slack` zero pixels at the end let the last tap's view run past the last row.
struct Padded {
  std::unique_ptr<float[]> storage;
  int wp;
  const float* data() const { return storage.get(); }
};

// Phase (a, b) of the image zero-padded by (top, left) and taken every s-th pixel:
// out[t, u] = image[s * t + a - top, s * u + b - left] (zero outside the image), rows x wp pixels.
// Every row is written once (zeros, or pixels between zeros). With `y` (the forward's output,
// shaped like the image) the image is a gradient arriving after the activation: masked as copied.
Padded phase(const float* image, int h, int w, int c, int top, int left, int s, int a, int b, int rows, int wp,
             int slack, const float* y = nullptr, int act = kLinear) {
  Padded p{std::unique_ptr<float[]>(new float[((size_t)rows * wp + slack) * c]), wp};
  float* out = p.storage.get();
  // the columns u whose image column s * u + b - left lies inside [0, w)
  int u0 = std::max(0, (left - b + s - 1) / s), u1 = std::min(wp, (w + left - b + s - 1) / s);
  parallel_for(rows, [&](int begin, int end) {
    for (int t = begin; t < end; ++t) {
      float* row = out + (size_t)t * wp * c;
      int iy = s * t + a - top;
      if (iy < 0 || iy >= h || u0 >= u1) {
        std::fill(row, row + (size_t)wp * c, 0.0f);
        continue;
      }
      std::fill(row, row + (size_t)u0 * c, 0.0f);
      size_t from = ((size_t)iy * w + (s * u0 + b - left)) * c;
      if (s == 1) {
        masked_copy(row + (size_t)u0 * c, image + from, y ? y + from : nullptr, c * (u1 - u0), act);
      } else {
        for (int u = u0; u < u1; ++u, from += (size_t)s * c)
          masked_copy(row + (size_t)u * c, image + from, y ? y + from : nullptr, c, act);
      }
      std::fill(row + (size_t)u1 * c, row + (size_t)wp * c, 0.0f);
    }
  });
  std::fill(out + (size_t)rows * wp * c, out + ((size_t)rows * wp + slack) * c, 0.0f);
  return p;
}

// Rows of a block: enough that one sgemm is worth its call, few enough that the block's
// accumulator (rows x channels) stays in L2 while the k*k taps add into it.
int block_rows(int channels) { return std::max(256, (256 * 1024) / std::max(1, channels)); }

// Rows of a 1x1 layer's block, given its input and output channels. A thin product (fewer than 64
// channels on one side: efficientnet's expansions over its widest maps) does little arithmetic per
// element, so the pass after it (the finish, or the gradient's mask before it) is much of its time:
// a quarter of block_rows' block keeps that pass in the core's cache. Wider products keep block_rows',
// where MKL's time per call favours longer blocks.
int pointwise_rows(int ci, int co) {
  int wide = std::max(ci, co);
  return std::min(ci, co) < 64 ? std::max(256, block_rows(wide) / 4) : block_rows(wide);
}

// The epilogue's inputs: out = activation(acc + bias + residual), per output pixel of `cd` channels.
struct Finish {
  const float* bias;
  const float* residual;      // shaped like the output, or null
  int act;
};

// One term of a correlation: the (rows, cs) matrix starting `offset` pixels into `source`, times
// the (cs, cd) matrix b (leading dimension ldb; transposed: b is given as (cd, cs)).
struct Tap {
  const Padded* source;
  size_t offset;
  const float* b;
  int ldb;
  bool transposed;
};

// For every output pixel (y, x) of an (oh, ow) grid laid out on the sources' width wp:
// store(y, x, sum over taps of source[y * wp + x + offset, :] @ b), the sums (cd wide) made block by
// block in a cache-sized accumulator; store runs on all threads.
template <typename Store>
void correlate(const std::vector<Tap>& taps, int cs, int oh, int ow, int wp, int cd, Store store) {
  int rows = oh * wp, block = block_rows(cd);
  std::vector<float> acc((size_t)block * cd);
  for (int r0 = 0; r0 < rows; r0 += block) {
    int m = std::min(block, rows - r0);
    for (size_t k = 0; k < taps.size(); ++k) {
      const Tap& t = taps[k];
      sgemm()(kRowMajor, kNoTrans, t.transposed ? kTrans : kNoTrans, m, cd, cs, 1.0f,
              t.source->data() + ((size_t)r0 + t.offset) * cs, cs, t.b, t.ldb, k ? 1.0f : 0.0f, acc.data(), cd);
    }
    parallel_for(m, [&](int begin, int end) {
      for (int r = r0 + begin; r < r0 + end; ++r) {
        int y = r / wp, x = r % wp;
        if (x < ow) store(y, x, &acc[(size_t)(r - r0) * cd]);     // the rest wrapped around a row
      }
    });
  }
}

// A 1x1 layer over `rows` pixels: out = finish(x @ w^T) (x: (rows, ci), w: (co, ci)). Each thread
// takes its own run of rows, block by block, each product on that thread and each block finished
// while it is still in its core's cache: no thread waits for another between a product and its finish.
void pointwise(const float* x, const float* w, int rows, int ci, int co, Finish finish, float* out) {
  int block = pointwise_rows(ci, co);
  bool finished = finish.bias || finish.residual || finish.act != kLinear;
  parallel_for(rows, [&](int begin, int end) {
    for (int r0 = begin; r0 < end; r0 += block) {
      int m = std::min(block, end - r0);
      float* o = out + (size_t)r0 * co;
      sgemm()(kRowMajor, kNoTrans, kTrans, m, co, ci, 1.0f, x + (size_t)r0 * ci, ci, w, ci, 0.0f, o, co);
      if (!finished) continue;
      const float* residual = finish.residual ? finish.residual + (size_t)r0 * co : nullptr;
      for (int r = 0; r < m; ++r)
        epilogue(o + (size_t)r * co, o + (size_t)r * co, finish.bias, residual ? residual + (size_t)r * co : nullptr,
                 co, finish.act);
    }
  });
}

bool is_pointwise(const Geometry& g) { return g.kh == 1 && g.kw == 1 && g.stride == 1; }

// A stride-s convolution is a sum over the s x s phases (a, b) of the padded input of stride-1
// correlations: output (y, x) reads padded pixel (s * y + i, s * x + j), which is pixel
// (y + q, x + r) of phase (i % s, j % s) with i = a + s * q, j = b + s * r. Phase (a, b) has
// taps_of(a, kh) x taps_of(b, kw) taps; all of them add into the same output. For s = 1 the one
// phase is the padded image with every tap.
int taps_of(int a, int k, int s) { return (k - a + s - 1) / s; }

struct Phases {
  int s, th, tw;           // stride; the most taps any phase has, down and across
  int count() const { return s * s; }
};

Phases phases(const Geometry& g) {
  int s = g.stride;
  return {s, taps_of(0, g.kh, s), taps_of(0, g.kw, s)};
}

// The weight matrix of tap (i, j): w[:, i, j, :], (C_out, C_in) with leading dimension kh * kw * C_in.
const float* tap_weights(const float* w, const Geometry& g, int i, int j) {
  return w + (size_t)(i * g.kw + j) * g.ci;
}

// Forward: tap (i, j) of weight (C_out, kh, kw, C_in) is w[:, i, j, :]^T, phase by phase.
void forward(const float* x, const float* w, const WeightsBuffer& w_buffer, const float* bias, const float* residual,
             float* out, const Geometry& g) {
  if (winograd_applies(g)) return winograd_forward(x, w, w_buffer, bias, residual, out, g);
  if (im2col_applies(g)) return im2col_forward(x, w, bias, residual, out, g);
  if (is_pointwise(g)) return pointwise(x, w, g.n * g.h * g.w, g.ci, g.co, {bias, residual, g.act}, out);
  Phases ph = phases(g);
  int rows = g.oh + ph.th - 1, wp = g.ow + ph.tw - 1, ld = g.kh * g.kw * g.ci;
  size_t image = (size_t)g.oh * g.ow * g.co;
  for (int n = 0; n < g.n; ++n) {
    std::vector<Padded> sources;
    sources.reserve(ph.count());
    std::vector<Tap> taps;
    for (int a = 0; a < ph.s; ++a)
      for (int b = 0; b < ph.s; ++b) {
        int qs = taps_of(a, g.kh, ph.s), rs = taps_of(b, g.kw, ph.s);
        if (!qs || !rs) continue;          // a phase no tap reads (a 1x1 kernel's, stride > 1)
        sources.push_back(phase(x + (size_t)n * g.h * g.w * g.ci, g.h, g.w, g.ci, g.top, g.left, ph.s, a, b, rows,
                                wp, ph.tw - 1));
        for (int q = 0; q < qs; ++q)
          for (int r = 0; r < rs; ++r)
            taps.push_back({&sources.back(), (size_t)q * wp + r, tap_weights(w, g, a + ph.s * q, b + ph.s * r), ld,
                            true});
      }
    float* o = out + n * image;
    const float* extra = residual ? residual + n * image : nullptr;
    correlate(taps, g.ci, g.oh, g.ow, wp, g.co, [&](int y, int x, const float* acc) {
      size_t at = ((size_t)y * g.ow + x) * g.co;
      epilogue(o + at, acc, bias, extra ? extra + at : nullptr, g.co, g.act);
    });
  }
}

// Input gradient. Input pixel (y, x) is padded pixel (y + top, x + left) = (s * t + a, s * u + b), of
// phase (a, b), read by that phase's taps (a + s * q, b + s * r) for outputs (t - q, u - r):
// dx[y, x] = sum_qr g[t - q, u - r] @ w[:, a + s * q, b + s * r, :], per phase a full correlation
// of g (padded by th - 1 rows and tw - 1 columns) with the flipped taps, computed for the phase rows
// t >= t0 and columns u >= u0 that reach the input and scattered to the input's pixels. g is
// masked by the activation at y as it is copied.
void input_grad(const float* grad, const float* w, const WeightsBuffer& w_buffer, const float* y, float* dx,
                const Geometry& g) {
  if (winograd_applies(g)) return winograd_input_grad(grad, w, w_buffer, y, dx, g);
  if (im2col_applies(g)) return im2col_input_grad(grad, w, y, dx, g);
  size_t out_image = (size_t)g.oh * g.ow * g.co, in_image = (size_t)g.h * g.w * g.ci;
  if (is_pointwise(g)) {
    // dx = g @ w, block by block, each thread its own run of rows (as in `pointwise`): w (C_out, C_in)
    // is already the product's right-hand side
    int rows = g.n * g.h * g.w, block = pointwise_rows(g.ci, g.co);
    parallel_for(rows, [&](int begin, int end) {
      std::vector<float> masked;
      for (int r0 = begin; r0 < end; r0 += block) {
        int m = std::min(block, end - r0);
        const float* gm = grad + (size_t)r0 * g.co;
        if (y && g.act != kLinear) {
          masked.resize((size_t)m * g.co);
          masked_copy(masked.data(), gm, y + (size_t)r0 * g.co, m * g.co, g.act);
          gm = masked.data();
        }
        sgemm()(kRowMajor, kNoTrans, kNoTrans, m, g.ci, g.co, 1.0f, gm, g.co, w, g.ci, 0.0f,
                dx + (size_t)r0 * g.ci, g.ci);
      }
    });
    return;
  }
  Phases ph = phases(g);
  int s = ph.s, t0 = g.top / s, u0 = g.left / s;
  int rows = (g.h + g.top + s - 1) / s - t0, cols = (g.w + g.left + s - 1) / s - u0;   // phase rows / columns
  int wp = cols + ph.tw - 1, ld = g.kh * g.kw * g.ci;
  // a phase without taps (strides past the kernel) leaves its pixels at zero
  bool every_phase = g.kh >= s && g.kw >= s;
  for (int n = 0; n < g.n; ++n) {
    float* out = dx + n * in_image;
    if (!every_phase)
      parallel_for(g.h, [&](int r0, int r1) {
        std::fill(out + (size_t)r0 * g.w * g.ci, out + (size_t)r1 * g.w * g.ci, 0.0f);
      });
    // g's row t' sits at padded row t' + th - 1: phase row t = t0 + (its row), tap q reads padded row
    // (t - t0) + (t0 + th - 1 - q)
    Padded src = phase(grad + n * out_image, g.oh, g.ow, g.co, ph.th - 1 - t0, ph.tw - 1 - u0, 1, 0, 0,
                       rows + ph.th - 1, wp, ph.tw - 1, y ? y + n * out_image : nullptr, g.act);
    auto scatter = [&](int a, int b) {
      return [&, a, b](int t, int u, const float* acc) {
        int iy = s * (t + t0) + a - g.top, ix = s * (u + u0) + b - g.left;
        if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
          std::memcpy(out + ((size_t)iy * g.w + ix) * g.ci, acc, sizeof(float) * g.ci);
      };
    };
    for (int a = 0; a < s; ++a)
      for (int b = 0; b < s; ++b) {
        int qs = taps_of(a, g.kh, s), rs = taps_of(b, g.kw, s);
        if (!qs || !rs) continue;
        std::vector<Tap> taps;
        for (int q = 0; q < qs; ++q)
          for (int r = 0; r < rs; ++r)
            taps.push_back({&src, (size_t)(ph.th - 1 - q) * wp + (ph.tw - 1 - r),
                            tap_weights(w, g, a + s * q, b + s * r), ld, false});
        correlate(taps, g.co, rows, cols, wp, g.ci, scatter(a, b));
      }
  }
}

// Weight gradient: dw[:, i, j, :] = sum over outputs of g[y, x]^T xpad[s * y + i, s * x + j]: with g
// laid out on the phases' width (zeros in the wrapped columns), each tap is one long product over
// its phase.
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
  Phases ph = phases(g);
  int rows = g.oh + ph.th - 1, wp = g.ow + ph.tw - 1, ld = g.kh * g.kw * g.ci, products = g.oh * wp;
  for (int n = 0; n < g.n; ++n) {
    Padded gw = phase(grad + n * out_image, g.oh, g.ow, g.co, 0, 0, 1, 0, 0, g.oh, wp, 0,
                      y ? y + n * out_image : nullptr, g.act);
    for (int a = 0; a < ph.s; ++a)
      for (int b = 0; b < ph.s; ++b) {
        int qs = taps_of(a, g.kh, ph.s), rs = taps_of(b, g.kw, ph.s);
        if (!qs || !rs) continue;
        Padded src = phase(x + n * in_image, g.h, g.w, g.ci, g.top, g.left, ph.s, a, b, rows, wp, ph.tw - 1);
        for (int q = 0; q < qs; ++q)
          for (int r = 0; r < rs; ++r) {
            int i = a + ph.s * q, j = b + ph.s * r;
            sgemm()(kRowMajor, kTrans, kNoTrans, g.co, g.ci, products, 1.0f, gw.data(), g.co,
                    src.data() + ((size_t)q * wp + r) * g.ci, g.ci, n ? 1.0f : 0.0f,
                    dw + (size_t)(i * g.kw + j) * g.ci, ld);
          }
      }
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

// x (N, H, W, C_in), w (C_out, kh, kw, C_in), bias (C_out,); stride s, zero padding top/left
// given, bottom/right implied by the output size (oh, ow); act: Activation; residual: null or an array
// shaped like the output, added before the activation.
mx::array conv2d(const mx::array& x, const mx::array& w, const mx::array& bias, int top, int left, int oh, int ow,
                 int act, const std::optional<mx::array>& residual, int stride) {
  if (x.ndim() != 4 || w.ndim() != 4 || bias.ndim() != 1 || w.shape(3) != x.shape(3) || bias.shape(0) != w.shape(0) ||
      oh < 1 || ow < 1 || top < 0 || left < 0 || top >= w.shape(1) || left >= w.shape(2) || stride < 1)
    throw std::invalid_argument(
        "conv2d: x (N, H, W, C_in), w (C_out, kh, kw, C_in), bias (C_out,), 0 <= padding < k, stride >= 1");
  if (stride * (oh - 1) + w.shape(1) > x.shape(1) + top + w.shape(1) - 1 ||
      stride * (ow - 1) + w.shape(2) > x.shape(2) + left + w.shape(2) - 1)
    throw std::invalid_argument("conv2d: an output window lies entirely in the padding");
  if (act < kLinear || act > kReLU6) throw std::invalid_argument("conv2d: act is 0 (none), 1 (ReLU) or 2 (ReLU6)");
  mx::Shape out_shape{x.shape(0), oh, ow, w.shape(0)};
  if (residual && residual->shape() != out_shape)
    throw std::invalid_argument("conv2d: the residual must have the output's shape");
  if (!has_sgemm()) throw std::runtime_error("conv2d: no cblas_sgemm in the process");
  Geometry g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), oh, ow, w.shape(0), w.shape(1), w.shape(2), top, left,
             act, residual ? 1 : 0, stride};
  std::vector<mx::array> inputs{x, w, bias};
  if (residual) inputs.push_back(*residual);
  return WeightedPrimitive<ConvOp>::make(Kind::Forward, g, std::move(inputs));
}

}  // namespace deepdream
