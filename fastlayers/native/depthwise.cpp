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

// Channels per vector and pixels summed side by side: each pixel has its own accumulator, so the
// multiply-adds of a tap do not wait on one another (a single pixel's sum is one dependent chain,
// bound by the FMA's latency, not its throughput), and each tap's weights are loaded once for all
// of them. Sized to the registers: 8 accumulators plus a row's weights (up to 5 taps) and a column
// fit AVX-512's 32 registers as 16 lanes, AVX2's 16 (and NEON's 32 as pairs) as 8.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
constexpr int kPixels = 8;
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

inline Lanes load(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// One tap of one pixel: where it reads in the source (relative to the pixel's base) and its weights.
struct Tap {
  std::ptrdiff_t src, w;
};

// out[p * out_step + c] = init[c] + sum_t src[taps[t].src + p * step + c] * w[taps[t].w + c] for the P
// pixels p whose sources lie `step` floats apart, every channel c (init null: 0).
template <int P>
inline void sum_taps(const float* src, std::ptrdiff_t step, const std::vector<Tap>& taps, const float* w,
                     const float* init, float* out, std::ptrdiff_t out_step, int channels) {
  int vectors = channels / kLanes * kLanes, count = (int)taps.size();
  for (int c = 0; c < vectors; c += kLanes) {
    Lanes start = init ? load(init + c) : Lanes{};
    Lanes acc[P];
    for (int p = 0; p < P; ++p) acc[p] = start;
    for (int t = 0; t < count; ++t) {
      Lanes weight = load(w + taps[t].w + c);
      const float* s = src + taps[t].src + c;
      for (int p = 0; p < P; ++p) acc[p] += load(s + p * step) * weight;
    }
    for (int p = 0; p < P; ++p) std::memcpy(out + p * out_step + c, &acc[p], sizeof(Lanes));
  }
  for (int c = vectors; c < channels; ++c)
    for (int p = 0; p < P; ++p) {
      float acc = init ? init[c] : 0.0f;
      for (int t = 0; t < count; ++t) acc += src[taps[t].src + p * step + c] * w[taps[t].w + c];
      out[p * out_step + c] = acc;
    }
}

// Pixels first, first + 1, ..., last - 1 along a row, each summing `taps` (the same for all) from
// src + k * step and writing out + k * out_step, kPixels at a time; finish(k) after each pixel k.
template <typename Finish>
inline void sum_run(int first, int last, const float* src, std::ptrdiff_t step, const std::vector<Tap>& taps,
                    const float* w, const float* init, float* out, std::ptrdiff_t out_step, int channels,
                    Finish finish) {
  int k = first;
  for (; k + kPixels <= last; k += kPixels) {
    sum_taps<kPixels>(src + k * step, step, taps, w, init, out + k * out_step, out_step, channels);
    for (int p = 0; p < kPixels; ++p) finish(k + p);
  }
  for (; k < last; ++k) {
    sum_taps<1>(src + k * step, step, taps, w, init, out + k * out_step, out_step, channels);
    finish(k);
  }
}

// A run of kPixels pixels that reads, in each of `rows` kernel rows, M taps along x: pixel p's tap
// t reads column p * S + t of that row (columns `channels` floats apart from row[r]) with the
// weights weights[r * M + t]. The columns the pixels share are loaded once and each feeds every
// (pixel, tap) that reads it, from registers; per-tap loads (sum_taps) read each column up to M
// times and miss the first-level cache on wide rows.
template <int M, int S>
inline void slide_taps(const float* const* row, const float* const* weights, int rows, const float* init, float* out,
                       std::ptrdiff_t out_step, int channels) {
  constexpr int P = kPixels, Q = (P - 1) * S + M;
  int vectors = channels / kLanes * kLanes;
  for (int c = 0; c < vectors; c += kLanes) {
    Lanes start = init ? load(init + c) : Lanes{};
    Lanes acc[P];
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) acc[p] = start;
    for (int r = 0; r < rows; ++r) {
      Lanes w[M];
#pragma GCC unroll 16
      for (int t = 0; t < M; ++t) w[t] = load(weights[r * M + t] + c);
      const float* base = row[r] + c;
#pragma GCC unroll 64
      for (int q = 0; q < Q; ++q) {
        Lanes column = load(base + (std::ptrdiff_t)q * channels);
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p) {
          int t = q - p * S;
          if (t >= 0 && t < M) acc[p] += column * w[t];
        }
      }
    }
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) std::memcpy(out + p * out_step + c, &acc[p], sizeof(Lanes));
  }
  for (int c = vectors; c < channels; ++c)
    for (int p = 0; p < P; ++p) {
      float acc = init ? init[c] : 0.0f;
      for (int r = 0; r < rows; ++r)
        for (int t = 0; t < M; ++t) acc += row[r][(std::ptrdiff_t)(p * S + t) * channels + c] * weights[r * M + t][c];
      out[p * out_step + c] = acc;
    }
}

using SlideFn = void (*)(const float* const*, const float* const*, int, const float*, float*, std::ptrdiff_t, int);

// slide_taps for the (taps along x, stride) pairs the networks use; null for others (sum_taps runs them).
inline SlideFn slide_for(int m, int s) {
  if (s == 1) {
    switch (m) {
      case 1: return &slide_taps<1, 1>;
      case 2: return &slide_taps<2, 1>;
      case 3: return &slide_taps<3, 1>;
      case 5: return &slide_taps<5, 1>;
      case 7: return &slide_taps<7, 1>;
    }
  } else if (s == 2) {
    switch (m) {
      case 3: return &slide_taps<3, 2>;
      case 5: return &slide_taps<5, 2>;
    }
  }
  return nullptr;
}

// Pixels first .. last - 1 by runs of kPixels through `slide` (when there is one); returns where it
// stopped. Run k0's rows start at row[r] + k0 * step.
template <typename Finish>
inline int slide_run(SlideFn slide, int first, int last, const std::vector<const float*>& row,
                     const std::vector<const float*>& weights, std::vector<const float*>& moved, std::ptrdiff_t step,
                     const float* init, float* out, std::ptrdiff_t out_step, int channels, Finish finish) {
  if (!slide) return first;
  int k = first, rows = (int)row.size();
  moved.resize(rows);
  for (; k + kPixels <= last; k += kPixels) {
    for (int r = 0; r < rows; ++r) moved[r] = row[r] + k * step;
    slide(moved.data(), weights.data(), rows, init, out + k * out_step, out_step, channels);
    for (int p = 0; p < kPixels; ++p) finish(k + p);
  }
  return k;
}

// out[n, oy, ox] = activation(bias + sum_ij x[n, s*oy + i - top, s*ox + j - left] * taps[i, j]). Per
// output row, the taps whose input row exists; the pixels whose window lies inside the image
// along x share one list and are summed side by side, the few at the left and right edges each
// take the taps that exist for them.
void forward(const float* x, const float* taps, const WeightsBuffer&, const float* bias, const float*, float* out,
             const Geometry& g) {
  // ox is inside when its first column s*ox - left >= 0 and its last s*ox - left + kw - 1 < w
  int inner_first = std::min(g.ow, (g.left + g.stride - 1) / g.stride);
  int inner_last = g.w - g.kw + g.left >= 0 ? std::min(g.ow, (g.w - g.kw + g.left) / g.stride + 1) : 0;
  inner_last = std::max(inner_first, inner_last);
  SlideFn slide = slide_for(g.kw, g.stride);
  parallel_for(g.n * g.oh, [&](int begin, int end) {
    std::vector<Tap> inner, edge;
    std::vector<const float*> rows, row_weights, moved;
    for (int row = begin; row < end; ++row) {
      int n = row / g.oh, y0 = row % g.oh * g.stride - g.top;
      const float* image = x + (size_t)n * g.h * g.w * g.c;
      float* o = out + (size_t)row * g.ow * g.c;
      auto finish = [&](int ox) {
        if (g.act != kLinear) epilogue(o + (size_t)ox * g.c, o + (size_t)ox * g.c, nullptr, nullptr, g.c, g.act);
      };
      // relative to the pixel's column 0 in row 0: image + (s*ox - left) * c
      const float* src = image - (std::ptrdiff_t)g.left * g.c;
      std::ptrdiff_t step = (std::ptrdiff_t)g.stride * g.c;
      // the kernel rows whose input row exists: as taps for sum_taps, as rows for slide_taps
      inner.clear();
      rows.clear();
      row_weights.clear();
      for (int i = 0; i < g.kh; ++i) {
        if (y0 + i < 0 || y0 + i >= g.h) continue;
        rows.push_back(src + (std::ptrdiff_t)(y0 + i) * g.w * g.c);
        for (int j = 0; j < g.kw; ++j) {
          inner.push_back({((std::ptrdiff_t)(y0 + i) * g.w + j) * g.c, ((std::ptrdiff_t)i * g.kw + j) * g.c});
          row_weights.push_back(taps + ((std::ptrdiff_t)i * g.kw + j) * g.c);
        }
      }
      int done = slide_run(slide, inner_first, inner_last, rows, row_weights, moved, step, bias, o, g.c, g.c, finish);
      sum_run(done, inner_last, src, step, inner, taps, bias, o, g.c, g.c, finish);
      for (int ox = 0; ox < g.ow; ++ox) {
        if (ox == inner_first) ox = inner_last;
        if (ox >= g.ow) break;
        int x0 = ox * g.stride - g.left;
        edge.clear();
        for (const Tap& t : inner) {
          int j = (int)(t.w / g.c % g.kw);
          if (x0 + j >= 0 && x0 + j < g.w) edge.push_back(t);
        }
        sum_run(ox, ox + 1, src, step, edge, taps, bias, o, g.c, g.c, finish);
      }
    }
  });
}

// The gradient after the activation masked by it (y: the forward's output; null: nothing to mask),
// into `scratch` (left uninitialised: every element is written); or the gradient itself.
const float* masked_gradient(const float* grad, const float* y, const Geometry& g, std::unique_ptr<float[]>& scratch) {
  if (!y || g.act == kLinear) return grad;
  size_t count = (size_t)g.n * g.oh * g.ow * g.c;
  scratch.reset(new float[count]);
  activation_grad(grad, y, scratch.get(), count, g.act);
  return scratch.get();
}

// The rows of the output gradient that input_grad reads, masked by the activation at y as they are
// first asked for: a thread walks its input rows in order and the rows they read slide forward with
// them, so a ring of `slots` rows (the most one input row reads, kh / s rounded up) holds every row
// still to be read, masked once, in the core's cache; masking the whole gradient first would write
// it and read it back through memory. Without a mask (no activation, or no y) the ring is the
// gradient itself.
class GradientRows {
 public:
  GradientRows(const float* grad, const float* y, const Geometry& g)
      : grad_(grad), y_(g.act == kLinear ? nullptr : y), width_((size_t)g.ow * g.c), oh_(g.oh), act_(g.act),
        slots_(y_ ? (g.kh + g.stride - 1) / g.stride : 0) {
    if (y_) ring_.reset(new float[slots_ * width_]);
  }

  // The base that row(n, oy) offsets are relative to.
  const float* base() const { return y_ ? ring_.get() : grad_; }

  // Row oy of image n, as an offset (in rows of `width` floats) from base(). The first row an input
  // row asks for is the latest it reads, and the others lie within `slots` rows before it: masking
  // from there (or from the last row masked) up to it masks each of them before it is read.
  std::ptrdiff_t row(int n, int oy) {
    std::ptrdiff_t global = (std::ptrdiff_t)n * oh_ + oy;
    if (!y_) return global;
    next_ = std::max(next_, (std::ptrdiff_t)n * oh_ + std::max<std::ptrdiff_t>(0, oy - slots_ + 1));
    for (; next_ <= global; ++next_)
      masked_copy(ring_.get() + (size_t)(next_ % slots_) * width_, grad_ + (size_t)next_ * width_,
                  y_ + (size_t)next_ * width_, (int)width_, act_);
    return global % slots_;
  }

 private:
  const float* grad_;
  const float* y_;
  size_t width_;
  int oh_, act_;
  std::ptrdiff_t slots_, next_ = 0;
  std::unique_ptr<float[]> ring_;
};

// dx[n, y, x] = sum over the taps (i, j) and outputs (oy, ox) that read input (y, x)
//             = sum_ij g[n, (y + top - i) / s, (x + left - j) / s] * taps[i, j] (exact divisions only).
// Per input row, the taps i whose division is exact and lands inside g. Along x the input pixels
// fall into s phases r = (x + left) mod s, each read by the taps j = r, r + s, ... ; pixels of one
// phase are s apart in dx and 1 apart in g, and those whose taps all land inside g share one
// list and are summed side by side, the rest each take the taps that exist for them.
void input_grad(const float* grad, const float* taps, const WeightsBuffer&, const float* y, float* dx,
                const Geometry& g) {
  int s = g.stride;
  parallel_for(g.n * g.h, [&](int begin, int end) {
    GradientRows rows_of(grad, y, g);
    std::vector<Tap> inner, edge;
    std::vector<const float*> rows, row_weights, moved;
    for (int row = begin; row < end; ++row) {
      int n = row / g.h, yy = row % g.h;
      const float* gn = rows_of.base();
      float* d = dx + (size_t)row * g.w * g.c;
      auto nothing = [](int) {};
      for (int r = 0; r < s; ++r) {
        int x_first = ((r - g.left) % s + s) % s;      // the first x with (x + left) mod s == r
        if (x_first >= g.w) continue;
        int count = (g.w - x_first + s - 1) / s;       // pixels x_first + k * s, k < count
        // pixel k of the phase reads g column q_k - (j - r) / s for tap j, q_k = (x_first + k*s + left - r) / s
        int q0 = (x_first + g.left - r) / s;
        const float* src = gn + (std::ptrdiff_t)q0 * g.c;
        float* out = d + (size_t)x_first * g.c;
        std::ptrdiff_t out_step = (std::ptrdiff_t)s * g.c;
        // The kernel rows i whose division is exact and lands inside g, each with its m taps
        // j = r + u * s: as taps for sum_taps, and as slide_taps reads them, tap t = m - 1 - u at
        // column k + t of a row starting m - 1 columns left of the pixel's last.
        int m = (g.kw - r + s - 1) / s;
        inner.clear();
        rows.clear();
        row_weights.clear();
        for (int i = 0; i < g.kh && m > 0; ++i) {
          int t = yy + g.top - i;
          if (t < 0 || t % s || t / s >= g.oh) continue;
          std::ptrdiff_t at = rows_of.row(n, t / s) * g.ow;    // the row's first pixel
          rows.push_back(src + (at - (m - 1)) * g.c);
          for (int u = 0; u < m; ++u) {
            int j = r + u * s;
            inner.push_back({(at - u) * g.c, ((std::ptrdiff_t)i * g.kw + j) * g.c});
            row_weights.push_back(taps + ((std::ptrdiff_t)i * g.kw + r + (m - 1 - u) * s) * g.c);
          }
        }
        // inside: every tap's column q0 + k - u in [0, ow), so q0 + k - (m - 1) >= 0 and q0 + k < ow
        int k_first = 0, k_last = count;
        if (!rows.empty()) {
          k_first = std::min(count, std::max(0, m - 1 - q0));
          k_last = std::max(k_first, std::min(count, g.ow - q0));
        }
        int done = slide_run(slide_for(m, 1), k_first, k_last, rows, row_weights, moved, g.c, nullptr, out, out_step,
                             g.c, nothing);
        sum_run(done, k_last, src, g.c, inner, taps, nullptr, out, out_step, g.c, nothing);
        for (int k = 0; k < count; ++k) {
          if (k == k_first) k = k_last;
          if (k >= count) break;
          edge.clear();
          for (const Tap& t : inner) {
            int j = (int)(t.w / g.c % g.kw);
            int column = q0 + k - (j - r) / s;
            if (column >= 0 && column < g.ow) edge.push_back(t);
          }
          sum_run(k, k + 1, src, g.c, edge, taps, nullptr, out, out_step, g.c, nothing);
        }
      }
    }
  });
}

// dtaps[i, j] = sum_{n, oy, ox} x[n, s*oy + i - top, s*ox + j - left] * g[n, oy, ox]; one tap per task
void weight_grad(const float* x, const float* grad_in, const float* y, float* dtaps, const Geometry& g) {
  std::unique_ptr<float[]> scratch;
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
