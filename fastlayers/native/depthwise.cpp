// Depthwise 2-D convolution (NHWC, float32) for MLX's CPU backend: forward, input gradient
// and weight gradient as one MLX primitive, so it composes with mx.compile and mx.grad.
//
// Why native: a depthwise convolution multiplies each tap by a per-channel vector. Written
// with MLX operations (fastlayers/depthwise.py) the fused kernel that mx.compile builds is a scalar
// loop with a pointer per operand (several times slower than torch per layer on CPU), and unfused
// operations pass over memory once per tap. Here the channel loop is contiguous in every
// operand, so the compiler vectorises it, and output rows are split over the cores.
//
// The three kinds share one loop shape: for every output position, a sum over taps of
// (a row of one operand) * (a row of another), elementwise over channels.

#include "common.h"

namespace deepdream {
namespace {

struct Geometry {
  int n, h, w, c;       // input (N, H, W, C)
  int oh, ow;           // output of the forward convolution
  int kh, kw, stride, top, left;
  int act;              // Activation (common.h) after the bias
  int residual;         // always 0 (WeightedPrimitive's field; no depthwise layer adds one)
};

constexpr int kLanes = 16;    // channels per vector
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

inline Lanes load(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// sum_t src[offsets[t] + c] * weights[t * ldw + c] for the vector of channels at c, over `taps` taps:
// the sum stays in a register (a per-pixel accumulator in memory costs a load and a store per tap).
inline Lanes dot_taps(const float* src, const std::ptrdiff_t* offsets, const float* weights, size_t ldw, int taps, int c,
                      Lanes init) {
  Lanes acc = init;
  for (int t = 0; t < taps; ++t) acc += load(src + offsets[t] + c) * load(weights + t * ldw + c);
  return acc;
}

// out[n, oy, ox] = activation(bias + sum_ij x[n, s*oy + i - top, s*ox + j - left] * taps[i, j]). A pixel
// whose window lies inside the image sums its taps vector by vector in registers; the few at the
// border take the general loop.
void forward(const float* x, const float* taps, const WeightsBuffer&, const float* bias, const float*, float* out,
             const Geometry& g) {
  int vectors = g.c / kLanes * kLanes, k2 = g.kh * g.kw;
  std::vector<std::ptrdiff_t> offsets(k2);      // tap (i, j)'s pixel relative to the window's first
  for (int i = 0; i < g.kh; ++i)
    for (int j = 0; j < g.kw; ++j) offsets[i * g.kw + j] = ((std::ptrdiff_t)i * g.w + j) * g.c;
  parallel_for(g.n * g.oh, [&](int begin, int end) {
    for (int row = begin; row < end; ++row) {
      int n = row / g.oh, oy = row % g.oh;
      int y0 = oy * g.stride - g.top;
      bool rows_inside = y0 >= 0 && y0 + g.kh <= g.h;
      for (int ox = 0; ox < g.ow; ++ox) {
        float* o = out + ((size_t)row * g.ow + ox) * g.c;
        int x0 = ox * g.stride - g.left;
        if (rows_inside && x0 >= 0 && x0 + g.kw <= g.w) {
          const float* window = x + (((size_t)n * g.h + y0) * g.w + x0) * g.c;
          for (int c = 0; c < vectors; c += kLanes) {
            Lanes v = dot_taps(window, offsets.data(), taps, g.c, k2, c, load(bias + c));
            std::memcpy(o + c, &v, sizeof(v));
          }
          for (int c = vectors; c < g.c; ++c) {
            float acc = bias[c];
            for (int t = 0; t < k2; ++t) acc += window[offsets[t] + c] * taps[(size_t)t * g.c + c];
            o[c] = acc;
          }
        } else {
          std::memcpy(o, bias, sizeof(float) * g.c);
          for (int i = 0; i < g.kh; ++i) {
            int iy = y0 + i;
            if (iy < 0 || iy >= g.h) continue;
            for (int j = 0; j < g.kw; ++j) {
              int ix = x0 + j;
              if (ix < 0 || ix >= g.w) continue;
              const float* xp = x + (((size_t)n * g.h + iy) * g.w + ix) * g.c;
              const float* wp = taps + ((size_t)i * g.kw + j) * g.c;
              for (int k = 0; k < g.c; ++k) o[k] += xp[k] * wp[k];
            }
          }
        }
        if (g.act != kLinear) epilogue(o, o, nullptr, nullptr, g.c, g.act);
      }
    }
  });
}

// The gradient after the activation masked by it (y: the forward's output; null: nothing to mask),
// into `scratch`; or the gradient itself.
const float* masked_gradient(const float* grad, const float* y, const Geometry& g, std::vector<float>& scratch) {
  if (!y || g.act == kLinear) return grad;
  scratch.resize((size_t)g.n * g.oh * g.ow * g.c);
  activation_grad(grad, y, scratch.data(), scratch.size(), g.act);
  return scratch.data();
}

// dx[n, y, x] = sum over the taps (i, j) and outputs (oy, ox) that read input (y, x)
//             = sum_ij g[n, (y + top - i) / s, (x + left - j) / s] * taps[i, j] (exact divisions only).
// At stride 1, a pixel whose taps all read inside g sums them vector by vector in registers.
void input_grad(const float* grad_in, const float* taps, const WeightsBuffer&, const float* y, float* dx,
                const Geometry& g) {
  std::vector<float> scratch;
  const float* grad = masked_gradient(grad_in, y, g, scratch);
  int vectors = g.c / kLanes * kLanes, k2 = g.kh * g.kw;
  std::vector<std::ptrdiff_t> offsets(k2);      // tap (i, j)'s output pixel relative to (y + top, x + left)
  for (int i = 0; i < g.kh; ++i)
    for (int j = 0; j < g.kw; ++j) offsets[i * g.kw + j] = -((std::ptrdiff_t)i * g.ow + j) * g.c;
  parallel_for(g.n * g.h, [&](int begin, int end) {
    for (int row = begin; row < end; ++row) {
      int n = row / g.h, y = row % g.h;
      bool rows_inside = g.stride == 1 && y + g.top - (g.kh - 1) >= 0 && y + g.top < g.oh;
      for (int x = 0; x < g.w; ++x) {
        float* d = dx + ((size_t)row * g.w + x) * g.c;
        if (rows_inside && x + g.left - (g.kw - 1) >= 0 && x + g.left < g.ow) {
          const float* last = grad + (((size_t)n * g.oh + y + g.top) * g.ow + x + g.left) * g.c;
          for (int c = 0; c < vectors; c += kLanes) {
            Lanes v = dot_taps(last, offsets.data(), taps, g.c, k2, c, Lanes{});
            std::memcpy(d + c, &v, sizeof(v));
          }
          for (int c = vectors; c < g.c; ++c) {
            float acc = 0.0f;
            for (int t = 0; t < k2; ++t) acc += last[offsets[t] + c] * taps[(size_t)t * g.c + c];
            d[c] = acc;
          }
          continue;
        }
        std::fill(d, d + g.c, 0.0f);
        for (int i = 0; i < g.kh; ++i) {
          int t = y + g.top - i;
          if (t < 0 || t % g.stride) continue;
          int oy = t / g.stride;
          if (oy >= g.oh) continue;
          for (int j = 0; j < g.kw; ++j) {
            int u = x + g.left - j;
            if (u < 0 || u % g.stride) continue;
            int ox = u / g.stride;
            if (ox >= g.ow) continue;
            const float* gp = grad + (((size_t)n * g.oh + oy) * g.ow + ox) * g.c;
            const float* wp = taps + ((size_t)i * g.kw + j) * g.c;
            for (int k = 0; k < g.c; ++k) d[k] += gp[k] * wp[k];
          }
        }
      }
    }
  });
}

// dtaps[i, j] = sum_{n, oy, ox} x[n, s*oy + i - top, s*ox + j - left] * g[n, oy, ox]; one tap per task
void weight_grad(const float* x, const float* grad_in, const float* y, float* dtaps, const Geometry& g) {
  std::vector<float> scratch;
  const float* grad = masked_gradient(grad_in, y, g, scratch);
  parallel_for(g.kh * g.kw, [&](int begin, int end) {
    for (int tap = begin; tap < end; ++tap) {
      int i = tap / g.kw, j = tap % g.kw;
      float* d = dtaps + (size_t)tap * g.c;
      std::fill(d, d + g.c, 0.0f);
      for (int n = 0; n < g.n; ++n) {
        for (int oy = 0; oy < g.oh; ++oy) {
          int iy = oy * g.stride + i - g.top;
          if (iy < 0 || iy >= g.h) continue;
          for (int ox = 0; ox < g.ow; ++ox) {
            int ix = ox * g.stride + j - g.left;
            if (ix < 0 || ix >= g.w) continue;
            const float* xp = x + (((size_t)n * g.h + iy) * g.w + ix) * g.c;
            const float* gp = grad + (((size_t)n * g.oh + oy) * g.ow + ox) * g.c;
            for (int k = 0; k < g.c; ++k) d[k] += xp[k] * gp[k];
          }
        }
      }
    }
  });
}

// The primitive's loops and result shapes (common.h).
struct DepthwiseConvOp {
  using Geometry = deepdream::Geometry;
  static constexpr const char* name = "DepthwiseConv";
  static constexpr const char* gpu_alternative = "mx.conv2d(groups=C)";
  static mx::Shape shape(Kind kind, const Geometry& g) {
    return kind == Kind::Forward ? mx::Shape{g.n, g.oh, g.ow, g.c}
         : kind == Kind::InputGrad ? mx::Shape{g.n, g.h, g.w, g.c}
         : mx::Shape{g.kh, g.kw, g.c};
  }
  static constexpr auto forward = &deepdream::forward;
  static constexpr auto input_grad = &deepdream::input_grad;
  static constexpr auto weight_grad = &deepdream::weight_grad;
};

}  // namespace

// x (N, H, W, C), taps (kh, kw, C), bias (C,); zero padding top/left given, bottom/right implied
// by the output size (oh, ow).
mx::array depthwise_conv2d(const mx::array& x, const mx::array& taps, const mx::array& bias, int stride,
                           int top, int left, int oh, int ow, int act) {
  if (x.ndim() != 4 || taps.ndim() != 3 || bias.ndim() != 1 || taps.shape(2) != x.shape(3) ||
      bias.shape(0) != x.shape(3) || stride < 1 || oh < 1 || ow < 1 || act < kLinear || act > kReLU6)
    throw std::invalid_argument("depthwise_conv2d: x (N, H, W, C), taps (kh, kw, C), bias (C,), stride >= 1, act 0-2");
  Geometry g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), oh, ow, taps.shape(0), taps.shape(1), stride, top, left,
             act, 0};
  return WeightedPrimitive<DepthwiseConvOp>::make(Kind::Forward, g, {x, taps, bias});
}

}  // namespace deepdream
